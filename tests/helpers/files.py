"""Tiny checkpoints and GLUE-shaped files that tests write for themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from rose_jax.models import (
  DebertaV2Config,
  DebertaV2ForSequenceClassification,
  EncoderConfig,
  EncoderForSequenceClassification,
  ModernBertConfig,
  ModernBertForSequenceClassification,
  save_pretrained,
)

WORDS = (
    'good', 'great', 'fine', 'bad', 'awful', 'poor', 'movie', 'film', 'plot', 'story',
    'acting', 'the', 'a', 'is', 'was', 'very', 'not', 'really', 'quite', 'what', 'who', 'why',
    'does', 'did', 'it', 'this', 'that', 'question', 'answer',
)
SPECIAL = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']


def tiny_checkpoint(directory: Path, *, layers: int = 1, hidden: int = 16,
                    num_labels: int = 2, seed: int = 0, family: str = 'bert') -> Path:
  """A random tiny BERT (or ModernBERT: ``layers`` of each attention kind,
  global first, a local window of 2 either side; or DeBERTa-v3: distances
  beyond 4 in log buckets) with a word-level vocabulary, in Hugging Face
  layout."""
  from transformers import BertTokenizer
  directory.mkdir(parents=True, exist_ok=True)
  vocab = SPECIAL + list(WORDS)
  (directory / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
  tokenizer.save_pretrained(str(directory))
  if family == 'modernbert':
    config = ModernBertConfig(vocab_size=len(vocab), hidden_size=hidden,
                              intermediate_size=2 * hidden, num_hidden_layers=2 * layers,
                              num_attention_heads=2, max_position_embeddings=64,
                              layer_types=('full_attention', 'sliding_attention') * layers,
                              local_attention=4, pad_token_id=0, cls_token_id=2,
                              sep_token_id=3, bos_token_id=2, eos_token_id=3,
                              num_labels=num_labels)
    save_pretrained(ModernBertForSequenceClassification(config, rngs=nnx.Rngs(seed)), directory)
    return directory
  if family == 'deberta-v2':
    config = DebertaV2Config(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=2, intermediate_size=2 * hidden,
                             max_position_embeddings=64, position_buckets=8, pad_token_id=0,
                             num_labels=num_labels)
    save_pretrained(DebertaV2ForSequenceClassification(config, rngs=nnx.Rngs(seed)), directory)
    return directory
  config = EncoderConfig(model_type='bert', vocab_size=len(vocab), hidden_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=64,
                         type_vocab_size=2, pad_token_id=0, num_labels=num_labels)
  save_pretrained(EncoderForSequenceClassification(config, rngs=nnx.Rngs(seed)), directory)
  return directory


def _sentence(rng, n=6):
  return ' '.join(rng.choice(WORDS, size=n))


def write_sst2(directory: Path, *, train: int = 48, dev: int = 20, seed: int = 0) -> dict:
  """GLUE-release SST-2 TSVs and an AdvGLUE-shaped dev.json."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for name, n in (('train', train), ('dev', dev)):
    rows = ['sentence\tlabel'] + [f'{_sentence(rng)} \t{rng.integers(0, 2)}' for _ in range(n)]
    (directory / f'{name}.tsv').write_text('\n'.join(rows) + '\n')
  adv = {'sst2': [{'idx': i, 'sentence': _sentence(rng), 'label': int(rng.integers(0, 2))}
                  for i in range(12)],
         'rte': [{'idx': 0, 'sentence1': 'a', 'sentence2': 'b', 'label': 0}]}
  (directory / 'adv_dev.json').write_text(json.dumps(adv))
  return {'train_file': str(directory / 'train.tsv'), 'dev_file': str(directory / 'dev.tsv'),
          'adv_file': str(directory / 'adv_dev.json')}


# Each GLUE task's release TSV: its header (None: CoLA's has none) and a row
# from a text pair and a label as the release writes it.
GLUE_RELEASE = {
    'cola': (None, lambda a, b, y: f'gj04\t{y}\t\t{a}'),
    'sst2': ('sentence\tlabel', lambda a, b, y: f'{a} \t{y}'),
    'mrpc': ('Quality\t#1 ID\t#2 ID\t#1 String\t#2 String',
             lambda a, b, y: f'{y}\t1\t2\t{a}\t{b}'),
    'stsb': ('index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t'
             'sentence2\tscore', lambda a, b, y: f'0\tmain\tx\t2012\t1\tnone\tnone\t{a}\t{b}\t'
             f'{y:.3f}'),
    'qqp': ('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate',
            lambda a, b, y: f'1\t2\t3\t{a}\t{b}\t{y}'),
    'mnli': ('index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t'
             'sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label',
             lambda a, b, y: f'0\t1\t1n\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{a}\t{b}\t'
             f'{y}\t{y}'),
    'qnli': ('index\tquestion\tsentence\tlabel', lambda a, b, y: f'0\t{a}\t{b}\t{y}'),
    'rte': ('index\tsentence1\tsentence2\tlabel', lambda a, b, y: f'0\t{a}\t{b}\t{y}'),
    'wnli': ('index\tsentence1\tsentence2\tlabel', lambda a, b, y: f'0\t{a}\t{b}\t{y}'),
}


def write_glue_task(directory: Path, task: str, *, train: int = 16, dev: int = 12,
                    seed: int = 0) -> dict:
  """``train.tsv`` and ``dev.tsv`` of a GLUE task in its release layout:
  labels as the release writes them (names for MNLI and RTE, indices or
  0-5 scores elsewhere); returns the files and the labels as indices or
  numbers."""
  from rose_jax.glue.tasks import get_task
  spec, row = GLUE_RELEASE[task]
  names = get_task(task).label_names
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  out, labels = {}, {}
  for name, n in (('train', train), ('dev', dev)):
    if names is None:
      values = np.round(rng.uniform(0, 5, n), 3)
      written = values
    else:
      values = np.arange(n) % len(names)  # every class, so that metrics are defined
      written = [names[v] for v in values] if task in ('mnli', 'rte', 'qnli') else values
    lines = ([spec] if spec else []) + [row(_sentence(rng), _sentence(rng), y) for y in written]
    (directory / f'{name}.tsv').write_text('\n'.join(lines) + '\n')
    out[f'{name}_file'], labels[name] = str(directory / f'{name}.tsv'), values
  return {**out, 'labels': labels}


def run_files(root: Path) -> dict:
  """A tiny checkpoint and SST-2-shaped files for fine-tuning runs."""
  return {'model': str(tiny_checkpoint(root / 'model')), **write_sst2(root / 'data'),
          'root': root}


def run_settings(files: dict, out: Path, **overrides) -> dict:
  """TrainConfig settings for a small, fast run on ``run_files``."""
  return {'task': 'sst2', 'method': 'rose-ensemble', 'model': files['model'],
          'train_file': files['train_file'], 'dev_file': files['dev_file'],
          'adv_file': files['adv_file'], 'output_dir': str(out), 'epochs': 1, 'batch_size': 8,
          'max_length': 12, 'log_every': 2, 'progress': False, 'parallel': 'none', **overrides}
