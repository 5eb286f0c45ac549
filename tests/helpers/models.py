"""A tiny encoder and batches for it, for the step, sweep and analysis tests."""

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
