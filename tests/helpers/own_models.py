"""Models as a user brings them, none of them this project's encoder: a Flax
Linen classifier, a plain function of a parameter dict, and an NNX module
holding batch statistics and RNG state. Each comes as ``(apply_fn, params)``
over batches of ``tokens`` and ``labels`` (:func:`token_batch`)."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

VOCAB, WIDTH, CLASSES = 30, 8, 3


def token_batch(seed: int = 0, size: int = 16, length: int = 6) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'tokens': rng.integers(0, VOCAB, size=(size, length)).astype(np.int32),
          'labels': rng.integers(0, CLASSES, size=size).astype(np.int32)}


class _Linen(linen.Module):
  @linen.compact
  def __call__(self, tokens, *, deterministic: bool):
    x = linen.Embed(VOCAB, WIDTH)(tokens).mean(axis=1)
    x = linen.Dropout(0.3, deterministic=deterministic)(jax.nn.gelu(linen.Dense(16)(x)))
    return linen.Dense(CLASSES)(x)


def linen_classifier(seed: int = 0):
  module = _Linen()
  params = module.init(jax.random.key(seed), jnp.zeros((1, 2), jnp.int32),
                       deterministic=True)['params']

  def apply_fn(params, batch, *, dropout_key):
    return module.apply({'params': params}, batch['tokens'], deterministic=dropout_key is None,
                        rngs=None if dropout_key is None else {'dropout': dropout_key})

  return apply_fn, params


def function_classifier(seed: int = 0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {'embedding': jax.random.normal(k1, (VOCAB, WIDTH)),
            'out': {'w': jax.random.normal(k2, (WIDTH, CLASSES)) / np.sqrt(WIDTH),
                    'b': jnp.zeros(CLASSES)}}

  def apply_fn(params, batch, *, dropout_key):
    x = params['embedding'][batch['tokens']].mean(axis=1)
    if dropout_key is not None:
      keep = jax.random.bernoulli(dropout_key, 0.7, x.shape)
      x = jnp.where(keep, x / 0.7, 0.0)
    return x @ params['out']['w'] + params['out']['b']

  return apply_fn, params


def function_regressor(seed: int = 0):
  """:func:`function_classifier` with one output per example."""
  apply_fn, params = function_classifier(seed)
  params['out'] = {'w': params['out']['w'][:, :1], 'b': params['out']['b'][:1]}
  return apply_fn, params


def regression_batch(seed: int = 0, size: int = 16, length: int = 6) -> dict[str, np.ndarray]:
  """:func:`token_batch` with float targets."""
  batch = token_batch(seed, size, length)
  rng = np.random.default_rng(seed + 1)
  return {'tokens': batch['tokens'], 'labels': rng.normal(size=size).astype(np.float32)}


class NnxWithState(nnx.Module):
  """Embedding, BatchNorm, a Dropout that keeps its own RNG stream, Linear."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.norm = nnx.BatchNorm(WIDTH, rngs=rngs)
    self.dropout = nnx.Dropout(0.3, rngs=rngs)
    self.out = nnx.Linear(WIDTH, CLASSES, rngs=rngs)

  def __call__(self, tokens):
    return self.out(self.dropout(self.norm(self.embed(tokens).mean(axis=1))))


def call_nnx_with_state(module, batch, *, rngs, perturbation):
  del rngs, perturbation  # its Dropout draws from the stream it keeps
  return module(batch['tokens'])
