"""A vmapped sweep equals its members run one by one, and compiles once."""

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import rose_jax
from rose_jax import selection
from rose_jax.models import as_apply_fn
from rose_jax.training import methods, sweep
from rose_jax.training import step as step_lib
from tests.helpers import CountingOptimizer, tiny_batch, tiny_model

MEMBERS = [dict(learning_rate=1e-3, upper=0.4, seed=1), dict(learning_rate=3e-3, upper=0.6,
                                                             seed=2),
           dict(learning_rate=1e-3, upper=0.6, seed=3)]
STEPS = 3


def _optimizer():
  factory = sweep.with_peak_learning_rate(rose_jax.rose)
  return optax.inject_hyperparams(factory, static_args=sweep.ROSE_STATIC)(
      learning_rate=1e-3, schedule=optax.linear_schedule(1.0, 0.0, 10), upper=0.5,
      variant='ensemble', selectable=selection.authors_selectable,
      weight_decay_mask=selection.authors_decay_mask, max_grad_norm=1.0)


def _member_start(tx, settings):
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.1, seed=settings['seed']))
  state = sweep.with_hyperparams(tx.init(params), learning_rate=settings['learning_rate'],
                                 upper=settings['upper'])
  batches = [tiny_batch(10 * settings['seed'] + i) for i in range(STEPS)]
  keys = [jax.random.fold_in(jax.random.key(settings['seed']), i) for i in range(STEPS)]
  return apply_fn, params, state, batches, keys


def test_a_sweep_equals_its_members_run_separately():
  method = methods.get_method('rose-ensemble')
  counting = CountingOptimizer(_optimizer())
  tx = counting.tx
  starts = [_member_start(tx, m) for m in MEMBERS]
  apply_fn = starts[0][0]

  separate = []
  one = step_lib.make_train_step(apply_fn, tx, method, donate=False)
  for _, params, state, batches, keys in starts:
    masks = []
    for batch, key in zip(batches, keys, strict=True):
      params, state, _ = one(params, state, batch, key)
      masks.append(step_lib.find_rose_state(state).mask)
    separate.append((params, masks))
  assert counting.traces == 1
  # The members' settings took effect: member 1 with the factory's own settings
  # (learning rate 1e-3, upper 0.5) ends elsewhere.
  _, params, _, batches, keys = starts[1]
  state = tx.init(params)
  for batch, key in zip(batches, keys, strict=True):
    params, state, _ = one(params, state, batch, key)
  assert not np.allclose(params['classifier']['out_proj']['kernel'],
                         separate[1][0]['classifier']['out_proj']['kernel'])

  step = sweep.make_sweep_step(apply_fn, tx, method, donate=False)
  params = sweep.stack([s[1] for s in starts])
  state = sweep.stack([s[2] for s in starts])
  for i in range(STEPS):
    batch = sweep.stack([s[3][i] for s in starts])
    keys = jax.numpy.stack([s[4][i] for s in starts])
    params, state, metrics = step(params, state, batch, keys)
    for k, (_, masks) in enumerate(separate):
      chex.assert_trees_all_equal(sweep.member(step_lib.find_rose_state(state).mask, k),
                                  masks[i])
  assert counting.traces == 2, 'the sweep compiled more than once'
  assert metrics['loss'].shape == (len(MEMBERS),)
  for k, (expected, _) in enumerate(separate):
    chex.assert_trees_all_close(sweep.member(params, k), expected, rtol=1e-5, atol=1e-7)
  # The members did differ: the sweep is not one run copied three times.
  assert not np.allclose(sweep.member(params, 0)['classifier']['out_proj']['kernel'],
                         sweep.member(params, 1)['classifier']['out_proj']['kernel'])


def test_with_hyperparams_names_what_it_cannot_set():
  tx = _optimizer()
  _, params = as_apply_fn(tiny_model())
  with pytest.raises(ValueError, match=r"No injected hyperparameter named \['uper'\]"):
    sweep.with_hyperparams(tx.init(params), uper=0.4)
  with pytest.raises(ValueError, match='inject_hyperparams'):
    sweep.with_hyperparams(optax.sgd(0.1).init(params), learning_rate=0.2)


def test_a_peak_times_a_unit_schedule_is_the_scaled_schedule():
  shape, peak = optax.linear_schedule(1.0, 0.0, 10), 3e-5
  scaled = optax.linear_schedule(peak, 0.0, 10)
  for count in range(12):
    assert float(np.float32(peak) * shape(count)) == float(scaled(count))


