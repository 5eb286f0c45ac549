"""What the encoder computes from packed rows' segment ids
(:func:`rose_jax.training.segment_starts`): positions, attention, first tokens.

Everything here is computed from the ids alone, so that concatenating a
batch with itself (the step's two dropout passes) gives the packed batch of
both copies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rose_jax._src.segments import first_token_mask, segment_starts


def start_index(segment_ids: jax.Array) -> jax.Array:
  """Each token's segment's first position in its row."""
  positions = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
  return jax.lax.cummax(jnp.where(segment_starts(segment_ids), positions, 0), axis=1)


def bert_positions(segment_ids: jax.Array) -> jax.Array:
  """Positions from 0 in every segment, as each example alone would have them."""
  return jnp.arange(segment_ids.shape[1]) - start_index(segment_ids)


def roberta_positions(input_ids: jax.Array, segment_ids: jax.Array,
                      pad_token_id: int) -> jax.Array:
  """Hugging Face's ``create_position_ids_from_input_ids`` per segment:
  ``padding_idx + 1, + 2, ...`` over each example's non-pad tokens, and
  ``padding_idx`` at pad tokens."""
  not_pad = (input_ids != pad_token_id).astype(jnp.int32)
  counted = jnp.cumsum(not_pad, axis=1)
  before = jnp.take_along_axis(counted - not_pad, start_index(segment_ids), axis=1)
  return (counted - before) * not_pad + pad_token_id


def attention_mask(segment_ids: jax.Array) -> jax.Array:
  """``[rows, length, length]`` bools: a token attends to the tokens of its own
  segment only (block-diagonal), and nothing attends to padding."""
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return same & (segment_ids[:, None, :] != 0)


def first_tokens(segment_ids: jax.Array, examples: int) -> jax.Array:
  """The flat ``rows * length`` index of each example's first token, in
  example order; ``examples`` is their number (static)."""
  return jnp.nonzero(first_token_mask(segment_ids).reshape(-1), size=examples, fill_value=0)[0]


def first_token_states(hidden: jax.Array, segment_ids: jax.Array | None,
                       examples: int | None) -> jax.Array:
  """Each example's first-token hidden state, ``[examples, hidden]``: every
  row's first token unpacked (``segment_ids`` None), else each segment's."""
  if segment_ids is None:
    return hidden[:, 0]
  return hidden.reshape(-1, hidden.shape[-1])[first_tokens(segment_ids, examples)]
