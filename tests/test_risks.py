"""First- and second-order risks (Eqs. 2 and 4)."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from rose_jax import risks


def _tree(rng, scale=1.0):
  return {'a': (scale * rng.normal(size=(3, 4))).astype(np.float32),
          'b': {'c': (scale * rng.normal(size=(5,))).astype(np.float32)}}


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.sampled_from([0.0, 0.5, 0.9, 0.99]))
def test_risks_follow_the_equations(seed, b1):
  rng = np.random.default_rng(seed)
  g, m = _tree(rng), _tree(rng, 0.3)
  first = risks.first_order_risk(g)
  chex.assert_trees_all_close(first, jax.tree.map(lambda x: np.linalg.norm(x.ravel()), g),
                              rtol=1e-6)
  second = risks.second_order_risk(g, m, b1=b1)
  expected = jax.tree.map(
      lambda x, y: abs((1 - b1) * np.linalg.norm(x.ravel()) / np.linalg.norm(y.ravel()) - 1), g, m)
  # |x - 1| cancels near x = 1, so the absolute tolerance matters there.
  chex.assert_trees_all_close(second, expected, rtol=1e-5, atol=1e-6)
  element = risks.second_order_risk(g, m, b1=b1, granularity='element')
  expected = jax.tree.map(lambda x, y: abs((1 - b1) * abs(x) / abs(y) - 1), g, m)
  chex.assert_trees_all_close(element, expected,
                              rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(risks.first_order_risk(g, granularity='element'),
                              jax.tree.map(np.abs, g))


def test_zero_momentum_is_defined():
  g = {'zero_g': jnp.zeros(3), 'some_g': jnp.ones(3)}
  m = {'zero_g': jnp.zeros(3), 'some_g': jnp.zeros(3)}
  r = risks.second_order_risk(g, m, b1=0.9)
  assert float(r['zero_g']) == 1.0
  assert float(r['some_g']) == float(jnp.finfo(jnp.float32).max)
  r = risks.second_order_risk(g, m, b1=0.9, granularity='element')
  chex.assert_trees_all_equal(r['zero_g'], jnp.ones(3))
  assert bool(jnp.all(jnp.isfinite(r['some_g'])))


def test_risks_are_float32_for_bf16_inputs():
  g = {'w': jnp.ones((4, 4), jnp.bfloat16)}
  assert risks.first_order_risk(g)['w'].dtype == jnp.float32
  assert risks.second_order_risk(g, g, b1=0.9)['w'].dtype == jnp.float32
