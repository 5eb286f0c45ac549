"""ROSE-Ensemble on models of your own: a Flax Linen classifier and a plain
function of a parameter dict, each trained by ``rose_jax.training.make_train_step``
on one device and data-parallel under ``shard_map`` over every device.

The task is made here: a sentence of 12 tokens out of 40 is positive when it
holds more tokens below 20 than above. The model only has to bring an
``apply_fn(params, batch, *, dropout_key) -> logits`` that applies dropout
when it is given a key; the step runs the two dropout passes, the KL and CE
gradients and ROSE's masked AdamW::

  python examples/own_model.py                 # both models
  python examples/own_model.py --model linen

On a CPU the script asks XLA for 8 host devices, so that ``shard_map`` has
devices to shard over; GPUs and TPUs keep the devices they have.
"""

from __future__ import annotations

import os

# Before JAX starts: 8 CPU devices for the data-parallel run (CPU only).
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')


import argparse

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np

import rose_jax
from rose_jax import training

VOCAB, LENGTH, WIDTH = 40, 12, 32


def make_data(seed: int, examples: int) -> dict[str, np.ndarray]:
  tokens = np.random.default_rng(seed).integers(0, VOCAB, size=(examples, LENGTH))
  labels = (tokens < VOCAB // 2).sum(axis=1) > LENGTH // 2
  return {'tokens': tokens.astype(np.int32), 'labels': labels.astype(np.int32)}


class LinenClassifier(linen.Module):
  """Mean of token embeddings, a hidden layer with dropout, two logits."""

  @linen.compact
  def __call__(self, tokens, *, deterministic: bool):
    x = linen.Embed(VOCAB, WIDTH)(tokens).mean(axis=1)
    x = linen.Dropout(0.1, deterministic=deterministic)(jax.nn.relu(linen.Dense(WIDTH)(x)))
    return linen.Dense(2)(x)


def linen_model(key):
  module = LinenClassifier()
  params = module.init(key, jnp.zeros((1, LENGTH), jnp.int32), deterministic=True)['params']

  def apply_fn(params, batch, *, dropout_key):
    return module.apply({'params': params}, batch['tokens'], deterministic=dropout_key is None,
                        rngs=None if dropout_key is None else {'dropout': dropout_key})

  return apply_fn, params


def function_model(key):
  embedding_key, hidden_key, out_key = jax.random.split(key, 3)
  params = {'embedding': jax.random.normal(embedding_key, (VOCAB, WIDTH)) * 0.1,
            'hidden': jax.random.normal(hidden_key, (WIDTH, WIDTH)) / np.sqrt(WIDTH),
            'out': jax.random.normal(out_key, (WIDTH, 2)) / np.sqrt(WIDTH)}

  def apply_fn(params, batch, *, dropout_key):
    x = jax.nn.relu(params['embedding'][batch['tokens']].mean(axis=1) @ params['hidden'])
    if dropout_key is not None:  # inverted dropout at rate 0.1
      x = jnp.where(jax.random.bernoulli(dropout_key, 0.9, x.shape), x / 0.9, 0.0)
    return x @ params['out']

  return apply_fn, params


MODELS = {'linen': linen_model, 'function': function_model}


def fine_tune(model: str, parallel: str, *, steps: int, batch_size: int = 32) -> float:
  """Trains ``model`` from a fixed start; returns its held-out accuracy."""
  apply_fn, params = MODELS[model](jax.random.key(0))
  train, test = make_data(0, steps * batch_size), make_data(1, 1024)
  tx = rose_jax.rose(1e-2, variant='ensemble', upper=0.6, granularity='element')
  method = training.get_method('rose-ensemble')
  step = training.make_train_step(apply_fn, tx, method, parallel=parallel)
  mesh = training.data_mesh()
  place = (lambda b: training.shard_batch(b, mesh)) if parallel == 'shard_map' else (lambda b: b)
  params = jax.tree.map(jnp.array, params)
  opt_state = tx.init(params)
  for i in range(steps):
    batch = {k: v[i * batch_size:(i + 1) * batch_size] for k, v in train.items()}
    params, opt_state, metrics = step(params, opt_state, place(batch), jax.random.key(i))
  logits = training.make_eval_step(apply_fn)(params, test)
  print(f'  last step: kept {float(metrics["kept_fraction"]):.2f} of the ranked weights, '
        f'KL {float(metrics["kl"]):.4f}')
  return float(np.mean(np.argmax(logits, -1) == test['labels']))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', choices=[*MODELS, 'both'], default='both')
  parser.add_argument('--steps', type=int, default=200)
  args = parser.parse_args(argv)
  for model in MODELS if args.model == 'both' else [args.model]:
    for parallel, devices in (('none', 1), ('shard_map', jax.device_count())):
      print(f'{model} model, parallel={parallel} ({devices} device{"s" * (devices > 1)}):')
      accuracy = fine_tune(model, parallel, steps=args.steps)
      print(f'  held-out accuracy {accuracy:.3f} (chance 0.5)')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
