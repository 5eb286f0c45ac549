"""Packed batches: a batch's examples laid into rows of ``row_length`` tokens,
several to a row, so that a step computes real tokens rather than padding.

The examples of a batch are those the batch plan gives (random order or
``--group-by-length``); packing changes only their layout. Each row holds
whole examples (first-fit decreasing: the longest first, each into the first
row with room), told apart by ``segment_ids`` (0 padding, 1, 2, ... in a
row). The number of rows is rounded up to a multiple of ``row_multiple``, so
that a run compiles one step per row count it meets, at most
``batch_size / row_multiple`` of them. Examples are numbered row by row,
left to right (:mod:`rose_jax.models.segments`); ``Packed.order`` maps them
back to the batch's own order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rose_jax.glue.batching import Batch, Encoded, process_rows
from rose_jax.training.sub_batch import SubBatch, kl_examples

ROW_MULTIPLE = 2


@dataclasses.dataclass(frozen=True)
class Packing:
  """How batches are packed.

  Attributes:
    row_length: tokens per row (``--max-length``).
    devices: the devices a global batch is split over; each device's share
      is packed on its own, all into the same number of rows.
    row_multiple: the row count is rounded up to a multiple of this.
    kl_fraction: split each device's share for a cheaper first-order risk:
      its first ``kl_examples(share, kl_fraction)`` examples (a random draw,
      the batch being in random order) packed on their own as the
      :class:`~rose_jax.training.SubBatch`'s ``kl``, the rest as its
      ``rest``; None: one packed batch.
  """
  row_length: int
  devices: int = 1
  row_multiple: int = ROW_MULTIPLE
  kl_fraction: float | None = None


@dataclasses.dataclass(frozen=True)
class Packed:
  """A packed batch.

  Attributes:
    arrays: ``input_ids``, ``segment_ids`` (and ``token_type_ids`` where the
      data has them), each ``[rows, row_length]``, and ``labels``
      ``[examples]`` in packed order.
    order: packed example ``j`` is the batch's example ``order[j]``.
  """
  arrays: dict[str, np.ndarray]
  order: np.ndarray

  @property
  def rows(self) -> int:
    return self.arrays['segment_ids'].shape[0]


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Indices of ``lengths`` per row: longest first (ties in their order), each
  into the first row it fits; no example is split."""
  lengths = np.asarray(lengths)
  if lengths.size and (lengths.max() > capacity or lengths.min() < 1):
    raise ValueError(f'Examples of {lengths.min()} to {lengths.max()} tokens cannot be packed '
                     f'into rows of {capacity}: every example needs 1 to {capacity} tokens.')
  rows: list[list[int]] = []
  room: list[int] = []
  for index in np.argsort(-lengths, kind='stable'):
    length = int(lengths[index])
    row = next((r for r, free in enumerate(room) if free >= length), None)
    if row is None:
      rows.append([])
      room.append(capacity)
      row = len(rows) - 1
    rows[row].append(int(index))
    room[row] -= length
  return rows


def packed_order(lengths: Sequence[int], capacity: int) -> np.ndarray:
  """The order in which :func:`pack` lays out examples of these lengths."""
  return np.asarray([i for row in first_fit_decreasing(lengths, capacity) for i in row],
                    np.int64)


