"""The first-order risk refreshed every k steps, against the NumPy
transcription of the authors' optimizer that keeps the last KL risks by hand."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import rose_jax
from rose_jax import selection
from tests.helpers import assert_same_results, reference
from tests.helpers.reference import SHAPES, by_name, named_tree

RANKED = [k for k in SHAPES if selection.is_authors_ranked(k)]


def _rose(every, **settings):
  return rose_jax.rose(1e-2, selectable=by_name(selection.is_authors_ranked),
                       first_order_every=every, **settings)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(every=st.integers(1, 5), variant=st.sampled_from(['first', 'ensemble']),
                  upper=st.sampled_from([0.3, 0.5, 0.8]), seed=st.integers(0, 2**16),
                  wrapper=st.sampled_from(['rose', 'selective']))
def test_stale_risks_rank_as_the_last_ones_kept_by_hand(every, variant, upper, seed, wrapper):
  rng = np.random.default_rng(seed)
  params = named_tree(rng)
  ref = reference.SparseAdamW(params, lr=1e-2, variant=variant, upper=upper, ranked=RANKED,
                              first_order_every=every)
  settings = dict(variant=variant, upper=upper, first_order_every=every,
                  selectable=by_name(selection.is_authors_ranked))
  tx = (rose_jax.rose(1e-2, **settings) if wrapper == 'rose' else
        rose_jax.selective(rose_jax.hf_adamw(1e-2, b2=0.98), b1=0.9, **settings))
  jax_params = jax.tree.map(jnp.asarray, params)
  state = tx.init(jax_params)
  for t in range(1, 11):
    due = rose_jax.first_order_due(state)
    assert bool(due) == ((t - 1) % every == 0)
    grads, kl_grads = named_tree(rng), named_tree(rng, scale=rng.uniform(0.1, 2))
    ref.step(grads, kl_grads if due else None)
    # Between refreshes the KL gradient is ignored: passing one changes nothing.
    extra = {'kl_grads': kl_grads} if due or t % 2 else {}
    updates, state = tx.update(grads, state, jax_params, **extra)
    jax_params = optax.apply_updates(jax_params, updates)
    for name in RANKED:
      assert float(state.mask[name]) == pytest.approx(float(ref.last_mask[name]))
    if wrapper == 'rose':  # selective's ensemble scales decay differently (its docstring)
      chex.assert_trees_all_close(jax_params, ref.params, rtol=2e-5, atol=2e-6)


def test_every_step_is_the_authors_recipe():
  rng = np.random.default_rng(0)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  exact, refreshed = _rose(None, upper=0.5), _rose(1, upper=0.5)
  a, b = exact.init(params), refreshed.init(params)
  pa = pb = params
  for _ in range(6):
    grads, kl_grads = named_tree(rng), named_tree(rng)
    ua, a = jax.jit(exact.update)(grads, a, pa, kl_grads=kl_grads)
    ub, b = jax.jit(refreshed.update)(grads, b, pb, kl_grads=kl_grads)
    pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    assert_same_results(pa, pb)
    chex.assert_trees_all_equal(a.mask, b.mask)


def test_a_refresh_with_a_non_finite_kl_gradient_is_skipped_and_due_again():
  rng = np.random.default_rng(1)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  tx = _rose(3, upper=0.5)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g * jnp.nan, named_tree(rng))
  updates, after = tx.update(named_tree(rng), state, params, kl_grads=bad)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
  assert int(after.count) == 0 and bool(rose_jax.first_order_due(after))
  _, after = tx.update(named_tree(rng), after, params, kl_grads=named_tree(rng))
  assert int(after.count) == 1 and not bool(rose_jax.first_order_due(after))
  # Between refreshes a NaN KL gradient is not read, so nothing is skipped.
  _, later = tx.update(named_tree(rng), after, params, kl_grads=bad)
  assert int(later.count) == 2


def test_element_risks_are_kept_like_the_ranked_tensors():
  params = jax.tree.map(jnp.asarray, named_tree(np.random.default_rng(2)))
  state = _rose(4, upper=0.5, granularity='element').init(params)
  risk = state.first_order.risk
  for name in SHAPES:
    ranked = selection.is_authors_ranked(name)
    assert isinstance(risk[name], optax.MaskedNode) != ranked
    if ranked:
      assert risk[name].shape == SHAPES[name]
  tensor = _rose(4, upper=0.5).init(params).first_order.risk
  assert all(tensor[name].shape == () for name in RANKED)


@pytest.mark.parametrize('every', [0, -2, 1.5, True, '3'])
def test_a_bad_interval_is_named(every):
  with pytest.raises(ValueError, match='first_order_every must be a positive integer'):
    _rose(every, upper=0.5)


def test_the_second_order_variant_has_nothing_to_refresh():
  for build in (lambda: _rose(2, upper=0.5, variant='second'),
                lambda: rose_jax.selective(optax.adam(1e-3), upper=0.5, variant='second',
                                           first_order_every=2),
                lambda: rose_jax.scale_by_rose(upper=0.5, variant='second',
                                               first_order_every=2)):
    with pytest.raises(ValueError, match='variant="second" does not compute'):
      build()


def test_an_optimizer_without_a_schedule_is_never_due_or_skipped():
  params = {'layer': {'weight': jnp.ones((2, 2))}}
  assert rose_jax.first_order_due(rose_jax.rose(1e-3, upper=0.5).init(params)) is None
  assert rose_jax.first_order_due(optax.adam(1e-3).init(params)) is None
  chained = optax.chain(optax.clip(1.0), _rose(2, upper=0.5)).init(
      jax.tree.map(jnp.asarray, named_tree(np.random.default_rng(3))))
  assert bool(rose_jax.first_order_due(chained))
