"""as_apply_fn: an NNX module as the step's apply_fn, trained on its
``nnx.Param`` leaves only."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rose_jax.models import EmbeddingPerturbation, as_apply_fn
from rose_jax.training import methods
from rose_jax.training import step as step_lib
from tests.helpers import tiny_batch, tiny_model
from tests.helpers.own_models import NnxWithState, call_nnx_with_state, token_batch


def test_the_encoder_through_the_adapter_is_the_encoder():
  model = tiny_model(dropout=0.2)
  apply_fn, params = as_apply_fn(model)
  batch, key = tiny_batch(), jax.random.key(2)
  inputs = (batch['input_ids'], batch['attention_mask'])
  noise = EmbeddingPerturbation(output=jnp.full((16, 8, 16), 0.1))
  chex.assert_trees_all_equal(apply_fn(params, batch, dropout_key=None), model(*inputs))
  chex.assert_trees_all_equal(apply_fn(params, batch, dropout_key=key),
                              model(*inputs, rngs=nnx.Rngs(dropout=key)))
  chex.assert_trees_all_equal(
      apply_fn(params, batch, dropout_key=key, perturbation=noise),
      model(*inputs, rngs=nnx.Rngs(dropout=key), perturbation=noise))
  assert apply_fn.embedding_shape(batch) == (16, 8, 16)


def _host(state):
  unkey = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  return jax.tree.map(lambda x: np.array(unkey(x)), nnx.to_pure_dict(state))


def test_only_params_are_trained_and_the_rest_is_held():
  model = NnxWithState(nnx.Rngs(0, dropout=1))
  apply_fn, params = as_apply_fn(model, call=call_nnx_with_state)
  leaves = {jax.tree_util.keystr(p, simple=True, separator='/')
            for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert leaves == {'embed/embedding', 'norm/scale', 'norm/bias', 'out/kernel', 'out/bias'}
  fixed = _host(apply_fn.fixed)
  assert set(fixed) == {'norm', 'dropout'}  # running statistics, the dropout's RNG stream

  batch = token_batch()
  tx = optax.adam(1e-2)
  step = step_lib.make_train_step(apply_fn, tx, methods.get_method('rose-ensemble'),
                                  donate=False)
  new, _, metrics = step(params, tx.init(params), batch, jax.random.key(3))
  assert float(metrics['kl']) > 0, 'the kept RNG stream must be reseeded per pass key'
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                      jax.tree.leaves(new), strict=True))
  chex.assert_trees_all_equal(_host(apply_fn.fixed), fixed)


def test_dropout_follows_the_key_and_is_off_without_one():
  apply_fn, params = as_apply_fn(NnxWithState(nnx.Rngs(0)), call=call_nnx_with_state)
  batch = token_batch()
  one, two = jax.random.key(1), jax.random.key(2)
  off = apply_fn(params, batch, dropout_key=None)
  chex.assert_trees_all_equal(off, apply_fn(params, batch, dropout_key=None))
  chex.assert_trees_all_equal(apply_fn(params, batch, dropout_key=one),
                              apply_fn(params, batch, dropout_key=one))
  assert not np.allclose(apply_fn(params, batch, dropout_key=one),
                         apply_fn(params, batch, dropout_key=two))
  assert not np.allclose(apply_fn(params, batch, dropout_key=one), off)


def test_a_module_of_ones_own_needs_call():
  with pytest.raises(TypeError, match='needs call=, how to call a NnxWithState'):
    as_apply_fn(NnxWithState(nnx.Rngs(0)))
