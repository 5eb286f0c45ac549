"""SMART and FreeLB against direct, unoptimised computations of their definitions."""

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax._src import segments
from rose_jax.baselines import adversarial
from rose_jax.models import EmbeddingPerturbation, as_apply_fn
from rose_jax.training import methods
from rose_jax.training import step as step_lib
from tests.helpers import (
  definitions,
  packed_and_unpacked,
  recording_optimizer,
  tiny_batch,
  tiny_model,
)


def _setup(dropout=0.1):
  apply_fn, params = as_apply_fn(tiny_model(dropout=dropout))
  batch = tiny_batch(2)
  inputs = {k: batch[k] for k in ('input_ids', 'attention_mask')}
  return apply_fn, params, batch, inputs


def test_a_zero_perturbation_gives_exactly_the_clean_logits():
  # mt-dnn's current code feeds embeddings + noise back as inputs_embeds, adding
  # positions and LayerNorm twice: even zero noise changes its logits. Ours may not.
  apply_fn, params, _, inputs = _setup()
  shape = (*inputs['input_ids'].shape, 16)
  zeros = jnp.zeros(shape, jnp.float32)
  for key in (None, jax.random.key(4)):
    clean = apply_fn(params, inputs, dropout_key=key)
    for perturbation in (EmbeddingPerturbation(word=zeros), EmbeddingPerturbation(output=zeros),
                         EmbeddingPerturbation(word=zeros, output=zeros)):
      chex.assert_trees_all_equal(
          apply_fn(params, inputs, dropout_key=key, perturbation=perturbation), clean)
    moved = apply_fn(params, inputs, dropout_key=key,
                     perturbation=EmbeddingPerturbation(output=zeros + 0.1))
    assert not np.allclose(moved, clean)


def _kl(p_logits, q_logits):
  p, q = jax.nn.softmax(p_logits), jax.nn.softmax(q_logits)
  return jnp.sum(p * (jnp.log(p) - jnp.log(q)))


def test_smart_gradient_equals_its_definition():
  apply_fn, params, batch, inputs = _setup()
  smart = adversarial.Smart(alpha=3.0, steps=2, step_size=1e-3, noise_var=1e-5)
  labels = batch['labels']
  dropout_key, noise_key = jax.random.key(1), jax.random.key(2)
  shape = (*inputs['input_ids'].shape, 16)
  apply = lambda p, perturbation, key: apply_fn(p, inputs, dropout_key=key,
                                                perturbation=perturbation)

  # The definition, step by step, with every "detached" value a constant.
  # Both sides jitted: one program each, not every primitive compiled alone.
  def definition(params):
    keys = jax.random.split(dropout_key, smart.steps + 2)
    clean0 = apply(params, None, keys[0])
    noise = jax.random.normal(noise_key, shape) * 1e-5
    log_odds = lambda p: -jnp.log(1.0 / (p + 1e-6) - 1.0 + 1e-6)
    for step in range(2):
      adv_logits = lambda n, k=keys[1 + step]: apply(params, EmbeddingPerturbation(output=n), k)
      r_p = log_odds(jax.nn.softmax(adv_logits(noise)))
      r_q = log_odds(jax.nn.softmax(clean0))
      g = jax.grad(lambda n, r_p=r_p, r_q=r_q, f=adv_logits: jnp.sum(
          2 * jax.nn.softmax(f(n)) * (r_p - r_q)))(noise)
      noise = noise + 1e-3 * g
      noise = noise / (jnp.max(jnp.abs(noise), axis=-1, keepdims=True) + 1e-6)
    adv0 = apply(params, EmbeddingPerturbation(output=noise), keys[-1])

    def loss(p):
      clean = apply(p, None, keys[0])
      adv = apply(p, EmbeddingPerturbation(output=noise), keys[-1])
      regulariser = (_kl(adv0, clean) + _kl(clean0, adv)) / labels.shape[0]
      return definitions.cross_entropy(clean, labels) + 3.0 * regulariser

    return jax.grad(loss)(params), clean0, adv0

  expected, clean0, adv0 = jax.jit(definition)(params)
  got, (ce, regulariser, _) = jax.jit(lambda p: jax.grad(smart.loss, argnums=1, has_aux=True)(
      apply, p, labels, shape, dropout_key, noise_key))(params)
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(ce, definitions.cross_entropy(clean0, labels), rtol=1e-6)
  np.testing.assert_allclose(regulariser, (_kl(adv0, clean0) + _kl(clean0, adv0)) / 16,
                             rtol=1e-4)
  assert float(regulariser) > 0


