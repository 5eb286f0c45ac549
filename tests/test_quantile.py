"""Exact quantiles: radix select and sort against jnp.quantile and order statistics."""

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rose_jax import quantile
from tests.helpers import reference

# Normal floats only: XLA's CPU backend flushes subnormal results to zero.
finite = st.floats(-1e6, 1e6, width=32).filter(lambda x: x == 0 or abs(x) > 1e-30)
# Few distinct values force ties; zeros of both signs test their handling.
tied = st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, 1e-30, 7.0])


def _leaves(draw_elements):
  shapes = st.lists(hnp.array_shapes(min_dims=0, max_dims=2, max_side=7), min_size=1, max_size=3)
  return shapes.flatmap(lambda ss: st.tuples(*[
      hnp.arrays(np.float32, s, elements=draw_elements) for s in ss]))


def _order_statistic_quantile(values, q):
  return reference.torch_quantile(np.concatenate([np.ravel(v) for v in values]), q)


# Jitted, as the optimizer calls them (a program per example's shapes, not
# every primitive dispatched eagerly).
_TREE_QUANTILE = jax.jit(lambda leaves, q: quantile.tree_quantile(leaves, [q])[0])
_JNP_QUANTILE = jax.jit(jnp.quantile)


@hypothesis.settings(max_examples=30, deadline=None)
# No subnormal q: XLA:CPU flushes subnormal results to zero (q = 5e-40 between
# 0 and 1 gives 0.0), which NumPy does not; that is the platform, not the rule.
@hypothesis.given(_leaves(st.one_of(finite, tied)),
                  st.floats(0, 1, width=32, allow_subnormal=False))
def test_tree_quantile_is_the_exact_linear_quantile(leaves, q):
  hypothesis.assume(sum(np.size(v) for v in leaves) > 0)
  got = _TREE_QUANTILE(list(leaves), q)
  flat = np.concatenate([np.ravel(v) for v in leaves])
  # Exactly the torch/NumPy rule: float32 rank, lerp between order statistics.
  assert float(got) == float(_order_statistic_quantile(leaves, q))
  # And jnp.quantile up to its differently rounded interpolation, whose
  # rounding error scales with the interpolated values, not with the result
  # (lerp(2.5, -3, 0.1) cancels).
  expected = _JNP_QUANTILE(jnp.asarray(flat), jnp.float32(q))
  scale = float(np.max(np.abs(flat)))
  np.testing.assert_allclose(float(got), float(expected), rtol=2e-7,
                             atol=max(2 * float(np.finfo(np.float32).eps) * scale, 1e-37))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.one_of(finite, tied)),
                  st.floats(0, 1, width=32))
def test_sorted_quantile_matches_torch_rule(values, q):
  assert float(quantile.sorted_quantile(values, q)) == float(reference.torch_quantile(values, q))


def test_signed_zeros_are_one_value():
  leaves = [np.array([-0.0, 0.0, -0.0], np.float32), np.array([0.0, 1.0], np.float32)]
  for q in (0.0, 0.3, 0.5, 0.75):
    value = quantile.tree_quantile(leaves, q)[0]
    assert float(value) == 0.0 and not np.signbit(float(value))


def test_nan_makes_the_result_nan_like_jnp_quantile():
  leaves = [np.array([1.0, np.nan], np.float32), np.array([2.0], np.float32)]
  assert np.isnan(float(quantile.tree_quantile(leaves, 0.5)[0]))
  assert np.isnan(float(quantile.sorted_quantile(np.array([1.0, np.nan, 3.0]), 0.5)))


def test_several_quantiles_share_one_call_and_work_under_jit():
  rng = np.random.default_rng(0)
  tree = {'a': rng.normal(size=(50, 3)).astype(np.float32), 'b': rng.normal(size=7)}
  qs = jnp.asarray([0.0, 0.1, 0.5, 0.99, 1.0])
  got = jax.jit(lambda t, q: jnp.stack(quantile.tree_quantile(t, list(q))))(tree, qs)
  flat = np.concatenate([tree['a'].ravel(), tree['b'].astype(np.float32)])
  want = [reference.torch_quantile(flat, float(q)) for q in np.asarray(qs)]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_empty_input_is_rejected():
  with pytest.raises(ValueError, match='at least one element'):
    quantile.tree_quantile([np.zeros((0,), np.float32)], 0.5)
  with pytest.raises(ValueError, match='non-empty 1-D'):
    quantile.sorted_quantile(np.zeros((0,), np.float32), 0.5)


def test_rank_in_double_matches_numpy_percentile_where_float32_ranks_differ():
  # Over 2**25 values, q * (n - 1) in float32 rounds to another order statistic:
  # CHILD-TUNING_D's cut (np.percentile, a double rank) needs rank_in_double.
  n = 2**25 + 17
  values = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
  q = 0.7
  assert np.floor(np.float32(q) * np.float32(n - 1)) != np.floor(q * (n - 1))
  (double,) = quantile.tree_quantile([jnp.asarray(values)], [q], rank_in_double=True)
  (single,) = quantile.tree_quantile([jnp.asarray(values)], [q])
  expected = np.float32(np.percentile(values, q * 100))
  assert np.float32(double) == expected
  assert np.float32(single) != expected
