"""The ``rose`` alias against the NumPy transcription of the authors' optimizer."""

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
from tests.helpers import reference
from tests.helpers.reference import SHAPES, by_name, named_tree

settings = st.fixed_dictionaries({
    'variant': st.sampled_from(['first', 'second', 'ensemble']),
    'upper': st.sampled_from([0.3, 0.4, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]),
    'lower': st.sampled_from([0.0, 0.0, 0.1, 0.25]),
    'gamma': st.sampled_from([0.5, 0.3, 0.9]),
    'warmup_steps': st.integers(0, 3),
    'weight_decay': st.sampled_from([0.0, 0.01, 0.1]),
    'lr': st.sampled_from([1e-3, 3e-2]),
    'seed': st.integers(0, 2**16),
})


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(settings)
def test_trajectory_equals_authors_sparse_adamw(config):
  rng = np.random.default_rng(config['seed'])
  params = named_tree(rng)
  ranked = [k for k in SHAPES if selection.is_authors_ranked(k)]
  decayed = [k for k in SHAPES if selection.is_decayed(k)]
  schedule = optax.linear_schedule(config['lr'], 0.0, 40)
  ref = reference.SparseAdamW(
      params, lr=schedule, variant=config['variant'], upper=config['upper'],
      lower=config['lower'], gamma=config['gamma'],
      warmup_steps=config['warmup_steps'], weight_decay=config['weight_decay'],
      ranked=ranked, decayed=decayed)
  tx = rose_jax.rose(
      schedule, variant=config['variant'], upper=config['upper'],
      lower=config['lower'], gamma=config['gamma'],
      warmup_steps=config['warmup_steps'], weight_decay=config['weight_decay'],
      selectable=by_name(selection.is_authors_ranked),
      weight_decay_mask=by_name(selection.is_decayed))
  jax_params = jax.tree.map(jnp.asarray, params)
  state = tx.init(jax_params)
  update = jax.jit(tx.update)
  for _ in range(12):
    grads, kl_grads = named_tree(rng), named_tree(rng, scale=rng.uniform(0.1, 2))
    ref.step(grads, kl_grads)
    updates, state = update(grads, state, jax_params, kl_grads=kl_grads)
    jax_params = optax.apply_updates(jax_params, updates)
    for name in ranked:
      assert float(state.mask[name]) == pytest.approx(float(ref.last_mask[name]))
    chex.assert_trees_all_close(jax_params, ref.params, rtol=2e-5, atol=2e-6)


def test_r_drop_plus_rose_uses_ce_grads_for_second_order_risk():
  rng = np.random.default_rng(0)
  params = named_tree(rng)
  ranked = [k for k in SHAPES if selection.is_authors_ranked(k)]
  ref = reference.SparseAdamW(params, lr=1e-2, variant='ensemble', upper=0.5,
                              ranked=ranked)
  tx = rose_jax.rose(1e-2, variant='ensemble', upper=0.5,
                     selectable=by_name(selection.is_authors_ranked))
  jax_params = jax.tree.map(jnp.asarray, params)
  state = tx.init(jax_params)
  differs = False
  for _ in range(8):
    ce, kl = named_tree(rng), named_tree(rng)
    combined = jax.tree.map(lambda c, k: c + 1.7 * k, ce, kl)
    ref.step(combined, kl, ce_grads=ce)
    updates, state = tx.update(combined, state, jax_params, kl_grads=kl, ce_grads=ce)
    jax_params = optax.apply_updates(jax_params, updates)
    chex.assert_trees_all_close(jax_params, ref.params, rtol=2e-5, atol=2e-6)
    # Without ce_grads the second-order mask comes from the combined gradient.
    _, other = tx.update(combined, state, jax_params, kl_grads=kl)
    differs |= any(float(other.mask[k]) != float(state.mask[k]) for k in ranked)
  assert differs, 'ce_grads never changed the mask: the test is not testing it'


