"""Optimizers for the step tests: one that records what the step gives it,
one that counts its traces, and the ROSE chain the step tests train with."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import rose_jax
from rose_jax import selection


class Recorded(NamedTuple):
  grads: optax.Updates
  kl_grads: optax.Updates
  ce_grads: optax.Updates


def recording_optimizer() -> optax.GradientTransformationExtraArgs:
  """Applies no update and keeps the gradients it was given."""
  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return Recorded(zeros, zeros, zeros)

  def update(grads, state, params=None, *, kl_grads=None, ce_grads=None, **_):
    del state, params
    zeros = jax.tree.map(jnp.zeros_like, grads)
    return zeros, Recorded(grads, zeros if kl_grads is None else kl_grads,
                           zeros if ce_grads is None else ce_grads)

  return optax.GradientTransformationExtraArgs(init, update)


class CountingOptimizer:
  """Wraps an optimizer and counts how often its update is traced."""

  def __init__(self, tx):
    self.traces = 0

    def update(*args, **kwargs):
      self.traces += 1
      return tx.update(*args, **kwargs)

    self.tx = optax.GradientTransformationExtraArgs(tx.init, update)


def rose_chain(variant: str = 'ensemble') -> optax.GradientTransformationExtraArgs:
  """Clipping, then ROSE at the authors' selection with lr 1e-3 and upper 0.5."""
  return optax.chain(optax.clip_by_global_norm(1.0), rose_jax.rose(
      1e-3, variant=variant, upper=0.5, selectable=selection.authors_selectable,
      weight_decay_mask=selection.authors_decay_mask))
