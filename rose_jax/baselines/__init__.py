"""The paper's baselines, beside ROSE.

* CHILD-TUNING_D (Xu et al., 2021): :func:`child_tuning_d`, its Fisher pass
  :func:`fisher_information` and fixed mask :func:`fisher_mask`;
* SMART (Jiang et al., 2020): :class:`Smart`, with the momentum teacher
  :func:`params_ema`;
* FreeLB (Zhu et al., 2020): :class:`FreeLB`.

The optimizer-side baselines are optax transformations; the adversarial ones
are gradient rules that :func:`rose_jax.training.make_train_step` runs for
any model that takes an :class:`rose_jax.training.EmbeddingPerturbation`.
Each says what the official code does and where it departs from its paper.
"""

from rose_jax.baselines.adversarial import FreeLB, Smart
from rose_jax.baselines.child_tuning import (
    FixedMaskState,
    child_tuning_d,
    fisher_mask,
    included_tensors,
    is_included,
    keep_fixed_mask,
)
from rose_jax.baselines.fisher import fisher_information
from rose_jax.baselines.params_ema import ParamsEmaState, find_params_ema, params_ema

__all__ = [
    'FixedMaskState',
    'FreeLB',
    'ParamsEmaState',
    'Smart',
    'child_tuning_d',
    'find_params_ema',
    'fisher_information',
    'fisher_mask',
    'included_tensors',
    'is_included',
    'keep_fixed_mask',
    'params_ema',
]
