"""The losses, written again from the paper and the authors' code for tests.

Nothing here imports ``rose_jax``: tests compare the library's losses and
train step with these, and ``test_losses.py`` checks these against plain
NumPy in float64 and hand-derived numbers.

* Cross-entropy: the batch mean of ``-log softmax(z)[y]``; with two dropout
  passes, the mean of the two passes' means.
* ROSE's first-order loss: ``(KL(p||q) + KL(q||p)) / 4``, summed over the
  batch and the classes (R-Drop's ``compute_kl_loss`` sums both directions
  and halves; the authors' ROSE code halves once more).
* Regression (R-Drop's code for ``num_labels == 1``): the mean squared error
  of the one output, and between the passes R-Drop's ``MSELoss`` weighted
  by ``alpha``; ROSE's scale is half of it, as for the KL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def cross_entropy(logits, labels):
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def rose_kl(logits_p, logits_q):
  p, q = jax.nn.softmax(logits_p.astype(jnp.float32)), jax.nn.softmax(logits_q.astype(jnp.float32))
  log_p, log_q = jnp.log(p), jnp.log(q)
  return (jnp.sum(p * (log_p - log_q)) + jnp.sum(q * (log_q - log_p))) / 4


def mean_squared_error(outputs, targets):
  return jnp.mean((outputs[:, 0] - targets) ** 2)


def rose_squared_difference(outputs_p, outputs_q):
  return jnp.mean((outputs_p - outputs_q) ** 2) / 2


def numpy_cross_entropy(logits, labels):
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels].mean()


def numpy_kl_sum(logits_p, logits_q):
  """``sum KL(p||q) + sum KL(q||p)`` over batch and classes, in float64."""
  def probs(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
  p, q = probs(logits_p), probs(logits_q)
  return np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))


def numerical_gradient(f, x, h=1e-6):
  """Central differences of a float64 NumPy function."""
  x = np.asarray(x, np.float64)
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = h
    grad[index] = (f(x + step) - f(x - step)) / (2 * h)
  return grad
