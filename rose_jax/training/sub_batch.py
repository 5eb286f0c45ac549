"""The first-order risk from part of each batch.

ROSE's first-order risk ranks tensors by the gradient of the KL between two
dropout passes. With a :class:`SubBatch` the second pass and the KL run on
part of the batch only (``kl``), while the update's task loss covers every
example: the ``kl`` examples by the mean of their two passes, as in the
authors' recipe, the ``rest`` by one pass. Only the ``kl`` examples' forward
takes the KL's backward, so the step costs about ``(3 + 7 f) / 3`` vanilla
steps for a fraction ``f`` (the exact recipe's ``10 / 3`` at ``f = 1``).

The ``kl`` examples are the first of the batch (of each device's share):
in a batch drawn in random order they are a random draw of that size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from rose_jax._src.apply_fn import Batch


class SubBatch(NamedTuple):
  """A batch split for the first-order risk.

  Attributes:
    kl: the examples of both dropout passes and the KL, with their labels.
    rest: the other examples, one pass each (may hold none).
  """
  kl: Batch
  rest: Batch


def check_fraction(kl_fraction: float | None) -> None:
  """ValueError, naming the option, for a fraction outside (0, 1]."""
  if kl_fraction is None:
    return
  if isinstance(kl_fraction, bool) or not isinstance(kl_fraction, (int, float)) \
      or not 0.0 < kl_fraction <= 1.0:
    raise ValueError(f'kl_fraction is the share of each batch that runs the KL passes, a '
                     f'number in (0, 1], got {kl_fraction!r}.')


def kl_examples(examples: int, kl_fraction: float) -> int:
  """How many of ``examples`` run the KL passes: ``floor(kl_fraction *
  examples)``; ValueError where that leaves none."""
  count = math.floor(kl_fraction * examples + 1e-9)
  if count < 1:
    raise ValueError(
        f'kl_fraction={kl_fraction} of {examples} examples (per device) leaves none for the '
        f'KL passes; use kl_fraction >= {1 / examples:.3g} or a larger batch.')
  return count


def split_batch(batch: Mapping[str, Any], kl_fraction: float, *, devices: int = 1) -> SubBatch:
  """``batch`` split into a :class:`SubBatch`: of each device's share (``devices``
  contiguous shares, as :func:`rose_jax.training.shard_batch` deals them), the
  first ``kl_examples(share, kl_fraction)`` examples go to ``kl``.

  Every entry has one row per example: packed rows, which hold several
  examples each, are split before they are packed (``rose_jax.glue`` packs
  each part on its own).
  """
  check_fraction(kl_fraction)
  if 'segment_ids' in batch:
    raise ValueError('A packed batch holds several examples in a row, so its rows cannot be '
                     'split by example: split the examples first and pack each part on its '
                     'own into a SubBatch(kl=..., rest=...).')
  size = np.shape(batch['labels'])[0]
  if size % devices:
    raise ValueError(f'The batch of {size} does not divide over {devices} devices.')
  share = size // devices
  take = kl_examples(share, kl_fraction)
  position = np.arange(size) % share
  kl_rows, rest_rows = np.flatnonzero(position < take), np.flatnonzero(position >= take)
  pick = lambda rows: {name: value[rows] for name, value in batch.items()}
  return SubBatch(pick(kl_rows), pick(rest_rows))


def examples_in(batch: Batch | SubBatch) -> int:
  """The examples a batch holds (its labels), a :class:`SubBatch`'s parts together."""
  if isinstance(batch, SubBatch):
    return examples_in(batch.kl) + examples_in(batch.rest)
  return int(np.shape(batch['labels'])[0])


def map_parts(fn, batch: Batch | SubBatch):
  """``fn`` applied to a batch, or to each part of a :class:`SubBatch`."""
  if isinstance(batch, SubBatch):
    return SubBatch(fn(batch.kl), fn(batch.rest))
  return fn(batch)
