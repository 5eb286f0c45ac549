"""Exact linear-interpolation quantiles, without sorting large inputs.

ROSE turns risks into masks with ``lo, hi = quantile(risks, [lower, upper])``.
Both ``torch.quantile`` (the authors' code) and ``jnp.quantile`` use the
"linear" rule: the rank ``q * (n - 1)`` is computed in the input's floating
dtype, and the value is interpolated between the order statistics at
``floor(rank)`` and ``ceil(rank)``. This module follows that rule exactly:

* :func:`sorted_quantile` sorts; it is meant for a few hundred values (one risk
  per parameter tensor).
* :func:`tree_quantile` finds the two order statistics by a two-pass radix
  select over the leaves of a pytree (16 bits of the float's sortable key per
  pass, counted with a histogram). Nothing is concatenated or sorted, so an
  exact threshold over 125M floats costs a few linear passes.

The interpolation is ``torch.lerp``'s (also NumPy's): monotone and bounded by
the two order statistics, so the threshold never falls below the lower one by
rounding. ``jnp.quantile`` writes ``low * (1 - w) + high * w``, which can
differ from it in the last bit.

Determinism: ``-0.0`` is treated as ``+0.0`` and ties need no tie-breaking,
because only values are returned. Any NaN in the input makes the result NaN,
as with ``jnp.quantile``. XLA on the CPU flushes subnormal floats to zero, so
an interpolated value below ~1.2e-38 may come back as 0 there.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rose_jax._src.hparams import concrete_float

_DIGIT_BITS = 16
_NUM_BINS = 1 << _DIGIT_BITS
_DIGIT_MASK = _NUM_BINS - 1
_SIGN_BIT = 1 << 31


def _rank(q: jax.Array, n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Lower and upper order-statistic indices and the interpolation weight."""
  q = jnp.asarray(q, jnp.float32)
  position = q * jnp.float32(n - 1)
  low = jnp.floor(position)
  high = jnp.ceil(position)
  weight = position - low
  low = jnp.clip(low, 0, n - 1).astype(jnp.int32)
  high = jnp.clip(high, 0, n - 1).astype(jnp.int32)
  return low, high, weight


def lerp(low: jax.Array, high: jax.Array, weight: jax.Array) -> jax.Array:
  """``torch.lerp``/NumPy's linear interpolation, exact at both ends."""
  diff = high - low
  return jnp.where(weight < 0.5, low + weight * diff, high - diff * (1 - weight))


def sorted_quantile(values: jax.Array, q: jax.Array) -> jax.Array:
  """Linear quantile of a 1-D array, as ``torch.quantile`` computes it."""
  values = jnp.asarray(values, jnp.float32)
  if values.ndim != 1 or values.shape[0] == 0:
    raise ValueError(
        f'sorted_quantile expects a non-empty 1-D array, got shape {values.shape}.')
  ordered = jnp.sort(values)
  low, high, weight = _rank(q, values.shape[0])
  result = lerp(ordered[low], ordered[high], weight)
  return jnp.where(jnp.isnan(values).any(), jnp.nan, result)


def _sortable_key(x: jax.Array) -> jax.Array:
  """Maps float32 to uint32 so that unsigned order equals float order."""
  x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 and +0.0 get one key
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(_SIGN_BIT))


def _key_to_float(key: jax.Array) -> jax.Array:
  positive = (key >> 31) == 1
  bits = jnp.where(positive, key & jnp.uint32(_SIGN_BIT - 1), ~key)
  return lax.bitcast_convert_type(bits, jnp.float32)


def _histogram(digits: jax.Array, include: jax.Array | None = None) -> jax.Array:
  """Counts of 16-bit digits; excluded entries go to a dropped bin."""
  index = digits.astype(jnp.int32).ravel()
  if include is not None:
    index = jnp.where(include.ravel(), index, _NUM_BINS)
  return jnp.zeros(_NUM_BINS, jnp.int32).at[index].add(1, mode='drop')


def _first_bin_past(cumulative: jax.Array, k: jax.Array) -> jax.Array:
  """Index of the first bin whose cumulative count exceeds ``k``."""
  return jnp.sum(cumulative <= k).astype(jnp.int32)


