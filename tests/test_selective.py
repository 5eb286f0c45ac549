"""rose_jax.selective: ROSE around any optax optimizer."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import rose_jax
from tests.helpers import reference

SHAPES = {'a': (4, 3), 'b': (3,), 'c': (3, 5), 'd': (5,), 'bias': (5,)}
RANKED = {'a': True, 'b': True, 'c': True, 'd': True, 'bias': False}


def _tree(rng, scale=1.0):
  return {k: jnp.asarray(scale * rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), variant=st.sampled_from(['first', 'second',
                                                                        'ensemble']),
                  upper=st.sampled_from([0.4, 0.6, 1.0]), weight_decay=st.sampled_from([0.0, 0.01]))
@hypothesis.example(seed=7035, variant='ensemble', upper=0.4, weight_decay=0.01)  # drifted 1.2e-6
def test_wrapping_hugging_face_adamw_is_rose(seed, variant, upper, weight_decay):
  rng = np.random.default_rng(seed)
  params = _tree(rng)
  common = dict(variant=variant, upper=upper, selectable=RANKED, warmup_steps=1)
  rose = rose_jax.rose(1e-2, weight_decay=weight_decay, **common)
  wrapped = rose_jax.selective(rose_jax.hf_adamw(1e-2, b2=0.98, weight_decay=weight_decay),
                               **common)
  p1, p2 = params, params
  s1, s2 = rose.init(params), wrapped.init(params)
  # Where the ensemble's masks are fractional, the decay differs by up to
  # lr * weight_decay * M (1 - M) * |Adam step| a step (selective's docstring),
  # with M (1 - M) <= 1/4 and an Adam step of at most a few lr.
  drift = 1e-2 * weight_decay * 0.25 * 3e-2 if variant == 'ensemble' else 0.0
  for step in range(1, 7):
    grads, kl = _tree(rng), _tree(rng)
    u1, s1 = rose.update(grads, s1, p1, kl_grads=kl)
    u2, s2 = wrapped.update(grads, s2, p2, kl_grads=kl)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    chex.assert_trees_all_equal(s1.mask, s2.mask)
    chex.assert_trees_all_close(p1, p2, rtol=1e-5, atol=1e-6 + step * drift)
  chex.assert_trees_all_close(s1.mu, s2.inner_state.mu, rtol=1e-5, atol=1e-7)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16),
                  variant=st.sampled_from(['first', 'second', 'ensemble']),
                  upper=st.sampled_from([0.4, 0.6, 0.75, 1.0]), lower=st.sampled_from([0.0, 0.25]),
                  gamma=st.sampled_from([0.3, 0.5]), warmup_steps=st.integers(0, 2),
                  weight_decay=st.sampled_from([0.0, 0.1]))
def test_wrapping_hugging_face_adamw_follows_the_authors_code(seed, variant, upper, lower, gamma,
                                                               warmup_steps, weight_decay):
  """Against the NumPy transcription of the authors' SparseAdamW, which shares
  nothing with rose_jax. Where the ensemble's masks are fractional, decay
  differs by design (see ``selective``'s docstring): it is off there."""
  if variant == 'ensemble':
    weight_decay = 0.0
  rng = np.random.default_rng(seed)
  params = {k: np.asarray(v) for k, v in _tree(rng).items()}
  ranked = [k for k, r in RANKED.items() if r]
  expected = reference.SparseAdamW(params, lr=1e-2, variant=variant, upper=upper, lower=lower,
                                   gamma=gamma, warmup_steps=warmup_steps,
                                   weight_decay=weight_decay, ranked=ranked)
  tx = rose_jax.selective(rose_jax.hf_adamw(1e-2, b2=0.98, weight_decay=weight_decay),
                          variant=variant, upper=upper, lower=lower, gamma=gamma,
                          warmup_steps=warmup_steps, selectable=RANKED)
  got = jax.tree.map(jnp.asarray, params)
  state = tx.init(got)
  update = jax.jit(tx.update)
  for _ in range(6):
    grads, kl_grads = _tree(rng), _tree(rng, scale=rng.uniform(0.1, 2))
    expected.step({k: np.asarray(v) for k, v in grads.items()},
                  {k: np.asarray(v) for k, v in kl_grads.items()})
    updates, state = update(grads, state, got, kl_grads=kl_grads)
    got = optax.apply_updates(got, updates)
    for name in ranked:
      assert float(state.mask[name]) == pytest.approx(float(expected.last_mask[name]))
    chex.assert_trees_all_close(got, expected.params, rtol=2e-5, atol=2e-6)


INNER = {
    'adamw': (lambda: optax.adamw(1e-2, weight_decay=0.1), 'mu'),
    'lion': (lambda: optax.lion(1e-3), 'mu'),
    'sgd momentum': (lambda: optax.sgd(1e-2, momentum=0.9), 'trace'),
    'sgd': (lambda: optax.sgd(1e-2), None),
}


@pytest.mark.parametrize('name', sorted(INNER))
def test_a_full_band_is_the_bare_inner_optimizer(name):
  make, momentum = INNER[name]
  rng = np.random.default_rng(1)
  params = _tree(rng)
  wrapped = rose_jax.selective(make(), variant='first' if momentum is None else 'ensemble',
                               upper=1.0, lower=0.0, selectable=RANKED, momentum=momentum)
  bare = make()
  p1, p2, s1, s2 = params, params, wrapped.init(params), bare.init(params)
  for _ in range(4):
    grads, kl = _tree(rng), _tree(rng)
    u1, s1 = wrapped.update(grads, s1, p1, kl_grads=kl)
    u2, s2 = bare.update(grads, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('name', sorted(INNER))
def test_a_zero_mask_freezes_ranked_parameters_and_coasts_as_documented(name):
  make, momentum = INNER[name]
  rng = np.random.default_rng(2)
  params = _tree(rng)
  # lower = upper = 0.5 over four distinct risks: the threshold interpolates
  # between the 2nd and 3rd, and no ranked tensor lies on it.
  wrapped = rose_jax.selective(make(), variant='first', lower=0.5, upper=0.5,
                               selectable=RANKED, momentum=momentum)
  state = wrapped.init(params)
  warm = rose_jax.selective(make(), variant='first', upper=1.0, selectable=RANKED,
                            momentum=momentum)
  _, warm_state = warm.update(_tree(rng), warm.init(params), params, kl_grads=_tree(rng))
  state = state._replace(inner_state=warm_state.inner_state, count=warm_state.count)
  # The first moment, as the test's own lookup finds it (not rose_jax's).
  first_moment = lambda inner_state: optax.tree.get(inner_state, momentum)
  before = None if momentum is None else first_moment(state.inner_state)
  updates, new_state = wrapped.update(_tree(rng), state, params, kl_grads=_tree(rng))
  assert all(float(new_state.mask[k]) == 0.0 for k in 'abcd')
  for k in 'abcd':
    assert not np.any(np.asarray(updates[k])), k
  assert np.any(np.asarray(updates['bias']))  # unranked: always updated
  if momentum is None:
    return
  after = first_moment(new_state.inner_state)
  growth = 1.9 if name == 'sgd momentum' else 1.0  # trace <- g' + 0.9 trace with g' = trace
  for k in 'abcd':
    np.testing.assert_allclose(after[k], growth * np.asarray(before[k]), rtol=1e-6, err_msg=k)


def test_bad_wrappings_fail_at_construction_or_init():
  with pytest.raises(ValueError, match='momentum=None says'):
    rose_jax.selective(optax.sgd(0.1), variant='ensemble', upper=0.5, momentum=None)
  wrapped = rose_jax.selective(optax.sgd(0.1), variant='second', upper=0.5, momentum='mu')
  with pytest.raises(ValueError, match=r"has no field 'mu'"):
    wrapped.init(_tree(np.random.default_rng(0)))
  with pytest.raises(ValueError, match='upper'):
    rose_jax.selective(optax.adam(0.1), upper=1.5)


def test_selective_jits_once_and_passes_clipping_through():
  rng = np.random.default_rng(3)
  params = _tree(rng)
  tx = rose_jax.selective(optax.adam(1e-2), upper=0.6, selectable=RANKED, max_grad_norm=0.5)
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads, kl):
    updates, state = tx.update(grads, state, params, kl_grads=kl)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state, _tree(rng, 5.0), _tree(rng))
  assert int(state.count) == 3
  unclipped = rose_jax.selective(optax.adam(1e-2), upper=0.6, selectable=RANKED)
  grads, kl = _tree(rng, 5.0), _tree(rng)
  norm = float(optax.tree.norm(grads))
  scaled = jax.tree.map(lambda g: g / norm * 0.5, grads)
  u1, _ = tx.update(grads, state, params, kl_grads=kl)
  u2, _ = unclipped.update(scaled, state, params, kl_grads=jax.tree.map(lambda g: g / norm * 0.5,
                                                                        kl))
  chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-8)
  assert jnp.isfinite(norm)


@pytest.mark.parametrize(('variant', 'argument'), [
    ('first', 'kl_grads'), ('ensemble', 'kl_grads'), ('ensemble', 'ce_grads')])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_a_step_with_non_finite_extra_gradients_is_skipped_as_in_rose(variant, argument, bad):
  rng = np.random.default_rng(3)
  params = _tree(rng)
  tx = rose_jax.selective(optax.adamw(1e-2, weight_decay=0.1), variant=variant, upper=0.5,
                          selectable=RANKED)
  updates, state = tx.update(_tree(rng), tx.init(params), params, kl_grads=_tree(rng))
  params = optax.apply_updates(params, updates)
  poisoned = _tree(rng)
  poisoned['a'] = poisoned['a'].at[(0,) * poisoned['a'].ndim].set(bad)  # one scalar
  extra = {'kl_grads': _tree(rng), argument: poisoned}
  grads = _tree(rng)
  updates, skipped = tx.update(grads, state, params, **extra)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(skipped, state)
  clean = {'kl_grads': _tree(rng)}
  assert not all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(
      tx.update(grads, skipped, params, **clean)[0]))
