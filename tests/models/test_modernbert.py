"""ModernBERT against transformers' PyTorch model: hidden states and logits with
padding and both attention kinds, packed rows against each example alone, a
saved model loaded back by transformers, and what the authors' rule ranks."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax import selection
from rose_jax.models import (
    CheckpointError,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    as_apply_fn,
    load_pretrained,
    save_pretrained,
)
from tests.helpers import packed_and_unpacked
from tests.helpers.parity import assert_float32_parity, per_example

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

PAD = 1


def _reference(tmp_path, **overrides):
  """A random transformers ModernBERT saved to ``tmp_path``: 4 layers, the
  first and last global, the others local with a window of 2 either side."""
  torch.manual_seed(0)
  settings = dict(vocab_size=60, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
                  num_attention_heads=4, max_position_embeddings=64,
                  global_attn_every_n_layers=3, local_attention=4, pad_token_id=PAD,
                  bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, num_labels=3,
                  global_rope_theta=160000.0, local_rope_theta=10000.0,
                  attn_implementation='eager',
                  # Large weights: at the usual 0.02 attention is uniform and blind to positions.
                  initializer_range=0.5, **overrides)
  reference = transformers.ModernBertForSequenceClassification(
      transformers.ModernBertConfig(**settings)).eval()
  reference.save_pretrained(tmp_path)
  return reference


def _inputs(rng, batch=4, length=14):
  ids = rng.integers(4, 60, size=(batch, length))
  mask = np.ones_like(ids)
  for row, n in enumerate((length, 9, 3, 6)[:batch]):
    ids[row, n:], mask[row, n:] = PAD, 0
  return ids, mask


def _torch(reference, ids, mask):
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    hidden = reference.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  return out.logits.numpy(), hidden.last_hidden_state.numpy()


def _references(reference, ids, mask):
  """transformers' logits and hidden states in float32 on the padded batch,
  and in float64 on each example alone (its float64 eager attention turns
  padding rows into NaN, which then reach the real tokens through the values)."""
  exact = copy.deepcopy(reference).double()
  return _torch(reference, ids, mask), per_example(lambda *a: _torch(exact, *a), ids, mask)


@pytest.mark.parametrize('pooling, biases', [('cls', False), ('mean', True)])
def test_hidden_states_and_logits_match_transformers(tmp_path, pooling, biases):
  reference = _reference(tmp_path, classifier_pooling=pooling, norm_bias=biases,
                         attention_bias=biases, mlp_bias=biases, classifier_bias=biases)
  assert reference.config.layer_types == ['full_attention', 'sliding_attention',
                                          'sliding_attention', 'full_attention']
  ours = load_pretrained(tmp_path)
  assert isinstance(ours, ModernBertForSequenceClassification)
  assert ours.config.layer_types == tuple(reference.config.layer_types)
  ids, mask = _inputs(np.random.default_rng(0))
  (logits32, hidden32), (logits64, hidden64) = _references(reference, ids, mask)
  hidden = ours.hidden_states(jnp.asarray(ids), jnp.asarray(mask))
  # Padding positions differ only in what they attend to; real tokens agree.
  assert_float32_parity(hidden, hidden32, hidden64, layers=4, where=mask[..., None] == 1)
  assert_float32_parity(ours(jnp.asarray(ids), jnp.asarray(mask)), logits32, logits64, layers=4)
  # The sliding window matters here: with it widened, the logits move.
  wide = transformers.ModernBertForSequenceClassification.from_pretrained(
      tmp_path, local_attention=64, attn_implementation='eager').eval()
  assert np.abs(_torch(wide, ids, mask)[0] - logits32).max() > 1e-3


def test_a_saved_model_loads_back_into_transformers(tmp_path):
  _reference(tmp_path / 'reference')
  ours = load_pretrained(tmp_path / 'reference')
  save_pretrained(ours, tmp_path / 'saved')
  config = json.loads((tmp_path / 'saved' / 'config.json').read_text())
  assert config['architectures'] == ['ModernBertForSequenceClassification']
  back = transformers.ModernBertForSequenceClassification.from_pretrained(
      tmp_path / 'saved', attn_implementation='eager').eval()
  ids, mask = _inputs(np.random.default_rng(1))
  (logits32, _), (logits64, _) = _references(back, ids, mask)
  assert_float32_parity(ours(jnp.asarray(ids), jnp.asarray(mask)), logits32, logits64, layers=4)
  again = load_pretrained(tmp_path / 'saved')
  assert again.config == ours.config


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_packed_rows_give_each_example_its_logits_alone(tmp_path, pooling):
  reference = _reference(tmp_path, classifier_pooling=pooling)
  model = load_pretrained(tmp_path)
  # Rows of 10 tokens: a local layer's window (2 either side) crosses from
  # one example into the next unless the segments stop it.
  packed, unpacked = packed_and_unpacked(2, row_length=10, pad=PAD)
  (logits32, _), (logits64, _) = _references(reference, unpacked['input_ids'],
                                             unpacked['attention_mask'])
  apply_fn, params = as_apply_fn(model)
  # The examples fill the rows in their own order, so the logits line up.
  for batch in (packed, unpacked):
    assert_float32_parity(apply_fn(params, batch), logits32, logits64, layers=4)


def test_the_authors_rule_ranks_every_layers_weights_and_norms(tmp_path):
  _reference(tmp_path)
  _, params = as_apply_fn(load_pretrained(tmp_path))
  ranked = {selection.hf_name(path) for path, keep in
            jax.tree.flatten_with_path(selection.authors_selectable(params))[0] if keep}
  per_layer = {'attn.Wqkv.weight', 'attn.Wo.weight', 'mlp_norm.weight', 'mlp.Wi.weight',
               'mlp.Wo.weight'}
  expected = {f'model.layers.{i}.{name}' for i in range(4) for name in per_layer}
  expected |= {f'model.layers.{i}.attn_norm.weight' for i in range(1, 4)}
  assert ranked == expected
  decayed = {selection.hf_name(path) for path, decay in
             jax.tree.flatten_with_path(selection.authors_decay_mask(params))[0] if decay}
  assert not any('norm' in name for name in decayed)  # no decay on any norm, as HF's Trainer
  assert 'model.layers.1.attn.Wqkv.weight' in decayed


def test_bad_checkpoints_and_lengths_are_named(tmp_path):
  _reference(tmp_path / 'ok')
  model = load_pretrained(tmp_path / 'ok')
  with pytest.raises(ValueError, match=r'exceed the model.s position table \(64 tokens\)'):
    model(jnp.ones((1, 65), jnp.int32))
  config = json.loads((tmp_path / 'ok' / 'config.json').read_text())
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'config.json').write_text(json.dumps({**config, 'model_type': 'gpt2'}))
  with pytest.raises(CheckpointError, match=r"'gpt2' checkpoint .*families roberta, bert, "
                                            r'modernbert'):
    load_pretrained(tmp_path / 'other')
  with pytest.raises(ValueError, match='layer_types must name'):
    ModernBertConfig.from_hf({**config, 'layer_types': ['full_attention']})