def row_count(needed: int, row_multiple: int) -> int:
  """``needed`` rounded up to a multiple of ``row_multiple`` (at least one row)."""
  return max(-(-needed // row_multiple), 1) * row_multiple


def common_row_count(data: Encoded, groups: Sequence[np.ndarray], row_length: int,
                     row_multiple: int = ROW_MULTIPLE) -> int:
  """One row count that packs every group of examples (rows of ``data``): what
  the fullest group needs, rounded up to a multiple of ``row_multiple``."""
  needed = max(len(first_fit_decreasing(data.lengths[g], row_length)) for g in groups)
  return row_count(needed, row_multiple)


def pack(data: Encoded, examples: np.ndarray, row_length: int, *,
         row_multiple: int = 2, rows: int | None = None) -> Packed:
  """The examples ``examples`` of ``data`` packed into rows of ``row_length``.

  Args:
    data: tokenised examples, each at most ``row_length`` tokens.
    examples: the batch's rows of ``data``, in the batch's order.
    row_length: tokens per row (``--max-length``).
    row_multiple: the row count is rounded up to a multiple of this.
    rows: the row count to use instead (for devices that must agree on
      one); at least what the examples need.
  """
  lengths = data.lengths[examples]
  placed = first_fit_decreasing(lengths, row_length)
  count = row_count(len(placed), row_multiple) if rows is None else rows
  if count < len(placed):
    raise ValueError(f'{len(examples)} examples need {len(placed)} rows, more than {count}.')
  keys = [key for key in data.tokens if key != 'attention_mask']  # segments say it
  arrays = {key: np.zeros((count, row_length), np.int32) for key in keys}
  arrays['input_ids'][:] = data.pad_id
  arrays['segment_ids'] = np.zeros((count, row_length), np.int32)
  order = []
  for r, members in enumerate(placed):
    at = 0
    for segment, member in enumerate(members, start=1):
      start, stop = data.offsets[examples[member]], data.offsets[examples[member] + 1]
      for key in keys:
        arrays[key][r, at:at + stop - start] = data.tokens[key][start:stop]
      arrays['segment_ids'][r, at:at + stop - start] = segment
      at += stop - start
      order.append(member)
    assert at <= row_length, 'a packed row overflowed'
  order = np.asarray(order, np.int64)
  assert np.array_equal(np.sort(order), np.arange(len(examples))), 'an example lost or doubled'
  arrays['labels'] = data.labels[examples[order]]
  return Packed(arrays, order)


def packed_batch(data: Encoded, rows: np.ndarray, packing: Packing, *, process_index: int = 0,
                 process_count: int = 1) -> Batch:
  """A global batch (``rows`` of ``data``) packed, this process's share of it.

  The batch is split over ``packing.devices`` in order; every device's share
  is packed on its own into as many rows as the fullest share needs (rounded
  up), and this process's devices' packs are concatenated, rows after rows
  and labels after labels, as ``shard_batch`` hands them out again.
  ``Batch.order[j]`` is the batch position of the ``j``-th example in the
  global packed order.
  """
  if len(rows) % packing.devices:
    raise ValueError(f'The batch of {len(rows)} does not divide over {packing.devices} devices.')
  shares = np.split(np.asarray(rows), packing.devices)
  lengths = data.lengths
  local = process_rows(np.arange(packing.devices), process_index, process_count)
  if packing.kl_fraction is not None:  # the order maps eval predictions; training needs none
    take = kl_examples(len(shares[0]), packing.kl_fraction)
    parts = [_pack_shares(data, [share[:take] for share in shares], local, packing),
             _pack_shares(data, [share[take:] for share in shares], local, packing)]
    padded = sum(packing.devices * part['segment_ids'].shape[0] // len(local)
                 for part in parts) * packing.row_length
    return Batch(SubBatch(*parts), int(lengths[rows].sum()), padded)
  arrays = _pack_shares(data, shares, local, packing)
  count = arrays['segment_ids'].shape[0] // len(local)
  size = len(rows) // packing.devices
  order = np.concatenate([d * size + packed_order(lengths[share], packing.row_length)
                          for d, share in enumerate(shares)])
  return Batch(arrays, int(lengths[rows].sum()), packing.devices * count * packing.row_length,
               order)


def _pack_shares(data: Encoded, shares: Sequence[np.ndarray], local: np.ndarray,
                 packing: Packing) -> dict[str, np.ndarray]:
  """The local devices' shares, each packed into the row count the fullest
  share needs, concatenated."""
  count = common_row_count(data, shares, packing.row_length, packing.row_multiple)
  packs = [pack(data, shares[d], packing.row_length, rows=count) for d in local]
  return {key: np.concatenate([p.arrays[key] for p in packs]) for key in packs[0].arrays}


def layout(packing: Packing) -> Callable[[Encoded, np.ndarray, int, int], Batch]:
  """:func:`packed_batch` as a ``layout`` for :func:`rose_jax.glue.batching.train_batches`."""
  return lambda data, rows, process_index, process_count: packed_batch(
      data, rows, packing, process_index=process_index, process_count=process_count)


def pad_rows(arrays: dict[str, np.ndarray], rows: int, pad_id: int) -> dict[str, np.ndarray]:
  """A packed batch with empty rows added up to ``rows`` (so that batches of
  several row counts stack)."""
  out = {}
  for key, value in arrays.items():
    extra = rows - value.shape[0] if key != 'labels' else 0
    if extra < 0:
      raise ValueError(f'{key} has {value.shape[0]} rows, more than {rows}.')
    out[key] = np.pad(value, ((0, extra), (0, 0)),
                      constant_values=pad_id if key == 'input_ids' else 0) if extra else value
  return out
