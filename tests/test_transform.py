"""scale_by_masked_adam and scale_by_rose: properties, errors, jit, pmap, shard_map."""

import functools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

import rose_jax
from rose_jax import selection, transform


def _random_tree(rng, shapes=None):
  shapes = shapes or {'w1': (5, 3), 'b1': (3,), 'nested': {'w2': (3, 4), 'ln': (4,)}, 's': ()}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(st.integers(0, 2**16))
def test_masked_adam_without_mask_is_adam_in_hugging_face_form(seed):
  rng = np.random.default_rng(seed)
  params = _random_tree(rng)
  ours = transform.scale_by_masked_adam(eps=0.0)
  theirs = optax.scale_by_adam(b1=0.9, b2=0.98, eps=0.0)
  s1, s2 = ours.init(params), theirs.init(params)
  for _ in range(5):
    grads = _random_tree(rng)
    u1, s1 = ours.update(grads, s1)
    u2, s2 = theirs.update(grads, s2)
    chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(s1.mu, s2.mu)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(st.integers(0, 2**16))
def test_zero_mask_leaves_parameter_and_first_moment_unchanged(seed):
  rng = np.random.default_rng(seed)
  params = _random_tree(rng)
  tx = transform.scale_by_masked_adam()
  state = tx.init(params)
  _, state = tx.update(_random_tree(rng), state)  # build some momentum
  mask = jax.tree.map(lambda _: jnp.float32(0.0), params)
  updates, new_state = tx.update(_random_tree(rng), state, mask=mask)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_close(new_state.mu, state.mu, rtol=1e-6)


def test_element_mask_in_masked_adam_freezes_single_scalars():
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)}
  tx = transform.scale_by_masked_adam()
  state = tx.init(params)
  mask = {'w': jnp.asarray(rng.integers(0, 2, size=(4, 4)), jnp.float32)}
  updates, _ = tx.update(_random_tree(rng, {'w': (4, 4)}), state, mask=mask)
  assert bool(jnp.all(jnp.where(mask['w'] == 0, updates['w'] == 0, updates['w'] != 0)))


def test_warmup_and_first_step_masks():
  rng = np.random.default_rng(1)
  params = _random_tree(rng)
  tx = rose_jax.scale_by_rose(variant='second', upper=0.3, warmup_steps=2)
  state = tx.init(params)
  for step in range(1, 5):
    _, state = tx.update(_random_tree(rng), state)
    kept = float(rose_jax.kept_fraction(state.mask))
    if step <= 2:
      assert kept == 1.0, step
    else:
      assert kept < 1.0, step
  # No warm-up: the second-order mask is still all ones before momentum exists.
  tx = rose_jax.scale_by_rose(variant='second', upper=0.3)
  state = tx.init(params)
  _, state = tx.update(_random_tree(rng), state)
  assert float(rose_jax.kept_fraction(state.mask)) == 1.0


def test_element_granularity_masks_scalars_and_keeps_each_tensors_share():
  rng = np.random.default_rng(2)
  params = _random_tree(rng)
  tx = rose_jax.rose(1e-2, variant='first', upper=0.5, granularity='element',
                     weight_decay=0.1, selectable={'w1': True, 'b1': False, 's': False,
                                                   'nested': {'w2': True, 'ln': True}})
  state = tx.init(params)
  # The state keeps one scalar per ranked tensor, not a mask per scalar.
  assert state.mask['w1'].shape == () and isinstance(state.mask['b1'], optax.MaskedNode)
  update = jax.jit(tx.update)
  for _ in range(3):
    kl = _random_tree(rng)
    updates, state = update(_random_tree(rng), state, params, kl_grads=kl)
    params = optax.apply_updates(params, updates)
    ranked = {'w1': kl['w1'], 'w2': kl['nested']['w2'], 'ln': kl['nested']['ln']}
    # 31 ranked scalars: the median is the 16th smallest |kl|, no interpolation.
    hi = np.quantile(np.abs(np.concatenate([np.ravel(v) for v in ranked.values()])), 0.5)
    kept = {k: np.abs(np.asarray(v)) <= hi for k, v in ranked.items()}
    np.testing.assert_array_equal(np.asarray(updates['w1']) != 0, kept['w1'])
    np.testing.assert_array_equal(np.asarray(updates['nested']['ln']) != 0, kept['ln'])
    for name, value in (('w1', state.mask['w1']), ('w2', state.mask['nested']['w2']),
                        ('ln', state.mask['nested']['ln'])):
      assert float(value) == pytest.approx(kept[name].mean(), abs=1e-6), name
  shares = [kept[k].mean() for k in ('w1', 'w2', 'ln')]
  assert float(rose_jax.kept_fraction(state.mask)) == pytest.approx(np.mean(shares), abs=1e-6)


