"""The Python API against arguments of the wrong kind: a TypeError or
ValueError naming the argument and what it should be, at construction or at
the first trace; and ``debug=True``, which checks what only running can show
(labels outside the classes, NaN targets, a non-finite loss)."""

import chex
import jax
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import rose_jax
from rose_jax import models, training
from rose_jax.training import step as step_lib
from rose_jax.training import sweep as sweep_lib
from tests.helpers.own_models import (
  function_classifier,
  function_regressor,
  regression_batch,
  token_batch,
)

METHOD = training.get_method('rose-ensemble')


@pytest.mark.parametrize('make', [step_lib.make_train_step, sweep_lib.make_sweep_step])
@pytest.mark.parametrize('apply, tx, method, error, match', [
    ('fn', 'tx', 'rose-ensemble', TypeError,
     r"method must be a rose_jax.training.Method, got str: pass "
     r"rose_jax.training.get_method\('rose-ensemble'\)"),
    ('fn', 'tx', None, TypeError, 'method must be a rose_jax.training.Method, got NoneType'),
    ('fn', optax.adamw, 'method', TypeError,
     r'tx must be an optax.GradientTransformation, got adamw: it is a factory; call it'),
    ({'w': 1}, 'tx', 'method', TypeError, r'apply must be a function apply_fn\(params, batch'),
])
def test_a_step_of_the_wrong_parts_is_named_when_it_is_made(make, apply, tx, method, error,
                                                           match):
  apply_fn, _ = function_classifier()
  apply = apply_fn if apply == 'fn' else apply
  tx = rose_jax.rose(1e-3, upper=0.5) if tx == 'tx' else tx
  method = METHOD if method == 'method' else method
  with pytest.raises(error, match=match):
    make(apply, tx, method)


@pytest.mark.parametrize('apply, method, match', [
    ('fn', 'rose-first', 'method must be a rose_jax.training.Method, got str'),
    ('fn', None, 'method must be a rose_jax.training.Method, got NoneType'),
    ({'w': 1}, 'method', r'apply must be a function apply_fn\(params, batch'),
])
def test_compute_gradients_of_the_wrong_parts_is_named(apply, method, match):
  apply_fn, params = function_classifier()
  with pytest.raises(TypeError, match=match):
    training.compute_gradients(apply_fn if apply == 'fn' else apply, params, token_batch(),
                               jax.random.key(0), method=METHOD if method == 'method' else method)


@pytest.mark.parametrize('build, error, match', [
    (lambda: rose_jax.selective(optax.adamw, upper=0.4), TypeError,
     'inner must be an optax.GradientTransformation, got adamw: it is a factory'),
    (lambda: rose_jax.selective('adamw', upper=0.4), TypeError,
     'inner must be an optax.GradientTransformation, got str'),
    (lambda: rose_jax.rose('1e-3', upper=0.5), TypeError,
     "learning_rate must be a number, got str '1e-3'"),
    (lambda: rose_jax.rose(-1e-3, upper=0.5), ValueError,
     r'learning_rate must be a finite number >= 0 \(or an optax schedule\)'),
    (lambda: rose_jax.rose(1e-3, upper='0.5'), TypeError, "upper must be a number, got str"),
    (lambda: rose_jax.rose(1e-3, upper=0.5, mu_dtype='float99'), TypeError,
     "mu_dtype must be a dtype such as jnp.float32"),
    (lambda: rose_jax.rose(1e-3, upper=0.5, selectable='all'), TypeError,
     "selectable must be a pytree of bools shaped like the params"),
    (lambda: rose_jax.hf_adamw(1e-3, weight_decay_mask='none'), TypeError,
     'weight_decay_mask must be a pytree of bools'),
    (lambda: rose_jax.scale_by_masked_adam(b1='0.9'), TypeError, 'b1 must be a number'),
    (lambda: sweep_lib.stack([]), ValueError, "stack needs at least one member's tree"),
    (lambda: models.as_apply_fn(lambda x: x), TypeError, 'as_apply_fn needs call='),
])
def test_an_optimizer_of_wrong_arguments_is_refused_at_construction(build, error, match):
  with pytest.raises(error, match=match):
    build()


def _debug_step(apply_fn, objective='classification', method='vanilla', **kwargs):
  tx = optax.sgd(0.1)
  return step_lib.make_train_step(apply_fn, tx, training.get_method(method), donate=False,
                                  debug=True, objective=objective, **kwargs), tx


@pytest.mark.parametrize('parallel', ['none', 'shard_map', 'pmap'])
def test_debug_names_labels_outside_the_classes_on_every_layout(parallel):
  apply_fn, params = function_classifier()
  batch = token_batch(0)
  step, tx = _debug_step(apply_fn, parallel=parallel)
  state = tx.init(params)
  if parallel == 'pmap':
    params, state = step_lib.replicate(params), step_lib.replicate(state)
    place = step_lib.split_for_pmap
  elif parallel == 'shard_map':
    place = lambda b: step_lib.shard_batch(b, step_lib.data_mesh())
  else:
    place = lambda b: b
  bad = {**batch, 'labels': batch['labels'] + 3}  # 3 classes: 3..5 are none of them
  # Each device checks its own rows: the message gives the first failing device's.
  with pytest.raises(checkify.JaxRuntimeError, match=r'batch\["labels"\] holds 3..[345], but '
                                                    r'the outputs have 3 classes'):
    step(params, state, place(bad), jax.random.key(0))


def test_debug_steps_equal_plain_steps_and_name_a_non_finite_loss_or_target():
  apply_fn, params = function_classifier()
  batch = token_batch(1)
  debug, tx = _debug_step(apply_fn, method='rose-ensemble')
  plain = step_lib.make_train_step(apply_fn, tx, training.get_method('rose-ensemble'),
                                   donate=False)
  chex.assert_trees_all_equal(debug(params, tx.init(params), batch, jax.random.key(2)),
                              plain(params, tx.init(params), batch, jax.random.key(2)))
  huge = jax.tree.map(lambda p: p * 1e30, params)
  with pytest.raises(checkify.JaxRuntimeError, match='The loss is nan'):
    debug(huge, tx.init(huge), batch, jax.random.key(2))
  regressor, weights = function_regressor()
  targets = regression_batch(0)
  targets['labels'][3] = np.nan
  step, tx = _debug_step(regressor, objective='regression')
  with pytest.raises(checkify.JaxRuntimeError, match='holds a NaN or infinite regression target'):
    step(weights, tx.init(weights), targets, jax.random.key(0))
