"""The optimizer of a fine-tuning run, and of a sweep over its numbers.

Every method runs on one footing: Hugging Face's AdamW form with the
authors' decay rule, one learning-rate schedule and one clipping rule, masked
by ROSE or by CHILD-TUNING_D's fixed mask. :func:`sweep_optimizer` builds the
same optimizer with some numbers as traced hyperparameters
(``optax.inject_hyperparams``), so that one compiled step serves every member
of a sweep.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import optax

import rose_jax
from rose_jax import selection
from rose_jax.glue.config import TrainConfig
from rose_jax.training.methods import Method


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear decay to 0 after an optional linear warm-up, for every method."""
  warmup = int(config.warmup_ratio * total_steps)
  if not warmup:
    return optax.linear_schedule(config.learning_rate, 0.0, max(total_steps, 1))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
       optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1))],
      [warmup])


def rose_settings(config: TrainConfig, total_steps: int) -> dict:
  """The settings of :func:`rose_jax.rose` that decide its masks, but the variant
  and which tensors it ranks (for :func:`rose_jax.rose_masks` too)."""
  return dict(upper=config.upper, lower=config.lower, gamma=config.gamma,
              granularity=config.granularity, b1=config.b1,
              warmup_steps=int(config.warmup_ratio * total_steps),
              # Clips the KL and CE gradients that ROSE ranks by the same factor.
              max_grad_norm=config.max_grad_norm or None)


def build_optimizer(config: TrainConfig, method: Method, total_steps: int, *,
                    fisher_mask=None):
  """The method's optimizer, on one footing: Hugging Face's AdamW form
  (:func:`rose_jax.hf_adamw`) with the authors' decay rule, the same schedule
  and the same clipping, masked by ROSE or by CHILD-TUNING_D's fixed
  ``fisher_mask`` (None: a placeholder that a restored state replaces)."""
  schedule = learning_rate_schedule(config, total_steps)
  adam = dict(b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
              weight_decay_mask=selection.authors_decay_mask)
  if method.uses_rose:
    return rose_jax.rose(schedule, variant=method.rose_variant,
                         selectable=selection.authors_selectable, b2=config.b2, eps=config.eps,
                         weight_decay=config.weight_decay,
                         weight_decay_mask=selection.authors_decay_mask,
                         first_order_every=config.first_order_every,
                         **rose_settings(config, total_steps))
  if method.fisher_mask:
    # Official order: clip the unmasked gradient, then mask, then AdamW.
    core = rose_jax.child_tuning_d(schedule, mask=fisher_mask, **adam)
  else:
    core = rose_jax.hf_adamw(schedule, **adam)
  if getattr(method.adversary, 'bregman_mu', 0):
    # SMART's momentum teacher: beta 0.99 for the first 10% of updates, then 0.999.
    switch = max(int(0.1 * total_steps), 1)
    beta = optax.join_schedules([optax.constant_schedule(0.99),
                                 optax.constant_schedule(0.999)], [switch])
    core = optax.chain(core, rose_jax.params_ema(beta))
  if config.max_grad_norm:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), core)
  return core


# TrainConfig fields that a sweep varies as traced optimizer hyperparameters.
SWEPT_NUMBERS = ('learning_rate', 'upper', 'lower', 'gamma', 'weight_decay', 'b1', 'b2', 'eps')


def sweep_optimizer(config: TrainConfig, method: Method, total_steps: int,
                    names: Sequence[str], *, fisher_mask=None):
  """:func:`build_optimizer` with the settings ``names`` as traced hyperparameters.

  ``optax.inject_hyperparams`` keeps the values of ``names`` in the state, so
  states stacked along a member axis (each with its own values, set by
  :func:`rose_jax.training.sweep.with_hyperparams`) share one compiled step.
  With ``config``'s own values the updates equal :func:`build_optimizer`'s,
  and the state's ``inner_state`` has its structure, so a member's checkpoint
  is a plain run's.

  Args:
    config: the run's settings (a member's, or any: the values are set per member).
    method: the method.
    total_steps: the schedule's length.
    names: the settings to trace, each one of :data:`SWEPT_NUMBERS`.
    fisher_mask: CHILD-TUNING_D's mask for ``init`` (the update reads it from
      the state).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    ``optax.InjectHyperparamsState``.
  """
  unknown = [name for name in names if name not in SWEPT_NUMBERS]
  if unknown:
    raise ValueError(f'Cannot trace {unknown}: a sweep varies {list(SWEPT_NUMBERS)}.')

  def factory(**values):
    return build_optimizer(dataclasses.replace(config, **values), method, total_steps,
                           fisher_mask=fisher_mask)

  factory.__signature__ = inspect.Signature(
      [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names])
  return optax.inject_hyperparams(factory)(**{name: getattr(config, name) for name in names})
