"""The train step: gradients per method, and data parallelism on 8 CPU devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rose_jax
from rose_jax import selection
from rose_jax._src import losses
from rose_jax.models import EncoderForSequenceClassification, as_apply_fn
from rose_jax.training import compute_gradients, methods, sweep
from rose_jax.training import step as step_lib
from tests.helpers import (
  CountingOptimizer,
  assert_same_results,
  definitions,
  recording_optimizer,
  rose_chain,
  runner,
  tiny_batch,
  tiny_model,
)
from tests.helpers.own_models import function_classifier, token_batch

# Methods whose gradients come from dropout passes; SMART's and FreeLB's are
# tested in test_adversarial.py.
PASS_METHODS = [m for m in methods.METHOD_NAMES if methods.get_method(m).adversary is None]


@functools.cache
def _reference(passes):
  """Model, batch, key and the CE and KL gradients, by plain jax.grad of the
  tests' own loss definitions."""
  apply_fn, params = as_apply_fn(tiny_model())
  batch, key = tiny_batch(), jax.random.key(3)

  def terms(p):
    inputs = {k: batch[k] for k in ('input_ids', 'attention_mask')}
    if passes == 2:
      inputs = {k: np.concatenate([v, v]) for k, v in inputs.items()}
    logits = apply_fn(p, inputs, dropout_key=key)
    if passes == 1:
      return definitions.cross_entropy(logits, batch['labels']), jnp.float32(0)
    a, b = jnp.split(logits, 2)
    ce = (definitions.cross_entropy(a, batch['labels'])
          + definitions.cross_entropy(b, batch['labels'])) / 2
    return ce, definitions.rose_kl(a, b)

  ce_grad = jax.jit(jax.grad(lambda p: terms(p)[0]))(params)
  kl_grad = jax.jit(jax.grad(lambda p: terms(p)[1]))(params)
  return apply_fn, params, batch, key, ce_grad, kl_grad, jax.jit(terms)(params)


@pytest.mark.parametrize('name, cotangents', [(m, 'sequential') for m in PASS_METHODS]
                         + [('rose-ensemble', 'vmap'), ('rdrop-rose-first', 'vmap')])
def test_each_method_gets_the_gradients_it_asks_for(name, cotangents):
  method = methods.get_method(name, rdrop_alpha=0.7)
  apply_fn, params, batch, key, ce_grad, kl_grad, (ce, kl) = _reference(method.passes)
  counting = CountingOptimizer(recording_optimizer())
  tx = counting.tx
  step = step_lib.make_train_step(apply_fn, tx, method, donate=False, cotangents=cotangents)
  _, state, metrics = step(params, tx.init(params), batch, key)
  # R-Drop's alpha weighs R-Drop's KL, (KL(p||q) + KL(q||p)) / 2: twice ROSE's.
  combined = jax.tree.map(lambda c, k: c + 0.7 * 2 * k * (method.kl_weight > 0), ce_grad, kl_grad)
  chex.assert_trees_all_close(state.grads, combined, rtol=1e-4, atol=1e-6)
  if method.kl_grads:
    chex.assert_trees_all_close(state.kl_grads, kl_grad, rtol=1e-4, atol=1e-6)
  if method.ce_grads:
    chex.assert_trees_all_close(state.ce_grads, ce_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], ce + 0.7 * 2 * kl * (method.kl_weight > 0),
                             rtol=1e-5)
  assert (float(metrics['kl']) > 0) == (method.passes == 2)
  opt_state = state
  for i in (1, 2):
    params, opt_state, _ = step(params, opt_state, tiny_batch(i), jax.random.key(i))
  assert counting.traces == 1, f'{name}: the step was traced {counting.traces} times in 3 steps'


@pytest.mark.parametrize('name', [m for m in methods.METHOD_NAMES
                                  if methods.get_method(m).uses_rose])
def test_rose_methods_train_and_report_the_kept_fraction(name):
  method = methods.get_method(name)
  apply_fn, params = as_apply_fn(tiny_model())
  counting = CountingOptimizer(rose_chain(method.rose_variant))
  tx = counting.tx
  step = step_lib.make_train_step(apply_fn, tx, method)
  opt_state = tx.init(params)
  before = jax.tree.map(np.array, params)
  kept = []
  for i in range(3):
    params, opt_state, metrics = step(params, opt_state, tiny_batch(i), jax.random.key(i))
    kept.append(float(metrics['kept_fraction']))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert kept[-1] < 1.0
  assert counting.traces == 1, f'{name}: ROSE\'s state changed its structure between steps'
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, params)
  assert any(jax.tree.leaves(changed))


