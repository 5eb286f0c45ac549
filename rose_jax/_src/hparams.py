"""Helpers for hyperparameters that may be Python numbers or traced arrays
(``optax.inject_hyperparams`` passes arrays, traced inside ``jit``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def concrete_float(value) -> float | None:
  """The Python value of a hyperparameter, or None while it is traced."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def one_minus(b):
  """``1 - b``, in Python's double precision when ``b`` is a Python number.

  PyTorch computes ``1 - beta`` in double before scaling by it; subtracting
  in float32 instead rounds 1 - 0.9 to 0.100000024 rather than 0.1.
  """
  return 1.0 - b if isinstance(b, (int, float)) else 1.0 - jnp.asarray(b, jnp.float32)
