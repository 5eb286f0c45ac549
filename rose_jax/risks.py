"""First- and second-order risks (ROSE, Jiang et al. 2022, Eqs. 2 and 4).

A risk is computed per parameter tensor (``granularity="tensor"``, the
authors' code: Frobenius norms) or per scalar (``granularity="element"``, the
paper's literal reading: absolute values). Risks are float32 and nonnegative.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from rose_jax._src.hparams import one_minus

Granularity = Literal['tensor', 'element']
GRANULARITIES = ('tensor', 'element')
# Which risks rank: ROSE-First, ROSE-Second or ROSE-Ensemble (both, mixed).
Variant = Literal['first', 'second', 'ensemble']
VARIANTS = ('first', 'second', 'ensemble')

# A tensor whose first moment is zero while its gradient is not has departed
# infinitely far from its trajectory. The largest finite float ranks it last
# and, unlike inf, keeps the quantile's interpolation finite.
_MAX_RISK = float(jnp.finfo(jnp.float32).max)


def _magnitude(x: jax.Array, granularity: Granularity) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  if granularity == 'tensor':
    return jnp.sqrt(jnp.sum(jnp.square(x)))
  return jnp.abs(x)


def first_order_risk(kl_grads, *, granularity: Granularity = 'tensor'):
  """``r^F = ||grad L_KL||_F`` (Eq. 2) for every leaf of ``kl_grads``.

  Args:
    kl_grads: gradient of the symmetric KL loss between two dropout passes.
    granularity: ``"tensor"`` gives one scalar per leaf, ``"element"`` one
      value per scalar parameter.

  Returns:
    A pytree of float32 risks shaped like ``kl_grads`` (element) or of scalars
    (tensor).
  """
  return jax.tree.map(lambda g: _magnitude(g, granularity), kl_grads)


def second_order_risk(grads, mu, *, b1: float, granularity: Granularity = 'tensor'):
  """``r^S = |(1 - b1) ||g||_F / ||m_{t-1}||_F - 1|`` (Eq. 4).

  Args:
    grads: the classification-loss gradient ``g_t``.
    mu: the optimizer's first moment before this step, ``m_{t-1}``.
    b1: the momentum decay; ``1 - b1`` is the paper's scaling coefficient.
    granularity: ``"tensor"`` or ``"element"``, as in :func:`first_order_risk`.

  Zero momentum is defined rather than divided by: where ``||m|| = 0`` and
  ``||g|| = 0`` the ratio is 0 (risk 1, like any zero gradient); where
  ``||m|| = 0 < ||g||`` the risk is the largest finite float32, so the tensor
  ranks last. The caller decides what to do before any momentum exists.
  """
  alpha = one_minus(b1)

  def risk(g, m):
    g_norm = _magnitude(g, granularity)
    m_norm = _magnitude(m, granularity)
    safe = jnp.where(m_norm > 0, m_norm, 1.0)
    value = jnp.abs(alpha * g_norm / safe - 1.0)
    return jnp.where(m_norm > 0, value, jnp.where(g_norm > 0, _MAX_RISK, 1.0))

  return jax.tree.map(risk, grads, mu)
