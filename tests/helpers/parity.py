"""Parity with transformers' PyTorch models at the tolerance float32 rounding sets.

How far a float32 forward pass lands from the exact result depends on the
outputs' size, float32's epsilon, the depth and the weights (the tests'
large random weights amplify rounding through LayerNorm and softmax), so no
fixed ``atol`` fits every model and every environment. The reference is
transformers' model in float64, run on each example alone (padding cannot
reach it); our float32 result must be as close to it as transformers' own
float32 result is, within :data:`FACTOR`, and never needs to be closer than
:data:`ULPS_PER_LAYER` float32 ulps of the outputs' scale per layer. An
implementation error (a relative position off by one bucket, a missing
attention scale) moves the outputs by a large fraction of their size:
thousands of times either bound.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
# Our rounding against transformers' own: different reduction orders and
# fusions, the same precision.
FACTOR = 4.0
# The least tolerance, per layer the rounding passes through (and one for the
# embeddings and the head).
ULPS_PER_LAYER = 8.0


def float32_tolerance(reference32: np.ndarray, reference64: np.ndarray, layers: int) -> float:
  """The absolute tolerance for a float32 result of a ``layers``-deep model."""
  scale = float(np.abs(reference64).max())
  own_error = float(np.abs(reference32 - reference64).max())
  return max(FACTOR * own_error, ULPS_PER_LAYER * (layers + 1) * EPS32 * scale)


def assert_float32_parity(ours, reference32, reference64, *, layers: int,
                          where: np.ndarray | None = None) -> None:
  """``ours`` within :func:`float32_tolerance` of the float64 reference, at the
  elements ``where`` holds (real tokens; all by default)."""
  ours, reference32, reference64 = (np.asarray(a, np.float64) for a in
                                    (ours, reference32, reference64))
  if where is not None:
    where = np.broadcast_to(where, ours.shape)
    ours, reference32, reference64 = ours[where], reference32[where], reference64[where]
  tolerance = float32_tolerance(reference32, reference64, layers)
  error = np.abs(ours - reference64)
  worst = int(np.argmax(error))
  assert error.max() <= tolerance, (
      f'{error.max():.3g} from the float64 reference at element {worst} (ours '
      f'{ours.flat[worst]:.7g}, float64 {reference64.flat[worst]:.7g}); float32 rounding '
      f'allows {tolerance:.3g} (transformers\' float32 is '
      f'{np.abs(reference32 - reference64).max():.3g} off)')


def per_example(run: Callable, ids: np.ndarray, mask: np.ndarray, *others: np.ndarray):
  """``run(ids, mask, *others)`` on each example's real tokens alone, stacked.

  ``run`` returns an array or a tuple of them, each with a leading axis of
  one example: ``[1, n, ...]`` per token (hidden states), which come back as
  ``[batch, length, ...]`` with zeros at padding, or ``[1, ...]`` per example
  (logits, a pooled state), which come back as ``[batch, ...]``.
  """
  rows, single = [], False
  for row in range(len(ids)):
    n = int(mask[row].sum())
    out = run(*(a[row:row + 1, :n] for a in (ids, mask, *others)))
    single = not isinstance(out, tuple)
    rows.append((out,) if single else out)
  stacked = []
  for outputs in zip(*rows, strict=True):
    if outputs[0].ndim < 3:
      stacked.append(np.concatenate(outputs))
      continue
    tokens = np.zeros((*ids.shape, *outputs[0].shape[2:]), outputs[0].dtype)
    for row, out in enumerate(outputs):
      tokens[row, :out.shape[1]] = out[0]
    stacked.append(tokens)
  return stacked[0] if single else tuple(stacked)
