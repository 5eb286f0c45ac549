"""ROSE's selection around any optax optimizer.

The paper states ROSE for AdamW, but its rule does not depend on the
optimizer: rank the parameters by their risks, let the masked-out ones coast
on their momentum, and scale the update by the mask. :func:`selective` does
that for any ``optax.GradientTransformation``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rose_jax import masking
from rose_jax._src import refresh, rule, validation
from rose_jax._src.refresh import FirstOrderRisk
from rose_jax.risks import Granularity, Variant

Momentum = str | Callable[[Any], Any] | None


class SelectiveState(NamedTuple):
  """State of :func:`selective`.

  Attributes:
    count: steps taken (int32).
    inner_state: the wrapped optimizer's state.
    mask: the last mask, one float32 per ranked tensor, as in
      :class:`rose_jax.ScaleByRoseState`.
    first_order: with ``first_order_every``, as in
      :class:`rose_jax.ScaleByRoseState`; None otherwise.
  """
  count: chex.Array
  inner_state: optax.OptState
  mask: optax.Updates
  first_order: FirstOrderRisk | None = None


def _find_momentum(inner_state, momentum: Momentum):
  """The first moment in ``inner_state``: ``momentum`` names its field (found
  with ``optax.tree_utils.tree_get``) or is a callable that returns it; None
  when ``momentum`` is None."""
  if momentum is None:
    return None
  if callable(momentum):
    return momentum(inner_state)
  found = optax.tree_utils.tree_get(inner_state, momentum)
  if found is None:
    raise ValueError(
        f'The wrapped optimizer\'s state has no field {momentum!r}: pass the name of its '
        'first moment (optax.adam/adamw/lion: "mu", optax.sgd with momentum: "trace"), a '
        'callable that returns it, or momentum=None for an optimizer without one.')
  return found


def selective(
    inner: optax.GradientTransformation,
    *,
    variant: Variant = 'ensemble',
    upper: float,
    lower: float = 0.0,
    gamma: float = 0.5,
    granularity: Granularity = 'tensor',
    selectable: Any = None,
    warmup_steps: int = 0,
    b1: float = 0.9,
    momentum: Momentum = 'mu',
    max_grad_norm: float | None = None,
    first_order_every: int | None = None,
) -> optax.GradientTransformationExtraArgs:
  """ROSE's risk ranking and masking around any optax optimizer.

  Each step computes ROSE's mask ``M`` (see :func:`rose_jax.scale_by_rose`)
  from ``kl_grads`` and from how far the gradient departs from the inner
  optimizer's first moment ``m``, then

  * feeds the inner optimizer ``g' = M g + (1 - M) m``: a masked-out
    parameter coasts on its momentum. For a moment that is an exponential
    average of gradients (``adam``, ``adamw``, ``lion``: ``m <- b m + (1 -
    b) g``) it stays as it was; for ``sgd``'s trace (``m <- g + b m``) it
    grows to ``(1 + b) m``;
  * multiplies the inner update by ``M``, so a masked-out parameter does not
    move, its weight decay included.

  Without a first moment (``momentum=None``: plain ``sgd``, ``adagrad``...)
  the gradient itself is masked, ``g' = M g``, with no coasting, and the
  second-order risk cannot be computed: use ``variant="first"``.

  Wrapping :func:`rose_jax.hf_adamw` gives :func:`rose_jax.rose`'s
  trajectory (exactly for tensor masks of 0 and 1; for the ensemble's
  fractional values ``rose`` scales the decay by ``M`` once where this
  scales the whole update, decay included, a difference of order
  ``lr * weight_decay * M (1 - M) * step``).

  Args:
    inner: the optimizer to wrap.
    variant: ``"first"``, ``"second"`` or ``"ensemble"``.
    upper, lower: the quantile thresholds, fractions in [0, 1].
    gamma: the ensemble's weight of the first-order mask, in (0, 1).
    granularity: ``"tensor"`` or ``"element"``.
    selectable: which tensors are ranked (tree of bools, callable, or None).
    warmup_steps: no masking while ``t <= warmup_steps``.
    b1: the inner optimizer's first-moment decay, which scales the
      second-order risk ``|(1 - b1) ||g|| / ||m|| - 1|``.
    momentum: where the inner state keeps its first moment: a field name for
      ``optax.tree_utils.tree_get`` (``"mu"`` for adam, adamw and lion,
      ``"trace"`` for sgd with momentum), a callable ``inner_state -> m``,
      or None for an optimizer without one.
    max_grad_norm: clip as :func:`rose_jax.rose` does (None: no clipping).
    first_order_every: refresh the first-order risk on one update in ``k``,
      as in :func:`rose_jax.rose` (None: every update).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``kl_grads`` and ``ce_grads`` like :func:`rose_jax.scale_by_rose`, and
    passes any other extra arguments to ``inner``; its state is a
    :class:`SelectiveState`.

  References:
    Jiang et al., `ROSE <https://aclanthology.org/2022.emnlp-main.186>`_,
    EMNLP 2022, section 3 (the rule) and Algorithm 1 (its AdamW form).
  """
  validation.check_optimizer(inner, 'inner')
  validation.check_rose_hyperparams(variant=variant, granularity=granularity, upper=upper,
                                    lower=lower, gamma=gamma, warmup_steps=warmup_steps)
  validation.check_max_grad_norm(max_grad_norm)
  validation.check_numbers(b1=b1)
  validation.check_tree_spec('selectable', selectable)
  refresh.check_every(first_order_every, variant)
  if momentum is None and variant != 'first':
    raise ValueError(
        f'variant={variant!r} ranks by the departure from momentum, but momentum=None says '
        'the wrapped optimizer has none: use variant="first", or name its first moment.')
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    mask = rule.initial_mask(params, selectable)
    inner_state = inner.init(params)
    _find_momentum(inner_state, momentum)  # fails now, not in the first step
    return SelectiveState(jnp.zeros([], jnp.int32), inner_state, mask,
                          rule.init_first_order(params, mask, granularity, first_order_every))

  def update_fn(updates, state, params=None, *, kl_grads=None, ce_grads=None, **extra_args):
    updates, kl_grads, ce_grads = rule.check_and_clip_extras(
        updates, kl_grads, ce_grads, variant=variant, max_grad_norm=max_grad_norm,
        kl_optional=first_order_every is not None)
    mu = _find_momentum(state.inner_state, momentum)
    mask, extra_finite, first_order = rule.risk_mask(
        updates, kl_grads, ce_grads, mu, state.count, state.mask, variant=variant,
        upper=upper, lower=lower, gamma=gamma, granularity=granularity,
        warmup_steps=warmup_steps, b1=b1, first_order=state.first_order,
        first_order_every=first_order_every)
    full = masking.fill_mask(mask, updates)
    if mu is None:
      fed = jax.tree.map(lambda g, m: m * g, updates, full)
    else:
      fed = jax.tree.map(lambda g, m, mu_: (m * g + (1 - m) * mu_).astype(g.dtype),
                         updates, full, mu)
    inner_updates, inner_state = inner.update(fed, state.inner_state, params, **extra_args)
    new_updates = jax.tree.map(lambda u, m: (m * u).astype(u.dtype), inner_updates, full)
    new_state = SelectiveState(optax.safe_increment(state.count), inner_state,
                               jax.tree.map(jnp.mean, mask), first_order)
    return rule.skip_unless_finite(extra_finite, new_updates, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
