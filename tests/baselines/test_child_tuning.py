"""CHILD-TUNING_D: the Fisher mask, the fixed-mask AdamW, against NumPy."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import rose_jax
from rose_jax.baselines import child_tuning

SHAPES = {'embeddings': {'word_embeddings': {'embedding': (7, 4)}},
          'encoder': {'layer': {'0': {'query': {'kernel': (4, 4), 'bias': (4,)},
                                      'LayerNorm': {'scale': (4,)}},
                                '1': {'dense': {'kernel': (4, 6)}}}},
          'classifier': {'kernel': (4, 2)}}


def _tree(rng, positive=False):
  draw = lambda s: np.abs(rng.normal(size=s)) if positive else rng.normal(size=s)
  return jax.tree.map(lambda s: jnp.asarray(draw(s), jnp.float32), SHAPES,
                      is_leaf=lambda x: isinstance(x, tuple))


def test_included_tensors_are_the_encoder_layers():
  included = child_tuning.included_tensors(_tree(np.random.default_rng(0)))
  assert not included['embeddings']['word_embeddings']['embedding']
  assert not included['classifier']['kernel']
  assert all(jax.tree.leaves(included['encoder']))
  assert child_tuning.is_included('roberta.encoder.layer.3.output.LayerNorm.weight')
  assert not child_tuning.is_included('roberta.embeddings.LayerNorm.weight')


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), reserve_p=st.floats(0.01, 1.0))
def test_fisher_mask_is_one_global_numpy_percentile_cut(seed, reserve_p):
  fisher = _tree(np.random.default_rng(seed), positive=True)
  mask = child_tuning.fisher_mask(fisher, reserve_p=reserve_p)
  included = np.concatenate([np.ravel(x) for x in jax.tree.leaves(fisher['encoder'])])
  polar = np.percentile(included, (1 - reserve_p) * 100)  # the official code's cut
  for f, m in zip(jax.tree.leaves(fisher['encoder']), jax.tree.leaves(mask['encoder']),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(m), np.asarray(f) >= np.float32(polar))
  kept = sum(int(np.sum(m)) for m in jax.tree.leaves(mask['encoder']))
  assert kept == int(np.sum(included >= np.float32(polar)))
  assert abs(kept - reserve_p * included.size) <= 1 + 1e-9 * included.size
  assert np.all(np.asarray(mask['classifier']['kernel']))


def _numpy_child_tuning(params, grads_seq, mask, *, lr, b1, b2, eps, wd, decayed):
  """ChildTuningAdamW: grad *= mask, Hugging Face AdamW, decay after the step."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    for k in p:
      g = np.asarray(grads[k], np.float64) * mask[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step_size = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
      p[k] = p[k] - step_size * m[k] / (np.sqrt(v[k]) + eps)
      if decayed[k]:
        p[k] = p[k] - lr * wd * p[k]
  return p


def test_child_tuning_d_equals_the_official_optimizer_and_keeps_its_mask():
  rng = np.random.default_rng(1)
  flat = lambda tree: {jax.tree_util.keystr(k): v
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  params = _tree(rng)
  mask = child_tuning.fisher_mask(_tree(rng, positive=True), reserve_p=0.3)
  decay_mask = rose_jax.selection.authors_decay_mask
  tx = rose_jax.child_tuning_d(1e-2, mask=mask, weight_decay=0.1, weight_decay_mask=decay_mask)
  state = tx.init(params)
  grads_seq = [_tree(rng) for _ in range(4)]
  p = params
  for grads in grads_seq:
    updates, state = jax.jit(tx.update)(grads, state, p)
    p = optax.apply_updates(p, updates)
    chex.assert_trees_all_equal(state[0].mask, mask)  # fixed for the whole run
  expected = _numpy_child_tuning(
      flat(params), [flat(g) for g in grads_seq], {k: np.asarray(v) for k, v in flat(mask).items()},
      lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, wd=0.1,
      decayed={k: bool(v) for k, v in flat(decay_mask(params)).items()})
  for k, v in flat(p).items():
    np.testing.assert_allclose(v, expected[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_masked_weights_take_a_zero_adam_step_and_only_the_decay():
  rng = np.random.default_rng(2)
  params = _tree(rng)
  mask = child_tuning.fisher_mask(_tree(rng, positive=True), reserve_p=0.5)
  kernel = ('encoder', 'layer', '1', 'dense', 'kernel')
  get = lambda tree: tree['encoder']['layer']['1']['dense']['kernel']
  for wd in (0.0, 0.1):
    tx = rose_jax.child_tuning_d(1e-2, mask=mask, weight_decay=wd)
    state = tx.init(params)
    updates, state = tx.update(_tree(rng), state, params)
    frozen = ~np.asarray(get(mask))
    assert frozen.any() and (~frozen).any(), kernel
    np.testing.assert_allclose(np.asarray(get(updates))[frozen],
                               -1e-2 * wd * np.asarray(get(params))[frozen], rtol=1e-6)
    assert np.all(np.asarray(get(updates))[~frozen] != 0)


@pytest.mark.parametrize('reserve_p', [0.0, -0.1, 1.5])
def test_reserve_p_outside_its_range_fails(reserve_p):
  with pytest.raises(ValueError, match=r'reserve_p .* \(0, 1\]'):
    child_tuning.fisher_mask(_tree(np.random.default_rng(0), positive=True), reserve_p=reserve_p)
