"""ROSE's step, shared by :func:`rose_jax.scale_by_rose`, :func:`rose_jax.rose`
and :func:`rose_jax.selective`: the masked Adam rule, the per-step mask from
the risks (with its clipping and non-finite checks of the extra gradients)
and the rule that combines them."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rose_jax import masking, risks
from rose_jax._src import refresh, validation
from rose_jax._src.hparams import one_minus
from rose_jax._src.refresh import FirstOrderRisk


class ScaleByMaskedAdamState(NamedTuple):
  """State of :func:`rose_jax.scale_by_masked_adam`."""
  count: chex.Array  # int32 number of updates applied so far
  mu: optax.Updates
  nu: optax.Updates


class ScaleByRoseState(NamedTuple):
  """State of :func:`rose_jax.scale_by_rose` and :func:`rose_jax.rose`.

  Attributes:
    count: number of updates applied so far (int32).
    mu: Adam's first moment, one leaf per parameter.
    nu: Adam's second moment.
    mask: the last update's mask, one float32 scalar per ranked tensor: its
      mask value (``granularity="tensor"``) or the mean of its elements' mask
      values (``"element"``, the share of the tensor that was updated);
      ``optax.MaskedNode`` for tensors that are never ranked.
      :func:`rose_jax.kept_fraction` summarises it for logging. An element
      mask is recomputed from the risks every step and is not needed again,
      so the state keeps only its per-tensor mean: 4 bytes per tensor rather
      than per scalar, in memory and in every checkpoint.
    first_order: with ``first_order_every``, the first-order risks ranked by
      between refreshes and whether the next update reads ``kl_grads``
      (:class:`rose_jax.FirstOrderRisk`); None otherwise.
  """
  count: chex.Array
  mu: optax.Updates
  nu: optax.Updates
  mask: optax.Updates
  first_order: FirstOrderRisk | None = None


def init_moment(params, mu_dtype=None):
  """A zero moment like ``params``: in ``mu_dtype``, or by default in each
  parameter's dtype promoted to at least float32 (bf16 parameters get
  float32 moments, where ``optax.adam`` would keep bf16)."""
  if mu_dtype is not None:
    return optax.tree.zeros_like(params, dtype=mu_dtype)
  return jax.tree.map(
      lambda p: jnp.zeros_like(p, dtype=jnp.promote_types(jnp.result_type(p), jnp.float32)),
      params)


def masked_adam_update(grads, mask, mu, nu, count, *, b1, b2, eps):
  """One step of the masked Adam rule of the authors' SparseAdamW.

  ``g' = M g + (1 - M) m``; the moments absorb ``g'``; the returned direction
  is ``M * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` (Hugging Face's
  bias correction, eps outside the corrected root).

  Args:
    grads: the update gradient ``g_t``.
    mask: a tree like ``grads`` whose leaves broadcast against it (scalars for
      tensor masks), values in [0, 1].
    mu: the first moment before this step.
    nu: the second moment before this step.
    count: number of steps taken before this one.
    b1: ``beta_1``.
    b2: ``beta_2``.
    eps: ``epsilon``.

  Returns:
    ``(direction, mu, nu)``.

  References:
    Jiang et al., `ROSE <https://aclanthology.org/2022.emnlp-main.186>`_,
    Algorithm 1, lines 8-13; the authors' ``SparseAdamW``.
  """
  t = optax.safe_increment(count).astype(jnp.float32)
  # 1 - b^t as -expm1(t log(b)): exact to float32 rounding even where b^t ~ 1.
  correction1 = -jnp.expm1(t * jnp.log1p(-one_minus(b1)))
  correction2 = -jnp.expm1(t * jnp.log1p(-one_minus(b2)))
  step_factor = jnp.sqrt(correction2) / correction1
  # A masked-out parameter's moment absorbs its own momentum: it coasts.
  coasting = jax.tree.map(lambda g, m, mu_: m * g.astype(mu_.dtype) + (1 - m) * mu_,
                          grads, mask, mu)
  mu = optax.tree.cast_like(optax.tree.update_moment(coasting, mu, b1, 1), mu)
  nu = optax.tree.cast_like(optax.tree.update_moment(coasting, nu, b2, 2), nu)
  direction = jax.tree.map(
      lambda m_, mu_, nu_: m_ * step_factor * mu_ / (jnp.sqrt(nu_) + eps),
      mask, mu, nu)
  return direction, mu, nu


def initial_mask(params, selectable):
  """The state's first mask: ones for the ranked tensors, ``MaskedNode`` for
  the others; raises ValueError when ``selectable`` ranks nothing."""
  ranked = validation.resolve_tree_of_bools(selectable, params, 'selectable')
  if not any(jax.tree.leaves(ranked)):
    paths = [jax.tree_util.keystr(path, simple=True, separator='.')
             for path, _ in jax.tree.flatten_with_path(params)[0]]
    shown = ', '.join(paths[:5]) + (f' (and {len(paths) - 5} more)' if len(paths) > 5 else '')
    raise ValueError(
        'selectable marks no parameter tensor, so ROSE would never mask anything. '
        f'The parameters are {shown}; rose_jax.selection.authors_selectable ranks Hugging '
        'Face names that contain "layer" and "weight". Write a rule for these names, '
        'or use optax.adamw.')
  return jax.tree.map(
      lambda _, s: jnp.ones((), jnp.float32) if s else optax.MaskedNode(), params, ranked)


def clip_like_global_norm(updates, trees, max_grad_norm):
  """``updates`` clipped to ``max_grad_norm`` as ``optax.clip_by_global_norm``
  clips them (the same arithmetic), and each of ``trees`` (None passes
  through) scaled by the same factor."""
  norm = optax.tree.norm(updates)
  within = norm < max_grad_norm
  clip = lambda x: jnp.where(within, x, (x / norm.astype(x.dtype)) * max_grad_norm).astype(
      x.dtype)
  return [None if tree is None else jax.tree.map(clip, tree) for tree in (updates, *trees)]


def check_and_clip_extras(updates, kl_grads, ce_grads, *, variant, max_grad_norm,
                          kl_optional=False):
  """Checks ``kl_grads`` and ``ce_grads`` against the gradients, then clips all
  three by the update gradient's factor (see "Clipping" in
  :func:`rose_jax.scale_by_rose`). ``kl_optional``: a refresh schedule lets an
  update leave ``kl_grads`` out."""
  if variant in ('first', 'ensemble'):
    if kl_grads is None and kl_optional:
      pass
    elif kl_grads is None:
      raise ValueError(
          f'variant={variant!r} ranks parameters by the KL gradient: call '
          'update(grads, state, params, kl_grads=...) with the gradient of '
          'the symmetric KL loss between two dropout passes, or use '
          'variant="second".')
    else:
      validation.check_like(updates, kl_grads, 'kl_grads')
  if ce_grads is not None:
    validation.check_like(updates, ce_grads, 'ce_grads')
  if max_grad_norm is None:
    return updates, kl_grads, ce_grads
  return tuple(clip_like_global_norm(updates, (kl_grads, ce_grads), max_grad_norm))


def component_masks(updates, kl_grads, ce_grads, mu, count, last_mask, *, variant, upper,
                    lower, granularity, b1, first_order=None, first_order_every=None):
  """The first- and/or second-order masks of this step (Eqs. 2-4, all ones
  before momentum), before the ensemble mixes them and before the warm-up.

  Args:
    updates: the update gradient.
    kl_grads: as in :func:`rose_jax.scale_by_rose`.
    ce_grads: as there; may be None.
    mu: the first moment before this step, in gradient units.
    count: steps taken before this one.
    last_mask: the state's mask tree; its ``MaskedNode`` leaves are not ranked.
    variant, upper, lower, granularity, b1: as in :func:`rose_jax.scale_by_rose`.
    first_order: the state's :class:`rose_jax.FirstOrderRisk`, or None.
    first_order_every: as in :func:`rose_jax.scale_by_rose`.

  Returns:
    ``(masks, finite, first_order)``: ``{"first": ..., "second": ...}`` as
    the variant ranks (mask trees, ``MaskedNode`` where unranked), a list of
    booleans, whether the extra gradients used are finite, and the state's
    next :class:`rose_jax.FirstOrderRisk` (None without a schedule).
  """
  ranked = refresh.ranked(last_mask)
  thresholds = dict(lower=lower, upper=upper, granularity=granularity)
  masks, finite = {}, []
  if variant in ('first', 'ensemble'):
    risk, first_order, kl_finite = refresh.step_risks(
        kl_grads, last_mask, first_order, count, granularity=granularity,
        every=first_order_every)
    finite.append(kl_finite)
    masks['first'] = masking.quantile_mask(risk, **thresholds)
  if variant in ('second', 'ensemble'):
    source = updates if ce_grads is None else ce_grads
    if ce_grads is not None:
      finite.append(refresh.all_finite(ce_grads))
    risk = risks.second_order_risk(
        masking.select(source, ranked), masking.select(mu, ranked), b1=b1,
        granularity=granularity)
    has_momentum = count > 0
    masks['second'] = jax.tree.map(lambda m: jnp.where(has_momentum, m, 1.0),
                                   masking.quantile_mask(risk, **thresholds))
  return masks, finite, first_order


def init_first_order(params, mask, granularity, first_order_every):
  """The state's first :class:`rose_jax.FirstOrderRisk`, or None without a schedule."""
  return None if first_order_every is None else refresh.init(params, mask, granularity)


