"""Length buckets and grouping: the same examples, in the same batches, with less padding."""

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax._src import losses
from rose_jax.glue import batching, loop
from rose_jax.glue.config import ConfigError, TrainConfig
from rose_jax.glue.data import Split
from rose_jax.models import as_apply_fn, load_pretrained, load_tokenizer
from rose_jax.training import step as step_lib
from tests import helpers


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp('batching')
  model_dir = helpers.tiny_checkpoint(root / 'model')
  model = load_pretrained(model_dir)
  return {'dir': str(model_dir), 'model': model, 'tokenizer': load_tokenizer(model_dir),
          **helpers.write_sst2(root / 'data', train=48)}


def _split(n: int, seed: int = 0) -> Split:
  rng = np.random.default_rng(seed)
  # Mostly short sentences and a few long ones, as in SST-2.
  sizes = rng.choice([1, 2, 3, 4, 5, 19], size=n, p=[0.2, 0.2, 0.2, 0.15, 0.15, 0.1])
  texts = [(' '.join(rng.choice(helpers.WORDS, size=size)),) for size in sizes]
  return Split(texts, rng.integers(0, 2, size=n).astype(np.int32))


def test_tokenize_keeps_each_example_and_counts_truncation(tiny):
  split = _split(40)
  encoded = batching.tokenize(tiny['tokenizer'], split, max_length=12)
  fixed = tiny['tokenizer'](*zip(*split.texts, strict=True), truncation=True, max_length=12,
                            padding='max_length', return_tensors='np')
  full = [len(x) for x in tiny['tokenizer'](*zip(*split.texts, strict=True))['input_ids']]
  assert encoded.truncated == sum(n > 12 for n in full) > 0
  np.testing.assert_array_equal(encoded.lengths, fixed['attention_mask'].sum(1))
  batch = encoded.take(np.arange(40), 12)
  for key in ('input_ids', 'attention_mask', 'token_type_ids'):
    np.testing.assert_array_equal(batch[key], fixed[key])


def test_bucketed_batches_are_the_fixed_batches_with_less_padding(tiny):
  encoded = batching.tokenize(tiny['tokenizer'], _split(64, seed=1), max_length=24)
  buckets = batching.check_buckets([8, 16], 24)
  fixed = list(batching.train_batches(encoded, 8, 5, 0, buckets=(24,)))
  bucketed = list(batching.train_batches(encoded, 8, 5, 0, buckets=buckets))
  assert len(fixed) == len(bucketed) == 8
  apply_fn, params = as_apply_fn(tiny['model'])
  for f, b in zip(fixed, bucketed, strict=True):
    width = b.arrays['input_ids'].shape[1]
    assert width in buckets and width >= b.arrays['attention_mask'].sum(1).max()
    assert width < 24 or f.arrays['attention_mask'].sum(1).max() > 16
    np.testing.assert_array_equal(b.arrays['labels'], f.arrays['labels'])
    for key in ('input_ids', 'attention_mask', 'token_type_ids'):
      np.testing.assert_array_equal(b.arrays[key], f.arrays[key][:, :width])
      assert not f.arrays['attention_mask'][:, width:].any()
    assert b.real_tokens == f.real_tokens and b.padded_tokens == 8 * width
    # Dropout off: the same losses to float tolerance.
    ce = [float(losses.cross_entropy(apply_fn(params, x.arrays, dropout_key=None),
                                     x.arrays['labels'])) for x in (f, b)]
    np.testing.assert_allclose(ce[1], ce[0], rtol=1e-5)
  assert sum(b.padded_tokens for b in bucketed) < sum(f.padded_tokens for f in fixed)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.integers(1, 300), st.integers(1, 20), st.integers(0, 2**16),
                  st.integers(0, 3))