@pytest.mark.filterwarnings('ignore::rose_jax.training.NoDropoutWarning')  # dropout 0 on purpose
@pytest.mark.parametrize('parallel', ['shard_map', 'pmap'])
def test_eight_devices_equal_one_device_without_dropout(parallel):
  assert jax.device_count() == 8
  method = methods.get_method('rose-ensemble')
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  batches = [tiny_batch(i) for i in range(3)]
  tx = rose_chain()
  one, one_metrics = runner('none', tx, apply_fn, method)(params, batches)
  eight, eight_metrics = runner(parallel, tx, apply_fn, method)(params, batches)
  # Adam moves a parameter by ~lr (1e-3) whatever its gradient's size, so where
  # a gradient is ~0 the order of the device sum can flip a step's sign: allow
  # 1% of lr. A wrong average would be off by the order of lr everywhere.
  chex.assert_trees_all_close(eight, one, rtol=1e-4, atol=1e-5)
  for a, b in zip(one_metrics, eight_metrics, strict=True):
    for k in ('loss', 'ce', 'accuracy', 'kept_fraction'):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6)


def _shard_gradients(apply_fn, params, batch, key, devices):
  """Each device's CE and KL gradients, as the step must draw them: device
  ``d`` runs its rows with the step key folded with ``d``."""
  rows = len(batch['labels']) // devices

  def terms(p, inputs, labels, device_key):
    a, b = jnp.split(apply_fn(p, inputs, dropout_key=device_key), 2)
    ce = (definitions.cross_entropy(a, labels) + definitions.cross_entropy(b, labels)) / 2
    return ce, definitions.rose_kl(a, b)

  # One compiled function for every device's rows.
  gradients = jax.jit(lambda *args: (jax.grad(lambda p, *a: terms(p, *a)[0])(*args),
                                     jax.grad(lambda p, *a: terms(p, *a)[1])(*args)))
  ce_grads, kl_grads = [], []
  for d in range(devices):
    local = {k: v[d * rows:(d + 1) * rows] for k, v in batch.items()}
    inputs = {k: np.concatenate([local[k]] * 2) for k in ('input_ids', 'attention_mask')}
    ce, kl = gradients(params, inputs, local['labels'], jax.random.fold_in(key, d))
    ce_grads.append(ce)
    kl_grads.append(kl)
  return ce_grads, kl_grads


@pytest.mark.parametrize('parallel', ['shard_map', 'pmap'])
@pytest.mark.parametrize('name', ['rdrop', 'rose-ensemble', 'rdrop-rose-first'])
def test_eight_devices_with_dropout_give_the_global_batch_gradients(parallel, name):
  # The global loss is the mean of the devices' CE plus the *sum* of their KL
  # (the KL sums over the batch), so a device's KL gradient counts fully, not
  # 1/8: the step scales each device's KL by the device count before averaging.
  method = methods.get_method(name, rdrop_alpha=0.7)
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.2))
  batch, key = tiny_batch(5), jax.random.key(11)
  devices = jax.device_count()
  ce_grads, kl_grads = _shard_gradients(apply_fn, params, batch, key, devices)
  ce = jax.tree.map(lambda *g: sum(g) / devices, *ce_grads)
  kl = jax.tree.map(lambda *g: sum(g), *kl_grads)
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False)
  state = tx.init(params)
  if parallel == 'pmap':
    _, state, _ = step(step_lib.replicate(params), step_lib.replicate(state),
                       step_lib.split_for_pmap(batch), key)
    state = step_lib.unreplicate(state)
  else:
    _, state, _ = step(params, state, step_lib.shard_batch(batch, step_lib.data_mesh()), key)
  close = dict(rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(
      state.grads, jax.tree.map(lambda c, k: c + 0.7 * 2 * k * (method.kl_weight > 0), ce, kl),
      **close)
  if method.kl_grads:
    chex.assert_trees_all_close(state.kl_grads, kl, **close)
  if method.ce_grads:
    chex.assert_trees_all_close(state.ce_grads, ce, **close)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(kl)) > 1e-3, 'KL is ~0'


def test_selective_reports_its_kept_fraction_in_the_step():
  import rose_jax
  from rose_jax import masking, selection
  method = methods.get_method('rose-ensemble')
  apply_fn, params = as_apply_fn(tiny_model())
  tx = rose_jax.selective(optax.adamw(1e-3), upper=0.5,
                          selectable=selection.authors_selectable)
  step = step_lib.make_train_step(apply_fn, tx, method)
  opt_state = tx.init(params)
  for i in range(3):
    params, opt_state, metrics = step(params, opt_state, tiny_batch(i), jax.random.key(i))
  assert isinstance(step_lib.find_rose_state(opt_state), rose_jax.SelectiveState)
  kept = float(metrics['kept_fraction'])
  assert kept < 1.0 and kept == float(masking.kept_fraction(opt_state.mask))


