"""One train step for every method, on one device or data-parallel.

``step(params, opt_state, batch, key)`` computes the method's gradients for
the batch (:func:`rose_jax.training.compute_gradients`: one or two dropout
passes, one forward, averaged over devices) and applies the optimizer:
data -> step -> optimizer. The model is any ``apply_fn(params, batch, *,
dropout_key) -> logits`` (:class:`rose_jax.training.ApplyFn`).

Data parallelism (``parallel=``):

* ``"none"``: ``jit`` on one device.
* ``"shard_map"``: ``jit(shard_map(...))`` over a mesh axis; the batch is a
  global array sharded along that axis (see :func:`shard_batch`, which also
  serves multi-host runs under ``jax.distributed.initialize()``).
* ``"pmap"``: ``jax.pmap`` over the local devices; params and optimizer state
  carry a leading device axis (:func:`replicate`), the batch is split by
  :func:`split_for_pmap`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rose_jax._src import apply_fn as apply_fn_lib
from rose_jax._src import trees, validation
from rose_jax._src.apply_fn import ApplyFn, Batch, EmbeddingShape
from rose_jax._src.objectives import CLASSIFICATION, Objective, get_objective
from rose_jax.baselines.params_ema import find_params_ema
from rose_jax.masking import kept_fraction
from rose_jax.selective import SelectiveState
from rose_jax.training.gradients import (
  Cotangents,
  Gradients,
  check_arguments,
  check_embedding_shape,
  check_kl_fraction,
  check_method_fits,
  compute_gradients,
  metric_names,
)
from rose_jax.training.methods import Method
from rose_jax.training.sub_batch import SubBatch, map_parts
from rose_jax.transform import ScaleByRoseState, first_order_due

Parallel = Literal['none', 'pmap', 'shard_map']
Step = Callable[[Any, Any, Batch, jax.Array], tuple[Any, Any, dict]]
ExtraMetrics = Callable[[Any, Any, Gradients], Mapping[str, Any]]
"""``extra_metrics(params, opt_state, grads) -> {name: value}``: what a step
reports beside its metrics (see :func:`make_train_step`)."""


class NoDropoutWarning(UserWarning):
  """The two dropout passes of a step gave the same logits."""


def find_rose_state(opt_state) -> ScaleByRoseState | SelectiveState | None:
  """The state that keeps ROSE's mask inside an optimizer state (a chain,
  ``inject_hyperparams``...): :func:`rose_jax.rose`'s and
  :func:`rose_jax.scale_by_rose`'s, or :func:`rose_jax.selective`'s. Both
  have ``mask``, one value per ranked tensor; the outermost is returned."""
  return trees.find_state(opt_state, ScaleByRoseState, SelectiveState)


def local_step(params, opt_state, batch: Batch | SubBatch, key: jax.Array, due=None, *,
               apply: ApplyFn, tx: optax.GradientTransformation, method: Method,
               axis_name: str | None, embedding_shape: EmbeddingShape | None = None,
               cotangents: Cotangents = 'sequential',
               extra_metrics: ExtraMetrics | None = None,
               objective: Objective | str = CLASSIFICATION, debug: bool = False,
               kl_fraction: float | None = None):
  """The per-device step: :func:`compute_gradients`, then the optimizer.

  ``axis_name`` names the data-parallel axis, if any; ``cotangents`` is how
  several gradients leave the one forward, ``extra_metrics`` what else the
  step reports, ``objective`` what the outputs are trained against,
  ``debug`` whether the step checks values under ``checkify`` and
  ``kl_fraction`` which share of the batch runs the KL passes (see
  :func:`make_train_step`).

  Where the optimizer refreshes its first-order risk every ``k`` steps
  (:func:`rose_jax.first_order_due`), the step is a ``lax.cond`` between the
  method's step and one without the KL passes, on ``due`` (default: the
  optimizer's own; a sweep passes one for all of its members, so that the
  branch is taken, not both computed).
  """
  scheduled = first_order_due(opt_state)
  run = functools.partial(_gradient_step, apply=apply, tx=tx, axis_name=axis_name,
                          embedding_shape=embedding_shape, cotangents=cotangents,
                          extra_metrics=extra_metrics, objective=objective, debug=debug,
                          kl_fraction=kl_fraction)
  if scheduled is None or not method.kl_grads:
    return run(params, opt_state, batch, key, method=method, names=None)
  names = metric_names(method, objective)
  return jax.lax.cond(
      scheduled if due is None else due,
      functools.partial(run, method=method, names=names),
      functools.partial(run, method=method.without_first_order(), names=names),
      params, opt_state, batch, key)


def _gradient_step(params, opt_state, batch, key, *, method: Method, names, apply, tx,
                   axis_name, embedding_shape, cotangents, extra_metrics, objective, debug,
                   kl_fraction):
  """One step of ``method``, reporting the metrics ``names`` (default: the
  method's own): NaN for those it does not measure, the KL and the
  disagreement on a step without the KL passes."""
  ema = find_params_ema(opt_state)
  grads, metrics = compute_gradients(
      apply, params, batch, key, method=method, embedding_shape=embedding_shape,
      teacher=None if ema is None else ema.ema, axis_name=axis_name, cotangents=cotangents,
      objective=objective, debug=debug,
      kl_fraction=kl_fraction if method.passes == 2 else None)
  if debug:
    checkify.check(jnp.isfinite(metrics['loss']), 'The loss is {loss}: the step diverged or '
                   'its inputs hold NaN.', loss=metrics['loss'])
  extra = {} if extra_metrics is None else dict(extra_metrics(params, opt_state, grads))
  clashing = sorted(set(extra) & {*metrics, 'kept_fraction'})
  if clashing:
    raise ValueError(f'extra_metrics returned {clashing}, which the step reports itself; '
                     'give them other names.')
  updates, opt_state = tx.update(grads.update, opt_state, params, **grads.extra_args())
  params = optax.apply_updates(params, updates)
  rose_state = find_rose_state(opt_state)
  kept = jnp.ones((), jnp.float32) if rose_state is None else kept_fraction(rose_state.mask)
  if axis_name is not None:
    kept = jax.lax.pmean(kept, axis_name)
  if method.passes == 1:
    metrics['kl'] = metrics['kl'] if names is None else jnp.full((), jnp.nan, jnp.float32)
  metrics = {**metrics, 'kept_fraction': kept}
  names = metric_names(method, objective) if names is None else names
  unmeasured = jnp.full((), jnp.nan, jnp.float32)
  return params, opt_state, {**{name: metrics.get(name, unmeasured) for name in names}, **extra}


class _DropoutCheck:
  """A step that warns once when its first step's two dropout passes agree.

  The KL between identical logits is exactly zero, and so are the KL
  gradients: ROSE-First would rank on nothing and R-Drop would be vanilla.
  The check reads the first step's ``kl`` (one wait for the device, once)."""

  def __init__(self, step: Step, method: Method):
    self._step, self._method, self._checked = step, method, False
    functools.update_wrapper(self, step)

  def __call__(self, *args):
    out = self._step(*args)
    if not self._checked:
      self._checked = True
      if not np.any(np.asarray(jax.device_get(out[2]['kl']))):
        warnings.warn(
            f'{self._method.name}: the two dropout passes of the first step gave identical '
            'logits (KL exactly 0), so the KL gradients, and ROSE\'s first-order risk, are 0 '
            'for every tensor. apply_fn must apply dropout (rate > 0) drawn from dropout_key.',
            NoDropoutWarning, stacklevel=2)
    return out

  def __getattr__(self, name):  # lower, eval_shape... of the jitted step
    return getattr(self._step, name)


def check_dropout_once(step: Step, method: Method) -> Step:
  """``step``, warning once (:class:`NoDropoutWarning`) if its first call's
  dropout passes agree; ``step`` itself for methods with one pass."""
  if method.passes == 2 and method.adversary is None:
    return _DropoutCheck(step, method)
  return step


def make_train_step(
    apply: ApplyFn,
    tx: optax.GradientTransformation,
    method: Method,
    *,
    embedding_shape: EmbeddingShape | None = None,
    parallel: Parallel = 'none',
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = 'data',
    donate: bool = True,
    cotangents: Cotangents = 'sequential',
    extra_metrics: ExtraMetrics | None = None,
    objective: Objective | str = CLASSIFICATION,
    debug: bool = False,
    kl_fraction: float | None = None,
) -> Step:
  """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

  Args:
    apply: the model, ``apply_fn(params, batch, *, dropout_key) -> logits``
      (:class:`rose_jax.training.ApplyFn`; for our encoder
      :func:`rose_jax.models.as_apply_fn`).
    tx: the optimizer; for ROSE methods an optimizer built by
      :func:`rose_jax.rose` with the method's variant.
    method: what to compute (:func:`rose_jax.training.get_method`).
    embedding_shape: for SMART and FreeLB, ``embedding_shape(batch)``, the
      shape of the perturbation that ``apply_fn(..., perturbation=)`` adds
      (default: ``apply.embedding_shape`` if the function has it).
    parallel: ``"none"``, ``"shard_map"`` or ``"pmap"`` (see module doc).
    mesh: for ``"shard_map"``, a mesh with axis ``axis_name``; by default
      all devices, ``AxisType.Auto``.
    axis_name: the data-parallel axis name.
    donate: donate params and optimizer state buffers to the step.
    cotangents: for methods that need several gradients (ROSE-First and
      -Ensemble, R-Drop + ROSE), ``"sequential"`` runs one backward per
      gradient, ``"vmap"`` one batched backward over the stacked
      cotangents, both through the shared forward. Under ``vmap`` each
      weight gradient contracts the middle axis of a ``[2, tokens,
      features]`` cotangent, and XLA:CPU transposes it into a fresh buffer
      first (the performance guide gives both times). Measure both on your
      hardware with ``benchmarks/step_benchmark.py``.
    extra_metrics: ``extra_metrics(params, opt_state, grads) -> {name:
      value}``, called in the step with the params and optimizer state
      before the update and the step's
      :class:`~rose_jax.training.Gradients` (averaged over devices); its
      values join the metrics under their names. They are computed from
      values every device shares, so they are not averaged. For example
      :func:`rose_jax.rose_masks`, to record the masks ROSE-Ensemble mixes.
    objective: what the outputs are trained against:
      :data:`~rose_jax.training.CLASSIFICATION` (integer labels; the
      default) or :data:`~rose_jax.training.REGRESSION` (float labels, one
      output per example), or its name.
    debug: check, on every call, what only runs can show: labels outside
      ``0..classes-1`` (which a cross-entropy turns into a NaN loss, not an
      error), NaN regression targets and a non-finite loss, each raised
      with its values (``jax.experimental.checkify``). Shapes and dtypes are
      checked at the first trace either way. It costs a device-to-host
      wait per step: use it while setting up a loop, or on its first steps.
    kl_fraction: run the second dropout pass and the KL on this share of
      each device's examples (:func:`rose_jax.training.compute_gradients`),
      for methods that rank by the KL gradient; a batch may also come as a
      :class:`~rose_jax.training.SubBatch` split by the caller (packed rows).
      None: the whole batch.

  An optimizer built with ``first_order_every=k`` makes the step a
  ``lax.cond``: on the steps where the optimizer reads ``kl_grads``
  (:func:`rose_jax.first_order_due`), the method's step; on the others, the
  step without the KL passes (one pass and its task loss, as vanilla; for
  R-Drop + ROSE both passes, without the KL's backward). One program serves
  both, and only the branch taken runs. Its metrics ``kl`` and
  ``disagreement`` are NaN on the steps that do not measure them.

  Returns:
    The jitted (or pmapped) step; its metrics are those of
    :func:`rose_jax.training.metric_names`, plus ``kept_fraction`` and the
    ``extra_metrics``.
  """
  if cotangents not in ('sequential', 'vmap'):
    raise ValueError(f'cotangents must be "sequential" or "vmap", got {cotangents!r}.')
  if parallel not in ('none', 'shard_map', 'pmap'):
    raise ValueError(f'Unknown parallel={parallel!r}; choose "none", "shard_map" or "pmap".')
  check_arguments(apply, method)
  validation.check_optimizer(tx)
  objective = get_objective(objective)
  check_method_fits(method, objective)
  check_kl_fraction(method, kl_fraction)
  embedding_shape = apply_fn_lib.resolve_embedding_shape(apply, embedding_shape)
  check_embedding_shape(method, embedding_shape)
  donate_argnums = (0, 1) if donate else ()
  body = functools.partial(local_step, apply=apply, tx=tx, method=method,
                           embedding_shape=embedding_shape, cotangents=cotangents,
                           axis_name=None if parallel == 'none' else axis_name,
                           extra_metrics=extra_metrics, objective=objective, debug=debug,
                           kl_fraction=kl_fraction)
  checked = (lambda f: checkify.checkify(f, errors=checkify.user_checks)) if debug else \
      (lambda f: f)
  if parallel == 'none':
    step = jax.jit(checked(body), donate_argnums=donate_argnums)
  elif parallel == 'pmap':
    step = jax.pmap(checked(body), axis_name=axis_name, in_axes=(0, 0, 0, None),
                    donate_argnums=donate_argnums)
  else:
    sharded = jax.shard_map(body, mesh=mesh or data_mesh(axis_name),
                            in_specs=(P(), P(), P(axis_name), P()), out_specs=(P(), P(), P()))
    step = jax.jit(checked(sharded), donate_argnums=donate_argnums)
  if debug:
    step = _throwing(step)
  return check_dropout_once(step, method)


def _throwing(step):
  """A checkified step that raises its first failed check, as the plain step's result."""

  @functools.wraps(step)
  def run(*args):
    error, out = step(*args)
    error.throw()
    return out

  return run


def make_eval_step(apply: ApplyFn) -> Callable[[Any, Batch], jax.Array]:
  """``eval_step(params, batch) -> logits`` without dropout, jitted."""
  return jax.jit(lambda params, batch: apply_fn_lib.call(apply, params, batch, None))


def data_mesh(axis_name: str = 'data') -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes, for data parallelism."""
  return jax.make_mesh((jax.device_count(),), (axis_name,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _check_divisible(batch: Mapping[str, Any], devices: int) -> None:
  """Every entry's leading axis divides over the devices (a packed batch's
  rows and its examples may differ in number, each dividing)."""
  for name, value in batch.items():
    size = np.shape(value)[0]
    if size % devices:
      raise ValueError(
          f'The batch of {size} ({name}) does not divide over {devices} devices; '
          f'use a batch size that is a multiple of {devices} (per process).')


def shard_batch(batch: Mapping[str, Any] | SubBatch, mesh: jax.sharding.Mesh,
                axis_name: str = 'data') -> dict[str, jax.Array] | SubBatch:
  """Global arrays sharded along ``axis_name`` from this process's examples
  (each part of a :class:`~rose_jax.training.SubBatch` on its own).

  Each process passes its own share of the global batch; with one process
  that is the whole batch.
  """
  def place(part):
    _check_divisible(part, len(mesh.local_devices))
    sharding = NamedSharding(mesh, P(axis_name))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in part.items()}

  return map_parts(place, batch)


def split_for_pmap(batch: Mapping[str, Any] | SubBatch) -> dict[str, np.ndarray] | SubBatch:
  """Reshapes ``[batch, ...]`` to ``[local_devices, batch / devices, ...]``
  (each part of a :class:`~rose_jax.training.SubBatch` on its own)."""
  devices = jax.local_device_count()

  def split(part):
    _check_divisible(part, devices)
    return {k: np.asarray(v).reshape(devices, -1, *np.shape(v)[1:]) for k, v in part.items()}

  return map_parts(split, batch)


def replicate(tree, axis_name: str = 'data'):
  """A copy of ``tree`` on every local device, with a leading device axis,
  for a ``pmap`` step over ``axis_name``.

  The copies are laid out as that step lays out its outputs, so the step
  compiles once; from host arrays (or another axis name) the first step
  would compile for one layout and the second again for the other.
  """
  if not jax.tree.leaves(tree):  # an empty state (optax.sgd's): nothing to place
    return tree
  devices = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), tree)
  return jax.pmap(lambda t: t, axis_name=axis_name)(stacked)


def replicate_on_mesh(tree, mesh: jax.sharding.Mesh):
  """``tree`` replicated over ``mesh``, as the ``shard_map`` step returns
  params and optimizer state, so the step compiles once."""
  return jax.device_put(jax.device_get(tree), NamedSharding(mesh, P()))


def unreplicate(tree):
  """The first device's copy of a ``pmap``-replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)