def test_grouping_keeps_every_example_once_and_sorts_within_chunks(n, batch_size, seed, epoch):
  lengths = np.random.default_rng(seed).integers(1, 64, size=n)
  plain = batching.epoch_batches(lengths, batch_size, seed, epoch)
  grouped = batching.epoch_batches(lengths, batch_size, seed, epoch, group_by_length=True)
  assert grouped.shape == plain.shape == (n // batch_size, batch_size)
  # The same examples are kept (the rows of the last partial batch are dropped
  # as without grouping), each exactly once.
  assert sorted(grouped.ravel()) == sorted(plain.ravel())
  assert len(set(grouped.ravel())) == grouped.size
  # Within a chunk of batches, lengths do not increase from batch to batch.
  chunk = batching.GROUP_BATCHES
  for start in range(0, len(plain), chunk):
    rows = batching.epoch_order(n, seed, epoch)[start * batch_size:
                                                (start + chunk) * batch_size]
    rows = rows[:len(plain[start:start + chunk].ravel())]
    in_chunk = [b for b in grouped if set(b) <= set(rows)]
    assert sum(len(b) for b in in_chunk) == len(rows)
    maxima = sorted((lengths[b].max() for b in in_chunk), reverse=True)
    minima = sorted((lengths[b].min() for b in in_chunk), reverse=True)
    assert all(lo >= hi for lo, hi in zip(minima, maxima[1:], strict=False))


def test_grouping_pads_far_less_than_random_batches():
  lengths = np.random.default_rng(0).integers(5, 60, size=3200)
  def efficiency(rows):
    padded = sum(len(r) * batching.bucket_of(lengths[r].max(), (16, 32, 48, 64)) for r in rows)
    return lengths[rows.ravel()].sum() / padded
  plain = batching.epoch_batches(lengths, 32, 1, 0)
  grouped = batching.epoch_batches(lengths, 32, 1, 0, group_by_length=True)
  assert efficiency(grouped) > 0.75 > 0.6 > efficiency(plain)
  # The batch order is shuffled, not longest first.
  first_chunk = [lengths[b].max() for b in grouped if set(b) <= set(plain[:50].ravel())]
  assert first_chunk != sorted(first_chunk, reverse=True)


def test_padding_efficiency_of_a_hand_made_set():
  #   lengths 3, 5, 9, 2 in two batches [3, 5] and [9, 2] (order fixed by hand)
  encoded = batching.Encoded(
      tokens={'input_ids': np.arange(19, dtype=np.int32),
              'attention_mask': np.ones(19, np.int32)},
      offsets=np.array([0, 3, 8, 17, 19]), labels=np.array([0, 1, 0, 1]), pad_id=0)
  buckets = (4, 8, 12)
  sizes = [(batching.bucket_of(max(a, b), buckets), a + b) for a, b in ((3, 5), (9, 2))]
  assert sizes == [(8, 8), (12, 11)]
  # Real tokens 19, computed tokens 2 * 8 + 2 * 12 = 40.
  batches = [next(batching.eval_batches(encoded, 2, buckets=buckets)),
             list(batching.eval_batches(encoded, 2, buckets=buckets))[1]]
  assert [b[0]['input_ids'].shape for b in batches] == [(2, 8), (2, 12)]
  np.testing.assert_array_equal(batches[1][0]['input_ids'][1], [17, 18] + [0] * 10)
  plan = batching.train_batches(encoded, 2, 0, 0, buckets=buckets)
  real = padded = 0
  for batch in plan:
    real, padded = real + batch.real_tokens, padded + batch.padded_tokens
  assert real == 19 and padded in (40, 2 * 8 + 2 * 12, 2 * 12 + 2 * 8)


def test_bad_buckets_fail_before_training():
  with pytest.raises(ConfigError, match=r'--buckets must increase, got \[32, 16\]'):
    TrainConfig(buckets=(32, 16), packing=False).resolved()
  with pytest.raises(ConfigError, match='go past --max-length 64'):
    TrainConfig(buckets=(32, 128), max_length=64, packing=False).resolved()
  with pytest.raises(ConfigError, match='positive'):
    TrainConfig(buckets=(0, 16), max_length=64, packing=False).resolved()
  assert TrainConfig(buckets=(16, 32), max_length=64,
                     packing=False).resolved().buckets == (16, 32, 64)
  assert TrainConfig(max_length=40, packing=False).resolved().buckets == (16, 32, 40)
  # Packed batches have no buckets: given ones would be ignored, so they are refused.
  assert TrainConfig(max_length=40).resolved().buckets is None
  with pytest.raises(ConfigError, match=r'--buckets 16 32 pads unpacked batches.*--no-packing'):
    TrainConfig(buckets=(16, 32), max_length=64).resolved()


@pytest.mark.parametrize('packing', [False, True])
def test_one_compilation_per_shape_and_none_after_the_first_epoch(tiny, tmp_path, monkeypatch,
                                                                   packing):
  # Buckets: one shape per bucket (3). Packed: rows of 24, 8 examples in 2, 4,
  # 6 or 8 rows.
  traced_shapes, compiles, phase = [], [], {'epoch': 0}
  real_local_step, real_batches = step_lib.local_step, batching.train_batches

  def counting_step(params, opt_state, batch, key, **kwargs):
    traced_shapes.append(batch['input_ids'].shape)
    return real_local_step(params, opt_state, batch, key, **kwargs)

  def batches(*args, **kwargs):
    phase['epoch'] = args[3]
    return real_batches(*args, **kwargs)

  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_, **__: compiles.append(phase['epoch'])
      if name == '/jax/core/compile/backend_compile_duration' else None)
  monkeypatch.setattr(step_lib, 'local_step', counting_step)
  monkeypatch.setattr(batching, 'train_batches', batches)
  results = loop.run(TrainConfig(
      task='sst2', method='rose-ensemble', model=tiny['dir'], train_file=tiny['train_file'],
      dev_file=tiny['dev_file'], adv_file=tiny['adv_file'], output_dir=str(tmp_path / 'run'),
      epochs=2, batch_size=8, max_length=24, buckets=None if packing else (4, 8, 12),
      log_every=2, progress=False, parallel='none', packing=packing))
  assert len(traced_shapes) == len(set(traced_shapes)) <= 4
  if packing:
    assert all(rows in (2, 4, 6, 8) and length == 24 for rows, length in traced_shapes)
  else:
    assert all(length in (4, 8, 12, 24) for _, length in traced_shapes)
  assert phase['epoch'] == 1 and compiles and 1 not in compiles
  for record in results['epochs']:
    assert 0 < record['padding_efficiency'] <= 1 and record['tokens_per_second'] > 0
