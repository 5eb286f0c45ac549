"""Many hyperparameter settings and seeds as one vmapped train step.

The paper's stated limitation is its grid search (10 learning rates x 9
thresholds x 5 seeds). In JAX the train step can be ``vmap``ped over a
leading *member* axis: K members share one compiled program, and small models
fill an accelerator far better than one run does.

A member is a set of params, an optimizer state, a batch and a dropout key.
Hyperparameters enter as traced values through ``optax.inject_hyperparams``,
which keeps them in the optimizer state, so vmapping the state vmaps them:

.. code-block:: python

  factory = sweep.with_peak_learning_rate(rose_jax.rose)
  tx = optax.inject_hyperparams(factory, static_args=sweep.ROSE_STATIC)(
      learning_rate=2e-5, schedule=optax.linear_schedule(1.0, 0.0, steps), upper=0.6,
      variant='ensemble', selectable=selection.authors_selectable)
  states = [sweep.with_hyperparams(tx.init(p), learning_rate=lr, upper=u)
            for p, lr, u in members]
  step = sweep.make_sweep_step(apply_fn, tx, method)
  params, opt_state, metrics = step(sweep.stack(params), sweep.stack(states),
                                    sweep.stack(batches), keys)

Hyperparameters that change shapes or the method (batch size, maximum
length, the method, ROSE's variant or granularity) cannot vary within a
sweep; each value needs its own program.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from rose_jax._src import memory
from rose_jax._src.apply_fn import ApplyFn, EmbeddingShape, resolve_embedding_shape
from rose_jax.training.gradients import Cotangents, check_embedding_shape
from rose_jax.training.methods import Method
from rose_jax.training.step import check_dropout_once, local_step

# Arguments of rose_jax.rose that are not numbers to sweep.
ROSE_STATIC = ('schedule', 'variant', 'granularity', 'selectable', 'weight_decay_mask',
               'warmup_steps', 'mu_dtype', 'moment_dtype', 'max_grad_norm')


def with_peak_learning_rate(factory: Callable[..., optax.GradientTransformation]):
  """``factory`` with ``learning_rate`` a traced peak and ``schedule`` its shape.

  The optimizer's rate at step ``t`` is ``learning_rate * schedule(t)`` (or
  ``learning_rate`` without a schedule). With
  ``optax.linear_schedule(1.0, 0.0, T)`` as the shape this is exactly
  ``optax.linear_schedule(learning_rate, 0.0, T)``, and the peak can differ
  between members of a sweep. Pass ``schedule`` in ``static_args``.
  """
  def wrapped(learning_rate, *args, schedule=None, **kwargs):
    rate = learning_rate if schedule is None else (
        lambda count: learning_rate * schedule(count))
    return factory(rate, *args, **kwargs)

  # inject_hyperparams reads the signature: the factory's, plus `schedule`.
  signature = inspect.signature(factory)
  wrapped.__signature__ = signature.replace(parameters=[
      *signature.parameters.values(),
      inspect.Parameter('schedule', inspect.Parameter.KEYWORD_ONLY, default=None)])
  wrapped.__name__ = f'{factory.__name__}_with_peak_learning_rate'
  wrapped.__doc__ = factory.__doc__
  return wrapped


def with_hyperparams(opt_state, **values):
  """``opt_state`` (of ``optax.inject_hyperparams``, possibly inside a chain)
  with the given hyperparameters set, in the dtypes they already have."""
  is_injected = lambda x: isinstance(
      x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
  found = [False]

  def replace(state):
    if not is_injected(state):
      return state
    unknown = set(values) - set(state.hyperparams)
    if unknown:
      raise ValueError(f'No injected hyperparameter named {sorted(unknown)}; the optimizer '
                       f'has {sorted(state.hyperparams)}.')
    found[0] = True
    hyperparams = dict(state.hyperparams)
    for name, value in values.items():
      hyperparams[name] = jnp.asarray(value, jnp.result_type(hyperparams[name]))
    return state._replace(hyperparams=hyperparams)

  new = jax.tree.map(replace, opt_state, is_leaf=is_injected)
  if not found[0]:
    raise ValueError('The optimizer state has no optax.inject_hyperparams state: build the '
                     'optimizer with optax.inject_hyperparams(...) to sweep its settings.')
  return new


def stack(trees: Sequence[Any]):
  """The members' trees stacked along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, index: int):
  """One member's tree out of a stacked one."""
  return jax.tree.map(lambda x: x[index], tree)


def make_sweep_step(apply: ApplyFn, tx: optax.GradientTransformation, method: Method, *,
                    embedding_shape: EmbeddingShape | None = None, donate: bool = True,
                    cotangents: Cotangents = 'sequential'):
  """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``,
  each with a leading member axis: the train step of
  :func:`rose_jax.training.step.make_train_step` vmapped over members, on
  one device, compiled once for all of them."""
  embedding_shape = resolve_embedding_shape(apply, embedding_shape)
  check_embedding_shape(method, embedding_shape)
  body = functools.partial(local_step, apply=apply, tx=tx, method=method,
                           embedding_shape=embedding_shape, axis_name=None,
                           cotangents=cotangents)
  return check_dropout_once(jax.jit(jax.vmap(body), donate_argnums=(0, 1) if donate else ()),
                            method)


def member_memory(apply: ApplyFn, tx: optax.GradientTransformation, method: Method,
                  params, opt_state, batch, *,
                  cotangents: Cotangents = 'sequential') -> tuple[int, int] | None:
  """The sweep step's memory as ``(fixed, per_member)`` bytes.

  Compiles (without running) :func:`make_sweep_step` for one and for two
  members of the given single-member shapes and reads XLA's estimate of each:
  the step grows by ``per_member`` with each member. None where the backend
  gives no estimate.
  """
  step = make_sweep_step(apply, tx, method, cotangents=cotangents)
  key = jax.random.key(0)

  def at(members: int) -> int | None:
    widen = lambda x: jax.ShapeDtypeStruct((members, *jnp.shape(x)), jnp.result_type(x))
    stacked = jax.tree.map(widen, (params, opt_state, batch))
    keys = jax.ShapeDtypeStruct((members,), key.dtype)
    return memory.compiled_bytes(step.lower(*stacked, keys).compile())

  one, two = at(1), at(2)
  if one is None or two is None:
    return None
  per_member = max(two - one, 1)
  return max(one - per_member, 0), per_member
