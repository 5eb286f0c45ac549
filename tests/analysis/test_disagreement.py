"""Dropout disagreement: none without dropout, a direct count with it."""

import jax
import numpy as np
import pytest

from rose_jax.analysis import disagreement
from rose_jax.models import as_apply_fn
from tests.helpers import tiny_batch, tiny_model


@pytest.fixture(scope='module')
def tiny():
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.3))
  batches = [(tiny_batch(i, size=16), 16 - 3 * i) for i in range(3)]  # padded rows at the end
  return apply_fn, params, batches


def test_no_dropout_no_disagreement(tiny):
  apply, params, batches = tiny
  assert disagreement.dropout_disagreement(apply, params, batches, None, passes=4) == 0.0


@pytest.mark.parametrize('passes', [2, 3])
def test_disagreement_is_a_direct_count(tiny, passes):
  apply, params, batches = tiny
  key = jax.random.key(7)
  share = disagreement.dropout_disagreement(apply, params, batches, key, passes=passes)
  disagreeing = total = 0
  for index, (batch, real) in enumerate(batches):
    keys = jax.random.split(jax.random.fold_in(key, index), passes)
    labels = [np.argmax(np.asarray(apply(params, batch, dropout_key=k)), -1)[:real] for k in keys]
    disagreeing += sum(len({int(p[i]) for p in labels}) > 1 for i in range(real))
    total += real
  assert share == disagreeing / total
  assert 0 < share < 1, 'dropout 0.3 on a random model should move some predictions'


def test_disagreement_needs_two_passes(tiny):
  apply, params, batches = tiny
  with pytest.raises(ValueError, match='at least 2 passes'):
    disagreement.dropout_disagreement(apply, params, batches, jax.random.key(0), passes=1)
