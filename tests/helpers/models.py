"""A tiny encoder and batches for it, unpacked and packed by hand (independently
of rose_jax.glue.packing), for the step, sweep, model and analysis tests."""

from __future__ import annotations

import numpy as np
from flax import nnx

from rose_jax.models import EncoderConfig, EncoderForSequenceClassification


def tiny_model(dropout: float = 0.1, model_type: str = 'roberta',
               seed: int = 0) -> EncoderForSequenceClassification:
  """A one-layer encoder of width 16 over a 50-token vocabulary (its eight
  ranked tensors are enough to rank; each layer more costs compile time)."""
  config = EncoderConfig(model_type=model_type, vocab_size=50, hidden_size=16,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                         max_position_embeddings=20, type_vocab_size=1, pad_token_id=1,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
  return EncoderForSequenceClassification(config, rngs=nnx.Rngs(seed))


def tiny_batch(seed: int = 0, size: int = 16, length: int = 8) -> dict[str, np.ndarray]:
  """Random token ids for :func:`tiny_model`; the first half of the rows is
  half padding."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, 50, size=(size, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[: size // 2, length // 2:] = 0
  ids[mask == 0] = 1
  return {'input_ids': ids, 'attention_mask': mask,
          'labels': rng.integers(0, 2, size=size).astype(np.int32)}


def random_examples(rng, lengths):
  """Token ids for tiny_model, one array per example."""
  return [rng.integers(3, 50, size=n).astype(np.int32) for n in lengths]


def pack_by_hand(examples, rows_of, row_length, type_of, pad=1):
  """Each row's examples laid side by side, in the order given; segment ``s``
  has token type ``type_of(s)``."""
  ids = np.full((len(rows_of), row_length), pad, np.int32)
  types = np.zeros_like(ids)
  segment_ids = np.zeros_like(ids)
  for r, members in enumerate(rows_of):
    at = 0
    for s, m in enumerate(members, start=1):
      n = len(examples[m])
      ids[r, at:at + n], segment_ids[r, at:at + n], types[r, at:at + n] = examples[m], s, type_of(s)
      at += n
  return {'input_ids': ids, 'segment_ids': segment_ids, 'token_type_ids': types}


def rows_in_order(lengths, row_length, count=None):
  """Consecutive examples while they fit, then a new row; empty rows up to
  ``count`` (at least one)."""
  rows, used = [[]], 0
  for i, n in enumerate(lengths):
    if used + n > row_length:
      rows, used = [*rows, []], 0
    rows[-1].append(i)
    used += n
  return rows + [[] for _ in range(max((count or 0) - len(rows), 1))]


def packed_and_unpacked(seed: int, lengths=(7, 3, 8, 2, 5, 1, 6, 4), row_length: int = 10,
                        pad: int = 1) -> tuple[dict, dict]:
  """The same labelled examples for tiny_model packed by hand into rows of
  ``row_length`` (token type 0) and unpacked, one padded row each."""
  examples = random_examples(np.random.default_rng(seed), lengths)
  labels = np.arange(len(lengths), dtype=np.int32) % 2
  rows = rows_in_order(lengths, row_length)
  order = [m for members in rows for m in members]
  packed = {**pack_by_hand(examples, rows, row_length, lambda s: 0, pad), 'labels': labels[order]}
  longest = max(lengths)
  unpacked = {'input_ids': np.full((len(lengths), longest), pad, np.int32),
              'attention_mask': np.zeros((len(lengths), longest), np.int32), 'labels': labels}
  for i, e in enumerate(examples):
    unpacked['input_ids'][i, :len(e)], unpacked['attention_mask'][i, :len(e)] = e, 1
  return packed, unpacked
