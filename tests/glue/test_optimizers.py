"""rose_jax.glue.optimizers on its own: the run's settings reach the optimizer
(checked against the NumPy transcription of the authors' SparseAdamW), and a
sweep's traced settings give the plain optimizer's updates and state."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax import selection
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.optimizers import build_optimizer, learning_rate_schedule, sweep_optimizer
from tests.helpers import reference

STEPS = 4


def _params() -> dict:
  """A tree laid out as a Hugging Face encoder: ranked layer weights, LayerNorm
  scales (ranked, not decayed), biases (neither) and a head (decayed only)."""
  rng = np.random.default_rng(0)
  layer = lambda: {'query': {'kernel': rng.normal(size=(4, 4)), 'bias': rng.normal(size=4)},
                   'output': {'kernel': rng.normal(size=(4, 3)), 'bias': rng.normal(size=3)},
                   'LayerNorm': {'scale': rng.normal(size=3), 'bias': rng.normal(size=3)}}
  tree = {'encoder': {'layer': {str(i): layer() for i in range(3)}},
          'classifier': {'kernel': rng.normal(size=(3, 2)), 'bias': rng.normal(size=2)}}
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _named(tree) -> dict[str, np.ndarray]:
  return {selection.hf_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _gradients(params, step: int) -> dict:
  rng = np.random.default_rng(100 + step)
  return {name: jax.tree.map(lambda p, r=rng: jnp.asarray(r.normal(size=p.shape) * (1 + step),
                                                           jnp.float32), params)
          for name in ('grads', 'kl_grads', 'ce_grads')}


def _config(method: str, **overrides) -> TrainConfig:
  settings = dict(method=method, learning_rate=1e-2, upper=0.5, lower=0.1, gamma=0.3,
                  warmup_ratio=0.25, weight_decay=0.1, b1=0.8, b2=0.95, eps=1e-6,
                  max_grad_norm=0.0, preset='none')
  return dataclasses.replace(TrainConfig(**{**settings, **overrides}).resolved(),
                             output_dir='unused')


def _train(tx, params, steps=STEPS, **extra):
  state = tx.init(params)
  for step in range(steps):
    g = _gradients(params, step)
    kwargs = {k: g[k] for k in ('kl_grads', 'ce_grads')} if extra.get('rose') else {}
    updates, state = tx.update(g['grads'], state, params, **kwargs)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return params, state


def test_the_schedule_warms_up_then_decays_to_zero():
  warm = learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_ratio=0.1), 100)
  np.testing.assert_allclose([warm(s) for s in (0, 5, 10, 55, 100)],
                             [0, 5e-4, 1e-3, 5e-4, 0], atol=1e-12)
  flat = learning_rate_schedule(TrainConfig(learning_rate=1e-3), 100)
  np.testing.assert_allclose([flat(s) for s in (0, 50, 100)], [1e-3, 5e-4, 0], atol=1e-12)


@pytest.mark.parametrize('method, variant', [('rose-first', 'first'), ('rose-second', 'second'),
                                             ('rose-ensemble', 'ensemble'), ('vanilla', None),
                                             ('rdrop', None)])
def test_the_run_settings_reach_the_optimizer(method, variant):
  """Thresholds, gamma, warm-up, schedule, Adam's numbers and both tensor rules,
  against the transcription of the authors' code."""
  config = _config(method)
  total = 8  # warm-up: the first 2 steps keep every tensor
  params = _params()
  trained, _ = _train(build_optimizer(config, config.build_method(), total), params,
                      rose=variant is not None)
  names = _named(params)
  expected = reference.SparseAdamW(
      names, lr=learning_rate_schedule(config, total), variant=variant, upper=0.5, lower=0.1,
      gamma=0.3, warmup_steps=2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1,
      ranked=[n for n in names if selection.is_authors_ranked(n)],
      decayed=[n for n in names if selection.is_decayed(n)])
  for step in range(STEPS):
    expected.step(*(_named(g) for g in _gradients(params, step).values()))
  got = _named(trained)
  for name in names:
    np.testing.assert_allclose(got[name], expected.params[name], rtol=2e-5, atol=1e-6,
                               err_msg=name)


def test_clipping_scales_the_update_gradient_to_the_global_norm():
  config = _config('vanilla', max_grad_norm=0.5, warmup_ratio=0.0)
  params = _params()
  trained, _ = _train(build_optimizer(config, config.build_method(), 8), params)
  names = _named(params)
  expected = reference.SparseAdamW(
      names, lr=learning_rate_schedule(config, 8), variant=None, upper=0.5, b1=0.8, b2=0.95,
      eps=1e-6, weight_decay=0.1, decayed=[n for n in names if selection.is_decayed(n)])
  # The gradients grow step by step (Adam would see it) and are all over the norm.
  for step in range(STEPS):
    grads = _named(_gradients(params, step)['grads'])
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    assert norm > 0.5
    expected.step({n: (g * (0.5 / norm)).astype(np.float32) for n, g in grads.items()})
  got = _named(trained)
  for name in names:
    np.testing.assert_allclose(got[name], expected.params[name], rtol=2e-5, atol=1e-6)


SWEEP_METHODS = [('vanilla', {}), ('rdrop', {}), ('smart', {'smart_bregman_mu': 1.0}),
                 ('child-tuning-d', {}), ('rose-first', {}), ('rose-second', {}),
                 ('rose-ensemble', {'max_grad_norm': 1.0})]


@pytest.mark.parametrize('method, extra', SWEEP_METHODS)
def test_traced_settings_give_the_plain_optimizers_updates_and_state(method, extra):
  config = _config(method, **extra)
  params = _params()
  fisher = jax.tree.map(lambda p: jnp.asarray(p > 0, jnp.float32), params) \
      if method == 'child-tuning-d' else None
  kwargs = dict(fisher_mask=fisher)
  plain_tx = build_optimizer(config, config.build_method(), 8, **kwargs)
  swept_tx = sweep_optimizer(config, config.build_method(), 8,
                             ['learning_rate', 'upper', 'gamma', 'b2', 'eps'], **kwargs)
  rose = 'rose' in method
  plain, plain_state = _train(plain_tx, params, rose=rose)
  swept, swept_state = _train(swept_tx, params, rose=rose)
  chex.assert_trees_all_close(swept, plain, rtol=1e-6, atol=1e-7)
  assert jax.tree.structure(swept_state.inner_state) == jax.tree.structure(plain_state)
  assert float(swept_state.hyperparams['upper']) == 0.5
  assert not jax.tree.all(jax.tree.map(np.array_equal, plain, params))


def test_a_sweep_traces_only_optimizer_numbers():
  config = _config('rose-ensemble')
  with pytest.raises(ValueError, match=r"Cannot trace \['dropout'\]: a sweep varies"):
    sweep_optimizer(config, config.build_method(), 8, ['learning_rate', 'dropout'])