def after_warmup(mask, count, warmup_steps):
  """``mask``, or all ones while ``count + 1 <= warmup_steps`` (no masking)."""
  masking_on = optax.safe_increment(count) > warmup_steps
  return jax.tree.map(lambda m: jnp.where(masking_on, m, 1.0), mask)


def risk_mask(updates, kl_grads, ce_grads, mu, count, last_mask, *, variant, upper, lower,
              gamma, granularity, warmup_steps, b1, first_order=None, first_order_every=None):
  """This step's ROSE mask (Eqs. 2-5, warm-up, all ones before momentum).

  Args:
    updates, kl_grads, ce_grads, mu, count, last_mask, first_order: as in
      :func:`component_masks`.
    variant, upper, lower, gamma, granularity, warmup_steps, b1,
      first_order_every: as in :func:`rose_jax.scale_by_rose`.

  Returns:
    ``(mask, finite, first_order)``: the mask tree (``MaskedNode`` where
    unranked), a list of booleans, whether the extra gradients used are
    finite, and the state's next :class:`rose_jax.FirstOrderRisk`.
  """
  masks, finite, first_order = component_masks(
      updates, kl_grads, ce_grads, mu, count, last_mask, variant=variant, upper=upper,
      lower=lower, granularity=granularity, b1=b1, first_order=first_order,
      first_order_every=first_order_every)
  mask = masking.ensemble_mask(masks['first'], masks['second'], gamma=gamma) \
      if variant == 'ensemble' else masks[variant]
  return after_warmup(mask, count, warmup_steps), finite, first_order


