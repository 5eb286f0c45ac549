"""Quantile masks over risks, and the ensemble of two masks (Eqs. 3 and 5).

Masks hold values in [0, 1]: 1 keeps a parameter's update, 0 freezes it.
Leaves that do not take part in the ranking are :class:`optax.MaskedNode` in a
mask tree; :func:`fill_mask` turns them into 1 (always updated).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rose_jax import quantile
from rose_jax._src.hparams import concrete_float
from rose_jax.risks import Granularity


def is_masked(x) -> bool:
  """Whether ``x`` is a mask tree's placeholder for a tensor that is never ranked."""
  return isinstance(x, optax.MaskedNode)


def select(tree, selectable):
  """Keeps the leaves of ``tree`` where ``selectable`` is True."""
  return jax.tree.map(lambda x, s: x if s else optax.MaskedNode(), tree, selectable)


def fill_mask(mask, params):
  """A mask shaped for ``params``: ranked leaves as given, others 1."""
  return jax.tree.map(
      lambda m, p: jnp.ones((), jnp.float32) if is_masked(m) else m,
      mask, params, is_leaf=is_masked)


def thresholds(risks, *, lower, upper, granularity: Granularity):
  """``lo, hi = quantile(risks, [lower, upper])`` over all ranked risks.

  Args:
    risks: a pytree of risks; leaves that are ``MaskedNode`` are not ranked.
    lower: lower quantile in [0, 1]; a concrete 0 skips its computation.
    upper: upper quantile in [0, 1]; a concrete 1 skips its computation.
    granularity: ``"tensor"`` ranks one scalar per leaf (sorting them),
      ``"element"`` ranks every scalar (radix select, no sort).

  Returns:
    ``(lo, hi)`` float32 scalars; ``-inf``/``inf`` where skipped.
  """
  leaves = jax.tree.leaves(risks)
  if not leaves:
    raise ValueError('No parameter is ranked: the selectable set is empty.')
  # A lower 0 or an upper 1 is the min or max, which every risk passes.
  skip_lower, skip_upper = concrete_float(lower) == 0.0, concrete_float(upper) == 1.0
  needed = [q for q, skip in ((lower, skip_lower), (upper, skip_upper)) if not skip]
  if not needed:
    values = []
  elif granularity == 'tensor':
    shapes = {jnp.shape(leaf) for leaf in leaves} - {()}
    if shapes:
      raise ValueError(
          'granularity="tensor" ranks one scalar risk per tensor, got risk leaves '
          f'of shapes {sorted(shapes)}; reduce them first (risks.first_order_risk '
          'does) or use granularity="element".')
    stacked = jnp.stack([jnp.asarray(leaf, jnp.float32).reshape(()) for leaf in leaves])
    values = [quantile.sorted_quantile(stacked, q) for q in needed]
  else:
    values = quantile.tree_quantile(leaves, needed)
  values = iter(values)
  lo = -jnp.inf if skip_lower else next(values)
  hi = jnp.inf if skip_upper else next(values)
  return jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)


def quantile_mask(risks, *, lower=0.0, upper, granularity: Granularity = 'tensor'):
  """Eq. 3 with the authors' two-sided rule: 1 where ``lo <= risk <= hi``.

  Ties at a threshold are kept (both comparisons are inclusive), so with
  distinct risks and ``lower = 0`` exactly ``floor(upper * (n - 1)) + 1`` of
  the ``n`` ranked units are kept.

  Returns:
    A float32 mask tree with the structure of ``risks`` (``MaskedNode`` leaves
    stay ``MaskedNode``).
  """
  lo, hi = thresholds(risks, lower=lower, upper=upper, granularity=granularity)
  return jax.tree.map(
      lambda r: ((r >= lo) & (r <= hi)).astype(jnp.float32), risks)


def ensemble_mask(first, second, *, gamma):
  """Eq. 5: ``gamma * M_first + (1 - gamma) * M_second``."""
  return jax.tree.map(lambda f, s: gamma * f + (1.0 - gamma) * s, first, second)


def kept_fraction(mask) -> jax.Array:
  """Mean mask value over ranked units (tensors or scalars), for logging.

  ``MaskedNode`` leaves (never ranked) do not count. A scalar leaf counts as
  one unit, an array leaf as its number of elements. The mask that
  :class:`rose_jax.ScaleByRoseState` keeps is one scalar per tensor at either
  granularity (at ``"element"``, the tensor's mean), so for a state's mask
  this is the mean over ranked tensors.
  """
  leaves = jax.tree.leaves(mask)
  if not leaves:
    return jnp.ones((), jnp.float32)
  total = sum(jnp.sum(jnp.asarray(leaf, jnp.float32)) for leaf in leaves)
  count = sum(jnp.size(leaf) for leaf in leaves)
  return total / count
