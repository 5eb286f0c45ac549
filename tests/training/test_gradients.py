"""The step and compute_gradients for models that are not ours (a Flax Linen
classifier, a plain function), against a two-pass gradient computed here:
its own concatenation, the tests' own losses, ``jax.grad`` per loss, with
dropout on, on one device and on 8."""

import subprocess
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from rose_jax.training import NoDropoutWarning, compute_gradients, methods
from rose_jax.training import step as step_lib
from tests.helpers import definitions, recording_optimizer
from tests.helpers.own_models import function_classifier, linen_classifier, token_batch

MODELS = {'linen': linen_classifier, 'function': function_classifier}


def _two_pass_reference(apply_fn, params, batch, key, devices: int):
  """The global batch's CE and KL gradients: device ``d`` runs its rows twice,
  with the key folded with ``d`` (the key as it is on one device)."""
  rows = len(batch['labels']) // devices

  def terms(p, tokens, labels, device_key):
    doubled = {'tokens': jnp.concatenate([tokens, tokens]),
               'labels': jnp.concatenate([labels, labels])}
    a, b = jnp.split(apply_fn(p, doubled, dropout_key=device_key), 2)
    ce = (definitions.cross_entropy(a, labels) + definitions.cross_entropy(b, labels)) / 2
    return ce, definitions.rose_kl(a, b)

  ce_grad = jax.jit(jax.grad(lambda *a: terms(*a)[0]))
  kl_grad = jax.jit(jax.grad(lambda *a: terms(*a)[1]))
  ce, kl = [], []
  for d in range(devices):
    part = slice(d * rows, (d + 1) * rows)
    device_key = key if devices == 1 else jax.random.fold_in(key, d)
    args = (params, batch['tokens'][part], batch['labels'][part], device_key)
    ce.append(ce_grad(*args))
    kl.append(kl_grad(*args))
  # The CE is a mean over examples, the KL a sum: the global KL is the devices' sum.
  return (jax.tree.map(lambda *g: sum(g) / devices, *ce), jax.tree.map(lambda *g: sum(g), *kl))


def _place(parallel, params, state, batch):
  if parallel == 'pmap':
    return step_lib.replicate(params), step_lib.replicate(state), step_lib.split_for_pmap(batch)
  if parallel == 'shard_map':
    return params, state, step_lib.shard_batch(batch, step_lib.data_mesh())
  return params, state, batch


@pytest.mark.parametrize('parallel', ['none', 'shard_map', 'pmap'])
@pytest.mark.parametrize('model', sorted(MODELS))
def test_the_step_gives_the_two_pass_gradients_of_any_model(model, parallel):
  apply_fn, params = MODELS[model]()
  batch, key = token_batch(1), jax.random.key(4)
  devices = 1 if parallel == 'none' else jax.device_count()
  ce, kl = _two_pass_reference(apply_fn, params, batch, key, devices)
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rose-ensemble'),
                                  parallel=parallel, donate=False)
  _, state, metrics = step(*_place(parallel, params, tx.init(params), batch), key)
  if parallel == 'pmap':
    state = step_lib.unreplicate(state)
  chex.assert_trees_all_close(state.grads, ce, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(state.kl_grads, kl, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(kl)) > 1e-3, 'KL is ~0'
  assert np.all(np.asarray(metrics['kl']) > 0)


def test_compute_gradients_in_a_loop_of_ones_own_under_shard_map():
  # What a user's own step does: shard_map, compute_gradients, the optimizer.
  apply_fn, params = function_classifier()
  batch, key = token_batch(2), jax.random.key(5)
  method = methods.get_method('rdrop-rose-ensemble', rdrop_alpha=0.5)
  mesh = step_lib.data_mesh()

  def gradients(p, b, k):
    grads, metrics = compute_gradients(apply_fn, p, b, k, method=method, axis_name='data')
    return grads.update, grads.extra_args(), metrics

  sharded = jax.jit(jax.shard_map(gradients, mesh=mesh, in_specs=(P(), P('data'), P()),
                                  out_specs=P()))
  update, extra, metrics = sharded(params, step_lib.shard_batch(batch, mesh), key)
  ce, kl = _two_pass_reference(apply_fn, params, batch, key, jax.device_count())
  assert sorted(extra) == ['ce_grads', 'kl_grads']
  chex.assert_trees_all_close(extra['ce_grads'], ce, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(extra['kl_grads'], kl, rtol=1e-4, atol=1e-6)
  # R-Drop's alpha weighs its KL, twice ROSE's.
  chex.assert_trees_all_close(update, jax.tree.map(lambda c, k: c + 2 * 0.5 * k, ce, kl),
                              rtol=1e-4, atol=1e-6)
  assert set(metrics) == {'loss', 'ce', 'kl', 'accuracy', 'disagreement'}


def _run_once(apply_fn, params, batch, name='rose-ensemble'):
  tx = optax.sgd(0.1)
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method(name), donate=False)
  return step(params, tx.init(params), batch, jax.random.key(0))


@pytest.mark.parametrize('broken, match', [
    (lambda logits: logits[0], r'\[examples, classes\] = \[32, classes\].*got shape \(3,\)'),
    (lambda logits: logits[:16], r'outputs for 16 examples, but this call needs 32: one per '
                                 r'label in batch\["labels"\] \(for two dropout passes, per'),
    (lambda logits: jnp.argmax(logits, -1)[:, None], r'floating logits.*dtype int32'),
])
def test_logits_of_the_wrong_shape_or_dtype_are_named(broken, match):
  apply_fn, params = function_classifier()
  bad = lambda p, b, *, dropout_key: broken(apply_fn(p, b, dropout_key=dropout_key))
  with pytest.raises(ValueError, match=match):
    _run_once(bad, params, token_batch())


def test_a_batch_without_labels_is_named():
  apply_fn, params = function_classifier()
  with pytest.raises(ValueError, match=r'no "labels" \(its keys: \[\'tokens\'\]\)'):
    _run_once(apply_fn, params, {'tokens': token_batch()['tokens']})


def test_a_model_that_ignores_the_dropout_key_warns_once():
  apply_fn, params = function_classifier()
  no_dropout = lambda p, b, *, dropout_key: apply_fn(p, b, dropout_key=None)
  tx = optax.sgd(0.1)
  step = step_lib.make_train_step(no_dropout, tx, methods.get_method('rose-ensemble'),
                                  donate=False)
  state = tx.init(params)
  with pytest.warns(NoDropoutWarning, match='identical logits.*first-order risk'):
    params, state, _ = step(params, state, token_batch(), jax.random.key(0))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    step(params, state, token_batch(), jax.random.key(1))  # once only
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    _run_once(apply_fn, params, token_batch())  # dropout on: silent


@pytest.mark.parametrize('name', ['smart', 'freelb'])
def test_adversarial_methods_need_the_embedding_hook_when_the_step_is_built(name):
  apply_fn, _ = function_classifier()
  with pytest.raises(ValueError, match=f'{name} perturbs the embeddings.*embedding_shape='):
    step_lib.make_train_step(apply_fn, optax.sgd(0.1), methods.get_method(name))


def test_the_training_package_needs_neither_flax_nor_our_encoder():
  code = ('import sys, rose_jax; core = set(sys.modules); import rose_jax.training; '
          'print(sorted(m.split(".")[0] for m in core if m.split(".")[0] in '
          '("flax", "transformers", "torch")), '
          '[m for m in ("flax", "rose_jax.models") if m in sys.modules])')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[] []'