def test_single_selectable_tensor_is_always_updated():
  rng = np.random.default_rng(3)
  params = _random_tree(rng)
  selectable = jax.tree.map(lambda _: False, params)
  selectable['w1'] = True
  tx = rose_jax.rose(1e-2, upper=0.1, selectable=selectable)
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update(_random_tree(rng), state, params, kl_grads=_random_tree(rng))
    assert float(state.mask['w1']) == 1.0


def test_no_retrace_across_steps():
  rng = np.random.default_rng(4)
  params = _random_tree(rng)
  tx = rose_jax.rose(optax.linear_schedule(1e-3, 0.0, 10), upper=0.6, warmup_steps=2)
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads, kl_grads):
    updates, state = tx.update(grads, state, params, kl_grads=kl_grads)
    return optax.apply_updates(params, updates), state

  for _ in range(5):
    params, state = step(params, state, _random_tree(rng), _random_tree(rng))
  assert int(state.count) == 5


def _replicated_inputs(rng, n):
  params, grads, kl = _random_tree(rng), _random_tree(rng), _random_tree(rng)
  return params, grads, kl, lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)


def test_works_under_pmap():
  n = jax.local_device_count()
  assert n == 8, 'conftest.py should give 8 CPU devices'
  rng = np.random.default_rng(5)
  params, grads, kl, stack = _replicated_inputs(rng, n)
  tx = rose_jax.rose(1e-2, upper=0.5)
  state = tx.init(params)
  single, _ = tx.update(grads, state, params, kl_grads=kl)

  @functools.partial(jax.pmap, axis_name='data')
  def step(params, state, grads, kl):
    grads = jax.lax.pmean(grads, 'data')
    return tx.update(grads, state, params, kl_grads=kl)

  updates, new_state = step(stack(params), stack(state), stack(grads), stack(kl))
  for i in range(n):
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], updates), single, rtol=1e-6)
  assert new_state.count.shape == (n,)


