"""Many hyperparameter settings and seeds as one vmapped train step.

The paper's stated limitation is its grid search (10 learning rates x 9
thresholds x 5 seeds). In JAX the train step can be vmapped (``jax.vmap``) over a
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

Over several devices (and hosts), ``mesh=`` shards the members along the
``"members"`` axis of :func:`sweep_mesh`: each device trains its share of
the members, vmapped, and where one member does not fill a device, a
``"data"`` axis splits each member's batch over several devices as
:func:`rose_jax.training.make_train_step` does with ``parallel="shard_map"``
(members x data):

.. code-block:: python

  mesh = sweep.sweep_mesh(data_devices=2)       # 8 devices: 4 members x 2 data
  step = sweep.make_sweep_step(apply_fn, tx, method, mesh=mesh)
  params = sweep.shard_members(sweep.stack(params), mesh)
  ...
  one = sweep.member_on_host(params, 3)         # member 3, on every process

The member count must be a multiple of the mesh's ``"members"`` size:
:func:`padded_count` says how many, and filler members (copies of a real
one) make up the rest.

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
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rose_jax._src import memory, validation
from rose_jax._src.apply_fn import ApplyFn, EmbeddingShape, resolve_embedding_shape
from rose_jax._src.objectives import CLASSIFICATION, Objective, get_objective
from rose_jax.training.gradients import (
  Cotangents,
  check_arguments,
  check_embedding_shape,
  check_kl_fraction,
  check_method_fits,
)
from rose_jax.training.methods import Method
from rose_jax.training.step import ExtraMetrics, check_dropout_once, local_step
from rose_jax.transform import first_order_due

MEMBERS, DATA = 'members', 'data'

# Arguments of rose_jax.rose that are not numbers to sweep.
ROSE_STATIC = ('schedule', 'variant', 'granularity', 'selectable', 'weight_decay_mask',
               'warmup_steps', 'mu_dtype', 'moment_dtype', 'max_grad_norm', 'first_order_every')


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
  if not trees:
    raise ValueError('stack needs at least one member\'s tree.')
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, index: int):
  """One member's tree out of a stacked one."""
  return jax.tree.map(lambda x: x[index], tree)


