"""ROSE as optax gradient transformations.

* :func:`scale_by_masked_adam`: Adam that feeds masked-out parameters their old
  momentum and masks the step, given a mask as an extra argument (Algorithm 1,
  lines 8-13, without the learning rate).
* :func:`scale_by_rose`: computes the first- and/or second-order risks, turns
  them into a mask and applies :func:`scale_by_masked_adam`'s rule. Its state
  exposes the moments and the last mask.

The alias :func:`rose_jax.rose` adds the learning rate and the masked,
decoupled weight decay.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rose_jax import masking
from rose_jax._src import refresh, rule, validation
from rose_jax._src.refresh import FirstOrderRisk
from rose_jax._src.rule import ScaleByMaskedAdamState, ScaleByRoseState, masked_adam_update
from rose_jax.risks import Granularity, Variant


def scale_by_masked_adam(
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
    mu_dtype: Any = None,
    moment_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Masked Adam without the learning rate (Algorithm 1, lines 8-13).

  The mask arrives as the keyword extra argument ``mask``: a tree like the
  gradients whose leaves broadcast against them (a scalar per tensor, or an
  array per element), with values in [0, 1]. Without it every parameter is
  updated and the rule is Adam with Hugging Face's bias correction.

  Args:
    b1: first-moment decay (the paper's beta_1).
    b2: second-moment decay (beta_2; the paper's runs use 0.98).
    eps: added to ``sqrt(v)`` before the bias correction is applied (the
      Hugging Face form, as in the authors' code).
    mu_dtype: dtype of both moments; by default the parameter's dtype
      promoted to at least float32, so bf16 parameters get float32 moments.
    moment_dtype: the old name of ``mu_dtype`` (deprecated).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByMaskedAdamState` and whose ``update`` takes ``mask``.

  References:
    Jiang et al., `ROSE <https://aclanthology.org/2022.emnlp-main.186>`_,
    Algorithm 1; the authors' ``SparseAdamW`` (Hugging Face's ``AdamW`` with
    a mask).
  """
  mu_dtype = validation.renamed_mu_dtype(mu_dtype, moment_dtype, 'scale_by_masked_adam')
  validation.check_adam_hyperparams(b1=b1, b2=b2, eps=eps)
  validation.check_dtype('mu_dtype', mu_dtype)

  def init_fn(params):
    return ScaleByMaskedAdamState(jnp.zeros([], jnp.int32), rule.init_moment(params, mu_dtype),
                                  rule.init_moment(params, mu_dtype))

  def update_fn(updates, state, params=None, *, mask=None, **extra_args):
    del params, extra_args
    validation.check_like_params(state.mu, updates)
    if mask is None:
      mask = jax.tree.map(lambda _: jnp.ones((), jnp.float32), updates)
    else:
      validation.check_like(
          updates, jax.tree.map(lambda m, g: jnp.broadcast_to(m, jnp.shape(g)), mask, updates),
          'mask')
    direction, mu, nu = masked_adam_update(
        updates, mask, state.mu, state.nu, state.count, b1=b1, b2=b2, eps=eps)
    return direction, ScaleByMaskedAdamState(optax.safe_increment(state.count), mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_rose(
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
    max_grad_norm: float | None = None,
    mu_dtype: Any = None,
    moment_dtype: Any = None,
    first_order_every: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """ROSE's risk ranking and masked Adam, without learning rate or decay.

  At step ``t`` (1-based) the mask ``M`` is, for ranked tensors:

  * first-order: 1 where ``lo <= ||grad L_KL|| <= hi`` (Eq. 2-3);
  * second-order: 1 where ``lo <= |(1 - b1) ||g|| / ||m_{t-1}|| - 1| <= hi``
    (Eq. 4), all ones at ``t = 1`` when no momentum exists yet;
  * ensemble: ``gamma * M_first + (1 - gamma) * M_second`` (Eq. 5);

  with ``lo, hi = quantile(risks, [lower, upper])``, and all ones while
  ``t <= warmup_steps``. Unranked tensors always have ``M = 1``. The update is
  then :func:`masked_adam_update`.

  Extra arguments of ``update``:
    kl_grads: gradient of the symmetric KL loss between two dropout passes,
      shaped like the gradients. Required for ``"first"`` and ``"ensemble"``,
      ignored for ``"second"``.
    ce_grads: optional gradient of the classification loss alone. When the
      update gradient is something else (R-Drop + ROSE, paper section 3.5:
      ``grads`` of ``CE + alpha * KL``), pass the cross-entropy gradient here
      and the second-order risk uses it; by default it uses ``grads``.

  Args:
    variant: ``"first"``, ``"second"`` or ``"ensemble"``.
    upper: upper quantile threshold ``c_h`` as a fraction in [0, 1].
    lower: lower quantile threshold (the authors' code has one; default 0).
    gamma: weight of the first-order mask in the ensemble, in (0, 1).
    granularity: ``"tensor"`` (one risk per tensor, Frobenius norms: the
      authors' code) or ``"element"`` (one risk per scalar: the paper's text).
    selectable: which tensors are ranked: a pytree of bools like the params,
      a callable ``params -> tree of bools``, or None for all of them. See
      :func:`rose_jax.selection.authors_selectable` for the authors' rule.
    warmup_steps: no masking while the step count ``t <= warmup_steps``.
    b1: ``beta_1``, the first moment's decay.
    b2: ``beta_2``, the second moment's decay (the paper's runs use 0.98).
    eps: ``epsilon``, as in :func:`scale_by_masked_adam`.
    max_grad_norm: clip the update gradient to this global norm, as
      ``optax.clip_by_global_norm`` (and Hugging Face's Trainer) do, and
      scale ``kl_grads`` and ``ce_grads`` by the same factor; None: no
      clipping. See "Clipping" below.
    mu_dtype: as in :func:`scale_by_masked_adam`.
    moment_dtype: the old name of ``mu_dtype`` (deprecated).
    first_order_every: refresh the first-order risk on one update in ``k``
      (None, the default: every update, the authors' recipe). The update
      reads ``kl_grads`` where its count of updates taken is a multiple of
      ``k`` and ranks by the risks it computed there on the updates in
      between, which may leave ``kl_grads`` out
      (:func:`rose_jax.first_order_due` says which is which). The state then
      keeps one float32 per ranked tensor (at ``"element"`` granularity, one
      per ranked scalar: a copy of the ranked weights' size). See "Cheaper
      first-order risks" in the optimizer guide.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScaleByRoseState`.

  Clipping: clipping the update gradient ``g`` by ``c = max_grad_norm /
  ||g||`` is clipping the step's loss, so every gradient of that loss is
  scaled by the same ``c``. The momentum is built from clipped gradients;
  the second-order risk compares it with the clipped ``ce_grads`` (a raw
  one would rank a clipped step as far off its trajectory). The first-order
  ranking does not change under a common scale of ``kl_grads``; scaling it
  keeps the KL gradient in the units of the update. Clip here rather than
  with ``optax.chain(optax.clip_by_global_norm(c), ...)``: a chain passes
  the extra arguments through unclipped.

  Non-finite values: a step whose ``kl_grads`` (or ``ce_grads``, where the
  second-order risk uses it) holds a NaN or inf is skipped: the update is
  zero and the state stays as it was, which is what ``optax.apply_if_finite``
  does for a non-finite update gradient. That wrapper checks only the update
  gradient, so without this rule a NaN KL gradient would make every
  threshold NaN and freeze training behind an all-zero mask. Wrap the
  transformation in ``optax.apply_if_finite`` for the update gradient.

  References:
    Jiang et al., `ROSE: Robust Selective Fine-tuning for Pre-trained
    Language Models <https://aclanthology.org/2022.emnlp-main.186>`_, EMNLP
    2022, Eqs. 2-5 and Algorithm 1; the authors' ``SparseAdamW``.
  """
  init_fn, step_rule = rule.rose_rule(
      variant=variant, upper=upper, lower=lower, gamma=gamma, granularity=granularity,
      selectable=selectable, warmup_steps=warmup_steps, b1=b1, b2=b2, eps=eps,
      max_grad_norm=max_grad_norm, first_order_every=first_order_every,
      mu_dtype=validation.renamed_mu_dtype(mu_dtype, moment_dtype, 'scale_by_rose'))

  def update_fn(updates, state, params=None, **extra_args):
    direction, new_state, _ = step_rule(updates, state, params, **extra_args)
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = [
    'FirstOrderRisk', 'ScaleByMaskedAdamState', 'ScaleByRoseState', 'first_order_due',
    'masked_adam_update', 'scale_by_masked_adam', 'scale_by_rose',
]


def first_order_due(opt_state) -> jax.Array | None:
  """Whether the next update of the ROSE optimizer in ``opt_state`` reads
  ``kl_grads``, for an optimizer built with ``first_order_every``.

  A loop of one's own computes the KL gradient only where it is due, for
  example under ``jax.lax.cond`` as :func:`rose_jax.training.make_train_step`
  does:

  .. code-block:: python

    due = rose_jax.first_order_due(opt_state)
    if due is None or due:  # on the host; inside jit, lax.cond on it
      updates, opt_state = tx.update(grads, opt_state, params, kl_grads=kl_grads)
    else:
      updates, opt_state = tx.update(grads, opt_state, params)

  Args:
    opt_state: an optimizer state holding a :class:`ScaleByRoseState` or
      :class:`rose_jax.SelectiveState` (a chain, ``inject_hyperparams``...).

  Returns:
    A bool scalar; None where the optimizer reads ``kl_grads`` on every
    update (no ``first_order_every``, ROSE-Second, or no ROSE state).
  """
  from rose_jax.selective import SelectiveState  # selective imports this module
  return refresh.due(opt_state, (ScaleByRoseState, SelectiveState))


def rose_masks(
    grads,
    state: ScaleByRoseState,
    *,
    kl_grads,
    ce_grads=None,
    upper: float,
    lower: float = 0.0,
    gamma: float = 0.5,
    granularity: Granularity = 'tensor',
    warmup_steps: int = 0,
    b1: float = 0.9,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
  """The masks a ROSE-Ensemble step computes from ``state``, before it mixes
  them: what to record beside the mixed mask that the state keeps.

  Call it with the state and the gradients that the optimizer's ``update``
  is about to take (for example from the ``extra_metrics`` hook of
  :func:`rose_jax.training.make_train_step`) and the optimizer's own
  settings. It computes what :func:`scale_by_rose` computes, and keeps
  nothing.

  Args:
    grads: the update gradient.
    state: the :class:`ScaleByRoseState` before the update (see
      :func:`rose_jax.training.find_rose_state`).
    kl_grads: the KL loss's gradient (None on an update that a
      ``first_order_every`` schedule does not refresh).
    ce_grads: R-Drop + ROSE's cross-entropy gradient, or None.
    upper, lower, gamma, granularity, warmup_steps, b1, max_grad_norm: the
      optimizer's, as in :func:`rose_jax.rose`.

  Returns:
    ``{"first": M_first, "second": M_second, "ensemble": M}``, each a tree
    like ``state.mask`` (a scalar per ranked tensor, at ``"element"``
    granularity the tensor's mean). ``M`` is
    ``gamma * M_first + (1 - gamma) * M_second`` (Eq. 5): the mask the state
    holds after the update.

  References:
    Jiang et al., `ROSE <https://aclanthology.org/2022.emnlp-main.186>`_,
    Eqs. 2-5.
  """
  validation.check_rose_hyperparams(variant='ensemble', granularity=granularity, upper=upper,
                                    lower=lower, gamma=gamma, warmup_steps=warmup_steps)
  if not isinstance(state, ScaleByRoseState):
    raise TypeError(
        f'rose_masks takes the state of rose or scale_by_rose (a ScaleByRoseState), got '
        f'{type(state).__name__}. rose_jax.selective keeps no momentum of its own (its inner '
        "optimizer's), so its masks cannot be recomputed from its state.")
  grads, kl_grads, ce_grads = rule.check_and_clip_extras(
      grads, kl_grads, ce_grads, variant='ensemble', max_grad_norm=max_grad_norm,
      kl_optional=state.first_order is not None)
  # Each risk ranked once, then mixed as the optimizer mixes them. Under a
  # refresh schedule the interval only decides when the next refresh is due,
  # which is not computed here.
  masks, _, _ = rule.component_masks(
      grads, kl_grads, ce_grads, state.mu, state.count, state.mask, variant='ensemble',
      upper=upper, lower=lower, granularity=granularity, b1=b1, first_order=state.first_order,
      first_order_every=None if state.first_order is None else 1)
  masks['ensemble'] = masking.ensemble_mask(masks['first'], masks['second'], gamma=gamma)
  return {name: jax.tree.map(jnp.mean, rule.after_warmup(mask, state.count, warmup_steps))
          for name, mask in masks.items()}
