"""The packer: every example of a batch once, whole, in rows that do not
overflow, with a bounded number of row counts."""

import chex
import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.glue import batching, packing
from rose_jax.models import as_apply_fn
from rose_jax.training import methods
from rose_jax.training import step as step_lib
from tests.helpers import recording_optimizer, tiny_model


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


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 12), min_size=16, max_size=40),
                  group=st.booleans(), devices=st.sampled_from([1, 2, 4]), seed=st.integers(0, 9))
def test_packed_steps_hold_the_examples_of_the_unpacked_steps(lengths, group, devices, seed):
  # The first token of every example is its own index (+3), so a packed
  # batch's examples can be read back from its rows.
  data = _encoded(lengths, seed)
  data.tokens['input_ids'][data.offsets[:-1]] = np.arange(len(lengths)) + 3
  common = dict(buckets=(12,), group_by_length=group)
  plain = batching.train_batches(data, 8, seed, 1, **common)
  packed = batching.train_batches(data, 8, seed, 1, layout=packing.layout(
      packing.Packing(12, devices=devices)), **common)
  for a, b in zip(plain, packed, strict=True):
    want = a.arrays['input_ids'][:, 0] - 3
    firsts = _firsts(b.arrays)
    assert len(firsts) == 8
    # Devices in order, each device's share of the batch's examples.
    for d in range(devices):
      share = slice(d * 8 // devices, (d + 1) * 8 // devices)
      assert sorted(firsts[share]) == sorted(want[share])
    np.testing.assert_array_equal(np.asarray(firsts)[np.argsort(b.order)], want)
    assert b.real_tokens == a.real_tokens
    assert b.arrays['segment_ids'].shape[0] % (2 * devices) == 0


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 12), min_size=16, max_size=40),
                  devices=st.sampled_from([1, 2, 4]), fraction=st.sampled_from([0.25, 0.5, 1.0]),
                  seed=st.integers(0, 9))
def test_a_sub_batch_packs_the_first_of_each_devices_share_on_its_own(lengths, devices,
                                                                      fraction, seed):
  hypothesis.assume(fraction * 8 // devices >= 1)
  data = _encoded(lengths, seed)
  data.tokens['input_ids'][data.offsets[:-1]] = np.arange(len(lengths)) + 3
  plain = batching.train_batches(data, 8, seed, 1, buckets=(12,))
  split = batching.train_batches(data, 8, seed, 1, buckets=(12,), layout=packing.layout(
      packing.Packing(12, devices=devices, kl_fraction=fraction)))
  share, take = 8 // devices, int(fraction * 8 // devices)
  for a, b in zip(plain, split, strict=True):
    want = a.arrays['input_ids'][:, 0] - 3
    drawn, rest = _firsts(b.arrays.kl), _firsts(b.arrays.rest)
    for d in range(devices):  # each device's rows hold its own drawn examples
      mine = want[d * share:(d + 1) * share]
      assert sorted(drawn[d * take:(d + 1) * take]) == sorted(mine[:take])
      assert sorted(rest[d * (share - take):(d + 1) * (share - take)]) == sorted(mine[take:])
    for part in b.arrays:
      assert part['segment_ids'].shape[0] % (2 * devices) == 0
      np.testing.assert_array_equal(part['labels'], data.labels[_firsts(part)])
    assert b.real_tokens == a.real_tokens


def _firsts(arrays):
  """The example index at each segment's first token, in packed order."""
  ids, segment_ids = arrays['input_ids'], arrays['segment_ids']
  starts = np.ones_like(segment_ids, bool)
  starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
  return list(ids[starts & (segment_ids != 0)] - 3)


@pytest.mark.filterwarnings('ignore::rose_jax.training.NoDropoutWarning')  # dropout 0 on purpose
def test_eight_devices_on_packed_shares_equal_one_device_on_the_whole_batch():
  # Each device packs its own 2 of the 16 examples; one device packs all 16.
  lengths = np.random.default_rng(5).integers(1, 9, size=16)
  data = _encoded(lengths, seed=5)
  data.tokens['input_ids'][:] %= 50  # tiny_model's vocabulary
  data.tokens['token_type_ids'][:] = 0
  rows = np.random.default_rng(6).permutation(16)
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  method = methods.get_method('rdrop-rose-ensemble')
  tx = recording_optimizer()
  mesh = step_lib.data_mesh()
  got = {}
  for parallel, devices in (('none', 1), ('shard_map', 8), ('pmap', 8)):
    batch = packing.packed_batch(data, rows, packing.Packing(12, devices=devices)).arrays
    state = tx.init(params)
    step = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False)
    if parallel == 'shard_map':
      got[parallel] = step(params, state, step_lib.shard_batch(batch, mesh), jax.random.key(0))
    elif parallel == 'pmap':
      got[parallel] = step_lib.unreplicate(step(
          step_lib.replicate(params), step_lib.replicate(state), step_lib.split_for_pmap(batch),
          jax.random.key(0)))
    else:
      got[parallel] = step(params, state, batch, jax.random.key(0))
  _, one, one_metrics = got['none']
  for parallel in ('shard_map', 'pmap'):
    _, eight, eight_metrics = got[parallel]
    chex.assert_trees_all_close(eight.grads, one.grads, atol=1e-6, rtol=1e-5)
    for name in ('loss', 'ce', 'accuracy'):
      np.testing.assert_allclose(eight_metrics[name], one_metrics[name], rtol=1e-5)
