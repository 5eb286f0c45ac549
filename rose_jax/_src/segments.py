"""Packed rows as the step sees them: ``segment_ids`` of shape ``[rows,
length]``, 0 for padding and 1, 2, ... for the examples of a row, each
example's tokens contiguous. Examples are numbered row by row, left to
right; that is the order of the logits and of ``batch['labels']``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """``[rows, length]`` bools: True where a segment (or a padding run) begins."""
  changes = segment_ids[:, 1:] != segment_ids[:, :-1]
  return jnp.concatenate([jnp.ones_like(changes[:, :1]), changes], axis=1)


def first_token_mask(segment_ids: jax.Array) -> jax.Array:
  """``[rows, length]`` bools: True at each example's first token."""
  return segment_starts(segment_ids) & (segment_ids != 0)


def example_ids(segment_ids: jax.Array) -> jax.Array:
  """``[rows, length]``: each token's example, numbered 1, 2, ... in example
  order, 0 at padding."""
  firsts = first_token_mask(segment_ids).reshape(-1)
  return jnp.cumsum(firsts).reshape(segment_ids.shape) * (segment_ids != 0)
