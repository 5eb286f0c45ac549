"""The first-order risk refreshed every ``k`` steps: what the optimizer keeps
of the last KL gradient it ranked by, and when it next reads one.

With ``first_order_every=k`` the optimizer reads ``kl_grads`` on one update
in ``k`` (the first, then every ``k``-th: where its count of updates taken is
a multiple of ``k``) and ranks by the first-order risks it computed there on
the updates in between, which may then leave ``kl_grads`` out. The step
(:func:`rose_jax.training.make_train_step`) runs its second dropout pass and
the KL's backward only when the state says one is due.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rose_jax import masking, risks
from rose_jax._src import trees


class FirstOrderRisk(NamedTuple):
  """The first-order risks the optimizer ranks by between refreshes.

  Attributes:
    risk: the last computed risk of every ranked tensor (a float32 scalar at
      ``granularity="tensor"``, an array like the tensor at ``"element"``);
      ``optax.MaskedNode`` where unranked.
    due: whether the next update reads ``kl_grads`` (a bool scalar).
  """
  risk: optax.Updates
  due: chex.Array


def check_every(first_order_every: int | None, variant: str) -> None:
  """ValueError, naming the option, for a refresh interval that is no
  positive integer or a variant without a first-order risk."""
  if first_order_every is None:
    return
  if isinstance(first_order_every, bool) or not isinstance(first_order_every, int) \
      or first_order_every < 1:
    raise ValueError(f'first_order_every must be a positive integer (refresh the first-order '
                     f'risk every k steps), got {first_order_every!r}.')
  if variant == 'second':
    raise ValueError('first_order_every refreshes the first-order risk, which '
                     'variant="second" does not compute: leave it out, or use variant="first" '
                     'or "ensemble".')


def ranked(last_mask):
  """A tree of bools like ``last_mask``: which tensors are ranked."""
  return jax.tree.map(lambda m: not masking.is_masked(m), last_mask, is_leaf=masking.is_masked)


def init(params, last_mask, granularity: str) -> FirstOrderRisk:
  """Zero risks (never ranked by: the first update is due) and ``due``."""
  # MaskedNode has no leaves, so the unranked tensors stay MaskedNode.
  risk = jax.tree.map(
      lambda p: jnp.zeros(() if granularity == 'tensor' else jnp.shape(p), jnp.float32),
      masking.select(params, ranked(last_mask)))
  return FirstOrderRisk(risk, jnp.asarray(True))


def first_order_risks(kl_grads, last_mask, granularity: str):
  """The first-order risk of every ranked tensor from ``kl_grads``."""
  return risks.first_order_risk(masking.select(kl_grads, ranked(last_mask)),
                                granularity=granularity)


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def step_risks(kl_grads, last_mask, first_order: FirstOrderRisk | None, count, *,
               granularity: str, every: int | None):
  """The first-order risks this update ranks by.

  Args:
    kl_grads: the KL gradient, or None on an update that is not due.
    last_mask: the state's mask (its ``MaskedNode`` leaves are unranked).
    first_order: the state's :class:`FirstOrderRisk`, None without a schedule.
    count: updates taken before this one.
    granularity: ``"tensor"`` or ``"element"``.
    every: the refresh interval ``k``, None without a schedule.

  Returns:
    ``(risk, first_order, finite)``: the risks, the state's next
    :class:`FirstOrderRisk` (None without a schedule) and whether the KL
    gradient read is finite (True where none is read).
  """
  if first_order is None:
    return first_order_risks(kl_grads, last_mask, granularity), None, all_finite(kl_grads)
  due_next = optax.safe_increment(count) % every == 0
  if kl_grads is None:  # a step that ran no KL pass: rank by the last risks
    return first_order.risk, FirstOrderRisk(first_order.risk, due_next), jnp.asarray(True)
  fresh = first_order_risks(kl_grads, last_mask, granularity)
  due = first_order.due
  risk = jax.tree.map(lambda new, old: jnp.where(due, new, old), fresh, first_order.risk)
  finite = jnp.where(due, all_finite(kl_grads), True)
  return risk, FirstOrderRisk(risk, due_next), finite


def due(opt_state: Any, state_types: tuple[type, ...]) -> jax.Array | None:
  """Whether the next update of the ROSE state inside ``opt_state`` reads
  ``kl_grads``; None for a state that reads them on every update."""
  state = trees.find_state(opt_state, *state_types)
  first_order = getattr(state, 'first_order', None)
  return None if first_order is None else first_order.due
