"""Tokenised examples and the batches made from them, padded by length bucket.

Examples are tokenised once, without padding. Each batch is padded to the
smallest bucket length that holds its longest example, so a step computes
little padding while the number of compiled steps stays at the number of
buckets. The order of the batches is a function of (data seed, epoch)
alone, so a run resumed at batch ``k`` of an epoch sees the same batches as
one that never stopped.

``group_by_length`` (Hugging Face Trainer's flag of that name) draws
batches from length-sorted chunks of the shuffled examples and then
shuffles the order of the batches: far less padding, at the price of
batches whose examples have similar lengths.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rose_jax.glue.data import Split

INPUT_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')
# Hugging Face's LengthGroupedSampler sorts chunks of 50 batches ("mega-batches").
GROUP_BATCHES = 50


@dataclasses.dataclass(frozen=True)
class Encoded:
  """Tokenised examples without padding.

  Attributes:
    tokens: per input key, every example's tokens concatenated.
    offsets: example ``i`` is ``tokens[k][offsets[i]:offsets[i + 1]]``.
    labels: class indices, or regression targets.
    pad_id: the tokenizer's padding id for ``input_ids``.
    truncated: how many examples were longer than ``max_length`` and cut.
    groups: each example's group, where the task has them (MSGS's condition).
  """
  tokens: dict[str, np.ndarray]
  offsets: np.ndarray
  labels: np.ndarray
  pad_id: int
  truncated: int = 0
  groups: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def take(self, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Rows ``rows`` padded (on the right) to ``length``, with their labels."""
    batch = {key: np.full((len(rows), length), self.pad_id if key == 'input_ids' else 0,
                          np.int32) for key in self.tokens}
    for i, row in enumerate(rows):
      start, stop = self.offsets[row], self.offsets[row + 1]
      for key, flat in self.tokens.items():
        batch[key][i, :stop - start] = flat[start:stop]
    batch['labels'] = self.labels[rows]
    return batch