def test_works_under_shard_map_with_named_axis():
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(6)
  params, grads, kl, _stack = _replicated_inputs(rng, n)
  tx = rose_jax.rose(1e-2, upper=0.5, granularity='element')
  state = tx.init(params)
  single, _ = tx.update(grads, state, params, kl_grads=kl)
  # Each device holds a different per-shard gradient whose mean is `grads`.
  noise = jax.tree.map(lambda g: jnp.asarray(rng.normal(size=(n, *g.shape)), jnp.float32), grads)
  noise = jax.tree.map(lambda z: z - z.mean(0, keepdims=True), noise)
  per_device = jax.tree.map(lambda g, z: g[None] + z, grads, noise)

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P(), P('data'), P()),
                     out_specs=(P(), P()))
  def step(params, state, local_grads, kl):
    grads = jax.lax.pmean(jax.tree.map(lambda g: g[0], local_grads), 'data')
    return tx.update(grads, state, params, kl_grads=kl)

  updates, _ = step(params, state, per_device, kl)
  chex.assert_trees_all_close(updates, single, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('kwargs, match', [
    (dict(upper=1.5), r'upper .* \[0, 1\]'),
    (dict(upper=60), r'0.6 for the paper'),
    (dict(upper=0.5, lower=-0.1), r'lower .* \[0, 1\]'),
    (dict(upper=0.3, lower=0.5), 'must not exceed upper'),
    (dict(upper=0.5, gamma=0.0), r'gamma .* \(0, 1\)'),
    (dict(upper=0.5, gamma=1.0), r'gamma .* \(0, 1\)'),
    (dict(upper=0.5, variant='third'), 'Unknown variant'),
    (dict(upper=0.5, granularity='row'), 'Unknown granularity'),
    (dict(upper=0.5, warmup_steps=-1), 'warmup_steps'),
    (dict(upper=0.5, warmup_steps=1.5), 'warmup_steps'),
    (dict(upper=0.5, b1=1.0), 'b1'),
    (dict(upper=0.5, eps=-1.0), 'eps'),
])
def test_bad_hyperparameters_fail_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rose_jax.rose(1e-3, **kwargs)
  with pytest.raises(ValueError, match=match):
    rose_jax.scale_by_rose(**kwargs)


def test_selectable_must_match_params():
  params = {'a': jnp.ones(2), 'b': jnp.ones(3)}
  with pytest.raises(ValueError, match='structure of params'):
    rose_jax.rose(1e-3, upper=0.5, selectable={'a': True}).init(params)
  with pytest.raises(ValueError, match='Python bool'):
    rose_jax.rose(1e-3, upper=0.5, selectable={'a': True, 'b': 'yes'}).init(params)
  with pytest.raises(ValueError, match='marks no parameter'):
    rose_jax.rose(1e-3, upper=0.5, selectable=lambda p: {'a': False, 'b': False}).init(params)


@pytest.mark.parametrize('make', [
    lambda: rose_jax.rose(1e-3, upper=0.5, selectable=selection.authors_selectable),
    lambda: rose_jax.selective(optax.adam(1e-3), upper=0.5,
                               selectable=selection.authors_selectable),
])
def test_hugging_face_rule_on_other_names_names_the_params(make):
  # A Flax Linen classifier's names: none holds both "layer" and "weight".
  params = {'params': {f'Dense_{i}': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
                       for i in range(4)}}
  with pytest.raises(ValueError, match=r'params\.Dense_0\.bias, params\.Dense_0\.kernel, '
                                       r'.*\(and 3 more\).*authors_selectable'):
    make().init(params)


def test_update_errors_name_the_problem():
  rng = np.random.default_rng(7)
  params = _random_tree(rng)
  tx = rose_jax.rose(1e-3, upper=0.5)
  state = tx.init(params)
  grads = _random_tree(rng)
  with pytest.raises(ValueError, match=r'kl_grads=.*symmetric KL'):
    tx.update(grads, state, params)
  bad = dict(grads)
  bad.pop('s')
  with pytest.raises(ValueError, match='kl_grads must be a pytree shaped like'):
    tx.update(grads, state, params, kl_grads=bad)
  bad = dict(grads, w1=jnp.ones((3, 5)))
  with pytest.raises(ValueError, match=r"kl_grads\['w1'\] has shape \(3, 5\)"):
    tx.update(grads, state, params, kl_grads=bad)
  with pytest.raises(ValueError, match='ce_grads'):
    tx.update(grads, state, params, kl_grads=grads, ce_grads={'x': 1})
  # "second" needs no KL gradient.
  second = rose_jax.rose(1e-3, upper=0.5, variant='second')
  second.update(grads, second.init(params), params)


@pytest.mark.parametrize(('variant', 'argument'), [
    ('first', 'kl_grads'), ('ensemble', 'kl_grads'), ('second', 'ce_grads'),
    ('ensemble', 'ce_grads')])
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_a_step_with_non_finite_extra_gradients_is_skipped(variant, argument, bad):
  rng = np.random.default_rng(0)
  params = _random_tree(rng)
  tx = rose_jax.rose(1e-2, variant=variant, upper=0.5)
  state = tx.init(params)
  extra = {'kl_grads': _random_tree(rng)} if variant != 'second' else {}
  updates, state = tx.update(_random_tree(rng), state, params, **extra)
  params = optax.apply_updates(params, updates)
  poisoned = _random_tree(rng)
  poisoned['nested']['ln'] = poisoned['nested']['ln'].at[2].set(bad)  # one scalar
  grads = _random_tree(rng)
  updates, skipped = tx.update(grads, state, params, **{**extra, argument: poisoned})
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(skipped, state)
  # The next finite step is the one that would have come without the bad step.
  clean = {**extra, argument: _random_tree(rng)}
  chex.assert_trees_all_equal(tx.update(grads, skipped, params, **clean),
                              tx.update(grads, state, params, **clean))
  assert not all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(
      tx.update(grads, skipped, params, **clean)[0]))


def test_unused_ce_grads_do_not_poison_the_first_order_update():
  rng = np.random.default_rng(1)
  params = _random_tree(rng)
  tx = rose_jax.rose(1e-2, variant='first', upper=0.5)
  state = tx.init(params)
  poisoned = jax.tree.map(lambda x: x * np.nan, params)
  updates, _ = tx.update(_random_tree(rng), state, params, kl_grads=_random_tree(rng),
                         ce_grads=poisoned)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize('make', [
    lambda: rose_jax.rose(1e-3, variant='second', upper=0.5),
    lambda: transform.scale_by_masked_adam()])
