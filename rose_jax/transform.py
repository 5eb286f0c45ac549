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

from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rose_jax import masking, risks
from rose_jax._src.hparams import concrete_float, one_minus
from rose_jax.risks import GRANULARITIES, Granularity

Variant = Literal['first', 'second', 'ensemble']
VARIANTS = ('first', 'second', 'ensemble')


class ScaleByMaskedAdamState(NamedTuple):
  """State of :func:`scale_by_masked_adam`."""
  count: chex.Array  # int32 number of updates applied so far
  mu: optax.Updates
  nu: optax.Updates


class ScaleByRoseState(NamedTuple):
  """State of :func:`scale_by_rose` and :func:`rose_jax.rose`.

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
      than per scalar (340 MB at RoBERTa-base, in memory and in every
      checkpoint).
  """
  count: chex.Array
  mu: optax.Updates
  nu: optax.Updates
  mask: optax.Updates


def check_adam_hyperparams(*, b1, b2, eps) -> None:
  """Raises ValueError for Adam hyperparameters outside their domain."""
  for name, value in (('b1', b1), ('b2', b2)):
    v = concrete_float(value)
    if v is not None and not 0.0 <= v < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {v}.')
  v = concrete_float(eps)
  if v is not None and v < 0:
    raise ValueError(f'eps must be >= 0, got {v}.')


def check_rose_hyperparams(*, variant, granularity, upper, lower, gamma,
                           warmup_steps) -> None:
  """Raises ValueError, naming the fix, for invalid ROSE hyperparameters.

  Traced values (under ``optax.inject_hyperparams`` inside ``jit``) are not
  checked; concrete ones always are, so errors surface at construction.
  """
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; choose one of {VARIANTS}.')
  if granularity not in GRANULARITIES:
    raise ValueError(
        f'Unknown granularity {granularity!r}; choose one of {GRANULARITIES} '
        '("tensor" ranks whole tensors like the authors\' code, "element" '
        'ranks every scalar like the paper\'s text).')
  lo, hi = concrete_float(lower), concrete_float(upper)
  for name, v in (('lower', lo), ('upper', hi)):
    if v is not None and not 0.0 <= v <= 1.0:
      raise ValueError(
          f'{name} is a quantile and must be a fraction in [0, 1], got {v} '
          '(write 0.6 for the paper\'s "60%").')
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f'lower ({lo}) must not exceed upper ({hi}).')
  g = concrete_float(gamma)
  if g is not None and not 0.0 < g < 1.0:
    raise ValueError(
        f'gamma must be in the open interval (0, 1), got {g}; for one mask '
        'alone use variant="first" or variant="second".')
  w = concrete_float(warmup_steps)
  if w is not None and (w < 0 or w != int(w)):
    raise ValueError(f'warmup_steps must be a nonnegative integer, got {warmup_steps}.')


def _moment_dtype(param, moment_dtype):
  if moment_dtype is not None:
    return jnp.dtype(moment_dtype)
  return jnp.promote_types(jnp.result_type(param), jnp.float32)


def init_moments(params, moment_dtype=None):
  """Zero first and second moments, at least float32 unless told otherwise."""
  zeros = lambda p: jnp.zeros(jnp.shape(p), _moment_dtype(p, moment_dtype))
  return jax.tree.map(zeros, params), jax.tree.map(zeros, params)


