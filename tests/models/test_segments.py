"""Packed rows: each example's logits and the batch's gradients are those of
the examples unpacked, for BERT's and RoBERTa's position rules, and against
transformers' PyTorch models on the examples alone."""

import copy
import functools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.models import as_apply_fn, load_pretrained, segments
from rose_jax.training import methods
from rose_jax.training import step as step_lib
from tests.helpers import (
  pack_by_hand,
  packed_and_unpacked,
  random_examples,
  recording_optimizer,
  rows_in_order,
  tiny_model,
)
from tests.helpers.parity import assert_float32_parity

PAD = 1  # tiny_model's pad id


def test_segment_geometry_by_hand():
  segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  ids = jnp.asarray([[5, 6, 7, 8, PAD, PAD], [5, 6, 7, 8, 9, 9]])
  np.testing.assert_array_equal(segments.bert_positions(segment_ids),
                                [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(segments.roberta_positions(ids, segment_ids, PAD),
                                [[2, 3, 4, 2, 1, 1], [2, 3, 4, 5, 6, 7]])
  np.testing.assert_array_equal(segments.first_tokens(segment_ids, 3), [0, 3, 6])
  mask = np.asarray(segments.attention_mask(segment_ids))
  assert mask[0, 3].tolist() == [False, False, False, True, True, False]
  assert not mask[0, :, 5].any()


@functools.cache
def _setup(model_type):
  """A tiny encoder without dropout, its apply_fn jitted on packed rows, its params."""
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0, model_type=model_type))
  forward = jax.jit(lambda p, b, n: apply_fn(p, {**b, 'labels': jnp.zeros(n)}, dropout_key=None),
                    static_argnums=2)
  alone = jax.jit(lambda p, ids: apply_fn(p, {'input_ids': ids}, dropout_key=None)[0])
  return forward, alone, params


@pytest.mark.parametrize('model_type', ['roberta', 'bert'])
@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(lengths=st.lists(st.integers(1, 8), min_size=6, max_size=6),
                  seed=st.integers(0, 99))
def test_each_packed_example_has_its_logits_alone(model_type, lengths, seed):
  # Six examples in seven rows of 10, whatever the lengths: one compiled shape.
  forward, alone, params = _setup(model_type)
  examples = random_examples(np.random.default_rng(seed), lengths)
  rows = rows_in_order(lengths, 10, count=7)
  got = np.asarray(forward(params, pack_by_hand(examples, rows, 10, type_of=lambda s: 0), 6))
  for j, m in enumerate(m for members in rows for m in members):
    np.testing.assert_allclose(got[j], alone(params, examples[m][None]), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('model_type', ['roberta', 'bert'])
def test_the_step_on_packed_rows_gives_the_unpacked_gradients(model_type):
  packed, unpacked = packed_and_unpacked(3)
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0, model_type=model_type))
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rdrop-rose-ensemble'),
                                  donate=False)
  with pytest.warns(step_lib.NoDropoutWarning):
    (_, a, ma), (_, b, mb) = (step(params, tx.init(params), x, jax.random.key(0))
                              for x in (packed, unpacked))
  chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-5)
  for name in ('loss', 'ce', 'kl', 'accuracy'):
    np.testing.assert_allclose(ma[name], mb[name], atol=1e-6, rtol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(a.grads)) > 1e-3


@pytest.mark.parametrize('kind', ['roberta', 'bert'])
def test_packed_logits_match_transformers_on_each_example_alone(tmp_path, kind):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  small = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=20, max_position_embeddings=24, num_labels=3)
  if kind == 'roberta':
    reference = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**small, type_vocab_size=1, pad_token_id=PAD))
  else:
    reference = transformers.BertForSequenceClassification(
        transformers.BertConfig(**small, type_vocab_size=2, pad_token_id=PAD))
  reference.eval().save_pretrained(tmp_path)
  apply_fn, params = as_apply_fn(load_pretrained(tmp_path))
  lengths = [6, 2, 9, 4, 3, 5]
  examples = random_examples(np.random.default_rng(1), lengths)
  rows = rows_in_order(lengths, 12)
  type_of = (lambda s: 0) if kind == 'roberta' else (lambda s: s % 2)
  packed = {**pack_by_hand(examples, rows, 12, type_of), 'labels': np.zeros(6, np.int32)}
  got = np.asarray(apply_fn(params, packed, dropout_key=None))
  exact = copy.deepcopy(reference).double()
  for j, (r, members) in enumerate((r, m) for r, ms in enumerate(rows) for m in ms):
    m, segment = members, rows[r].index(members) + 1
    types = torch.full((1, lengths[m]), type_of(segment))
    with torch.no_grad():
      want32, want64 = (model(input_ids=torch.tensor(examples[m][None].astype(np.int64)),
                              token_type_ids=types).logits.numpy()[0]
                        for model in (reference, exact))
    assert_float32_parity(got[j], want32, want64, layers=1)
