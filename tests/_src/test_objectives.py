"""Classification and regression objectives: the regression step's gradients
against R-Drop's regression losses written out here (mean squared error,
R-Drop's MSE between the passes weighted by alpha) on one device and on 8,
and the labels and outputs each objective refuses, at trace time."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from rose_jax import training
from rose_jax.training import compute_gradients, methods
from rose_jax.training import step as step_lib
from tests.helpers import definitions
from tests.helpers.own_models import (
  function_classifier,
  function_regressor,
  regression_batch,
  token_batch,
)


def _reference(apply_fn, params, batch, key, devices: int, alpha: float):
  """R-Drop's regression update, its MSE and its consistency gradients: device
  ``d`` runs its rows twice with the key folded with ``d``; every term is a
  mean over examples, so the global batch's is the mean over devices."""
  rows = len(batch['labels']) // devices

  def terms(p, tokens, targets, device_key):
    doubled = {'tokens': jnp.concatenate([tokens, tokens])}
    a, b = jnp.split(apply_fn(p, doubled, dropout_key=device_key), 2)
    mse = (definitions.mean_squared_error(a, targets) +
           definitions.mean_squared_error(b, targets)) / 2
    return mse, definitions.rose_squared_difference(a, b)

  grads = {name: jax.jit(jax.grad(lambda *a, i=i: terms(*a)[i]))
           for i, name in enumerate(('ce', 'kl'))}
  per_device = {name: [] for name in grads}
  for d in range(devices):
    part = slice(d * rows, (d + 1) * rows)
    device_key = key if devices == 1 else jax.random.fold_in(key, d)
    for name, grad in grads.items():
      per_device[name].append(grad(params, batch['tokens'][part], batch['labels'][part],
                                   device_key))
  ce, kl = (jax.tree.map(lambda *g: sum(g) / devices, *per_device[n]) for n in ('ce', 'kl'))
  # R-Drop's term is MSELoss(a, b) = 2 x ROSE's scale.
  return jax.tree.map(lambda c, k: c + alpha * 2 * k, ce, kl), ce, kl


@pytest.mark.parametrize('devices', [1, 8])
def test_regression_gradients_are_r_drops_regression_losses(devices):
  apply_fn, params = function_regressor()
  batch, key = regression_batch(2), jax.random.key(5)
  method = methods.get_method('rdrop-rose-ensemble', rdrop_alpha=0.5)

  def gradients(p, b, k, axis_name=None):
    grads, metrics = compute_gradients(apply_fn, p, b, k, method=method, axis_name=axis_name,
                                       objective=training.REGRESSION)
    return grads.update, grads.extra_args(), metrics

  if devices == 1:
    update, extra, metrics = jax.jit(gradients)(params, batch, key)
  else:
    mesh = step_lib.data_mesh()
    sharded = jax.shard_map(lambda p, b, k: gradients(p, b, k, 'data'), mesh=mesh,
                            in_specs=(P(), P('data'), P()), out_specs=P())
    update, extra, metrics = jax.jit(sharded)(params, step_lib.shard_batch(batch, mesh), key)
  want_update, ce, kl = _reference(apply_fn, params, batch, key, devices, alpha=0.5)
  chex.assert_trees_all_close(extra['ce_grads'], ce, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(extra['kl_grads'], kl, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(update, want_update, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(kl)) > 1e-3, 'passes agree'
  # No accuracy or disagreement: they count classes.
  assert set(metrics) == {'loss', 'ce', 'kl'}


def test_the_regression_step_trains_and_reports_its_metrics():
  apply_fn, params = function_regressor()
  batch = regression_batch(3, size=32)
  tx = optax.adam(3e-2)
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rose-first'),
                                  objective='regression', donate=False)
  state = tx.init(params)
  losses = []
  for i in range(30):
    params, state, metrics = step(params, state, batch, jax.random.key(i))
    losses.append(float(metrics['ce']))
  assert losses[-1] < 0.5 * losses[0]
  assert set(metrics) == {'loss', 'ce', 'kl', 'kept_fraction'}


@pytest.mark.parametrize('objective, model, labels, match', [
    ('classification', function_classifier, np.float32,
     r'batch\["labels"\] has dtype float32; classification needs integer class indices'),
    ('regression', function_regressor, np.int32,
     r'batch\["labels"\] has dtype int32; regression needs float targets'),
    ('regression', function_classifier, np.float32,
     r'returns 3 outputs per example, but regression needs exactly one'),
    ('classification', function_regressor, np.int32,
     r'returns 1 output per example, but classification needs one per class'),
])
def test_labels_and_outputs_that_do_not_fit_the_objective_are_named(objective, model, labels,
                                                                     match):
  apply_fn, params = model()
  batch = token_batch(1)
  batch['labels'] = batch['labels'].astype(labels)
  step = step_lib.make_train_step(apply_fn, optax.sgd(0.1), methods.get_method('vanilla'),
                                  objective=objective, donate=False)
  with pytest.raises(ValueError, match=match):
    step(params, optax.sgd(0.1).init(params), batch, jax.random.key(0))


def test_smart_is_refused_for_regression_when_the_step_is_made():
  apply_fn, _ = function_regressor()
  with pytest.raises(ValueError, match=r'smart regularises with a KL divergence between class '
                                       r'distributions.*FreeLB, R-Drop and ROSE'):
    step_lib.make_train_step(apply_fn, optax.sgd(0.1), methods.get_method('smart'),
                             embedding_shape=lambda b: (16, 8), objective='regression')
  with pytest.raises(ValueError, match="Unknown objective 'ranking'"):
    training.get_objective('ranking')
