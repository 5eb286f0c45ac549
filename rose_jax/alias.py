"""Optimizers: ``rose`` (ROSE-masked AdamW, as in the authors' SparseAdamW),
``hf_adamw`` (the same AdamW unmasked, for every baseline) and
``child_tuning_d`` (AdamW under a fixed Fisher mask)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rose_jax import masking
from rose_jax._src import rule, validation
from rose_jax._src.hparams import concrete_float
from rose_jax.risks import Granularity, Variant
from rose_jax.transform import ScaleByRoseState, scale_by_masked_adam


def _decayed_after_step(step, params, rate, weight_decay_mask, mask=None):
  """``step - rate * M * (params + step)`` on the tensors ``weight_decay_mask``
  marks: Hugging Face's AdamW decays the parameter *after* the Adam step,
  ``p <- p - lr * wd * p``. ``mask`` (default all ones) scales the decay.
  """
  decays = validation.resolve_tree_of_bools(weight_decay_mask, params, 'weight_decay_mask')
  mask = jax.tree.map(lambda _: 1.0, params) if mask is None else mask

  def decayed(s, p, m, d):
    return s - rate * m * (jnp.asarray(p, s.dtype) + s) if d else s

  return jax.tree.map(decayed, step, params, mask, decays)


def _adamw_step(direction, params, count, *, name, learning_rate, weight_decay,
               weight_decay_mask, mask=None):
  """``-lr * direction`` and then, unless ``weight_decay`` is 0, the decay of
  :func:`_decayed_after_step`; ``lr`` is ``learning_rate`` at step ``count``."""
  lr = learning_rate(count) if callable(learning_rate) else learning_rate
  step = jax.tree.map(lambda d: -lr * d, direction)
  if concrete_float(weight_decay) == 0.0:
    return step
  if params is None:
    raise ValueError(f'{name} applies weight decay and needs params: call '
                     'update(grads, state, params, ...), or set weight_decay=0.')
  return _decayed_after_step(step, params, lr * weight_decay, weight_decay_mask, mask)


def hf_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    moment_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW in Hugging Face's form: :func:`rose` with every parameter kept, at
  the same ``b2`` (Hugging Face's default 0.999 here; :func:`rose` defaults to
  the authors' 0.98).

  .. math::
    p \leftarrow p - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
        \frac{m_t}{\sqrt{v_t} + \epsilon},\quad
    p \leftarrow p - \eta \lambda p

  This is ``transformers.AdamW`` (and the authors' SparseAdamW with an
  all-ones mask): the bias correction sits in the step size, so ``eps`` is
  added to the uncorrected ``sqrt(v)``, and the decay uses the parameter
  after the Adam step. ``optax.adamw`` adds ``eps`` to the corrected root
  and decays before the step; the two differ where ``sqrt(v)`` nears
  ``eps``. Every method of the GLUE command uses this form, so that methods
  differ in nothing but their rule.

  Args:
    learning_rate: ``eta``, a float or an optax schedule.
    b1: ``beta_1``, the first moment's decay.
    b2: ``beta_2``, the second moment's decay.
    eps: ``epsilon``, added to the uncorrected ``sqrt(v)``.
    weight_decay: the decoupled decay ``lambda``.
    weight_decay_mask: which tensors decay (tree of bools, callable, or None
      for all), like ``optax.adamw``'s ``mask``.
    mu_dtype: dtype of Adam's moments (default: each parameter's dtype
      promoted to at least float32).
    moment_dtype: the old name of ``mu_dtype`` (deprecated).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`rose_jax.ScaleByMaskedAdamState`; ``update`` also takes the
    keyword ``mask`` of :func:`rose_jax.scale_by_masked_adam`.

  References:
    Loshchilov and Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019; Hugging Face
    ``transformers.AdamW`` (``correct_bias=True``).
  """
  validation.check_weight_decay(weight_decay)
  validation.check_learning_rate(learning_rate)
  validation.check_tree_spec('weight_decay_mask', weight_decay_mask)
  inner = scale_by_masked_adam(
      b1=b1, b2=b2, eps=eps,
      mu_dtype=validation.renamed_mu_dtype(mu_dtype, moment_dtype, 'hf_adamw'))

  def update_fn(updates, state, params=None, **extra_args):
    direction, new_state = inner.update(updates, state, params, **extra_args)
    return _adamw_step(direction, params, state.count, name='hf_adamw',
                      learning_rate=learning_rate, weight_decay=weight_decay,
                      weight_decay_mask=weight_decay_mask), new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


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
    mu_dtype: Any = None,
    moment_dtype: Any = None,
    first_order_every: int | None = None,
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

  Usage, with a toy parameter tree in Hugging Face's layout (the gradients
  come from your step; :func:`rose_jax.training.compute_gradients` computes
  them for any model):

  >>> params = {f'layer_{i}': {'weight': jnp.full((4, 4), 0.1 * i)} for i in range(4)}
  >>> params['classifier'] = {'bias': jnp.zeros(4)}
  >>> tx = rose_jax.rose(2e-5, variant='ensemble', upper=0.5,
  ...                    selectable=rose_jax.selection.authors_selectable,
  ...                    weight_decay_mask=rose_jax.selection.authors_decay_mask)
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> kl_grads = jax.tree.map(lambda p: p + 1.0, params)  # norms rise with i
  >>> updates, state = tx.update(grads, state, params, kl_grads=kl_grads)
  >>> params = optax.apply_updates(params, updates)
  >>> # Step 1: the KL risk keeps layers 0 and 1; the momentum risk keeps all
  >>> # (there is no momentum yet); the ensemble averages the two masks.
  >>> [float(state.mask[f'layer_{i}']['weight']) for i in range(4)]
  [1.0, 1.0, 0.5, 0.5]
  >>> updates, state = tx.update(grads, state, params, kl_grads=kl_grads)
  >>> float(rose_jax.kept_fraction(state.mask))
  0.5

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
    b1: ``beta_1``, the first moment's decay.
    b2: ``beta_2``, the second moment's decay.
    eps: ``epsilon``, added to the uncorrected ``sqrt(v)``.
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
    mu_dtype: dtype of Adam's moments (default: each parameter's dtype
      promoted to at least float32).
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
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes the
    extra keyword arguments ``kl_grads`` and ``ce_grads`` of
    :func:`scale_by_rose`; its state is a :class:`ScaleByRoseState`.

  With ``optax.inject_hyperparams``, pass callables such as ``selectable``
  through ``static_args``, which would otherwise be taken for schedules.

  References:
    Jiang et al., `ROSE: Robust Selective Fine-tuning for Pre-trained
    Language Models <https://aclanthology.org/2022.emnlp-main.186>`_, EMNLP
    2022, Algorithm 1; the authors' ``SparseAdamW``.
  """
  validation.check_weight_decay(weight_decay)
  validation.check_learning_rate(learning_rate)
  validation.check_tree_spec('weight_decay_mask', weight_decay_mask)
  init_fn, step_rule = rule.rose_rule(
      variant=variant, upper=upper, lower=lower, gamma=gamma,
      granularity=granularity, selectable=selectable, warmup_steps=warmup_steps,
      b1=b1, b2=b2, eps=eps, max_grad_norm=max_grad_norm, first_order_every=first_order_every,
      mu_dtype=validation.renamed_mu_dtype(mu_dtype, moment_dtype, 'rose'))

  def update_fn(updates, state: ScaleByRoseState, params=None, **extra_args):
    direction, new_state, step_mask = step_rule(updates, state, params, **extra_args)
    step = _adamw_step(direction, params, state.count, name='rose',
                      learning_rate=learning_rate, weight_decay=weight_decay,
                      weight_decay_mask=weight_decay_mask,
                      mask=None if params is None else masking.fill_mask(step_mask, params))
    if concrete_float(weight_decay) == 0.0:
      return step, new_state
    # scale_by_rose skips a step with non-finite extra gradients, leaving its
    # count as it was; the decay must not move the parameters either.
    taken = new_state.count != state.count
    return jax.tree.map(lambda s: jnp.where(taken, s, 0), step), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