def test_all_ones_mask_is_adamw_in_hugging_face_form():
  # With lower=0 and upper=1 every risk passes; with eps=0 and no decay the
  # Hugging Face form equals optax.adamw's.
  rng = np.random.default_rng(1)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  rose_tx = rose_jax.rose(1e-2, upper=1.0, eps=0.0, weight_decay=0.0)
  adamw = optax.adamw(1e-2, b1=0.9, b2=0.98, eps=0.0, weight_decay=0.0)
  p1, p2 = params, params
  s1, s2 = rose_tx.init(params), adamw.init(params)
  for _ in range(6):
    grads, kl = named_tree(rng), named_tree(rng)
    u1, s1 = rose_tx.update(grads, s1, p1, kl_grads=kl)
    u2, s2 = adamw.update(grads, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  chex.assert_trees_all_close(p1, p2, rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_learning_rate_upper_gamma():
  rng = np.random.default_rng(2)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  selectable = by_name(selection.is_authors_ranked)
  tx = optax.inject_hyperparams(rose_jax.rose)(
      learning_rate=1e-2, upper=0.5, gamma=0.3, selectable=selectable)
  fixed = rose_jax.rose(1e-2, upper=0.5, gamma=0.3, selectable=selectable)
  s1, s2 = tx.init(params), fixed.init(params)
  step1, step2 = jax.jit(tx.update), jax.jit(fixed.update)
  p1 = p2 = params
  for i in range(4):
    grads, kl = named_tree(rng), named_tree(rng)
    if i == 2:  # change all three mid-run, in both
      s1.hyperparams['learning_rate'] = jnp.asarray(5e-3)
      s1.hyperparams['upper'] = jnp.asarray(0.8)
      s1.hyperparams['gamma'] = jnp.asarray(0.6)
      fixed = rose_jax.rose(5e-3, upper=0.8, gamma=0.6, selectable=selectable)
      step2 = jax.jit(fixed.update)
    u1, s1 = step1(grads, s1, p1, kl_grads=kl)
    u2, s2 = step2(grads, s2, p2, kl_grads=kl)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    chex.assert_trees_all_close(p1, p2, rtol=1e-6)
    chex.assert_trees_all_close(s1.inner_state.mask, s2.mask)
  values = {float(m) for m in jax.tree.leaves(s1.inner_state.mask)}
  gamma = np.float32(0.6)
  assert values <= {0.0, float(gamma), float(np.float32(1) - gamma), 1.0}


def test_composes_in_chain_after_clipping():
  rng = np.random.default_rng(3)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  chained = optax.chain(optax.clip_by_global_norm(0.5), rose_jax.rose(1e-2, upper=0.6))
  alone = rose_jax.rose(1e-2, upper=0.6)
  s1, s2 = chained.init(params), alone.init(params)
  grads, kl = named_tree(rng, 3.0), named_tree(rng)
  u1, s1 = chained.update(grads, s1, params, kl_grads=kl)
  clipped, _ = optax.clip_by_global_norm(0.5).update(grads, optax.EmptyState())
  u2, s2 = alone.update(clipped, s2, params, kl_grads=kl)
  chex.assert_trees_all_close(u1, u2)


def test_apply_if_finite_skips_non_finite_steps():
  rng = np.random.default_rng(4)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  tx = optax.apply_if_finite(rose_jax.rose(1e-2, upper=0.6), max_consecutive_errors=3)
  state = tx.init(params)
  grads, kl = named_tree(rng), named_tree(rng)
  grads['classifier.weight'][0, 0] = np.nan
  updates, new_state = tx.update(grads, state, params, kl_grads=kl)
  chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, params))
  assert int(new_state.notfinite_count) == 1
  chex.assert_trees_all_close(new_state.inner_state.mu, state.inner_state.mu)


def test_bf16_params_with_float32_moments():
  rng = np.random.default_rng(5)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), named_tree(rng))
  tx = rose_jax.rose(1e-2, upper=0.6)
  state = tx.init(params)
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.mu))
  grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), named_tree(rng))
  kl = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), named_tree(rng))
  updates, state = jax.jit(tx.update)(grads, state, params, kl_grads=kl)
  new = optax.apply_updates(params, updates)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new))
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(state.mu))
  # The float32 result rounded to bf16 is what the bf16 parameters hold.
  p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  s32 = tx.init(p32)
  u32, _ = tx.update(jax.tree.map(lambda x: x.astype(jnp.float32), grads), s32, p32,
                     kl_grads=jax.tree.map(lambda x: x.astype(jnp.float32), kl))
  expected = jax.tree.map(lambda p, u: (p + u).astype(jnp.bfloat16), p32, u32)
  chex.assert_trees_all_equal(new, expected)


MU_DTYPE_TAKERS = {
    'rose': lambda **kw: rose_jax.rose(1e-2, upper=0.6, **kw),
    'hf_adamw': lambda **kw: rose_jax.hf_adamw(1e-2, **kw),
    'scale_by_rose': lambda **kw: rose_jax.scale_by_rose(upper=0.6, **kw),
    'scale_by_masked_adam': lambda **kw: rose_jax.scale_by_masked_adam(**kw),
}


@pytest.mark.parametrize('name', sorted(MU_DTYPE_TAKERS))
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_mu_dtype_sets_both_moments_and_its_old_name_still_works_with_a_warning(name, dtype):
  make = MU_DTYPE_TAKERS[name]
  params = named_tree(np.random.default_rng(0))
  state = make(mu_dtype=dtype).init(params)
  assert all(m.dtype == dtype for m in jax.tree.leaves((state.mu, state.nu)))
  with pytest.warns(DeprecationWarning, match='renamed mu_dtype'):
    old = make(moment_dtype=dtype)
  chex.assert_trees_all_equal(old.init(params), state)
  with pytest.raises(TypeError, match='both mu_dtype and its old name'):
    make(mu_dtype=dtype, moment_dtype=dtype)


