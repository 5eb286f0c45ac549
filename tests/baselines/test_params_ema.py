"""params_ema: the momentum teacher's average of the parameters."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rose_jax


def test_the_average_follows_the_parameters_after_each_update():
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), 'b': jnp.zeros(2)}
  beta = optax.join_schedules([optax.constant_schedule(0.5), optax.constant_schedule(0.9)], [2])
  tx = optax.chain(optax.sgd(0.1), rose_jax.params_ema(beta))
  state = tx.init(params)
  expected = {k: np.asarray(v, np.float64) for k, v in params.items()}
  for step in range(4):
    grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
    updates, state = tx.update(grads, state, params)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.1 * g, grads))
    params = optax.apply_updates(params, updates)
    b = 0.5 if step < 2 else 0.9
    expected = {k: b * expected[k] + (1 - b) * np.asarray(params[k]) for k in params}
  ema = state[1].ema
  for k in params:
    np.testing.assert_allclose(ema[k], expected[k], rtol=1e-6, atol=1e-7)


def test_it_needs_params():
  tx = rose_jax.params_ema(0.9)
  with pytest.raises(ValueError, match='averages the parameters'):
    tx.update({'w': jnp.ones(2)}, tx.init({'w': jnp.ones(2)}))


def test_the_average_does_not_share_the_params_buffers():
  # A train step donates params and optimizer state; one buffer in both fails.
  params = {'w': jnp.ones((2, 2), jnp.float32)}
  state = rose_jax.params_ema(0.9).init(params)
  step = jax.jit(lambda p, s: (p, s), donate_argnums=(0, 1))
  step(params, state)
