"""Filter-normalised directions, grid and line evaluation, and the flatness numbers."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rose_jax.analysis import landscape
from rose_jax.models import as_apply_fn
from tests.helpers import tiny_batch, tiny_model


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**16), rows=st.integers(2, 6), cols=st.integers(1, 5))
def test_each_filter_has_the_norm_of_its_parameter_filter(seed, rows, cols):
  rng = np.random.default_rng(seed)
  params = {'dense': {'kernel': rng.normal(size=(rows, cols)).astype(np.float32),
                      'bias': rng.normal(size=(cols,)).astype(np.float32)},
            'embed': {'embedding': rng.normal(size=(rows, cols)).astype(np.float32)},
            'norm': {'scale': rng.normal(size=(cols,)).astype(np.float32)}}
  direction = landscape.filter_normalized_direction(jax.random.key(seed), params)
  chex.assert_trees_all_equal_shapes_and_dtypes(direction, params)
  # A kernel's filter is an output unit (a column of [in, out]); an embedding's a row.
  np.testing.assert_allclose(np.linalg.norm(direction['dense']['kernel'], axis=0),
                             np.linalg.norm(params['dense']['kernel'], axis=0), rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(direction['embed']['embedding'], axis=1),
                             np.linalg.norm(params['embed']['embedding'], axis=1), rtol=1e-5)
  # Biases and LayerNorm are left out, as Li et al.'s figures do.
  assert not np.any(direction['dense']['bias']) and not np.any(direction['norm']['scale'])
  # Random, not the parameters rescaled.
  assert not np.allclose(direction['dense']['kernel'], params['dense']['kernel'])


def _loss_fn(apply_fn, batch):
  def loss_fn(params):
    logits = apply_fn(params, batch, dropout_key=None)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean(),
            jnp.mean(jnp.argmax(logits, -1) == batch['labels']))
  return loss_fn


@pytest.fixture(scope='module')
def tiny():
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  _, other = as_apply_fn(tiny_model(dropout=0.0, seed=1))
  batch = tiny_batch(3)
  return params, other, _loss_fn(apply_fn, batch)


def test_the_surface_is_the_loss_at_each_point_in_any_chunking(tiny):
  params, _, loss_fn = tiny
  delta = landscape.filter_normalized_direction(jax.random.key(0), params)
  eta = landscape.filter_normalized_direction(jax.random.key(1), params)
  axis = landscape.grid(-0.25, 0.25, 5)
  whole = landscape.loss_surface(loss_fn, params, delta, eta, axis, axis, chunk=25)
  assert whole.loss.shape == (5, 5) and whole.chunk == 25
  # f(0, 0) is the model's own loss, and every point is L(theta + a delta + b eta).
  np.testing.assert_allclose(whole.loss[2, 2], loss_fn(params)[0], rtol=1e-6)
  for i, j in ((0, 4), (3, 1)):
    a, b = axis[i], axis[j]
    moved = jax.tree.map(lambda p, d, e, a=a, b=b: p + a * d + b * e, params, delta, eta)
    np.testing.assert_allclose(whole.loss[i, j], loss_fn(moved)[0], rtol=1e-5)
  assert np.ptp(whole.loss) > 0
  for chunk in (1, 7):  # 7 leaves a padded last chunk
    chunked = landscape.loss_surface(loss_fn, params, delta, eta, axis, axis, chunk=chunk)
    np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-6)
  # A budget too small for the whole grid is chunked, not crashed.
  small = landscape.loss_surface(loss_fn, params, delta, eta, axis, axis, memory_budget=1)
  assert small.chunk == 1
  np.testing.assert_allclose(small.loss, whole.loss, rtol=1e-6)


def test_interpolation_ends_at_the_two_solutions(tiny):
  params, other, loss_fn = tiny
  alphas = landscape.grid(-0.5, 1.5, 9)
  result = landscape.interpolation(loss_fn, params, other, alphas, chunk=4)
  np.testing.assert_allclose(result.loss[2], loss_fn(params)[0], rtol=1e-6)  # alpha 0
  np.testing.assert_allclose(result.loss[6], loss_fn(other)[0], rtol=1e-6)  # alpha 1
  np.testing.assert_allclose(result.accuracy[6], loss_fn(other)[1])
  halfway = jax.tree.map(lambda p, q: 0.5 * p + 0.5 * q, params, other)
  np.testing.assert_allclose(result.loss[4], loss_fn(halfway)[0], rtol=1e-5)


def test_interpolation_refuses_two_architectures(tiny):
  params, _, loss_fn = tiny
  last, _ = jax.tree_util.tree_flatten_with_path(params)[0][-1]
  wider = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros((x.shape[0] + 1, *x.shape[1:])) if path == last else x, params)
  with pytest.raises(ValueError, match=re.escape(jax.tree_util.keystr(last))):
    landscape.interpolation(loss_fn, params, wider, np.linspace(0, 1, 3))
  fewer = {k: v for k, v in params.items() if k != 'classifier'}
  with pytest.raises(ValueError, match='different architectures'):
    landscape.interpolation(loss_fn, params, fewer, np.linspace(0, 1, 3))


def test_flatness_numbers_of_known_shapes():
  axis = landscape.grid(-1, 1, 201)
  a, b = np.meshgrid(axis, axis, indexing='ij')
  # A bowl a^2 + b^2 is within 0.25 of its centre on a disc of radius 1/2.
  area = landscape.flat_area(a**2 + b**2, axis, axis, rise=0.25)
  assert area == pytest.approx(np.pi / 4, rel=0.02)
  assert landscape.flat_area(4 * (a**2 + b**2), axis, axis, rise=0.25) == pytest.approx(
      np.pi / 16, rel=0.03)  # sharper: a quarter of the area
  with pytest.raises(ValueError, match='rise must be 0 or more'):
    landscape.flat_area(a**2 + b**2, axis, axis, rise=-1)
  alphas = landscape.grid(-0.5, 1.5, 41)
  assert landscape.endpoint_sharpness(3 * (alphas - 1)**2, alphas, 1.0) == pytest.approx(6)
  assert landscape.endpoint_sharpness(3 * alphas**2, alphas, 0.0) == pytest.approx(6)
  assert landscape.interpolation_barrier(np.sin(np.pi * alphas), alphas) == pytest.approx(1)
  assert landscape.interpolation_barrier(alphas, alphas) == pytest.approx(0)
  with pytest.raises(ValueError, match='at least 2 points'):
    landscape.grid(0, 1, 1)