def skip_unless_finite(finite: list[jax.Array], updates, new_state, state):
  """``(updates, new_state)``, or a zero update and the old ``state`` where
  any of ``finite`` is False: a step whose extra gradients hold a NaN or
  inf is skipped (see "Non-finite values" in :func:`rose_jax.scale_by_rose`)."""
  if not finite:
    return updates, new_state
  ok = jnp.all(jnp.asarray(finite))
  return (optax.tree.where(ok, updates, optax.tree.zeros_like(updates)),
          optax.tree.where(ok, new_state, state))


def rose_rule(*, variant, upper, lower, gamma, granularity, selectable, warmup_steps,
              b1, b2, eps, max_grad_norm, mu_dtype, first_order_every=None):
  """``(init, rule)`` of :func:`rose_jax.scale_by_rose`; ``rule(updates,
  state, params, **extra)`` returns ``(direction, new_state, mask)`` with
  the full mask of this step (an array per ranked tensor at element
  granularity), which :func:`rose_jax.rose` needs for the masked decay."""
  validation.check_rose_hyperparams(variant=variant, granularity=granularity, upper=upper,
                                    lower=lower, gamma=gamma, warmup_steps=warmup_steps)
  validation.check_adam_hyperparams(b1=b1, b2=b2, eps=eps)
  validation.check_max_grad_norm(max_grad_norm)
  validation.check_dtype('mu_dtype', mu_dtype)
  validation.check_tree_spec('selectable', selectable)
  refresh.check_every(first_order_every, variant)

  def init_fn(params):
    mask = initial_mask(params, selectable)
    return ScaleByRoseState(jnp.zeros([], jnp.int32), init_moment(params, mu_dtype),
                            init_moment(params, mu_dtype), mask,
                            init_first_order(params, mask, granularity, first_order_every))

  def rule(updates, state, params=None, *, kl_grads=None, ce_grads=None, **extra_args):
    del params, extra_args
    validation.check_like_params(state.mu, updates)
    updates, kl_grads, ce_grads = check_and_clip_extras(
        updates, kl_grads, ce_grads, variant=variant, max_grad_norm=max_grad_norm,
        kl_optional=first_order_every is not None)
    mask, extra_finite, first_order = risk_mask(
        updates, kl_grads, ce_grads, state.mu, state.count, state.mask, variant=variant,
        upper=upper, lower=lower, gamma=gamma, granularity=granularity,
        warmup_steps=warmup_steps, b1=b1, first_order=state.first_order,
        first_order_every=first_order_every)
    direction, mu, nu = masked_adam_update(
        updates, masking.fill_mask(mask, updates), state.mu, state.nu,
        state.count, b1=b1, b2=b2, eps=eps)
    new_state = ScaleByRoseState(optax.safe_increment(state.count), mu, nu,
                                 jax.tree.map(jnp.mean, mask), first_order)
    direction, new_state = skip_unless_finite(extra_finite, direction, new_state, state)
    return direction, new_state, mask

  return init_fn, rule