def tokenize(tokenizer, split: Split, max_length: int) -> Encoded:
  """Tokenises ``split`` without padding, cutting examples to ``max_length``."""
  columns = list(zip(*split.texts, strict=True))
  full = tokenizer(*columns, truncation=False, padding=False, verbose=False)
  long_rows = [i for i, ids in enumerate(full['input_ids']) if len(ids) > max_length]
  encoded = {key: list(full[key]) for key in INPUT_KEYS if key in full}
  if long_rows:  # only these need the tokenizer's own truncation (longest first, for pairs)
    cut = tokenizer(*([c[i] for i in long_rows] for c in columns), truncation=True,
                    max_length=max_length, padding=False)
    for key in encoded:
      for j, i in enumerate(long_rows):
        encoded[key][i] = cut[key][j]
  lengths = np.asarray([len(ids) for ids in encoded['input_ids']], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  tokens = {key: np.fromiter((t for ids in values for t in ids), np.int32, count=offsets[-1])
            for key, values in encoded.items()}
  pad = tokenizer.pad_token_id
  return Encoded(tokens, offsets, np.asarray(split.labels), 0 if pad is None else int(pad),
                 truncated=len(long_rows), groups=split.groups)


def default_buckets(max_length: int, multiple: int = 16) -> tuple[int, ...]:
  """Multiples of ``multiple`` below ``max_length``, and ``max_length``."""
  return (*range(multiple, max_length, multiple), max_length)


def check_buckets(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
  """Raises ValueError unless ``buckets`` increase and fit ``max_length``; the
  result ends in ``max_length``, so every example has a bucket."""
  buckets = tuple(int(b) for b in buckets)
  if not buckets or buckets[0] < 1:
    raise ValueError(f'--buckets must be positive lengths, got {list(buckets)}.')
  if any(b <= a for a, b in itertools.pairwise(buckets)):
    raise ValueError(f'--buckets must increase, got {list(buckets)}.')
  if buckets[-1] > max_length:
    raise ValueError(f'--buckets {list(buckets)} go past --max-length {max_length}; longer '
                     'examples are cut to --max-length, so no batch needs more.')
  return buckets if buckets[-1] == max_length else (*buckets, max_length)


def bucket_of(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds ``length`` tokens."""
  return int(buckets[np.searchsorted(buckets, length)])


def epoch_order(num_examples: int, data_seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of an epoch: a function of (data seed, epoch) alone.
  ``data_seed`` is the run's ``data`` stream (``stream_seed(seed, "data")``)."""
  return np.random.default_rng([data_seed, epoch]).permutation(num_examples)


def epoch_batches(lengths: np.ndarray, batch_size: int, data_seed: int, epoch: int, *,
                  group_by_length: bool = False) -> np.ndarray:
  """The rows of each full batch of an epoch, ``[batches, batch_size]``.

  Without grouping, consecutive slices of :func:`epoch_order` (the last
  partial batch is dropped). With grouping, the same kept examples are cut
  into chunks of ``GROUP_BATCHES`` batches, each chunk sorted by length
  (longest first) and split into batches, and the batch order is shuffled.
  """
  order = epoch_order(len(lengths), data_seed, epoch)
  batches = len(order) // batch_size
  order = order[:batches * batch_size]
  if group_by_length:
    chunk = GROUP_BATCHES * batch_size
    order = np.concatenate([
        part[np.argsort(-lengths[part], kind='stable')]
        for part in np.split(order, range(chunk, len(order), chunk))]) if batches else order
  rows = order.reshape(batches, batch_size)
  if group_by_length:
    rows = rows[np.random.default_rng([data_seed, epoch, 1]).permutation(batches)]
  return rows


def process_rows(rows: np.ndarray, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's contiguous share of a global batch's row indices."""
  if len(rows) % process_count:
    raise ValueError(f'The batch of {len(rows)} does not divide over {process_count} '
                     'processes; use a batch size that is a multiple of the process count.')
  share = len(rows) // process_count
  return rows[process_index * share:(process_index + 1) * share]


@dataclasses.dataclass(frozen=True)
class Batch:
  """This process's share of a global batch, and the global batch's token counts.

  ``order`` is set for packed batches (:mod:`rose_jax.glue.packing`): the
  ``j``-th example of the global packed order is the batch's ``order[j]``.
  """
  arrays: dict[str, np.ndarray]
  real_tokens: int
  padded_tokens: int
  order: np.ndarray | None = None


# layout(data, global batch rows, process_index, process_count) -> Batch
Layout = Callable[[Encoded, np.ndarray, int, int], Batch]


def train_batches(data: Encoded, batch_size: int, data_seed: int, epoch: int, *,
                  buckets: Sequence[int], group_by_length: bool = False, start: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  layout: Layout | None = None) -> Iterator[Batch]:
  """The epoch's batches from batch ``start`` on, each padded to its bucket,
  or laid out by ``layout`` (packed rows: :func:`rose_jax.glue.packing.layout`);
  the same examples either way.

  Each process gathers only its own rows of every global batch.
  """
  lengths = data.lengths
  plan = epoch_batches(lengths, batch_size, data_seed, epoch, group_by_length=group_by_length)
  for rows in plan[start:]:
    if layout is not None:
      yield layout(data, rows, process_index, process_count)
      continue
    length = bucket_of(lengths[rows].max(), buckets)
    yield Batch(data.take(process_rows(rows, process_index, process_count), length),
                int(lengths[rows].sum()), len(rows) * length)


def eval_rows(examples: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """In-order global batches of ``batch_size`` example indices (the last filled
  up with copies of the last example), each with its count of real ones."""
  for start in range(0, examples, batch_size):
    yield (np.minimum(np.arange(start, start + batch_size), examples - 1),
           min(batch_size, examples - start))


def eval_batches(data: Encoded, batch_size: int, *, buckets: Sequence[int],
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """In-order global batches of ``batch_size`` rows (the last filled up with
  copies of the last row), each padded to its bucket: this process's share,
  and the count of real rows in the global batch."""
  for rows, real in eval_rows(len(data), batch_size):
    length = bucket_of(data.lengths[rows].max(), buckets)
    yield data.take(process_rows(rows, process_index, process_count), length), real


def pad_to(arrays: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """A padded batch padded further, on the right, to ``length`` tokens (so that
  batches of several buckets stack)."""
  out = {}
  for key, value in arrays.items():
    extra = length - value.shape[-1] if key != 'labels' else 0
    if extra < 0:
      raise ValueError(f'{key} holds {value.shape[-1]} tokens, more than {length}.')
    out[key] = np.pad(value, ((0, 0), (0, extra)),
                      constant_values=pad_id if key == 'input_ids' else 0) if extra else value
  return out
