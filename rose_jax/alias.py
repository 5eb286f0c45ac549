"""The ``rose`` optimizer: ROSE-masked AdamW, as in the authors' SparseAdamW."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rose_jax import masking
from rose_jax._hparams import concrete_float
from rose_jax.risks import Granularity
from rose_jax.transform import ScaleByRoseState, Variant, resolve_tree_of_bools, rose_rule


def rose(
    learning_rate: optax.ScalarOrSchedule,
    *,
    variant: Variant = 'ensemble',
    upper: float,
    lower: float = 0.0,
    gamma: float = 0.5,
    granularity: Granularity = 'tensor',
    selectable: Any = None,
    warmup_steps: int = 0,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    weight_decay_mask: Any = None,
    max_grad_norm: float | None = None,
    moment_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ROSE (Jiang et al., EMNLP 2022): robust selective fine-tuning with AdamW.

  Each step ranks the ``selectable`` tensors (or scalars) by their risks and
  updates only those kept by the mask ``M`` (see :func:`scale_by_rose`):

  .. math::
    g' = M g + (1 - M) m_{t-1},\quad
    p \leftarrow p - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \frac{M m_t}{\sqrt{v_t} + \epsilon},\quad
    p \leftarrow p - \eta \lambda M p

  The two parameter updates are applied one after the other, as Hugging
  Face's AdamW (and the authors' SparseAdamW built on it) does, so with
  ``granularity="tensor"`` the trajectory is the authors' step for step.

  Usage::

    tx = rose_jax.rose(2e-5, variant="ensemble", upper=0.4,
                       selectable=rose_jax.selection.authors_selectable,
                       weight_decay_mask=rose_jax.selection.authors_decay_mask)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, kl_grads=kl_grads)
    params = optax.apply_updates(params, updates)

  Args:
    learning_rate: the learning rate ``eta``, a float or an optax schedule.
    variant: ``"first"``, ``"second"`` or ``"ensemble"`` (ROSE-First/-Second/
      -Ensemble).
    upper: the upper threshold ``c_h`` as a fraction (0.6 for "60%").
    lower: the lower threshold; risks below its quantile are masked too.
    gamma: ensemble weight ``gamma`` of the first-order mask, in (0, 1).
    granularity: ``"tensor"`` (authors' code) or ``"element"`` (paper's text).
    selectable: which tensors are ranked (tree of bools, callable, or None
      for all); the others are always updated.
    warmup_steps: no masking while ``t <= warmup_steps``.
    b1: ``beta_1``. b2: ``beta_2``. eps: ``epsilon``.
    weight_decay: the decoupled decay ``lambda``, masked like the update.
    weight_decay_mask: which tensors decay (tree of bools, callable, or None
      for all), like ``optax.adamw``'s ``mask``.
    max_grad_norm: clip the update gradient to this global norm and scale
      ``kl_grads`` and ``ce_grads`` by the same factor (None: no clipping).
      Clipping the update gradient clips the step's loss, so its other
      gradients follow: the second-order risk then compares a clipped CE
      gradient with a momentum of clipped gradients. Use this rather than
      ``optax.chain(optax.clip_by_global_norm(c), rose(...))``, which clips
      the update gradient alone (see :func:`rose_jax.scale_by_rose`).
    moment_dtype: dtype of Adam's moments (default: at least float32).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
    extra keyword arguments ``kl_grads`` and ``ce_grads`` of
    :func:`scale_by_rose`; its state is a :class:`ScaleByRoseState`.

  With ``optax.inject_hyperparams``, pass callables such as ``selectable``
  through ``static_args``, which would otherwise be taken for schedules.
  """
  decay = concrete_float(weight_decay)
  if decay is not None and decay < 0:
    raise ValueError(f'weight_decay must be >= 0, got {decay}.')
  init_fn, rule = rose_rule(
      variant=variant, upper=upper, lower=lower, gamma=gamma,
      granularity=granularity, selectable=selectable, warmup_steps=warmup_steps,
      b1=b1, b2=b2, eps=eps, max_grad_norm=max_grad_norm, moment_dtype=moment_dtype)

  def update_fn(updates, state: ScaleByRoseState, params=None, **extra_args):
    direction, new_state, step_mask = rule(updates, state, params, **extra_args)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    step = jax.tree.map(lambda d: -lr * d, direction)
    if decay == 0.0:
      return step, new_state
    if params is None:
      raise ValueError('rose applies weight decay and needs params: call '
                       'update(grads, state, params, ...), or set weight_decay=0.')
    decays = resolve_tree_of_bools(weight_decay_mask, params, 'weight_decay_mask')
    mask = masking.fill_mask(step_mask, params)

    def decayed(s, p, m, d):
      if not d:
        return s
      # Hugging Face's AdamW decays the parameter *after* the Adam step.
      return s - lr * weight_decay * m * (jnp.asarray(p, s.dtype) + s)

    step = jax.tree.map(decayed, step, params, mask, decays)
    # scale_by_rose skips a step with non-finite extra gradients, leaving its
    # count as it was; the decay must not move the parameters either.
    taken = new_state.count != state.count
    return jax.tree.map(lambda s: jnp.where(taken, s, 0), step), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
