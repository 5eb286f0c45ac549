"""rose_jax.glue.evaluation on its own: every example's prediction is the
argmax of its logits alone, whatever the batching, padding or sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax.glue import batching
from rose_jax.glue.evaluation import Evaluator
from rose_jax.models import as_apply_fn
from tests.helpers import tiny_model


def _encoded(n: int, seed: int = 0) -> batching.Encoded:
  """``n`` examples of 2 to 11 tokens for the tiny encoder (ids 3..49, padding 1)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 12, n)
  ids = rng.integers(3, 50, int(lengths.sum())).astype(np.int32)
  return batching.Encoded(
      tokens={'input_ids': ids, 'attention_mask': np.ones_like(ids)},
      offsets=np.concatenate([[0], np.cumsum(lengths)]),
      labels=rng.integers(0, 2, n).astype(np.int32), pad_id=1)


@pytest.fixture(scope='module')
def model():
  return as_apply_fn(tiny_model(dropout=0.1, seed=3))


def _alone(apply_fn, params, data: batching.Encoded) -> np.ndarray:
  """Each example's prediction from its own unpadded tokens, dropout off."""
  predict = jax.jit(lambda ids: apply_fn(
      params, {'input_ids': ids, 'attention_mask': jnp.ones_like(ids)},
      dropout_key=None).argmax(-1))
  return np.array([int(predict(data.take(np.array([i]), int(data.lengths[i]))['input_ids'])[0])
                   for i in range(len(data))])


@pytest.mark.parametrize('batch_size, buckets, sharded, row_length', [
    (4, None, False, None),        # each batch padded to its longest example; the last one short
    (6, (8, 12), False, None),     # padded to buckets
    (5, (12,), True, None),        # over 8 devices: 5 rounds up to 8 rows a batch
    (6, None, False, 12),          # packed into rows of 12
    (16, None, True, 12),          # packed, each device's 2 examples on their own
])
def test_predictions_are_each_examples_own(model, batch_size, buckets, sharded, row_length):
  apply_fn, params = model
  data = _encoded(21)
  assert data.lengths.max() <= 12
  expected = _alone(apply_fn, params, data)
  assert 0 < expected.sum() < len(expected), 'a constant model would prove nothing'
  evaluator = Evaluator(apply_fn, batch_size, sharded=sharded, buckets=buckets,
                        row_length=row_length)
  assert evaluator.batch_size == (-(-batch_size // 8) * 8 if sharded else batch_size)
  predictions = evaluator(evaluator.place_params(params), data)
  np.testing.assert_array_equal(predictions, expected)