def sweep_mesh(data_devices: int = 1, *,
               devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ``(members, data)`` mesh over ``devices`` (default: all devices of all
  processes), ``data_devices`` devices to each member.

  Raises:
    ValueError: ``data_devices`` does not divide the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data_devices < 1 or len(devices) % data_devices:
    raise ValueError(f'{data_devices} devices per member do not divide {len(devices)} '
                     f'devices; use a divisor of {len(devices)}.')
  auto = jax.sharding.AxisType.Auto
  return jax.make_mesh((len(devices) // data_devices, data_devices), (MEMBERS, DATA),
                       axis_types=(auto, auto), devices=devices)


def padded_count(members: int, mesh: jax.sharding.Mesh) -> int:
  """The smallest multiple of the mesh's member devices that holds ``members``."""
  devices = mesh.shape[MEMBERS]
  return -(-members // devices) * devices


def _check_members(members: int, mesh: jax.sharding.Mesh) -> None:
  devices = mesh.shape[MEMBERS]
  if members % devices:
    raise ValueError(
        f'{members} members do not divide over the mesh\'s {devices} member devices; pad '
        f'them to {padded_count(members, mesh)} (sweep.padded_count) with filler members, '
        'or use a mesh with fewer member devices.')


def make_sweep_step(apply: ApplyFn, tx: optax.GradientTransformation, method: Method, *,
                    embedding_shape: EmbeddingShape | None = None, donate: bool = True,
                    cotangents: Cotangents = 'sequential',
                    mesh: jax.sharding.Mesh | None = None,
                    extra_metrics: ExtraMetrics | None = None,
                    objective: Objective | str = CLASSIFICATION,
                    kl_fraction: float | None = None):
  """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``,
  each with a leading member axis: the train step of
  :func:`rose_jax.training.make_train_step` vmapped over members,
  compiled once for all of them.

  Args:
    apply, tx, method, embedding_shape, donate, cotangents: as in
      :func:`rose_jax.training.make_train_step`.
    extra_metrics, objective, kl_fraction: as there too. Under an
      optimizer's ``first_order_every``, the members take the step with the
      KL passes together, where any of them is due: members that share the
      interval (and the step count) run one branch, not both.
    mesh: None to train every member on one device; else a
      :func:`sweep_mesh`, over whose ``"members"`` axis the members are
      sharded (params, optimizer state and keys ``P("members")``, batches
      ``P("members", "data")``: see :func:`shard_members`). With a ``"data"``
      axis of more than one device, each member trains data parallel over
      it, drawing dropout as a ``parallel="shard_map"`` run does. The
      metrics come back replicated, so that every process reads every
      member's.
  """
  check_arguments(apply, method)
  validation.check_optimizer(tx)
  embedding_shape = resolve_embedding_shape(apply, embedding_shape)
  check_embedding_shape(method, embedding_shape)
  objective = get_objective(objective)
  check_method_fits(method, objective)
  check_kl_fraction(method, kl_fraction)
  data_parallel = mesh is not None and mesh.shape.get(DATA, 1) > 1
  members_step = jax.vmap(functools.partial(
      local_step, apply=apply, tx=tx, method=method, embedding_shape=embedding_shape,
      axis_name=DATA if data_parallel else None, cotangents=cotangents,
      extra_metrics=extra_metrics, objective=objective, kl_fraction=kl_fraction),
      in_axes=(0, 0, 0, 0, None))

  def body(params, opt_state, batch, keys):
    # One decision for the members: a cond whose predicate is vmapped would
    # run both branches.
    due = first_order_due(opt_state)
    return members_step(params, opt_state, batch, keys, None if due is None else jnp.any(due))

  donate_argnums = (0, 1) if donate else ()
  if mesh is None:
    return check_dropout_once(jax.jit(body, donate_argnums=donate_argnums), method)
  members = P(MEMBERS)
  sharded = jax.shard_map(
      body, mesh=mesh, in_specs=(members, members, P(MEMBERS, DATA) if data_parallel else members,
                                 members), out_specs=members)
  replicated = NamedSharding(mesh, P())

  def step(params, opt_state, batch, keys):
    _check_members(keys.shape[0], mesh)  # at trace time, before anything runs
    params, opt_state, metrics = sharded(params, opt_state, batch, keys)
    return params, opt_state, jax.lax.with_sharding_constraint(metrics, replicated)

  return check_dropout_once(jax.jit(step, donate_argnums=donate_argnums), method)


def shard_members(tree, mesh: jax.sharding.Mesh, *, batch: bool = False):
  """A stacked tree (members first) as global arrays sharded over the mesh's
  member devices, as :func:`make_sweep_step` takes them; with ``batch=True``
  each member's rows are split over the ``"data"`` axis too.

  Every process passes the whole stacked tree (host or device arrays) and
  keeps the shards of its own devices.
  """
  sharding = NamedSharding(mesh, P(MEMBERS, DATA) if batch else P(MEMBERS))

  def place(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    host = np.asarray(x)
    _check_members(host.shape[0], mesh)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree)


@functools.cache
def _member_taker(mesh: jax.sharding.Mesh):
  take = lambda tree, index: jax.tree.map(
      lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), tree)
  return jax.jit(take, out_shardings=NamedSharding(mesh, P()))


def member_on_host(tree, index: int):
  """One member's tree out of a stacked one, as host arrays on every process
  (from :func:`shard_members`' global arrays too: every process must call it,
  in the same order)."""
  leaves = jax.tree.leaves(tree)
  sharding = getattr(leaves[0], 'sharding', None) if leaves else None
  if isinstance(sharding, NamedSharding):
    tree = _member_taker(sharding.mesh)(tree, jnp.asarray(index, jnp.int32))
    return jax.tree.map(np.asarray, tree)
  return jax.device_get(member(tree, index))


def member_memory(apply: ApplyFn, tx: optax.GradientTransformation, method: Method,
                  params, opt_state, batch, *, cotangents: Cotangents = 'sequential',
                  extra_metrics: ExtraMetrics | None = None,
                  objective: Objective | str = CLASSIFICATION,
                  kl_fraction: float | None = None) -> tuple[int, int] | None:
  """The sweep step's memory on one device as ``(fixed, per_member)`` bytes.

  Compiles (without running) :func:`make_sweep_step` for one and for two
  members of the given single-member shapes and reads XLA's estimate of each:
  the step grows by ``per_member`` with each member. On a mesh, pass one
  device's share of a member's batch (its rows over the ``"data"`` axis):
  the result is then per device. None where the backend gives no estimate.
  """
  step = make_sweep_step(apply, tx, method, cotangents=cotangents, extra_metrics=extra_metrics,
                         objective=objective, kl_fraction=kl_fraction)
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
