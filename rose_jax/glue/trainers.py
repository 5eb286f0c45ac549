"""The trainers: one run alone (on one device or data parallel, as its config
says) or a sweep's runs stacked into one vmapped step (on one device or
sharded over a mesh, :class:`SweepLayout`), behind one interface
(:class:`Trainer`). Each owns its optimizer: :class:`Alone` the run's
(:func:`rose_jax.glue.optimizers.build_optimizer`), :class:`Stacked` the
sweep's, with the members' settings as traced hyperparameters
(:func:`rose_jax.glue.optimizers.sweep_optimizer`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rose_jax
from rose_jax.glue import batching, packing
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.masks import MASK_PARTS
from rose_jax.glue.optimizers import build_optimizer, rose_settings, sweep_optimizer
from rose_jax.glue.shared import Shared
from rose_jax.training import step as step_lib
from rose_jax.training import sweep as sweep_lib
from rose_jax.training.sub_batch import SubBatch


class Trainer(Protocol):
  """Trains the runs of a group together, one step at a time.

  :meth:`initial` gives each run's starting params and optimizer state,
  placed as its checkpoint restores them; :meth:`start` then takes the
  runs' states, restored or not, and builds the step.

  Attributes:
    batch_share: ``(index, count)``: this process feeds share ``index`` of
      ``count`` of each global batch.
    stops_all: a divergence stops training (a run alone); in a sweep only the
      diverged member stops.
  """
  batch_share: tuple[int, int]
  stops_all: bool

  def initial(self, config: TrainConfig, params, fisher_mask=None) -> tuple[Any, Any]:
    """``config``'s params and fresh optimizer state as its checkpoint holds
    them (CHILD-TUNING_D's state with ``fisher_mask``)."""

  def start(self, runs: Sequence[tuple[TrainConfig, Any, Any]],
            extra_metrics: step_lib.ExtraMetrics | None = None) -> None:
    """Takes each run's ``(config, params, opt_state)`` as :meth:`initial`
    places them and builds the step, which also reports ``extra_metrics``."""

  def step(self, batches: list[batching.Batch], keys: list[jax.Array]) -> dict:
    """One step of every run on its batch and dropout key; the metrics (with
    ROSE's ``mask`` row), on device, as :meth:`split` takes them."""

  def split(self, metrics: dict) -> list[dict]:
    """Each run's own metrics out of a step's."""

  def member(self, index: int) -> tuple[Any, Any]:
    """Run ``index``'s params and optimizer state as its checkpoint holds them."""


def _stack_mask(mask) -> jax.Array:
  return jnp.stack([jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(mask)], -1)


@functools.cache
def _mask_stacker(mesh: jax.sharding.Mesh | None):
  # On a mesh, replicated: every process reads every member's row.
  return jax.jit(_stack_mask, out_shardings=None if mesh is None else
                 NamedSharding(mesh, P()))


def _mask_row(opt_state, mesh: jax.sharding.Mesh | None = None) -> jax.Array | None:
  """ROSE's mask in the state, one value per ranked tensor in the order of
  :func:`mask_names` (a leading axis stays), or None without ROSE."""
  rose_state = step_lib.find_rose_state(opt_state)
  return None if rose_state is None else _mask_stacker(mesh)(rose_state.mask)


def ensemble_masks(config: TrainConfig, total_steps: int) -> step_lib.ExtraMetrics:
  """The step's ``extra_metrics`` that report the first- and second-order
  masks ROSE-Ensemble mixes (:func:`rose_jax.rose_masks`), as mask rows.

  The settings are the run's (:func:`rose_settings`), but those a sweep
  traces, which each member's optimizer state holds."""
  settings = rose_settings(config, total_steps)

  def extra_metrics(params, opt_state, grads):
    del params
    swept = getattr(opt_state, 'hyperparams', {})
    masks = rose_jax.rose_masks(
        grads.update, step_lib.find_rose_state(opt_state), kl_grads=grads.kl_grads,
        ce_grads=grads.ce_grads, **{k: swept.get(k, v) for k, v in settings.items()})
    return {MASK_PARTS[part]: _stack_mask(masks[part]) for part in ('first', 'second')}

  return extra_metrics


def mask_names(opt_state) -> list[str]:
  """The names of the ranked tensors, in the order of a mask row."""
  paths = jax.tree.flatten_with_path(step_lib.find_rose_state(opt_state).mask)[0]
  return [jax.tree_util.keystr(path, simple=True, separator='/') for path, _ in paths]


class Alone:
  """One run's params and optimizer state, and its step, data parallel as
  ``config.parallel`` says."""

  stops_all = True

  def __init__(self, config: TrainConfig, shared: Shared):
    self._config, self._shared = config, shared
    self.batch_share = (jax.process_index(), jax.process_count())
    self._mesh = step_lib.data_mesh() if config.parallel == 'shard_map' else None
    self._pmap = config.parallel == 'pmap'
    # One copy of a replicated tree: pmap's carry a leading device axis.
    self._single = step_lib.unreplicate if self._pmap else (lambda t: t)

  def _tx(self, fisher_mask=None):
    return build_optimizer(self._config, self._shared.method, self._shared.total_steps,
                           fisher_mask=fisher_mask)

  def initial(self, config: TrainConfig, params, fisher_mask=None) -> tuple[Any, Any]:
    state = self._tx(fisher_mask).init(params)
    if self._mesh is None:
      return params, state
    # Replicated over the mesh, as the step returns them; a checkpoint
    # restores to the target's placement.
    return (step_lib.replicate_on_mesh(params, self._mesh),
            step_lib.replicate_on_mesh(state, self._mesh))

  def start(self, runs: Sequence[tuple[TrainConfig, Any, Any]],
            extra_metrics: step_lib.ExtraMetrics | None = None) -> None:
    (config, params, opt_state), = runs
    self._step = step_lib.make_train_step(
        self._shared.apply_fn, self._tx(), self._shared.method, parallel=config.parallel,
        cotangents=config.cotangents, extra_metrics=extra_metrics,
        objective=self._shared.task.objective, kl_fraction=config.kl_fraction)
    self._place = {'none': lambda b: b, 'pmap': step_lib.split_for_pmap,
                   'shard_map': lambda b: step_lib.shard_batch(b, self._mesh)}[config.parallel]
    if self._pmap:
      params, opt_state = step_lib.replicate(params), step_lib.replicate(opt_state)
    self.params, self.opt_state = params, opt_state

  def step(self, batches: list[batching.Batch], keys: list[jax.Array]) -> dict:
    self.params, self.opt_state, metrics = self._step(
        self.params, self.opt_state, self._place(batches[0].arrays), keys[0])
    metrics = self._single(metrics)
    mask = _mask_row(self.opt_state)
    if mask is not None:
      metrics['mask'] = mask[0] if self._pmap else mask
    return metrics

  def split(self, metrics: dict) -> list[dict]:
    return [metrics]

  def member(self, index: int) -> tuple[Any, Any]:
    return self._single(self.params), self._single(self.opt_state)


@dataclasses.dataclass
class SweepLayout:
  """Where a sweep's members train and how many at a time.

  Attributes:
    width: members per program (a chunk); a chunk with fewer is filled up
      with copies of its last member, whose results are dropped, so that
      every chunk runs the one compiled step.
    mesh: None for one device, else a
      :func:`rose_jax.training.sweep.sweep_mesh` over whose member devices
      the members are sharded (``width`` is a multiple of them).
  """
  width: int
  mesh: jax.sharding.Mesh | None = None
  _step: step_lib.Step | None = dataclasses.field(default=None, repr=False)

  def step(self, make: Any) -> step_lib.Step:
    """The sweep's step, made by ``make()`` for its first chunk."""
    if self._step is None:
      self._step = make()
    return self._step


def _stack_on_host(trees: list) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


class Stacked:
  """A sweep's runs stacked along a leading member axis, one vmapped step for
  all (on one device or sharded over the layout's mesh); each member's batch
  is padded to the longest of the step's batches. Every process feeds whole
  batches of every member and keeps its devices' shards; between steps and
  checkpoints a member's states live on the host.

  Args:
    config: any member's settings (they differ only in ``swept``).
    shared: what the members share.
    layout: where and how many members train at a time.
    swept: the settings the members differ in (``seed`` and those of
      :data:`rose_jax.glue.optimizers.SWEPT_NUMBERS`, which the optimizer
      traces).
  """

  stops_all = False

  def __init__(self, config: TrainConfig, shared: Shared, layout: SweepLayout,
               swept: Sequence[str] = ()):
    self._config, self._shared, self._layout = config, shared, layout
    self._mesh = layout.mesh
    self._numbers = tuple(name for name in swept if name != 'seed')
    self._pad_id = shared.data.train.pad_id
    self.batch_share = (0, 1)

  def _tx(self, fisher_mask=None):
    return sweep_optimizer(self._config, self._shared.method, self._shared.total_steps,
                           self._numbers, fisher_mask=fisher_mask)

  def initial(self, config: TrainConfig, params, fisher_mask=None) -> tuple[Any, Any]:
    # On the host, without the injected hyperparameters: a plain run's checkpoint.
    state = self._tx(fisher_mask).init(params).inner_state
    return jax.device_get(params), jax.device_get(state)

  def start(self, runs: Sequence[tuple[TrainConfig, Any, Any]],
            extra_metrics: step_lib.ExtraMetrics | None = None) -> None:
    self._real = len(runs)
    if self._real > self._layout.width:
      raise ValueError(f'{self._real} members exceed the layout\'s {self._layout.width}.')
    tx = self._tx()
    self._step = self._layout.step(lambda: sweep_lib.make_sweep_step(
        self._shared.apply_fn, tx, self._shared.method, cotangents=self._config.cotangents,
        mesh=self._mesh, extra_metrics=extra_metrics, objective=self._shared.task.objective,
        kl_fraction=self._config.kl_fraction))
    template = tx.init(runs[0][1])
    states = [sweep_lib.with_hyperparams(template, **{
        name: getattr(config, name) for name in self._numbers})._replace(inner_state=opt_state)
        for config, _, opt_state in runs]
    self.params = self._place(self._fill([params for _, params, _ in runs]))
    self.opt_state = self._place(self._fill(states))

  def _fill(self, members: list) -> list:
    return [*members, *[members[-1]] * (self._layout.width - len(members))]

  def _place(self, trees: list, *, batch: bool = False):
    if self._mesh is None:
      return sweep_lib.stack(trees)
    return sweep_lib.shard_members(_stack_on_host(trees), self._mesh, batch=batch)

  def _padded(self, parts: list[dict]) -> list[dict]:
    """The members' batches (or one part of each) padded to one shape."""
    if 'segment_ids' in parts[0]:  # packed: the members' row counts may differ
      rows = max(part['segment_ids'].shape[0] for part in parts)
      return [packing.pad_rows(part, rows, self._pad_id) for part in parts]
    length = max(part['input_ids'].shape[1] for part in parts)
    return [batching.pad_to(part, length, self._pad_id) for part in parts]

  def step(self, batches: list[batching.Batch], keys: list[jax.Array]) -> dict:
    members = [b.arrays for b in batches]
    if isinstance(members[0], SubBatch):
      padded = [SubBatch(*parts) for parts in zip(
          self._padded([m.kl for m in members]), self._padded([m.rest for m in members]),
          strict=True)]
    else:
      padded = self._padded(members)
    arrays = self._place(self._fill(padded), batch=True)
    keys = jnp.stack(self._fill(keys))  # typed keys, which _place's host stack cannot hold
    if self._mesh is not None:
      keys = sweep_lib.shard_members(keys, self._mesh)
    self.params, self.opt_state, metrics = self._step(self.params, self.opt_state, arrays, keys)
    mask = _mask_row(self.opt_state, self._mesh)
    return metrics if mask is None else {**metrics, 'mask': mask}

  def split(self, metrics: dict) -> list[dict]:
    return [{name: value[i] for name, value in metrics.items()} for i in range(self._real)]

  def member(self, index: int) -> tuple[Any, Any]:
    # Host arrays, without the injected hyperparameters, as a plain run's
    # checkpoint holds them (every process takes part in fetching them).
    return (sweep_lib.member_on_host(self.params, index),
            sweep_lib.member_on_host(self.opt_state, index).inner_state)


def make_trainer(configs: Sequence[TrainConfig], shared: Shared, *,
                 swept: Sequence[str] = (), layout: SweepLayout | None = None) -> Trainer:
  """The trainer of ``configs``: :class:`Alone` for one run on its own, else
  :class:`Stacked` (``layout``, by default all runs on one device)."""
  if len(configs) == 1 and not swept and layout is None:
    return Alone(configs[0], shared)
  return Stacked(configs[0], shared, layout or SweepLayout(len(configs)), swept)