def test_gradients_shaped_unlike_the_params_are_named(make):
  rng = np.random.default_rng(2)
  params = _random_tree(rng)
  tx = make()
  state = tx.init(params)
  grads = _random_tree(rng)
  del grads['nested']
  with pytest.raises(ValueError, match='structure of the params the optimizer was initialised'):
    tx.update(grads, state, params)


def test_eps_is_added_outside_the_bias_corrected_root():
  # Second moments near eps**2: gradients of ~1e-8 give sqrt(v) ~ eps, where
  # Hugging Face's form (eps outside the corrected root) and optax's (eps
  # inside it, after correction) differ by a factor of about 4, not rounding.
  b1, b2, eps = 0.9, 0.98, 1e-8
  rng = np.random.default_rng(7)
  shapes = {'w': (3, 4), 'b': (4,)}
  params = _random_tree(rng, shapes)
  tx = transform.scale_by_masked_adam(b1=b1, b2=b2, eps=eps)
  optax_form = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  state, optax_state = tx.init(params), optax_form.init(params)
  mu = {k: np.zeros(s) for k, s in shapes.items()}
  nu = {k: np.zeros(s) for k, s in shapes.items()}
  for t in range(1, 5):
    grads = jax.tree.map(lambda x: x * 1e-8, _random_tree(rng, shapes))
    updates, state = tx.update(grads, state)
    optax_updates, optax_state = optax_form.update(grads, optax_state)
    for k in shapes:
      g = np.asarray(grads[k], np.float64)
      mu[k] = b1 * mu[k] + (1 - b1) * g
      nu[k] = b2 * nu[k] + (1 - b2) * g * g
      # transformers' AdamW: step_size = sqrt(1 - b2^t) / (1 - b1^t); m / (sqrt(v) + eps)
      expected = np.sqrt(1 - b2**t) / (1 - b1**t) * mu[k] / (np.sqrt(nu[k]) + eps)
      np.testing.assert_allclose(updates[k], expected, rtol=1e-4)
      gap = np.abs(np.asarray(optax_updates[k]) - expected) / np.abs(expected)
      assert gap.min() > 0.1, 'the two placements agree here: the test cannot tell them apart'


def test_ensemble_mask_is_gamma_first_plus_one_minus_gamma_second():
  # Four ranked tensors with risks chosen by hand. upper=0.5 over four
  # risks keeps floor(0.5 * 3) + 1 = 2 of them: the two lowest.
  gamma = 0.3
  params = {k: jnp.zeros((2,), jnp.float32) for k in 'abcd'}
  # ||kl||: a=1, b=2, c=3, d=4 -> first-order keeps a, b.
  vector = lambda values: {k: jnp.asarray([v, 0.0], jnp.float32)
                           for k, v in zip('abcd', values, strict=True)}
  kl = vector((1, 2, 3, 4))
  # Momentum norm 1; second-order risk |0.1 ||g|| - 1| with ||g|| = 10, 0, 30, 9:
  # 0, 1, 2, 0.1 -> second-order keeps a, d.
  mu = vector((1, 1, 1, 1))
  grads = vector((10, 0, 30, 9))
  tx = rose_jax.scale_by_rose(variant='ensemble', upper=0.5, gamma=gamma)
  state = tx.init(params)._replace(count=jnp.asarray(1, jnp.int32), mu=mu)
  _, new_state = tx.update(grads, state, kl_grads=kl)
  first = {'a': 1, 'b': 1, 'c': 0, 'd': 0}
  second = {'a': 1, 'b': 0, 'c': 0, 'd': 1}
  for k in 'abcd':
    expected = np.float32(gamma) * first[k] + (1 - np.float32(gamma)) * second[k]
    assert float(new_state.mask[k]) == pytest.approx(expected, abs=1e-7), k
  # gamma weighs the first-order mask: b (first only) gets gamma, d (second only) 1 - gamma.
  assert float(new_state.mask['b']) == pytest.approx(0.3)
  assert float(new_state.mask['d']) == pytest.approx(0.7)