# The methods of dropout passes are counted by the two tests above.
@pytest.mark.parametrize('name', [m for m in methods.METHOD_NAMES if m not in PASS_METHODS])
def test_the_adversarial_steps_compile_once(name):
  method = methods.get_method(name)
  apply_fn, params = as_apply_fn(tiny_model())
  counting = CountingOptimizer(rose_chain(method.rose_variant) if method.uses_rose
                               else optax.adamw(1e-3))
  step = step_lib.make_train_step(apply_fn, counting.tx, method)
  opt_state = counting.tx.init(params)
  for i in range(3):
    params, opt_state, _ = step(params, opt_state, tiny_batch(i), jax.random.key(i))
  assert counting.traces == 1, f'{name}: the step was traced {counting.traces} times in 3 steps'


@pytest.mark.parametrize('parallel', ['shard_map', 'pmap'])
def test_dropout_runs_repeat_from_the_same_seed_and_compile_once(parallel):
  method = methods.get_method('rdrop-rose-ensemble')
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.2))
  batches = [tiny_batch(i) for i in range(2)]
  counting = CountingOptimizer(rose_chain())
  run = runner(parallel, counting.tx, apply_fn, method)
  first, m1 = run(params, batches)
  second, m2 = run(params, batches)
  chex.assert_trees_all_equal(first, second)
  assert m1 == m2 and m1[0]['kl'] > 0
  other, _ = run(params, batches, seed=7)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, first, other)))
  assert counting.traces == 1, f'traced {counting.traces} times in 6 steps'


def test_global_kl_is_the_sum_over_devices():
  # Per-device KL is scaled by the device count, so averaged metrics report
  # the global batch's KL, as one device would with the same dropout masks.
  method = methods.get_method('rdrop')
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.2))
  tx = optax.sgd(0.0)
  batch = tiny_batch()
  _, history = runner('shard_map', tx, apply_fn, method)(params, [batch])
  n = jax.device_count()
  per_device = []
  kl = jax.jit(lambda inputs, key: losses.symmetric_kl(
      *jnp.split(apply_fn(params, inputs, dropout_key=key), 2)))
  for d in range(n):
    rows = slice(d * 2, d * 2 + 2)
    inputs = {k: np.concatenate([batch[k][rows]] * 2) for k in ('input_ids', 'attention_mask')}
    per_device.append(float(kl(inputs, jax.random.fold_in(jax.random.key(0), d))))
  np.testing.assert_allclose(history[0]['kl'], sum(per_device), rtol=1e-5)


def test_batch_that_does_not_divide_is_rejected():
  with pytest.raises(ValueError, match='does not divide over 8 devices'):
    step_lib.split_for_pmap(tiny_batch(size=12))
  with pytest.raises(ValueError, match='does not divide over 8 devices'):
    step_lib.shard_batch(tiny_batch(size=12), step_lib.data_mesh())


def test_method_without_second_pass_cannot_rank_by_kl():
  with pytest.raises(ValueError, match='second dropout pass'):
    methods.Method('rose-first', passes=1, kl_grads=True, rose_variant='first')
  with pytest.raises(ValueError, match='Unknown method'):
    methods.get_method('rose-third')
  with pytest.raises(ValueError, match='cotangents must be'):
    step_lib.make_train_step(None, optax.sgd(0.1), methods.get_method('vanilla'),
                             cotangents='parallel')
  with pytest.raises(ValueError, match='Unknown parallel'):
    step_lib.make_train_step(None, optax.sgd(0.1), methods.get_method('vanilla'),
                             parallel='tpu')