def _extra_masks(params, opt_state, grads):
  """The hook that records ROSE-Ensemble's two masks (settings as _optimizer's)."""
  del params
  inner = opt_state.inner_state if hasattr(opt_state, 'inner_state') else opt_state
  hyper = opt_state.hyperparams
  masks = rose_jax.rose_masks(grads.update, step_lib.find_rose_state(inner),
                              kl_grads=grads.kl_grads, upper=hyper['upper'], max_grad_norm=1.0)
  return {'first_mask': masks['first'], 'second_mask': masks['second']}


@pytest.mark.parametrize('data_devices', [1, 2])
def test_members_sharded_over_devices_equal_their_runs_alone(data_devices):
  # Four members over 4 x data_devices devices: each member equals its run
  # alone, on one device or data parallel over data_devices devices.
  method = methods.get_method('rose-ensemble')
  tx = _optimizer()
  members = [*MEMBERS, dict(learning_rate=3e-3, upper=0.4, seed=4)]
  starts = [_member_start(tx, m) for m in members]
  apply_fn = starts[0][0]
  devices = jax.devices()[:len(members) * data_devices]
  mesh = sweep.sweep_mesh(data_devices, devices=devices)
  assert dict(mesh.shape) == {'members': len(members), 'data': data_devices}
  if data_devices == 1:
    one, place = step_lib.make_train_step(apply_fn, tx, method, donate=False,
                                          extra_metrics=_extra_masks), lambda b: b
  else:
    data_mesh = jax.make_mesh((data_devices,), ('data',), devices=devices[:data_devices])
    one = step_lib.make_train_step(apply_fn, tx, method, donate=False, parallel='shard_map',
                                   mesh=data_mesh, extra_metrics=_extra_masks)
    place = lambda b: step_lib.shard_batch(b, data_mesh)
  separate = []
  for _, params, state, batches, keys in starts:
    logged = []
    for batch, key in zip(batches, keys, strict=True):
      params, state, metrics = one(params, state, place(batch), key)
      logged.append(jax.device_get(metrics))
    separate.append((params, logged))

  step = sweep.make_sweep_step(apply_fn, tx, method, mesh=mesh, extra_metrics=_extra_masks)
  params = sweep.shard_members(sweep.stack([s[1] for s in starts]), mesh)
  state = sweep.shard_members(sweep.stack([s[2] for s in starts]), mesh)
  assert params['classifier']['out_proj']['kernel'].sharding.spec == P('members')
  for i in range(STEPS):
    batch = sweep.shard_members(sweep.stack([s[3][i] for s in starts]), mesh, batch=True)
    keys = sweep.shard_members(jax.numpy.stack([s[4][i] for s in starts]), mesh)
    params, state, metrics = step(params, state, batch, keys)
    assert metrics['loss'].sharding.is_fully_replicated
    for k, (_, logged) in enumerate(separate):
      own = sweep.member(jax.device_get(metrics), k)
      for name in ('first_mask', 'second_mask'):
        chex.assert_trees_all_equal(own[name], logged[i][name])
      np.testing.assert_allclose(own['loss'], logged[i]['loss'], rtol=1e-5)
  assert step._cache_size() == 1
  for k, (expected, _) in enumerate(separate):
    chex.assert_trees_all_close(sweep.member_on_host(params, k), expected, rtol=1e-5, atol=1e-7)
  # The first- and second-order masks differ somewhere: both were recorded.
  assert any(not np.array_equal(a, b) for _, logged in separate for line in logged
             for a, b in zip(jax.tree.leaves(line['first_mask']),
                             jax.tree.leaves(line['second_mask']), strict=True))


def test_members_that_do_not_divide_over_devices_are_named_with_the_fix():
  mesh = sweep.sweep_mesh(2, devices=jax.devices()[:8])
  assert [sweep.padded_count(m, mesh) for m in (1, 4, 5, 8)] == [4, 4, 8, 8]
  with pytest.raises(ValueError, match=r'3 members do not divide over the mesh.s 4 member '
                     r'devices; pad them to 4'):
    sweep.shard_members(np.zeros((3, 2)), mesh)
  with pytest.raises(ValueError, match='3 devices per member do not divide 8 devices'):
    sweep.sweep_mesh(3)
