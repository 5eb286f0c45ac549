"""The layers our encoder families share."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rose_jax.models import layers


def test_dropout_draws_the_keys_of_nnx_rngs_in_order_and_traced():
  ours, theirs = nnx.Rngs(dropout=jax.random.key(3)), nnx.Rngs(dropout=jax.random.key(3))
  drawn = [layers.next_key(ours.dropout) for _ in range(3)]
  expected = [theirs.dropout() for _ in range(3)]
  chex.assert_trees_all_equal([jax.random.key_data(k) for k in drawn],
                              [jax.random.key_data(k) for k in expected])
  assert int(ours.dropout.count[...]) == int(theirs.dropout.count[...]) == 3

  # Under jit, as the train step draws them: the masks a stream's own keys give.
  def masks(draw, key):
    rngs = nnx.Rngs(dropout=key)
    return [layers.dropout(0.5, jnp.ones(64), rngs) if draw is None else
            jnp.where(jax.random.bernoulli(rngs.dropout(), 0.5, (64,)), 2.0, 0.0)
            for _ in range(3)]

  ours = jax.jit(lambda key: masks(None, key))(jax.random.key(5))
  theirs = jax.jit(lambda key: masks('stream', key))(jax.random.key(5))
  chex.assert_trees_all_equal(ours, theirs)
  assert not np.array_equal(ours[0], ours[1])  # each call a new key