@pytest.mark.parametrize('norm, init_mag, max_norm', [('l2', 1.0, 0.6), ('linf', 0.1, 0.05),
                                                      ('l2', 0.0, 0.0)])
def test_freelb_gradient_equals_the_hugging_face_loop(norm, init_mag, max_norm):
  apply_fn, params, batch, inputs = _setup()
  freelb = adversarial.FreeLB(steps=3, step_size=0.1, init_mag=init_mag, max_norm=max_norm,
                              norm=norm)
  labels, mask = batch['labels'], batch['attention_mask']
  dropout_key, noise_key = jax.random.key(1), jax.random.key(2)
  shape = (*inputs['input_ids'].shape, 16)
  apply = lambda p, perturbation, key: apply_fn(p, inputs, dropout_key=key,
                                                perturbation=perturbation)

  # run_glue_freelb.py, transcribed: NumPy for delta, jax.grad for one pass.
  m = np.asarray(mask, np.float64)[:, :, None]
  if init_mag == 0:
    delta = np.zeros(shape)
  elif norm == 'l2':
    u = np.asarray(jax.random.uniform(noise_key, shape, jnp.float32, -1.0, 1.0))
    delta = u * m * (init_mag / np.sqrt(m.sum(1, keepdims=True) * shape[-1]))
  else:
    delta = np.asarray(jax.random.uniform(noise_key, shape, jnp.float32, -init_mag,
                                          init_mag)) * m
  total = None
  for k in range(3):
    pass_loss = lambda p, d: definitions.cross_entropy(
        apply(p, EmbeddingPerturbation(word=d), dropout_key), labels) / 3
    gp, gd = jax.grad(pass_loss, argnums=(0, 1))(params, jnp.asarray(delta, jnp.float32))
    total = gp if total is None else jax.tree.map(jnp.add, total, gp)
    if k == 2:
      break
    gd = np.asarray(gd, np.float64).reshape(16, -1)
    if norm == 'l2':
      denorm = np.maximum(np.linalg.norm(gd, axis=1), 1e-8)
      delta = delta + 0.1 * gd.reshape(shape) / denorm[:, None, None]
      if max_norm > 0:
        size = np.linalg.norm(delta.reshape(16, -1), axis=1)
        delta = delta * np.where(size > max_norm, max_norm / size, 1.0)[:, None, None]
    else:
      denorm = np.maximum(np.abs(gd).max(axis=1), 1e-8)
      delta = np.clip(delta + 0.1 * gd.reshape(shape) / denorm[:, None, None],
                      -max_norm, max_norm)
  got, _ = freelb.gradients(apply, params, labels, mask, shape, dropout_key, noise_key)
  chex.assert_trees_all_close(got, total, rtol=2e-4, atol=1e-7)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), norm=st.sampled_from(['l2', 'linf']),
                  max_norm=st.floats(0.01, 2.0), step_size=st.floats(0.01, 5.0))
def test_freelb_perturbation_stays_inside_its_ball(seed, norm, max_norm, step_size):
  rng = np.random.default_rng(seed)
  freelb = adversarial.FreeLB(norm=norm, max_norm=max_norm, step_size=step_size)
  delta = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32)
  for _ in range(3):
    delta = freelb.ascend(delta, jnp.asarray(rng.normal(size=(4, 5, 3)) * 10, jnp.float32))
  if norm == 'l2':
    sizes = np.linalg.norm(np.asarray(delta).reshape(4, -1), axis=1)
  else:
    sizes = np.abs(np.asarray(delta)).reshape(4, -1).max(axis=1)
  assert np.all(sizes <= max_norm * (1 + 1e-5)), sizes


