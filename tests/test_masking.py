"""Quantile masks and the ensemble (Eqs. 3 and 5)."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

from rose_jax import masking, risks


def _risk_tree(rng, n, ties=False):
  if ties:
    values = rng.integers(0, 4, size=n).astype(np.float32)
  else:  # distinct: a permutation of 0..n-1 plus jitter below 0.5
    values = (rng.permutation(n) + rng.uniform(0, 0.5, n)).astype(np.float32)
  return {f't{i}': jnp.asarray(v) for i, v in enumerate(values)}


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.integers(1, 60), st.floats(0, 1, width=32), st.integers(0, 2**16))
def test_tensor_mask_keeps_exactly_the_quantile_fraction(n, upper, seed):
  risks = _risk_tree(np.random.default_rng(seed), n)
  mask = masking.quantile_mask(risks, upper=upper, granularity='tensor')
  kept = sum(float(m) for m in jax.tree.leaves(mask))
  rank = np.float32(upper) * np.float32(n - 1)
  assert kept == np.floor(rank) + 1
  # The kept tensors are those of lowest risk.
  kept_risks = [float(risks[k]) for k in risks if float(mask[k]) == 1]
  dropped = [float(risks[k]) for k in risks if float(mask[k]) == 0]
  assert not dropped or max(kept_risks) < min(dropped)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.floats(0, 0.5, width=32), st.floats(0.5, 1, width=32),
                  st.booleans())
def test_element_masks_agree_with_jnp_quantile(seed, lower, upper, ties):
  rng = np.random.default_rng(seed)
  if ties:
    make = lambda s: rng.integers(0, 5, size=s).astype(np.float32)
  else:
    make = lambda s: np.abs(rng.normal(size=s)).astype(np.float32)
  risks = {'a': make((7, 3)), 'b': optax.MaskedNode(), 'c': {'d': make((11,))}}
  mask = masking.quantile_mask(risks, lower=lower, upper=upper, granularity='element')
  flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(risks)])
  lo, hi = jnp.quantile(flat, jnp.asarray([lower, upper], jnp.float32))
  # jnp.quantile rounds its interpolation differently by at most an ulp; no
  # risk lies that close to a threshold unless it is the threshold itself.
  close = lambda r, t: np.isclose(r, t, rtol=2e-7, atol=0)
  for got, r in zip(jax.tree.leaves(mask), jax.tree.leaves(risks), strict=True):
    want = (r >= lo) & (r <= hi)
    ambiguous = close(r, lo) | close(r, hi)
    np.testing.assert_array_equal(np.asarray(got)[~ambiguous], np.asarray(want)[~ambiguous])
    # A risk equal to an order statistic at the threshold is always kept.
    np.testing.assert_array_equal(np.asarray(got)[(r == lo) | (r == hi)], 1.0)
  assert isinstance(mask['b'], optax.MaskedNode)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.floats(0.05, 0.95),
                  st.sampled_from(['tensor', 'element']))
def test_ensemble_takes_only_four_values(seed, gamma, granularity):
  rng = np.random.default_rng(seed)
  tree = lambda: {'a': np.abs(rng.normal(size=(4, 3))).astype(np.float32),
                  'b': np.abs(rng.normal(size=(6,))).astype(np.float32)}
  first = masking.quantile_mask(risks.first_order_risk(tree(), granularity=granularity),
                                upper=0.5, granularity=granularity)
  second = masking.quantile_mask(risks.first_order_risk(tree(), granularity=granularity),
                                 upper=0.5, granularity=granularity)
  mixed = masking.ensemble_mask(first, second, gamma=jnp.float32(gamma))
  g = np.float32(gamma)
  allowed = {0.0, float(g), float(np.float32(1) - g), 1.0}
  values = set(np.concatenate([np.ravel(x) for x in jax.tree.leaves(mixed)]).tolist())
  assert values <= allowed


def test_single_tensor_is_always_kept():
  for upper in (0.0, 0.3, 1.0):
    mask = masking.quantile_mask({'only': jnp.float32(3.0)}, upper=upper)
    assert float(mask['only']) == 1.0


def test_fill_mask_and_kept_fraction():
  mask = {'a': jnp.float32(0.0), 'b': optax.MaskedNode(), 'c': jnp.float32(1.0)}
  params = {'a': jnp.ones((2, 2)), 'b': jnp.ones(3), 'c': jnp.ones(())}
  chex.assert_trees_all_equal(masking.fill_mask(mask, params),
                              {'a': jnp.float32(0.0), 'b': jnp.float32(1.0), 'c': jnp.float32(1.0)})
  assert float(masking.kept_fraction(mask)) == 0.5
  element = {'a': jnp.asarray([1.0, 0.0, 0.0, 0.0]), 'b': optax.MaskedNode()}
  assert float(masking.kept_fraction(element)) == 0.25


def test_tensor_granularity_rejects_unreduced_risks():
  import pytest
  with pytest.raises(ValueError, match='one scalar risk per tensor'):
    masking.quantile_mask({'a': jnp.ones((2, 2))}, upper=0.5, granularity='tensor')


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.floats(0.05, 0.45))
def test_ensemble_is_gamma_first_plus_one_minus_gamma_second_elementwise(seed, gamma):
  rng = np.random.default_rng(seed)
  first = {'a': rng.integers(0, 2, (4, 3)).astype(np.float32), 'b': np.float32(1)}
  second = {'a': rng.integers(0, 2, (4, 3)).astype(np.float32), 'b': np.float32(0)}
  mixed = masking.ensemble_mask(first, second, gamma=gamma)
  for k in first:
    np.testing.assert_allclose(mixed[k], gamma * first[k] + (1 - gamma) * second[k], rtol=1e-6)
  # gamma < 1/2 weighs the first mask less: swapping the masks changes the result.
  assert float(mixed['b']) == pytest.approx(gamma)
