"""The first-order risk from part of each batch, against gradients computed
here from the tests' own losses: the drawn examples' two passes and KL, every
example's task loss, on one device and on 8."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax.training import SubBatch, methods, split_batch
from rose_jax.training import step as step_lib
from tests.helpers import definitions, recording_optimizer
from tests.helpers.own_models import function_classifier, token_batch
from tests.training.test_gradients import _place


def _sub_batch_reference(apply_fn, params, batch, key, devices: int, fraction: float,
                         kl_weight: float = 0.0):
  """The update, KL and CE gradients of a sub-batch step: on device ``d``, the
  first ``floor(fraction * rows)`` of its rows run twice with the device's
  key, the rest once with that key folded with 1; the task loss weighs each
  part by its share of the device's examples; the KL, a sum over the drawn
  examples, is scaled to all of them."""
  rows = len(batch['labels']) // devices
  take = int(np.floor(fraction * rows + 1e-9))
  weight, scale = take / rows, rows / take

  def terms(p, tokens, labels, device_key):
    doubled = jnp.concatenate([tokens[:take], tokens[:take]])
    a, b = jnp.split(apply_fn(p, {'tokens': doubled}, dropout_key=device_key), 2)
    ce_drawn = (definitions.cross_entropy(a, labels[:take])
                + definitions.cross_entropy(b, labels[:take])) / 2
    rest = apply_fn(p, {'tokens': tokens[take:]}, dropout_key=jax.random.fold_in(device_key, 1))
    ce = weight * ce_drawn + (1 - weight) * definitions.cross_entropy(rest, labels[take:])
    return ce, scale * definitions.rose_kl(a, b)

  grads = {name: jax.jit(jax.grad(lambda *a, i=i: terms(*a)[i]))
           for i, name in enumerate(('ce', 'kl'))}
  out = {name: [] for name in grads}
  for d in range(devices):
    part = slice(d * rows, (d + 1) * rows)
    device_key = key if devices == 1 else jax.random.fold_in(key, d)
    args = (params, batch['tokens'][part], batch['labels'][part], device_key)
    for name, grad in grads.items():
      out[name].append(grad(*args))
  # The CE is a mean over the devices; the KL a sum. R-Drop's KL is twice ROSE's.
  ce = jax.tree.map(lambda *g: sum(g) / devices, *out['ce'])
  kl = jax.tree.map(lambda *g: sum(g), *out['kl'])
  return jax.tree.map(lambda c, k: c + 2 * kl_weight * k, ce, kl), kl, ce


@pytest.mark.parametrize('method_name', ['rose-ensemble', 'rdrop-rose-ensemble'])
@pytest.mark.parametrize('parallel', ['none', 'shard_map', 'pmap'])
def test_the_drawn_examples_run_the_kl_and_every_example_the_task_loss(parallel, method_name):
  apply_fn, params = function_classifier()
  batch, key = token_batch(3, size=32), jax.random.key(6)
  devices = 1 if parallel == 'none' else jax.device_count()
  method = methods.get_method(method_name, rdrop_alpha=0.5)
  update, kl, ce = _sub_batch_reference(apply_fn, params, batch, key, devices, 0.25,
                                        kl_weight=method.kl_weight)
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False,
                                  kl_fraction=0.25)
  _, state, metrics = step(*_place(parallel, params, tx.init(params), batch), key)
  if parallel == 'pmap':
    state = step_lib.unreplicate(state)
  chex.assert_trees_all_close(state.grads, update, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(state.kl_grads, kl, rtol=1e-4, atol=1e-6)
  if method.kl_weight:
    chex.assert_trees_all_close(state.ce_grads, ce, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(kl)) > 1e-3, 'KL is ~0'
  assert np.all(np.asarray(metrics['kl']) > 0)


def test_a_split_batch_is_the_in_step_split():
  # A caller's SubBatch of the same examples gives the step's own split, on 8 devices.
  apply_fn, params = function_classifier()
  batch, key = token_batch(4, size=32), jax.random.key(7)
  method = methods.get_method('rose-first')
  tx = recording_optimizer()
  mesh = step_lib.data_mesh()
  in_step = step_lib.make_train_step(apply_fn, tx, method, parallel='shard_map', donate=False,
                                     kl_fraction=0.25)
  given = step_lib.make_train_step(apply_fn, tx, method, parallel='shard_map', donate=False)
  _, a, _ = in_step(params, tx.init(params), step_lib.shard_batch(batch, mesh), key)
  split = split_batch(batch, 0.25, devices=jax.device_count())
  assert len(split.kl['labels']) == jax.device_count()  # one drawn example per device
  _, b, _ = given(params, tx.init(params), step_lib.shard_batch(split, mesh), key)
  chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize('method_name', ['rose-ensemble', 'rdrop-rose-first'])
def test_a_fraction_of_one_is_the_authors_recipe_bit_for_bit(method_name):
  apply_fn, params = function_classifier()
  method = methods.get_method(method_name)
  tx = recording_optimizer()
  for parallel in ('none', 'shard_map'):
    exact = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False)
    whole = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False,
                                     kl_fraction=1.0)
    for seed in range(2):
      placed = _place(parallel, params, tx.init(params), token_batch(seed, size=16))
      chex.assert_trees_all_equal(exact(*placed, jax.random.key(seed)),
                                  whole(*placed, jax.random.key(seed)))


def test_split_batch_takes_the_first_of_each_devices_share():
  batch = {'tokens': np.arange(24).reshape(12, 2), 'labels': np.arange(12)}
  split = split_batch(batch, 0.5, devices=3)
  assert split.kl['labels'].tolist() == [0, 1, 4, 5, 8, 9]
  assert split.rest['labels'].tolist() == [2, 3, 6, 7, 10, 11]
  np.testing.assert_array_equal(split.kl['tokens'], batch['tokens'][split.kl['labels']])


@pytest.mark.parametrize('fraction', [0.0, -0.5, 1.5, 'half', True])
def test_a_fraction_outside_zero_to_one_is_named(fraction):
  apply_fn, _ = function_classifier()
  with pytest.raises(ValueError, match=r'kl_fraction is the share .* in \(0, 1\]'):
    step_lib.make_train_step(apply_fn, recording_optimizer(),
                             methods.get_method('rose-ensemble'), kl_fraction=fraction)


@pytest.mark.parametrize('name', ['vanilla', 'rdrop', 'rose-second', 'rdrop-rose-second',
                                  'child-tuning-d', 'smart', 'freelb'])
def test_a_method_without_a_first_order_risk_is_refused(name):
  apply_fn, _ = function_classifier()
  with pytest.raises(ValueError, match=f'{name} has no first-order risk'):
    step_lib.make_train_step(apply_fn, recording_optimizer(), methods.get_method(name),
                             kl_fraction=0.5)


def test_a_fraction_that_leaves_no_example_per_device_is_named():
  apply_fn, params = function_classifier()
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rose-first'),
                                  parallel='shard_map', kl_fraction=0.25)
  mesh = step_lib.data_mesh()
  with pytest.raises(ValueError, match=r'kl_fraction=0.25 of 2 examples \(per device\) leaves '
                                       'none'):
    step(params, tx.init(params), step_lib.shard_batch(token_batch(0, size=16), mesh),
         jax.random.key(0))
  with pytest.raises(ValueError, match='leaves none'):
    split_batch(token_batch(0, size=16), 0.25, devices=8)


def test_a_packed_batch_must_come_split():
  batch = {'tokens': np.zeros((4, 6), np.int32), 'segment_ids': np.ones((4, 6), np.int32),
           'labels': np.zeros(4, np.int32)}
  with pytest.raises(ValueError, match='split the examples first and pack each part'):
    split_batch(batch, 0.5)
  assert isinstance(split_batch({'labels': np.arange(4)}, 0.5), SubBatch)