def masked_adam_update(grads, mask, mu, nu, count, *, b1, b2, eps):
  """One step of the masked Adam rule of the authors' SparseAdamW.

  ``g' = M g + (1 - M) m``; the moments absorb ``g'``; the returned direction
  is ``M * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` (Hugging Face's
  bias correction, eps outside the corrected root).

  Args:
    grads: the update gradient ``g_t``.
    mask: a tree like ``grads`` whose leaves broadcast against it (scalars for
      tensor masks), values in [0, 1].
    mu, nu: moments before this step.
    count: number of steps taken before this one.
    b1, b2, eps: Adam's hyperparameters.

  Returns:
    ``(direction, mu, nu)``.
  """
  t = optax.safe_increment(count).astype(jnp.float32)
  one_minus_b1, one_minus_b2 = one_minus(b1), one_minus(b2)
  # 1 - b^t as -expm1(t log(b)): exact to float32 rounding even where b^t ~ 1.
  correction1 = -jnp.expm1(t * jnp.log1p(-one_minus_b1))
  correction2 = -jnp.expm1(t * jnp.log1p(-one_minus_b2))
  step_factor = jnp.sqrt(correction2) / correction1

  def moments(g, m_, mu_, nu_):
    g = g.astype(mu_.dtype)
    g_eff = m_ * g + (1 - m_) * mu_
    return (b1 * mu_ + one_minus_b1 * g_eff).astype(mu_.dtype), \
           (b2 * nu_ + one_minus_b2 * jnp.square(g_eff)).astype(nu_.dtype)

  pairs = jax.tree.map(moments, grads, mask, mu, nu)
  outer = jax.tree.structure(grads)
  mu, nu = jax.tree.transpose(outer, jax.tree.structure((0, 0)), pairs)
  direction = jax.tree.map(
      lambda m_, mu_, nu_: m_ * step_factor * mu_ / (jnp.sqrt(nu_) + eps),
      mask, mu, nu)
  return direction, mu, nu


def check_like(reference, tree, name: str) -> None:
  """Raises ValueError unless ``tree`` has the structure and shapes of ``reference``."""
  ref_struct, struct = jax.tree.structure(reference), jax.tree.structure(tree)
  if ref_struct != struct:
    raise ValueError(
        f'{name} must be a pytree shaped like the gradients; its structure '
        f'differs:\n  gradients: {ref_struct}\n  {name}: {struct}')
  leaves_with_paths = jax.tree_util.tree_flatten_with_path(reference)[0]
  for (path, a), b in zip(leaves_with_paths, jax.tree.leaves(tree), strict=True):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
          f'{name}{jax.tree_util.keystr(path)} has shape {jnp.shape(b)}, but '
          f'the gradient there has shape {jnp.shape(a)}.')