def test_pmap_with_different_gradients_per_device_updates_on_their_mean():
  n = jax.local_device_count()
  rng = np.random.default_rng(8)
  params = _random_tree(rng)
  per_device = [_random_tree(rng) for _ in range(n)]
  kl_per_device = [_random_tree(rng) for _ in range(n)]
  mean = lambda trees: jax.tree.map(lambda *x: sum(x) / n, *trees)
  tx = rose_jax.rose(1e-2, upper=0.5)
  state = tx.init(params)
  _, state = tx.update(_random_tree(rng), state, params, kl_grads=_random_tree(rng))
  expected, expected_state = tx.update(mean(per_device), state, params,
                                       kl_grads=mean(kl_per_device))
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)

  @functools.partial(jax.pmap, axis_name='data', in_axes=(None, None, 0, 0))
  def step(params, state, grads, kl):
    grads, kl = jax.lax.pmean((grads, kl), 'data')
    return tx.update(grads, state, params, kl_grads=kl)

  updates, new_state = step(params, state, stack(per_device), stack(kl_per_device))
  for i in range(n):
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], updates), expected,
                                rtol=1e-5, atol=1e-8)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], new_state.mu), expected_state.mu,
                              rtol=1e-5, atol=1e-8)
  one_device, _ = tx.update(per_device[0], state, params, kl_grads=kl_per_device[0])
  assert not all(jax.tree.leaves(jax.tree.map(np.allclose, one_device, expected)))


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(st.integers(0, 2**16), st.sampled_from(['tensor', 'element']),
                  st.sampled_from([None, 0.5]), st.booleans())
def test_rose_masks_are_the_masks_each_variant_steps_with(seed, granularity, max_grad_norm,
                                                          with_ce):
  # The masks are recomputed outside the optimizer: each must equal the mask
  # that rose() of that variant keeps after the same step.
  rng = np.random.default_rng(seed)
  params, settings = _random_tree(rng), dict(upper=0.6, lower=0.1, gamma=0.3, b1=0.8,
                                             granularity=granularity, warmup_steps=1,
                                             max_grad_norm=max_grad_norm)
  extras = dict(kl_grads=_random_tree(rng), ce_grads=_random_tree(rng) if with_ce else None)
  steps = [(_random_tree(rng), _random_tree(rng)) for _ in range(3)]
  txs = {v: rose_jax.rose(1e-3, variant=v, **settings) for v in ('first', 'second', 'ensemble')}
  states = {v: tx.init(params) for v, tx in txs.items()}
  for grads, kl in steps:
    step_extras = {**extras, 'kl_grads': kl}
    masks = rose_jax.rose_masks(grads, states['ensemble'], **step_extras, **settings)
    for variant, tx in txs.items():
      expected = rose_jax.rose_masks(grads, states[variant], **step_extras, **settings)[variant]
      _, states[variant] = tx.update(grads, states[variant], params, **step_extras)
      chex.assert_trees_all_close(expected, states[variant].mask, atol=1e-7)
    chex.assert_trees_all_close(masks['ensemble'], states['ensemble'].mask, atol=1e-7)
    mixed = rose_jax.ensemble_mask(masks['first'], masks['second'], gamma=0.3)
    chex.assert_trees_all_close(mixed, masks['ensemble'], atol=1e-6)
  # After the warm-up step the masks rank: not all ones.
  assert min(float(np.min(m)) for m in jax.tree.leaves(masks['first'])) < 1


def test_rose_masks_give_the_hand_computed_first_and_second_order_masks():
  # The case of test_ensemble_mask_is_gamma_first_plus_one_minus_gamma_second.
  params = {k: jnp.zeros((2,), jnp.float32) for k in 'abcd'}
  vector = lambda values: {k: jnp.asarray([v, 0.0], jnp.float32)
                           for k, v in zip('abcd', values, strict=True)}
  state = rose_jax.scale_by_rose(variant='ensemble', upper=0.5).init(params)._replace(
      count=jnp.asarray(1, jnp.int32), mu=vector((1, 1, 1, 1)))
  masks = rose_jax.rose_masks(vector((10, 0, 30, 9)), state, kl_grads=vector((1, 2, 3, 4)),
                              upper=0.5, gamma=0.3)
  assert {k: float(v) for k, v in masks['first'].items()} == {'a': 1, 'b': 1, 'c': 0, 'd': 0}
  assert {k: float(v) for k, v in masks['second'].items()} == {'a': 1, 'b': 0, 'c': 0, 'd': 1}
  with pytest.raises(ValueError, match='kl_grads'):
    rose_jax.rose_masks(vector((1, 1, 1, 1)), state, kl_grads=None, upper=0.5)


def test_rose_masks_refuses_a_state_that_keeps_no_momentum():
  params = {'layer': {'weight': jnp.ones((2, 2))}}
  state = rose_jax.selective(optax.adam(1e-3), upper=0.5).init(params)
  with pytest.raises(TypeError, match='rose_masks takes the state of rose or scale_by_rose'):
    rose_jax.rose_masks(params, state, kl_grads=params, upper=0.5)
