"""ROSE in a Flax NNX training loop, through ``nnx.Optimizer``.

``nnx.Optimizer.update(model, grads, **kwargs)`` hands its keyword arguments
to the transformation's ``update``, so ``rose_jax.rose`` takes the KL
gradient there as it does in optax: ``optimizer.update(model, ce_grads,
kl_grads=kl_grads)``. The gradients are ``nnx.State`` trees from
``nnx.grad``; ``rose_jax.selection.authors_selectable`` reads their paths
(``layers.0.kernel``) as Hugging Face names (``layers.0.weight``).

  python examples/nnx_optimizer.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rose_jax
from rose_jax import training

VOCAB, WIDTH = 40, 32


class Classifier(nnx.Module):
  """Embeddings, six dense layers with dropout, a two-class head."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(6)])
    self.dropout = nnx.Dropout(0.1)
    self.head = nnx.Linear(WIDTH, 2, rngs=rngs)

  def __call__(self, tokens, *, rngs: nnx.Rngs | None = None):
    """Logits; dropout on iff ``rngs`` is given."""
    x = self.embed(tokens).mean(axis=1)
    for layer in self.layers:
      x = self.dropout(jax.nn.gelu(layer(x)), deterministic=rngs is None, rngs=rngs)
    return self.head(x)


def make_optimizer(model: Classifier) -> nnx.Optimizer:
  """ROSE-Ensemble over the layers' kernels (the authors' rule), on the model's params."""
  tx = rose_jax.rose(1e-2, variant='ensemble', upper=0.6,
                     selectable=rose_jax.selection.authors_selectable)
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def two_passes(model: Classifier, tokens, labels, key):
  """The cross-entropy and ROSE's KL of two dropout passes, in one forward."""
  logits = model(jnp.concatenate([tokens, tokens]), rngs=nnx.Rngs(dropout=key))
  first, second = jnp.split(logits, 2)
  ce = (training.cross_entropy(first, labels) + training.cross_entropy(second, labels)) / 2
  return ce, training.symmetric_kl(first, second)


def gradients(model: Classifier, tokens, labels, key):
  """``(ce_grads, kl_grads)``: one dropout key, so both see the same passes."""
  ce_grads = nnx.grad(lambda m: two_passes(m, tokens, labels, key)[0])(model)
  kl_grads = nnx.grad(lambda m: two_passes(m, tokens, labels, key)[1])(model)
  return ce_grads, kl_grads


@nnx.jit
def train_step(model: Classifier, optimizer: nnx.Optimizer, tokens, labels, key):
  ce_grads, kl_grads = gradients(model, tokens, labels, key)
  optimizer.update(model, ce_grads, kl_grads=kl_grads)


def toy_task(seed: int = 0):
  """Is more than half of a row's tokens below 20?"""
  tokens = np.random.default_rng(seed).integers(0, VOCAB, size=(2048, 12)).astype(np.int32)
  return tokens, ((tokens < 20).sum(1) > 6).astype(np.int32)


def main() -> float:
  tokens, labels = toy_task()
  model = Classifier(nnx.Rngs(0))
  optimizer = make_optimizer(model)
  for i in range(48):
    rows = slice(32 * i, 32 * (i + 1))
    train_step(model, optimizer, tokens[rows], labels[rows], jax.random.key(i))
  accuracy = float((model(jnp.asarray(tokens[1536:])).argmax(-1) == labels[1536:]).mean())
  print(f'held-out accuracy {accuracy:.3f}')
  return accuracy


if __name__ == '__main__':
  main()
