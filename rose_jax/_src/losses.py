"""The losses of ROSE and R-Drop, as the authors' code defines them, and their
regression counterparts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy, averaged over the batch."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def symmetric_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """``(KL(p||q) + KL(q||p))``, summed over batch and classes, divided by 4.

  This is the scale of the authors' code (R-Drop's ``compute_kl_loss``
  halved once more), not a batch mean: the KL term grows with the batch.
  """
  log_p = jax.nn.log_softmax(logits_p.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32), axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  return (jnp.sum(p * (log_p - log_q)) + jnp.sum(q * (log_q - log_p))) / 4.0


def rdrop_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """R-Drop's ``compute_kl_loss``: ``(KL(p||q) + KL(q||p)) / 2`` summed over
  batch and classes, twice :func:`symmetric_kl`. R-Drop's ``alpha`` weighs
  this, so ``--rdrop-alpha`` means what it means in R-Drop's own code."""
  return 2.0 * symmetric_kl(logits_p, logits_q)


def squared_difference(first: jax.Array, second: jax.Array) -> jax.Array:
  """Half the mean squared difference of two passes' outputs ``[examples, 1]``:
  the regression counterpart of :func:`symmetric_kl`. R-Drop's regression
  term (``MSELoss`` between the passes) is twice it, as R-Drop's KL is twice
  :func:`symmetric_kl`, so one ``alpha`` means R-Drop's for both."""
  difference = first.astype(jnp.float32) - second.astype(jnp.float32)
  return jnp.mean(jnp.square(difference)) / 2.0


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def disagreement(first: jax.Array, second: jax.Array) -> jax.Array:
  """The share of examples whose two forward passes (two dropout masks, say)
  predict different labels."""
  return jnp.mean(jnp.argmax(first, axis=-1) != jnp.argmax(second, axis=-1))