def _kth_key(keys: Sequence[jax.Array], high_cumulative: jax.Array,
             k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The key of the k-th smallest element and how many keys are <= it."""
  top = _first_bin_past(high_cumulative, k)
  below = jnp.where(top > 0, high_cumulative[jnp.maximum(top - 1, 0)], 0)
  top_u = top.astype(jnp.uint32)
  low_hist = sum(_histogram(key & _DIGIT_MASK, (key >> _DIGIT_BITS) == top_u)
                 for key in keys)
  low_cumulative = jnp.cumsum(low_hist)
  bottom = _first_bin_past(low_cumulative, k - below)
  key = (top_u << _DIGIT_BITS) | bottom.astype(jnp.uint32)
  return key, below + low_cumulative[bottom]


def _next_key(keys: Sequence[jax.Array], key: jax.Array) -> jax.Array:
  """Smallest key strictly greater than ``key`` (itself if none is)."""
  larger = [jnp.min(jnp.where(k > key, k, jnp.uint32(0xFFFFFFFF))) for k in keys]
  nearest = jnp.min(jnp.stack(larger))
  return jnp.where(nearest == jnp.uint32(0xFFFFFFFF), key, nearest)


def _lands_on_an_element(q, n: int) -> bool:
  """Whether a concrete ``q``'s rank is a whole number, known before tracing.

  NumPy's float32 product is the same IEEE operation as ``_rank``'s.
  """
  value = concrete_float(q)
  if value is None:
    return False
  position = np.float32(value) * np.float32(n - 1)
  return bool(np.floor(position) == position)


def _rank_in_double(q, n: int) -> tuple[jax.Array, jax.Array, jax.Array, bool]:
  """``_rank`` with the position ``q * (n - 1)`` in double precision, as
  ``np.percentile`` computes it; also whether it lands on an element."""
  value = concrete_float(q)
  if value is None:
    raise ValueError('rank_in_double needs concrete quantiles, not traced ones.')
  position = value * (n - 1)
  clip = lambda i: min(max(int(i), 0), n - 1)
  low, high = clip(np.floor(position)), clip(np.ceil(position))
  weight = jnp.float32(position - np.floor(position))
  return jnp.int32(low), jnp.int32(high), weight, low == position


def tree_quantile(tree, qs: Sequence[jax.Array] | jax.Array, *,
                  rank_in_double: bool = False) -> list[jax.Array]:
  """Exact linear quantiles of all elements of all leaves of ``tree``.

  Args:
    tree: a pytree of float arrays (cast to float32). Leaves are not
      concatenated; each pass reads each leaf once.
    qs: one quantile or a sequence of quantiles in [0, 1], possibly traced.
      The first pass (top 16 bits) is shared between them.
    rank_in_double: compute the rank ``q * (n - 1)`` in double precision, as
      ``np.percentile`` does (``torch.quantile`` and ``jnp.quantile`` use the
      input's float32). Over tens of millions of values the two ranks can
      name different order statistics. Needs concrete ``qs``.

  Returns:
    A list with one float32 scalar per quantile.
  """
  leaves = [jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(tree)]
  n = sum(leaf.size for leaf in leaves)
  if n == 0:
    raise ValueError('tree_quantile needs at least one element.')
  if n >= 2**31:
    raise ValueError(f'tree_quantile counts in int32 and supports < 2**31 '
                     f'elements, got {n}.')
  if not isinstance(qs, (list, tuple)):
    qs = list(qs) if jnp.ndim(qs) else [qs]
  keys = [_sortable_key(leaf) for leaf in leaves]
  high_cumulative = jnp.cumsum(sum(_histogram(key >> _DIGIT_BITS) for key in keys))
  has_nan = jnp.stack([jnp.isnan(leaf).any() for leaf in leaves]).any()
  results = []
  for q in qs:
    if rank_in_double:
      low, high, weight, on_element = _rank_in_double(q, n)
    else:
      (low, high, weight), on_element = _rank(q, n), _lands_on_an_element(q, n)
    low_key, count_le = _kth_key(keys, high_cumulative, low)
    if on_element:
      high_key = low_key  # weight 0: no second order statistic to find
    else:
      high_key = jnp.where(count_le > high, low_key, _next_key(keys, low_key))
    value = lerp(_key_to_float(low_key), _key_to_float(high_key), weight)
    results.append(jnp.where(has_nan, jnp.nan, value))
  return results
