"""rose_jax: robust selective fine-tuning (ROSE, EMNLP 2022) for JAX and optax."""

from rose_jax._src import versions

versions.check('jax', 'jaxlib', 'optax', 'chex')

# ruff: noqa: E402

from rose_jax import selection
from rose_jax.alias import hf_adamw, rose
from rose_jax.baselines import child_tuning
from rose_jax.baselines.child_tuning import child_tuning_d
from rose_jax.baselines.params_ema import ParamsEmaState, params_ema
from rose_jax.masking import ensemble_mask, kept_fraction, quantile_mask
from rose_jax.quantile import sorted_quantile, tree_quantile
from rose_jax.risks import first_order_risk, second_order_risk
from rose_jax.selective import SelectiveState, selective
from rose_jax.transform import (
    FirstOrderRisk,
    ScaleByMaskedAdamState,
    ScaleByRoseState,
    first_order_due,
    masked_adam_update,
    rose_masks,
    scale_by_masked_adam,
    scale_by_rose,
)

__version__ = '0.1.0'

__all__ = [
    'FirstOrderRisk',
    'ParamsEmaState',
    'ScaleByMaskedAdamState',
    'ScaleByRoseState',
    'SelectiveState',
    'child_tuning',
    'child_tuning_d',
    'ensemble_mask',
    'first_order_due',
    'first_order_risk',
    'hf_adamw',
    'kept_fraction',
    'masked_adam_update',
    'params_ema',
    'quantile_mask',
    'rose',
    'rose_masks',
    'scale_by_masked_adam',
    'scale_by_rose',
    'second_order_risk',
    'selection',
    'selective',
    'sorted_quantile',
    'tree_quantile',
]