def check_like_params(moments, updates) -> None:
  """Raises ValueError unless ``updates`` has the structure of the parameters
  the optimizer state was built for (``moments``, one leaf per parameter)."""
  expected, got = jax.tree.structure(moments), jax.tree.structure(updates)
  if expected != got:
    raise ValueError(
        'The gradients must have the structure of the params the optimizer was '
        'initialised with (tx.init(params)); they differ:\n'
        f'  params: {expected}\n  gradients: {got}')


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def scale_by_masked_adam(
    *,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-8,
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
    moment_dtype: dtype of both moments; by default the parameter's dtype
      promoted to at least float32, so bf16 parameters get float32 moments.
  """
  check_adam_hyperparams(b1=b1, b2=b2, eps=eps)

  def init_fn(params):
    mu, nu = init_moments(params, moment_dtype)
    return ScaleByMaskedAdamState(jnp.zeros([], jnp.int32), mu, nu)

  def update_fn(updates, state, params=None, *, mask=None, **extra_args):
    del params, extra_args
    check_like_params(state.mu, updates)
    if mask is None:
      mask = jax.tree.map(lambda _: jnp.ones((), jnp.float32), updates)
    else:
      check_like(updates, jax.tree.map(lambda m, g: jnp.broadcast_to(m, jnp.shape(g)),
                                       mask, updates), 'mask')
    direction, mu, nu = masked_adam_update(
        updates, mask, state.mu, state.nu, state.count, b1=b1, b2=b2, eps=eps)
    return direction, ScaleByMaskedAdamState(optax.safe_increment(state.count), mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def resolve_tree_of_bools(spec, params, name: str):
  """Turns ``spec`` (None, a tree of bools, or callable(params)) into a tree
  of Python bools shaped like ``params``; None means all True."""
  if spec is None:
    return jax.tree.map(lambda _: True, params)
  tree = spec(params) if callable(spec) else spec
  try:
    return jax.tree.map(lambda _, s: _to_bool(s, name), params, tree)
  except ValueError as error:
    if 'must be a Python bool' in str(error):
      raise
    raise ValueError(
        f'{name} must be a pytree of bools with the structure of params '
        f'(or a callable returning one): {error}') from None


def _to_bool(value, name: str) -> bool:
  if isinstance(value, bool) or (hasattr(value, 'dtype') and jnp.shape(value) == ()
                                 and jnp.dtype(value.dtype) == jnp.bool_):
    try:
      return bool(value)
    except jax.errors.ConcretizationTypeError:
      pass
  raise ValueError(f'{name} leaves must be a Python bool, got {value!r}.')


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
    moment_dtype: Any = None,
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
    b1, b2, eps: Adam's hyperparameters (beta_1, beta_2, epsilon).
    max_grad_norm: clip the update gradient to this global norm, as
      ``optax.clip_by_global_norm`` (and Hugging Face's Trainer) do, and
      scale ``kl_grads`` and ``ce_grads`` by the same factor; None: no
      clipping. See "Clipping" below.
    moment_dtype: as in :func:`scale_by_masked_adam`.

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
  """
  init_fn, rule = rose_rule(
      variant=variant, upper=upper, lower=lower, gamma=gamma, granularity=granularity,
      selectable=selectable, warmup_steps=warmup_steps, b1=b1, b2=b2, eps=eps,
      max_grad_norm=max_grad_norm, moment_dtype=moment_dtype)

  def update_fn(updates, state, params=None, **extra_args):
    direction, new_state, _ = rule(updates, state, params, **extra_args)
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_max_grad_norm(max_grad_norm) -> None:
  if max_grad_norm is None:
    return
  v = concrete_float(max_grad_norm)
  if v is not None and not v > 0:
    raise ValueError(f'max_grad_norm must be > 0 (or None for no clipping), got {v}.')


def clip_like_global_norm(updates, trees, max_grad_norm):
  """``updates`` clipped to ``max_grad_norm`` as ``optax.clip_by_global_norm``
  clips them (the same arithmetic), and each of ``trees`` (None passes
  through) scaled by the same factor."""
  norm = optax.tree.norm(updates)
  within = norm < max_grad_norm
  clip = lambda x: jnp.where(within, x, (x / norm.astype(x.dtype)) * max_grad_norm).astype(
      x.dtype)
  return [None if tree is None else jax.tree.map(clip, tree) for tree in (updates, *trees)]


def initial_mask(params, selectable):
  """The state's first mask: ones for the ranked tensors, ``MaskedNode`` for
  the others; raises ValueError when ``selectable`` ranks nothing."""
  ranked = resolve_tree_of_bools(selectable, params, 'selectable')
  if not any(jax.tree.leaves(ranked)):
    paths = [jax.tree_util.keystr(path, simple=True, separator='.')
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    shown = ', '.join(paths[:5]) + (f' (and {len(paths) - 5} more)' if len(paths) > 5 else '')
    raise ValueError(
        'selectable marks no parameter tensor, so ROSE would never mask anything. '
        f'The parameters are {shown}; rose_jax.selection.authors_selectable ranks Hugging '
        'Face names that contain "layer" and "weight". Write a rule for these names, '
        'or use optax.adamw.')
  return jax.tree.map(
      lambda _, s: jnp.ones((), jnp.float32) if s else optax.MaskedNode(), params, ranked)


def check_and_clip_extras(updates, kl_grads, ce_grads, *, variant, max_grad_norm):
  """Checks ``kl_grads`` and ``ce_grads`` against the gradients, then clips all
  three by the update gradient's factor (see "Clipping" in
  :func:`scale_by_rose`)."""
  if variant in ('first', 'ensemble'):
    if kl_grads is None:
      raise ValueError(
          f'variant={variant!r} ranks parameters by the KL gradient: call '
          'update(grads, state, params, kl_grads=...) with the gradient of '
          'the symmetric KL loss between two dropout passes, or use '
          'variant="second".')
    check_like(updates, kl_grads, 'kl_grads')
  if ce_grads is not None:
    check_like(updates, ce_grads, 'ce_grads')
  if max_grad_norm is None:
    return updates, kl_grads, ce_grads
  return tuple(clip_like_global_norm(updates, (kl_grads, ce_grads), max_grad_norm))


def risk_mask(updates, kl_grads, ce_grads, mu, count, last_mask, *, variant, upper, lower,
              gamma, granularity, warmup_steps, b1):
  """This step's ROSE mask (Eqs. 2-5, warm-up, all ones before momentum).

  Args:
    updates: the update gradient.
    kl_grads, ce_grads: as in :func:`scale_by_rose` (``ce_grads`` may be None).
    mu: the first moment before this step, in gradient units.
    count: steps taken before this one.
    last_mask: the state's mask tree; its ``MaskedNode`` leaves are not ranked.

  Returns:
    ``(mask, finite)``: the mask tree (``MaskedNode`` where unranked) and a
    list of booleans, whether the extra gradients used are finite.
  """
  ranked = jax.tree.map(lambda m: not masking.is_masked(m), last_mask,
                        is_leaf=masking.is_masked)
  thresholds = dict(lower=lower, upper=upper, granularity=granularity)
  masks, finite = [], []
  if variant in ('first', 'ensemble'):
    finite.append(_all_finite(kl_grads))
    risk = risks.first_order_risk(masking.select(kl_grads, ranked), granularity=granularity)
    masks.append(masking.quantile_mask(risk, **thresholds))
  if variant in ('second', 'ensemble'):
    source = updates if ce_grads is None else ce_grads
    if ce_grads is not None:
      finite.append(_all_finite(ce_grads))
    risk = risks.second_order_risk(
        masking.select(source, ranked), masking.select(mu, ranked), b1=b1,
        granularity=granularity)
    has_momentum = count > 0
    masks.append(jax.tree.map(lambda m: jnp.where(has_momentum, m, 1.0),
                              masking.quantile_mask(risk, **thresholds)))
  mask = masks[0] if len(masks) == 1 else masking.ensemble_mask(*masks, gamma=gamma)
  masking_on = optax.safe_increment(count) > warmup_steps
  return jax.tree.map(lambda m: jnp.where(masking_on, m, 1.0), mask), finite


def rose_rule(*, variant, upper, lower, gamma, granularity, selectable, warmup_steps,
              b1, b2, eps, max_grad_norm, moment_dtype):
  """``(init, rule)`` of :func:`scale_by_rose`; ``rule(updates, state, params,
  **extra)`` returns ``(direction, new_state, mask)`` with the full mask of
  this step (an array per ranked tensor at element granularity), which
  :func:`rose_jax.rose` needs for the masked decay."""
  check_rose_hyperparams(variant=variant, granularity=granularity, upper=upper,
                         lower=lower, gamma=gamma, warmup_steps=warmup_steps)
  check_adam_hyperparams(b1=b1, b2=b2, eps=eps)
  check_max_grad_norm(max_grad_norm)

  def init_fn(params):
    mu, nu = init_moments(params, moment_dtype)
    return ScaleByRoseState(jnp.zeros([], jnp.int32), mu, nu, initial_mask(params, selectable))

  def rule(updates, state, params=None, *, kl_grads=None, ce_grads=None, **extra_args):
    del params, extra_args
    check_like_params(state.mu, updates)
    updates, kl_grads, ce_grads = check_and_clip_extras(
        updates, kl_grads, ce_grads, variant=variant, max_grad_norm=max_grad_norm)
    mask, extra_finite = risk_mask(
        updates, kl_grads, ce_grads, state.mu, state.count, state.mask, variant=variant,
        upper=upper, lower=lower, gamma=gamma, granularity=granularity,
        warmup_steps=warmup_steps, b1=b1)
    direction, mu, nu = masked_adam_update(
        updates, masking.fill_mask(mask, updates), state.mu, state.nu,
        state.count, b1=b1, b2=b2, eps=eps)
    new_state = ScaleByRoseState(optax.safe_increment(state.count), mu, nu,
                                 jax.tree.map(jnp.mean, mask))
    if extra_finite:  # see "Non-finite values" in scale_by_rose
      finite = jnp.all(jnp.asarray(extra_finite))
      direction = jax.tree.map(lambda d: jnp.where(finite, d, 0), direction)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return direction, new_state, mask

  return init_fn, rule


__all__ = [
    'ScaleByMaskedAdamState', 'ScaleByRoseState', 'masked_adam_update',
    'scale_by_masked_adam', 'scale_by_rose',
]