def test_weight_decay_needs_params():
  tx = rose_jax.rose(1e-2, upper=0.6, variant='second')
  params = {'w': jnp.ones((2, 2))}
  state = tx.init(params)
  with pytest.raises(ValueError, match='needs params'):
    tx.update(params, state)


@pytest.mark.parametrize('weight_decay', [-0.1])
def test_negative_weight_decay_rejected(weight_decay):
  with pytest.raises(ValueError, match='weight_decay'):
    rose_jax.rose(1e-2, upper=0.6, weight_decay=weight_decay)


@pytest.mark.parametrize('variant', ['second', 'ensemble'])
def test_clipping_scales_every_gradient_of_the_step_by_the_same_factor(variant):
  # R-Drop + ROSE: the update gradient is that of CE + alpha KL; the
  # second-order risk ranks the CE gradient. With max_grad_norm, all three
  # are scaled by the update gradient's clipping factor, computed here in NumPy.
  rng = np.random.default_rng(9)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  ranked = by_name(selection.is_authors_ranked)
  common = dict(variant=variant, upper=0.5, selectable=ranked)
  clipped = rose_jax.rose(1e-2, max_grad_norm=0.5, **common)
  plain = rose_jax.rose(1e-2, **common)
  s1, s2 = clipped.init(params), plain.init(params)
  mask_changed = False
  for _ in range(4):
    grads, kl, ce = named_tree(rng, 3.0), named_tree(rng), named_tree(rng, 2.0)
    norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
    factor = min(1.0, 0.5 / norm)
    assert factor < 0.1
    scaled = lambda tree, f=factor: {k: (v * f).astype(np.float32) for k, v in tree.items()}
    u1, s1 = clipped.update(grads, s1, params, kl_grads=kl, ce_grads=ce)
    u2, new_s2 = plain.update(scaled(grads), s2, params, kl_grads=scaled(kl),
                              ce_grads=scaled(ce))
    chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-8)
    chex.assert_trees_all_close(s1.mask, new_s2.mask)
    # Ranking a raw CE gradient against a momentum of clipped ones would
    # give another mask: the test can tell the two apart.
    _, raw = plain.update(scaled(grads), s2, params, kl_grads=scaled(kl), ce_grads=ce)
    mask_changed |= any(float(raw.mask[k]) != float(new_s2.mask[k])
                        for k in ranked if ranked[k])
    s2 = new_s2
  assert mask_changed, 'clipping ce_grads never changed the mask: the test is not testing it'


def test_clipping_inside_rose_equals_clipping_before_it_without_extra_gradients():
  rng = np.random.default_rng(10)
  params = jax.tree.map(jnp.asarray, named_tree(rng))
  inside = rose_jax.rose(1e-2, variant='second', upper=0.6, max_grad_norm=0.5)
  before = optax.chain(optax.clip_by_global_norm(0.5),
                       rose_jax.rose(1e-2, variant='second', upper=0.6))
  s1, s2 = inside.init(params), before.init(params)
  for scale in (3.0, 0.01, 3.0):  # clipped, within the norm, clipped
    grads = named_tree(rng, scale)
    u1, s1 = inside.update(grads, s1, params)
    u2, s2 = before.update(grads, s2, params)
    chex.assert_trees_all_close(u1, u2, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('max_grad_norm', [0.0, -1.0])
def test_non_positive_max_grad_norm_rejected(max_grad_norm):
  with pytest.raises(ValueError, match='max_grad_norm must be > 0'):
    rose_jax.rose(1e-2, upper=0.5, max_grad_norm=max_grad_norm)


@hypothesis.settings(max_examples=10, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), weight_decay=st.sampled_from([0.0, 0.01, 0.1]),
                  grad_scale=st.sampled_from([1.0, 1e-7]))
def test_hf_adamw_is_the_authors_optimizer_with_every_tensor_kept(seed, weight_decay,
                                                                  grad_scale):
  # SparseAdamW with lower=0, upper=1 keeps every tensor: Hugging Face's AdamW.
  # Gradients of 1e-7 put sqrt(v) near eps, where eps's placement shows.
  rng = np.random.default_rng(seed)
  params = named_tree(rng)
  decayed = [k for k in SHAPES if selection.is_decayed(k)]
  schedule = optax.linear_schedule(1e-2, 0.0, 20)
  ref = reference.SparseAdamW(params, lr=schedule, variant='first', upper=1.0, b2=0.999,
                              weight_decay=weight_decay, decayed=decayed)
  tx = rose_jax.hf_adamw(schedule, b2=0.999, weight_decay=weight_decay,
                         weight_decay_mask=by_name(selection.is_decayed))
  jax_params = jax.tree.map(jnp.asarray, params)
  state = tx.init(jax_params)
  for _ in range(5):
    grads = named_tree(rng, grad_scale)
    ref.step(grads, kl_grads=named_tree(rng))
    updates, state = tx.update(grads, state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
  chex.assert_trees_all_close(jax_params, ref.params, rtol=2e-5, atol=2e-6)
