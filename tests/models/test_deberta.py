"""DeBERTa-v2/v3 against transformers' PyTorch model: hidden states and logits
with padding and token types, relative distances in log buckets, both ways
of projecting positions, packed rows against each example alone, a saved
model loaded back by transformers, and what the authors' rule ranks."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax import selection
from rose_jax.models import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    as_apply_fn,
    load_pretrained,
    save_pretrained,
)
from rose_jax.models.deberta import log_bucket_position
from tests.helpers import packed_and_unpacked
from tests.helpers.parity import assert_float32_parity, per_example

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

PAD = 1
# DeBERTa-v3's settings: shared position projections, no absolute positions,
# no token types; and v2's other choices.
V3 = dict(share_att_key=True, type_vocab_size=0, position_biased_input=False)
V2 = dict(share_att_key=False, type_vocab_size=2, position_biased_input=True)


def _reference(tmp_path, **overrides):
  """A random transformers DeBERTa-v2 saved to ``tmp_path``. Distances beyond 4
  fall in log buckets; large weights make attention see positions."""
  torch.manual_seed(0)
  settings = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64, relative_attention=True,
                  position_buckets=8, norm_rel_ebd='layer_norm', pos_att_type=['p2c', 'c2p'],
                  pad_token_id=PAD, num_labels=3, initializer_range=0.5, **overrides)
  reference = transformers.DebertaV2ForSequenceClassification(
      transformers.DebertaV2Config(**settings)).eval()
  reference.save_pretrained(tmp_path)
  return reference


def _inputs(rng, batch=3, length=14):
  ids = rng.integers(4, 60, size=(batch, length))
  mask = np.ones_like(ids)
  for row, n in enumerate((length, 9, 3)[:batch]):
    ids[row, n:], mask[row, n:] = PAD, 0
  return ids, mask, rng.integers(0, 2, size=ids.shape)


def _torch(reference, ids, mask, types):
  kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  if reference.config.type_vocab_size:
    kwargs['token_type_ids'] = torch.tensor(types)
  with torch.no_grad():
    return (reference(**kwargs).logits.numpy(),
            reference.deberta(**kwargs).last_hidden_state.numpy())


def _references(reference, ids, mask, types):
  """transformers' logits and hidden states in float32 on the padded batch,
  and in float64 on each example alone."""
  want32 = _torch(reference, ids, mask, types)
  exact = copy.deepcopy(reference).double()
  return want32, per_example(lambda *a: _torch(exact, *a), ids, mask, types)


@pytest.mark.parametrize('version', ['v3', 'v2'])
def test_hidden_states_and_logits_match_transformers(tmp_path, version):
  reference = _reference(tmp_path, **(V3 if version == 'v3' else V2))
  ours = load_pretrained(tmp_path)
  assert isinstance(ours, DebertaV2ForSequenceClassification)
  ids, mask, types = _inputs(np.random.default_rng(0))
  (logits32, hidden32), (logits64, hidden64) = _references(reference, ids, mask, types)
  types = jnp.asarray(types) if version == 'v2' else None
  hidden = ours.hidden_states(jnp.asarray(ids), jnp.asarray(mask), types)
  assert_float32_parity(hidden, hidden32, hidden64, layers=2, where=mask[..., None] == 1)
  assert_float32_parity(ours(jnp.asarray(ids), jnp.asarray(mask), types), logits32, logits64,
                        layers=2)


def test_log_buckets_are_transformers(tmp_path):
  from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position
  relative = np.arange(-300, 301)
  for buckets, largest in ((8, 64), (256, 512)):
    want = make_log_bucket_position(torch.tensor(relative), buckets, largest).long().numpy()
    np.testing.assert_array_equal(log_bucket_position(jnp.asarray(relative), buckets, largest),
                                  want)
  assert len(np.unique(want)) < len(relative)  # far distances do share buckets


def test_a_saved_model_loads_back_into_transformers(tmp_path):
  _reference(tmp_path / 'reference', **V3)
  ours = load_pretrained(tmp_path / 'reference')
  save_pretrained(ours, tmp_path / 'saved')
  back = transformers.DebertaV2ForSequenceClassification.from_pretrained(
      tmp_path / 'saved').eval()
  ids, mask, types = _inputs(np.random.default_rng(1))
  (logits32, _), (logits64, _) = _references(back, ids, mask, types)
  assert_float32_parity(ours(jnp.asarray(ids), jnp.asarray(mask)), logits32, logits64, layers=2)
  assert load_pretrained(tmp_path / 'saved').config == ours.config


@pytest.mark.parametrize('version', ['v3', 'v2'])
def test_packed_rows_give_each_example_its_logits_alone(tmp_path, version):
  reference = _reference(tmp_path, **(V3 if version == 'v3' else V2))
  apply_fn, params = as_apply_fn(load_pretrained(tmp_path))
  packed, unpacked = packed_and_unpacked(2, row_length=10, pad=PAD)
  ids, mask = unpacked['input_ids'], unpacked['attention_mask']
  (logits32, _), (logits64, _) = _references(reference, ids, mask, np.zeros_like(ids))
  # The examples fill the rows in their own order, so the logits line up.
  for batch in (packed, unpacked):
    assert_float32_parity(apply_fn(params, batch), logits32, logits64, layers=2)


def test_the_authors_rule_ranks_every_layers_weights_and_layer_norms(tmp_path):
  _reference(tmp_path, **V3)
  _, params = as_apply_fn(load_pretrained(tmp_path))
  ranked = {selection.hf_name(path) for path, keep in
            jax.tree.flatten_with_path(selection.authors_selectable(params))[0] if keep}
  per_layer = {'attention.self.query_proj.weight', 'attention.self.key_proj.weight',
               'attention.self.value_proj.weight', 'attention.output.dense.weight',
               'attention.output.LayerNorm.weight', 'intermediate.dense.weight',
               'output.dense.weight', 'output.LayerNorm.weight'}
  # BERT's eight per layer; the shared relative embeddings and their norm
  # are the encoder's, not a layer's, and are always updated.
  assert ranked == {f'deberta.encoder.layer.{i}.{name}' for i in range(2) for name in per_layer}


def test_settings_we_do_not_implement_are_named():
  base = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, relative_attention=True)
  with pytest.raises(ValueError, match=r"sets \['conv_kernel_size'\], which rose_jax does not"):
    DebertaV2Config.from_hf({**base, 'conv_kernel_size': 3})
  with pytest.raises(ValueError, match=r"\['embedding_size'\]"):
    DebertaV2Config.from_hf({**base, 'embedding_size': 16})
  with pytest.raises(ValueError, match='num_labels must be >= 1, got 0'):
    DebertaV2Config.from_hf({**base, 'num_labels': 0})
  with pytest.raises(ValueError, match=r"Unsupported pooler_hidden_act 'swish'"):
    DebertaV2Config.from_hf({**base, 'pooler_hidden_act': 'swish'})
  assert DebertaV2Config.from_hf({**base, 'pos_att_type': 'p2c|c2p'}).pos_att_type == ('p2c',
                                                                                     'c2p')
