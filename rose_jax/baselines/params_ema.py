"""An exponential moving average of the parameters, kept in the optimizer state.

SMART's Bregman proximal point term compares the model with a "momentum
teacher" whose parameters average the student's over the steps. The
average is optimizer state: this transformation keeps it and changes no
update, so it chains after any optimizer and knows nothing of models.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rose_jax._src import trees


class ParamsEmaState(NamedTuple):
  """State of :func:`params_ema`."""
  count: chex.Array  # int32 updates seen
  ema: optax.Params  # the average of the parameters after each update


def params_ema(decay: optax.ScalarOrSchedule) -> optax.GradientTransformation:
  """Keeps ``ema <- decay * ema + (1 - decay) * (params + updates)``.

  Chain it last, so that ``updates`` is the final step and ``params +
  updates`` the parameters after it. The average starts at the initial
  parameters; the updates pass through unchanged.

  Args:
    decay: ``beta``, a float or a schedule of the step count (SMART: 0.99 for
      the first 10% of updates, then 0.999).

  Returns:
    An ``optax.GradientTransformation`` with a :class:`ParamsEmaState`.

  References:
    Jiang et al., `SMART <https://aclanthology.org/2020.acl-main.197>`_, ACL
    2020, Algorithm 1 (the momentum teacher ``theta~``).
  """
  def init_fn(params):
    # A copy, not the params' own buffers: a step that donates params and
    # optimizer state must not receive one buffer twice.
    return ParamsEmaState(jnp.zeros([], jnp.int32),
                          jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('params_ema averages the parameters: call update(updates, state, '
                       'params).')
    beta = decay(state.count) if callable(decay) else decay
    after = jax.tree.map(lambda p, u: jnp.asarray(p, jnp.float32) + u, params, updates)
    ema = optax.tree.update_moment(after, state.ema, beta, 1)
    return updates, ParamsEmaState(optax.safe_increment(state.count), ema)

  return optax.GradientTransformation(init_fn, update_fn)


def find_params_ema(opt_state) -> ParamsEmaState | None:
  """The :class:`ParamsEmaState` inside an optimizer state, if any."""
  return trees.find_state(opt_state, ParamsEmaState)