def test_freelb_start_is_zero_at_padding_and_scaled_by_length():
  freelb = adversarial.FreeLB(init_mag=1.0, norm='l2')
  mask = np.ones((2, 6), np.int32)
  mask[1, 3:] = 0
  delta = np.asarray(freelb.initial_delta(jax.random.key(0), (2, 6, 8), jnp.asarray(mask)))
  assert np.all(delta[1, 3:] == 0)
  # U(-1, 1) has variance 1/3: the example's squared norm is about init_mag**2 / 3.
  assert np.all(np.abs(np.abs(delta).max(axis=(1, 2)) * np.sqrt([6 * 8, 3 * 8])) <= 1.0)


@pytest.mark.parametrize('make, match', [
    (lambda: adversarial.FreeLB(norm='l1'), 'Unknown FreeLB norm'),
    (lambda: adversarial.FreeLB(steps=-1), 'FreeLB steps must be > 0'),
    (lambda: adversarial.FreeLB(max_norm=-0.5), 'FreeLB max_norm must be >= 0'),
    (lambda: adversarial.FreeLB(init_mag=-1.0), 'FreeLB init_mag must be >= 0'),
    (lambda: adversarial.Smart(steps=-1), 'SMART steps must be >= 0'),
    (lambda: adversarial.Smart(step_size=-1e-3), 'SMART step_size must be >= 0'),
])
def test_bad_adversarial_settings_fail_at_construction(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize('name', ['smart', 'freelb'])
@pytest.mark.parametrize('parallel', ['shard_map', 'pmap'])
def test_adversarial_steps_on_eight_devices_average_the_devices_gradients(name, parallel):
  method = methods.get_method(name)
  apply_fn, params, batch, _ = _setup()
  key = jax.random.key(7)
  devices = jax.device_count()
  rows = 16 // devices
  expected = []
  one = step_lib.make_train_step(apply_fn, recording_optimizer(), method, donate=False)
  for d in range(devices):
    local = {k: v[d * rows:(d + 1) * rows] for k, v in batch.items()}
    state = recording_optimizer().init(params)
    # A device's step is the one-device step on its rows with its folded key.
    _, state, _ = one(params, state, local, jax.random.fold_in(key, d))
    expected.append(state.grads)
  mean = jax.tree.map(lambda *g: sum(g) / devices, *expected)
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel, donate=False)
  if parallel == 'pmap':
    _, state, _ = step(step_lib.replicate(params), step_lib.replicate(tx.init(params)),
                       step_lib.split_for_pmap(batch), key)
    state = step_lib.unreplicate(state)
  else:
    _, state, _ = step(params, tx.init(params), step_lib.shard_batch(batch, step_lib.data_mesh()),
                       key)
  chex.assert_trees_all_close(state.grads, mean, rtol=1e-4, atol=1e-7)


def test_smarts_bregman_term_against_its_definition():
  apply_fn, params, batch, inputs = _setup()
  teacher = jax.tree.map(lambda p: p * 0.9, params)
  smart = adversarial.Smart(alpha=1.0, steps=1, bregman_mu=2.0)
  plain = adversarial.Smart(alpha=1.0, steps=1)
  labels, shape = batch['labels'], (*inputs['input_ids'].shape, 16)
  dropout_key, noise_key = jax.random.key(1), jax.random.key(2)
  apply = lambda p, perturbation, key: apply_fn(p, inputs, dropout_key=key,
                                                perturbation=perturbation)
  clean_key = jax.random.split(dropout_key, 3)[0]
  taught = apply(teacher, None, clean_key)

  def bregman(p):
    clean = apply(p, None, clean_key)
    return 2.0 * (_kl(taught, clean) + _kl(clean, taught)) / labels.shape[0]

  grad = lambda s, t: jax.grad(s.loss, argnums=1, has_aux=True)(
      apply, params, labels, shape, dropout_key, noise_key, t)[0]
  expected = jax.tree.map(jnp.add, grad(plain, None), jax.grad(bregman)(params))
  chex.assert_trees_all_close(grad(smart, teacher), expected, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match='params_ema'):
    grad(smart, None)


