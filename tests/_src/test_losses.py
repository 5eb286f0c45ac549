"""The losses against plain NumPy and numbers derived by hand, not against the library."""

import hypothesis
import jax
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax._src import losses
from tests.helpers import definitions


def test_symmetric_kl_of_two_hand_computed_distributions():
  # One example, two classes: p = (1/4, 3/4) from logits (0, log 3), q = (1/2, 1/2).
  # KL(p||q) = 1/4 log(1/2) + 3/4 log(3/2); KL(q||p) = 1/2 log 2 + 1/2 log(2/3).
  p_logits = np.array([[0.0, np.log(3.0)]], np.float32)
  q_logits = np.zeros((1, 2), np.float32)
  kl_pq = 0.25 * np.log(0.5) + 0.75 * np.log(1.5)
  kl_qp = 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0)
  np.testing.assert_allclose(float(losses.symmetric_kl(p_logits, q_logits)),
                             (kl_pq + kl_qp) / 4, rtol=1e-6)
  np.testing.assert_allclose(float(losses.symmetric_kl(q_logits, p_logits)),
                             (kl_pq + kl_qp) / 4, rtol=1e-6)


def test_cross_entropy_of_a_hand_computed_batch():
  # Logits (0, 0) with label 0 cost log 2; (log 3, 0) with label 1 costs log 4.
  logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], np.float32)
  labels = np.array([0, 1], np.int32)
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)),
                             (np.log(2.0) + np.log(4.0)) / 2, rtol=1e-6)


def test_kl_grows_with_the_batch_rather_than_averaging():
  # A sum over the batch (the authors' scale): two copies of one example
  # give twice its KL, where a batch mean would give the same.
  a = np.array([[0.3, -1.0, 2.0]], np.float32)
  b = np.array([[1.0, 0.5, -0.5]], np.float32)
  one = float(losses.symmetric_kl(a, b))
  two = float(losses.symmetric_kl(np.concatenate([a, a]), np.concatenate([b, b])))
  np.testing.assert_allclose(two, 2 * one, rtol=1e-6)


# Jitted, as the step calls them: a program per shape, not an op-by-op dispatch
# (and compilation) of every primitive per shape.
_KL, _CE = jax.jit(losses.symmetric_kl), jax.jit(losses.cross_entropy)
_KL_GRADS = jax.jit(jax.grad(losses.symmetric_kl, argnums=(0, 1)))
_CE_GRAD = jax.jit(jax.grad(losses.cross_entropy))


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), batch=st.integers(1, 4), classes=st.integers(2, 4))
def test_losses_and_their_gradients_equal_numpy_in_float64(seed, batch, classes):
  rng = np.random.default_rng(seed)
  a = rng.normal(scale=2.0, size=(batch, classes)).astype(np.float32)
  b = rng.normal(scale=2.0, size=(batch, classes)).astype(np.float32)
  labels = rng.integers(0, classes, size=batch).astype(np.int32)

  kl = lambda x, y: definitions.numpy_kl_sum(x, y) / 4
  np.testing.assert_allclose(float(_KL(a, b)), kl(a, b), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(_CE(a, labels)),
                             definitions.numpy_cross_entropy(a, labels), rtol=1e-5, atol=1e-6)

  grad_a, grad_b = _KL_GRADS(a, b)
  np.testing.assert_allclose(grad_a, definitions.numerical_gradient(lambda x: kl(x, b), a),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grad_b, definitions.numerical_gradient(lambda y: kl(a, y), b),
                             rtol=1e-4, atol=1e-5)
  # CE's gradient by hand: (softmax(z) - onehot(y)) / batch.
  z = a.astype(np.float64)
  softmax = np.exp(z - z.max(1, keepdims=True))
  softmax /= softmax.sum(1, keepdims=True)
  expected = (softmax - np.eye(classes)[labels]) / batch
  np.testing.assert_allclose(_CE_GRAD(a, labels), expected,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('fn, numpy_fn', [
    (definitions.rose_kl, lambda a, b: definitions.numpy_kl_sum(a, b) / 4),
    (lambda a, b: definitions.cross_entropy(a, np.array([0, 2])),
     lambda a, b: definitions.numpy_cross_entropy(a, np.array([0, 2]))),
])
def test_the_tests_own_definitions_equal_numpy(fn, numpy_fn):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
  np.testing.assert_allclose(float(fn(a, b)), numpy_fn(a, b), rtol=1e-5)


def test_rdrop_kl_is_rdrops_compute_kl_loss():
  # R-Drop's compute_kl_loss: kl_div summed in both directions, then / 2.
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
  np.testing.assert_allclose(float(losses.rdrop_kl(a, b)), definitions.numpy_kl_sum(a, b) / 2,
                             rtol=1e-5)
