"""CHILD-TUNING_D (Xu et al., EMNLP 2021) as optax transformations.

Before training, a Fisher pass estimates how much each weight matters for the
task (:func:`rose_jax.baselines.fisher.fisher_information`). A fixed mask then
keeps the top ``reserve_p`` fraction of the included weights, by one global
cut over single weights, and only those are updated for the whole run. As in
the official ``ChildTuningAdamW``:

* the mask multiplies the gradient before Adam, with no ``1 / reserve_p``
  rescaling (only the task-free CHILD-TUNING_F rescales);
* masked weights therefore keep zero moments and take a zero Adam step, but
  the decoupled decay still reaches every decay-group weight, masked or not;
* Adam is Hugging Face's form (:func:`rose_jax.hf_adamw`).

Included are the tensors whose Hugging Face name contains ``layer``
(every tensor of ``encoder.layer.N``); embeddings, BERT's pooler and the
classification head are always updated (:func:`is_included`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rose_jax import quantile, selection
from rose_jax._src.hparams import concrete_float
from rose_jax.alias import hf_adamw


def is_included(name: str) -> bool:
  """The official rule: a tensor takes part iff its name contains ``layer``
  (lower case, so ``embeddings.LayerNorm`` does not)."""
  return 'layer' in name


def included_tensors(params):
  """A tree of bools: True for the tensors the Fisher mask ranks."""
  return jax.tree.map_with_path(
      lambda path, _: is_included(selection.hf_name(path)), params)


def check_reserve_p(reserve_p) -> None:
  value = concrete_float(reserve_p)
  if value is None or not 0.0 < value <= 1.0:
    raise ValueError(
        f'reserve_p is the fraction of weights kept and must be in (0, 1], got {reserve_p} '
        '(the official run.sh uses 0.3).')


def fisher_mask(fisher, *, reserve_p: float, included: Any = None):
  """The fixed CHILD-TUNING_D mask from a Fisher estimate.

  ``polar = np.percentile(F_included, (1 - reserve_p) * 100)`` over all
  included weights together, and ``mask = F >= polar``, as the official code
  computes it; the percentile is our exact radix select with NumPy's double
  precision rank, so 85M weights are not sorted. Tensors not included are all
  ones.

  Args:
    fisher: the Fisher estimate, a tree like the params.
    reserve_p: the kept fraction ``p_D`` in (0, 1].
    included: which tensors take part (tree of bools, callable, or None for
      :func:`included_tensors`).

  Returns:
    A tree of bool arrays shaped like ``fisher``.
  """
  check_reserve_p(reserve_p)
  included = included_tensors(fisher) if included is None else (
      included(fisher) if callable(included) else included)
  ranked = [f for f, i in zip(jax.tree.leaves(fisher), jax.tree.leaves(included), strict=True)
            if i]
  if not ranked:
    raise ValueError('No tensor is included in the Fisher mask: check the names against '
                     'is_included (the encoder layers\' tensors contain "layer").')
  (polar,) = quantile.tree_quantile(ranked, [1.0 - reserve_p], rank_in_double=True)
  return jax.tree.map(lambda f, i: f >= polar if i else jnp.ones(jnp.shape(f), bool),
                      fisher, included)


class FixedMaskState(NamedTuple):
  """State of :func:`keep_fixed_mask`: the mask, one bool per parameter."""
  mask: optax.Updates


def keep_fixed_mask(mask: Any = None) -> optax.GradientTransformation:
  """Multiplies the gradient by a mask fixed for the whole run.

  The mask lives in the state, so checkpoints carry it and a resumed run
  does not recompute it.

  Args:
    mask: a tree of bools like the params, a callable ``params -> tree``, or
      None for all ones (a placeholder that a restored state replaces).

  Returns:
    An ``optax.GradientTransformation`` with a :class:`FixedMaskState`.

  References:
    Xu et al., `Raise a Child in Large Language Model
    <https://aclanthology.org/2021.emnlp-main.749>`_, EMNLP 2021, Eq. 5.
  """
  def init_fn(params):
    tree = mask(params) if callable(mask) else mask
    if tree is None:
      return FixedMaskState(jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))
    return FixedMaskState(jax.tree.map(
        lambda p, m: jnp.broadcast_to(jnp.asarray(m, bool), jnp.shape(p)), params, tree))

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda g, m: g * m.astype(g.dtype), updates, state.mask), state

  return optax.GradientTransformation(init_fn, update_fn)


def child_tuning_d(
    learning_rate: optax.ScalarOrSchedule,
    *,
    mask: Any = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """CHILD-TUNING_D: Hugging Face AdamW on the gradient times a fixed mask.

  Usage, with a toy model (any ``apply_fn(params, batch, *, dropout_key)``):

  >>> from rose_jax import baselines, selection
  >>> params = {'layer': {'weight': jnp.linspace(-1, 1, 40).reshape(10, 4)},
  ...           'classifier': {'bias': jnp.zeros(4)}}
  >>> def apply_fn(params, batch, *, dropout_key):
  ...   return batch['x'] @ params['layer']['weight'] + params['classifier']['bias']
  >>> batches = [{'x': jax.random.normal(jax.random.key(1), (8, 10)),
  ...             'labels': jnp.arange(8) % 4}]
  >>> included = baselines.included_tensors(params)  # the encoder layers
  >>> fisher = baselines.fisher_information(apply_fn, params, batches, jax.random.key(0),
  ...                                       included=included)
  >>> mask = baselines.fisher_mask(fisher, reserve_p=0.3, included=included)
  >>> tx = optax.chain(optax.clip_by_global_norm(1.0),  # on the unmasked gradient
  ...                  baselines.child_tuning_d(2e-5, mask=mask,
  ...                                           weight_decay_mask=selection.authors_decay_mask))
  >>> state = tx.init(params)
  >>> # The top 30% of the layer's weights by Fisher information; the head always.
  >>> round(float(mask['layer']['weight'].mean()), 3), bool(mask['classifier']['bias'].all())
  (0.3, True)

  Args:
    learning_rate: ``eta``, a float or an optax schedule.
    mask: the fixed mask (see :func:`keep_fixed_mask`), from :func:`fisher_mask`.
    b1: ``beta_1`` (the official code's 0.9).
    b2: ``beta_2`` (the official code's 0.999).
    eps: ``epsilon`` (the official ``adam_epsilon``, 1e-8).
    weight_decay: decoupled decay, applied to every decay-group weight,
      masked ones included (official code: 0.01).
    weight_decay_mask: which tensors decay (official: not biases or
      LayerNorm weights; :func:`rose_jax.selection.authors_decay_mask`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``: ``(FixedMaskState,
    ScaleByMaskedAdamState)``.

  References:
    Xu et al., `Raise a Child in Large Language Model
    <https://aclanthology.org/2021.emnlp-main.749>`_, EMNLP 2021; the
    official ``ChildTuningAdamW`` (``mode="ChildTuning-D"``).
  """
  return optax.chain(
      keep_fixed_mask(mask),
      hf_adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
               weight_decay_mask=weight_decay_mask))