def test_smart_with_a_teacher_trains_in_the_step():
  import optax

  import rose_jax
  method = methods.get_method('smart', smart=adversarial.Smart(bregman_mu=1.0))
  apply_fn, params, batch, _ = _setup()
  tx = optax.chain(rose_jax.hf_adamw(1e-3), rose_jax.params_ema(0.9))
  step = step_lib.make_train_step(apply_fn, tx, method, donate=False)
  state = tx.init(params)
  new_params, state, metrics = step(params, state, batch, jax.random.key(0))
  assert np.isfinite(float(metrics['loss']))
  ema = state[1].ema
  expected = jax.tree.map(lambda p, n: 0.9 * p + 0.1 * n, params, new_params)
  chex.assert_trees_all_close(ema, expected, rtol=1e-5, atol=1e-8)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), norm=st.sampled_from(['l2', 'linf']),
                  max_norm=st.sampled_from([0.0, 0.3]),
                  cuts=st.lists(st.integers(1, 4), min_size=2, max_size=2))
def test_freelb_normalises_and_bounds_each_example_of_a_packed_row(seed, norm, max_norm, cuts):
  # Two rows of 6 tokens, each holding two examples (and padding after the
  # second): the packed ascent is the ascent of each example alone in a row.
  rng = np.random.default_rng(seed)
  segment_ids = np.zeros((2, 6), np.int32)
  for r, cut in enumerate(cuts):
    segment_ids[r, :cut], segment_ids[r, cut:5] = 1, 2
  freelb = adversarial.FreeLB(norm=norm, max_norm=max_norm, step_size=0.5)
  delta, grad = (rng.normal(size=(2, 6, 3)).astype(np.float32) for _ in range(2))
  ids = segments.example_ids(jnp.asarray(segment_ids))
  got = np.asarray(freelb.ascend(jnp.asarray(delta), jnp.asarray(grad), ids))
  for r in range(2):
    for s in (1, 2):
      tokens = segment_ids[r] == s
      alone = freelb.ascend(jnp.asarray(delta[r, tokens][None]),
                            jnp.asarray(grad[r, tokens][None]))
      np.testing.assert_allclose(got[r, tokens], np.asarray(alone)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_freelb_on_packed_rows_gives_the_unpacked_gradients(norm):
  # Dropout off and a zero start make FreeLB deterministic; a bound of 0.15
  # binds after the second pass. Normalising per row instead of per example
  # changes every packed example's delta.
  packed, unpacked = packed_and_unpacked(4)
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  method = methods.get_method('freelb', freelb=adversarial.FreeLB(
      steps=3, step_size=0.1, init_mag=0.0, max_norm=0.15, norm=norm))
  tx = recording_optimizer()
  step = step_lib.make_train_step(apply_fn, tx, method, donate=False)
  (_, a, ma), (_, b, mb) = (step(params, tx.init(params), x, jax.random.key(0))
                            for x in (packed, unpacked))
  chex.assert_trees_all_close(a.grads, b.grads, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(ma['ce'], mb['ce'], rtol=1e-6)


def test_freelb_start_in_packed_rows_is_scaled_by_each_example_and_zero_at_padding():
  segment_ids = jnp.asarray([[1, 1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  mask = (segment_ids != 0).astype(jnp.int32)
  freelb = adversarial.FreeLB(init_mag=1.0, norm='l2')
  delta = np.asarray(freelb.initial_delta(jax.random.key(0), (2, 8, 4), mask,
                                          segments.example_ids(segment_ids)))
  assert np.all(np.isfinite(delta)) and np.all(delta[0, 6:] == 0)
  # U(-1, 1) * init_mag / sqrt(length * H): the bound per example's tokens.
  for row, tokens, length in ((0, slice(0, 4), 4), (0, slice(4, 6), 2), (1, slice(0, 8), 8)):
    bound = 1.0 / np.sqrt(length * 4)
    assert np.abs(delta[row, tokens]).max() <= bound
    assert np.abs(delta[row, tokens]).max() > bound / 2
