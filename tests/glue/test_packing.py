"""The packer: every example of a batch once, whole, in rows that do not
overflow, with a bounded number of row counts."""

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.glue import batching, packing


def _encoded(lengths, seed=0, pad=1):
  rng = np.random.default_rng(seed)
  lengths = np.asarray(lengths)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  total = int(offsets[-1])
  tokens = {'input_ids': rng.integers(3, 99, total).astype(np.int32),
            'attention_mask': np.ones(total, np.int32),
            'token_type_ids': rng.integers(0, 2, total).astype(np.int32)}
  return batching.Encoded(tokens, offsets, rng.integers(0, 2, len(lengths)), pad)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 16), min_size=1, max_size=40),
                  row_multiple=st.sampled_from([1, 2, 4]), seed=st.integers(0, 9))
def test_every_example_once_whole_and_in_bounds(lengths, row_multiple, seed):
  data = _encoded(lengths, seed)
  examples = np.random.default_rng(seed).permutation(len(lengths))[:max(1, len(lengths) - 3)]
  packed = packing.pack(data, examples, 16, row_multiple=row_multiple)
  arrays = packed.arrays
  assert 'attention_mask' not in arrays
  assert sorted(packed.order) == list(range(len(examples)))
  assert packed.rows % row_multiple == 0
  assert packed.rows <= packing.row_count(len(examples), row_multiple)
  np.testing.assert_array_equal(arrays['labels'], data.labels[examples[packed.order]])
  # Walk the rows: segments contiguous and numbered 1, 2, ...; each one's
  # tokens are its example's, in packed order.
  j = 0
  for r in range(packed.rows):
    segment_ids = arrays['segment_ids'][r]
    real = segment_ids != 0
    assert not np.any(real[np.argmin(real):]) or real.all(), 'padding inside a row'
    for s in range(1, segment_ids.max() + 1):
      where = np.flatnonzero(segment_ids == s)
      assert len(where) and np.all(np.diff(where) == 1)
      row = examples[packed.order[j]]
      start, stop = data.offsets[row], data.offsets[row + 1]
      for key in ('input_ids', 'token_type_ids'):
        np.testing.assert_array_equal(arrays[key][r, where], data.tokens[key][start:stop])
      j += 1
    assert np.all(arrays['input_ids'][r, ~real] == data.pad_id)
  assert j == len(examples)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 16), min_size=1, max_size=40))
def test_first_fit_decreasing_never_opens_a_row_it_does_not_need(lengths):
  rows = packing.first_fit_decreasing(lengths, 16)
  used = [sum(lengths[i] for i in row) for row in rows]
  assert max(used) <= 16
  # A new row opens only for an example that fits no earlier row, so no two
  # rows could be merged into one.
  assert all(a + b > 16 for i, a in enumerate(used) for b in used[i + 1:])
  assert len(rows) <= -(-2 * sum(lengths) // 16)  # FFD uses under twice the minimum


def test_an_example_longer_than_a_row_is_refused():
  with pytest.raises(ValueError, match='1 to 8 tokens'):
    packing.first_fit_decreasing([3, 9], 8)


def test_a_row_count_too_small_for_the_examples_is_refused():
  data = _encoded([8, 8, 8])
  with pytest.raises(ValueError, match='3 examples need 3 rows, more than 2'):
    packing.pack(data, np.arange(3), 8, rows=2)
