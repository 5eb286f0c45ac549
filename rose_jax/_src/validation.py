"""Checks of the optimizers' hyperparameters and extra arguments, made when a
transformation is built (or its update traced), so that a wrong value fails
with a message that names it and the fix."""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src.hparams import concrete_float
from rose_jax.risks import GRANULARITIES, VARIANTS


def check_optimizer(tx, name: str = 'tx') -> None:
  """TypeError unless ``tx`` is an optax transformation (not its factory)."""
  if not (hasattr(tx, 'init') and hasattr(tx, 'update')):
    hint = ': it is a factory; call it, as optax.adamw(1e-3)' if callable(tx) else ''
    raise TypeError(f'{name} must be an optax.GradientTransformation, got '
                    f'{getattr(tx, "__name__", type(tx).__name__)}{hint}.')


def check_numbers(**values) -> None:
  """TypeError for a hyperparameter that is no number (a string, a list):
  Python numbers, NumPy and JAX scalars (traced ones too) pass."""
  for name, value in values.items():
    if value is None:
      continue
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number and not (hasattr(value, 'dtype') and jnp.ndim(value) == 0):
      raise TypeError(f'{name} must be a number, got {type(value).__name__} {value!r}.')


def check_learning_rate(learning_rate) -> None:
  """A schedule (a callable), or a finite number >= 0; TypeError or ValueError
  naming ``learning_rate`` otherwise."""
  if callable(learning_rate):
    return
  check_numbers(learning_rate=learning_rate)
  v = concrete_float(learning_rate)
  if v is not None and not (math.isfinite(v) and v >= 0):
    raise ValueError(f'learning_rate must be a finite number >= 0 (or an optax schedule), '
                     f'got {v}.')


def check_dtype(name: str, dtype) -> None:
  """TypeError for a ``dtype`` argument that names no dtype."""
  if dtype is None:
    return
  try:
    jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f'{name} must be a dtype such as jnp.float32 or "bfloat16", got '
                    f'{dtype!r}.') from None


def check_tree_spec(name: str, spec) -> None:
  """TypeError for a mask argument that is none of None, a callable and a pytree."""
  if spec is not None and (isinstance(spec, str | bytes | int | float)
                           and not isinstance(spec, bool)):
    raise TypeError(f'{name} must be a pytree of bools shaped like the params, a function of '
                    f'the params returning one, or None, got {type(spec).__name__} {spec!r}.')


def check_adam_hyperparams(*, b1, b2, eps) -> None:
  """Raises ValueError for Adam hyperparameters outside their domain."""
  check_numbers(b1=b1, b2=b2, eps=eps)
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
  check_numbers(upper=upper, lower=lower, gamma=gamma, warmup_steps=warmup_steps)
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


def check_max_grad_norm(max_grad_norm) -> None:
  if max_grad_norm is None:
    return
  check_numbers(max_grad_norm=max_grad_norm)
  v = concrete_float(max_grad_norm)
  if v is not None and not v > 0:
    raise ValueError(f'max_grad_norm must be > 0 (or None for no clipping), got {v}.')


def check_weight_decay(weight_decay) -> float | None:
  """The decay's Python value (None while traced); ValueError if negative."""
  check_numbers(weight_decay=weight_decay)
  decay = concrete_float(weight_decay)
  if decay is not None and decay < 0:
    raise ValueError(f'weight_decay must be >= 0, got {decay}.')
  return decay


def renamed_mu_dtype(mu_dtype: Any, moment_dtype: Any, owner: str) -> Any:
  """``mu_dtype``, or the value of its old name ``moment_dtype`` with a
  DeprecationWarning; both at once is an error."""
  if moment_dtype is None:
    return mu_dtype
  if mu_dtype is not None:
    raise TypeError(f'{owner} got both mu_dtype and its old name moment_dtype; pass mu_dtype.')
  warnings.warn(f'{owner}(moment_dtype=...) is renamed mu_dtype=..., as in optax; the old '
                'name will be removed.', DeprecationWarning, stacklevel=3)
  return moment_dtype


def check_like(reference, tree, name: str) -> None:
  """Raises ValueError unless ``tree`` has the structure and shapes of ``reference``."""
  ref_struct, struct = jax.tree.structure(reference), jax.tree.structure(tree)
  if ref_struct != struct:
    raise ValueError(
        f'{name} must be a pytree shaped like the gradients; its structure '
        f'differs:\n  gradients: {ref_struct}\n  {name}: {struct}')
  leaves_with_paths = jax.tree.flatten_with_path(reference)[0]
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