def test_bf16_compute_step():
  config = tiny_model().config
  model = EncoderForSequenceClassification(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  apply_fn, params = as_apply_fn(model)
  tx = rose_chain()
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rose-ensemble'))
  opt_state = tx.init(params)
  params, opt_state, metrics = step(params, opt_state, tiny_batch(), jax.random.key(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert np.isfinite(float(metrics['loss']))


def _refreshed_rose(every, variant='ensemble'):
  return rose_jax.rose(3e-3, variant=variant, upper=0.5, first_order_every=every,
                       selectable=selection.authors_selectable, max_grad_norm=1.0)


@pytest.mark.parametrize('name', ['rose-ensemble', 'rdrop-rose-ensemble'])
def test_between_refreshes_the_step_runs_without_the_kl_passes(name):
  # Against compute_gradients and the optimizer called by hand: the method's
  # gradients where the optimizer is due, the method's without the KL passes
  # (and no kl_grads) where it is not.
  apply_fn, params = function_classifier()
  method = methods.get_method(name, rdrop_alpha=0.5)
  tx = rose_jax.rose(3e-3, upper=0.5, first_order_every=3, max_grad_norm=1.0,
                     selectable={'embedding': True, 'out': {'w': True, 'b': False}})
  step = step_lib.make_train_step(apply_fn, tx, method, donate=False)
  # One pass and the CE; for R-Drop + ROSE both passes, CE + alpha KL, and the CE gradient.
  cheap = (methods.Method('rdrop-ce', passes=2, kl_weight=0.5, ce_grads=True)
           if method.kl_weight else methods.get_method('vanilla'))
  mine, theirs = (params, tx.init(params)), (params, tx.init(params))
  update = jax.jit(tx.update)
  for i in range(7):
    batch, key = token_batch(i), jax.random.key(i)
    *mine, metrics = step(*mine, batch, key)
    p, s = theirs
    due = bool(rose_jax.first_order_due(s))
    assert due == (i % 3 == 0)
    grads, _ = compute_gradients(apply_fn, p, batch, key,
                                 method=method if due else cheap)
    updates, s = update(grads.update, s, p, **grads.extra_args())
    theirs = (optax.apply_updates(p, updates), s)
    chex.assert_trees_all_close(mine[0], theirs[0], rtol=1e-6, atol=1e-7)
    # The KL is measured where the KL passes ran: R-Drop + ROSE runs both always.
    assert np.isnan(float(metrics['kl'])) == (not due and not method.kl_weight)
    assert np.isnan(float(metrics['disagreement'])) == (not due and not method.kl_weight)


# On one device and data parallel; pmap's data parallelism is shard_map's
# (test_eight_devices_*), and the refresh is the optimizer's either way.
@pytest.mark.parametrize('parallel', ['none', 'shard_map'])
def test_refreshing_every_step_is_the_authors_recipe(parallel):
  apply_fn, params = as_apply_fn(tiny_model())
  method = methods.get_method('rose-ensemble')
  batches = [tiny_batch(i) for i in range(3)]
  exact, _ = runner(parallel, _refreshed_rose(None), apply_fn, method)(params, batches)
  every, _ = runner(parallel, _refreshed_rose(1), apply_fn, method)(params, batches)
  assert_same_results(exact, every)


def test_a_refresh_interval_compiles_no_second_step():
  apply_fn, params = function_classifier()
  method = methods.get_method('rose-ensemble')
  sizes = []
  for every in (None, 2):
    tx = rose_jax.rose(3e-3, upper=0.5, first_order_every=every)
    step = step_lib.make_train_step(apply_fn, tx, method, donate=False)
    state = (params, tx.init(params))
    for i in range(6):  # two batch shapes, three steps each
      *state, _ = step(*state, token_batch(i, length=6 + 2 * (i % 2)), jax.random.key(i))
    sizes.append(step._cache_size())
  assert sizes == [2, 2]


def test_a_sweep_with_cheap_risks_equals_its_members_alone():
  apply_fn, params = function_classifier()
  method = methods.get_method('rose-ensemble')
  factory = sweep.with_peak_learning_rate(rose_jax.rose)
  tx = optax.inject_hyperparams(factory, static_args=sweep.ROSE_STATIC)(
      learning_rate=3e-3, schedule=optax.constant_schedule(1.0), upper=0.5,
      first_order_every=2)
  rates = (1e-3, 3e-3, 1e-2)
  states = [sweep.with_hyperparams(tx.init(params), learning_rate=r) for r in rates]
  one = step_lib.make_train_step(apply_fn, tx, method, donate=False, kl_fraction=0.5)
  together = sweep.make_sweep_step(apply_fn, tx, method, donate=False, kl_fraction=0.5)
  alone = [(params, s) for s in states]
  stacked = (sweep.stack([params] * 3), sweep.stack(states))
  for i in range(4):
    batch, keys = token_batch(i), [jax.random.fold_in(jax.random.key(i), m) for m in range(3)]
    alone = [one(*member, batch, key)[:2] for member, key in zip(alone, keys, strict=True)]
    *stacked, metrics = together(*stacked, sweep.stack([batch] * 3), jnp.stack(keys))
    assert np.isnan(np.asarray(metrics['kl'])).all() == (i % 2 == 1)
  for m, (expected, _) in enumerate(alone):
    chex.assert_trees_all_close(sweep.member(stacked[0], m), expected, rtol=1e-5, atol=1e-7)
