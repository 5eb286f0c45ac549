"""A grid of fine-tuning runs trained as one vmapped program, over every device.

``finetune.py --sweep learning_rate=1e-5,2e-5 upper=0.4,0.6 seed=1,2,3``
trains the product of the values (12 runs here). The runs share one
compiled train step (:func:`rose_jax.training.sweep.make_sweep_step`), one
tokenised data set and one read of the checkpoint; the optimizer's numbers
enter as traced hyperparameters
(:func:`rose_jax.glue.optimizers.sweep_optimizer`), so no member compiles
its own step. The members are sharded over all devices of all processes
(``--parallel none``: one device), ``--devices-per-member`` to each
(members x data). Chunks of ``--sweep-chunk`` members train at a time; by
default as many a device as XLA's memory estimate of the step fits into 80%
of its free memory, and a short last chunk is filled up with copies whose
results are dropped (:func:`sweep_layout`).

Each member writes the run directory that the same run alone would write
(``results.json``, ``metrics.jsonl``, predictions, ``best_model/`` and
checkpoints that a plain ``--resume`` continues), so the report reads both.
A member's numbers equal its separate run's to float tolerance (vmapped
matmuls round differently); two exceptions make them differ further:

* a step pads every member's batch to the most rows among the members'
  packed batches (with ``--no-packing``, to the longest of their buckets),
  and dropout draws its bits for that shape; runs that vary only optimizer
  numbers share their batches and are unaffected, and ``--no-packing
  --buckets MAX_LENGTH`` removes the difference for seeds too;
* a member whose loss becomes NaN or infinite is marked ``"diverged"`` in its
  ``results.json`` and left unfinished, while the others go on.

Only the seed and the optimizer's numbers
(:data:`rose_jax.glue.grid.SWEEPABLE`) can vary: batch size, maximum length,
buckets and the method change the compiled program, and everything else is
fixed within it; :mod:`rose_jax.glue.grid` expands the grid.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from rose_jax._src import memory
from rose_jax.glue import grid, loop, options, trainers
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.optimizers import sweep_optimizer
from rose_jax.glue.options import ConfigError
from rose_jax.glue.run_dir import RunDirectory
from rose_jax.training import sweep as sweep_lib

log = logging.getLogger(__name__)


def automatic_chunk(configs: Sequence[TrainConfig], shared: loop.Shared,
                    swept: Sequence[str], budget: int | None = None) -> int:
  """The most members that fit ``budget`` bytes on each device (default: 80%
  of a device's free memory), from XLA's memory estimate of the sweep step at
  the longest batch (a member's rows over its ``devices_per_member``)."""
  first = configs[0]
  numbers = [name for name in swept if name != 'seed']
  params = shared.param_shapes
  tx = sweep_optimizer(first, shared.method, shared.total_steps, numbers)
  opt_state = jax.eval_shape(tx.init, params)
  length = first.max_length
  rows = first.batch_size // first.devices_per_member
  batch = {key: jax.ShapeDtypeStruct((rows, length), 'int32')
           for key in shared.data.train.tokens}
  batch['labels'] = jax.ShapeDtypeStruct((rows,), shared.data.train.labels.dtype)
  estimate = sweep_lib.member_memory(shared.apply_fn, tx, shared.method, params, opt_state,
                                     batch, cotangents=first.cotangents,
                                     objective=shared.task.objective)
  if estimate is None:
    log.warning('This backend gives no memory estimate; the sweep trains all %d members at '
                'once (set --sweep-chunk to limit it).', len(configs))
    return len(configs)
  budget = _device_budget() if budget is None else budget
  chunk = memory.chunk_size(len(configs), *estimate, budget)
  log.info('The sweep step needs %.2f GiB + %.2f GiB per member on a device; %.2f GiB are '
           'free: %d members a device.', estimate[0] / 2**30, estimate[1] / 2**30,
           budget / 2**30, chunk)
  return chunk


def _device_budget() -> int:
  # A CPU's "devices" (--xla_force_host_platform_device_count) share its memory.
  shared_by = jax.local_device_count() if jax.default_backend() == 'cpu' else 1
  return memory.available_memory() // shared_by


def _finished(config: TrainConfig) -> dict | None:
  """A member's results where it finished before, else None."""
  run = RunDirectory(config.output_dir)
  return run.raw_results() if run.finished else None


def sweep_layout(configs: Sequence[TrainConfig], shared: loop.Shared, swept: Sequence[str], *,
                 chunk: int | None, memory_budget: int | None,
                 one_device: bool) -> trainers.SweepLayout:
  """Where the members train: one device, or their member axis over all
  devices of all processes (``devices_per_member`` to each member), and how
  many at a time: ``chunk``, or as many as fit each device's memory (no
  estimate where every member has devices of its own), rounded up to fill
  every member device."""
  data_devices = configs[0].devices_per_member
  mesh = None
  if not one_device and (jax.device_count() > 1 or jax.process_count() > 1):
    mesh = sweep_lib.sweep_mesh(data_devices)
  member_devices = 1 if mesh is None else mesh.shape[sweep_lib.MEMBERS]
  filled = (lambda n: n) if mesh is None else (lambda n: sweep_lib.padded_count(n, mesh))
  if chunk is None:
    # No more members than member devices: each has its own, whatever it needs.
    fits = 1 if len(configs) <= member_devices else automatic_chunk(configs, shared, swept,
                                                                      memory_budget)
    width = fits * member_devices
  else:
    width = filled(chunk)
    if width != chunk:
      log.info('--sweep-chunk %d rounded up to %d, a multiple of the %d member devices.',
               chunk, width, member_devices)
  width = min(width, filled(len(configs)))
  filler = -len(configs) % width
  if filler:
    log.info('%d members in chunks of %d over %d member devices: %d filler members (copies '
             'whose results are not kept) fill the last chunk%s.', len(configs), width,
             member_devices, filler,
             '; --devices-per-member N would give each member several devices'
             if len(configs) < member_devices else '')
  return trainers.SweepLayout(width, mesh)


def _chunks(configs: Sequence[TrainConfig], todo: list[int], width: int) -> list[list[int]]:
  """The members ``todo`` (indices into ``configs``: the unfinished ones) to
  train, ``width`` at a time. A resumed sweep trains its started members
  (with checkpoints) apart from those yet to start.

  Raises:
    ConfigError: started members of one chunk share no checkpoint step,
      before anything is written.
  """
  if not configs[0].resume:
    return [todo[i:i + width] for i in range(0, len(todo), width)]
  steps = {i: RunDirectory(configs[i].output_dir).checkpoint_steps() for i in todo}
  started = [i for i in todo if steps[i]]
  fresh = [i for i in todo if not steps[i]]
  chunks = [group[i:i + width] for group in (started, fresh) for i in range(0, len(group), width)]
  for chunk in chunks:
    if steps[chunk[0]] and not set.intersection(*(steps[i] for i in chunk)):
      named = ', '.join(f'{Path(configs[i].output_dir).name} {sorted(steps[i])}' for i in chunk)
      raise ConfigError(
          f'--resume: the members of one chunk share no checkpoint step ({named}), so they '
          'were trained in other chunks: the sweep resumes with another --sweep-chunk or '
          'device count than it trained with. Resume with the chunk size and devices it '
          'started with.')
  return chunks


def run_sweep(configs: Sequence[TrainConfig], *, chunk: int | None = None,
              memory_budget: int | None = None) -> list[dict[str, Any]]:
  """Trains ``configs`` (runs that differ only in :data:`SWEEPABLE` settings)
  ``chunk`` at a time as one vmapped program each, its members sharded over
  all devices of all processes (``parallel="none"``: on one device), and
  returns each run's results in order. A resumed sweep skips its finished
  members.

  Args:
    configs: the members, e.g. from :func:`member_configs`.
    chunk: members per program; None picks it from the memory estimate. It
      is rounded up to a multiple of the member devices, and the last
      chunk is filled up with copies whose results are not kept, so that
      every chunk runs one compiled step.
    memory_budget: bytes a device may use for the automatic chunk
      (default: 80% of a device's free memory).
  """
  if chunk is not None and chunk < 1:
    raise ConfigError(f'--sweep-chunk must be at least 1, got {chunk}.')
  for config in configs:  # the layout below divides by them
    options.check_fields(config)
  if 'pmap' in {c.parallel for c in configs}:
    raise ConfigError('A sweep shards its members over devices with shard_map: leave out '
                      '--parallel pmap (or pass --parallel none to train them on one device).')
  one_device = 'none' in {c.parallel for c in configs}
  if one_device and configs[0].devices_per_member > 1:
    raise ConfigError(f'--devices-per-member {configs[0].devices_per_member} splits each '
                      'member over several devices, but --parallel none trains on one: leave '
                      'out one of them.')
  devices, data_devices = jax.device_count(), configs[0].devices_per_member
  if not one_device and devices % data_devices:
    raise ConfigError(f'--devices-per-member {data_devices} does not divide the {devices} '
                      f'devices; use a divisor of {devices}.')
  swept = grid.swept_names(configs)
  configs = [dataclasses.replace(c, parallel='none') for c in configs]
  configs = [loop.preflight(c, finished_ok=c.resume) for c in configs]
  if len({c.output_dir for c in configs}) < len(configs):
    raise ConfigError('Two members of the sweep share a run directory.')
  shared = loop.Shared(configs[0], runs=len(configs))
  layout = sweep_layout(configs, shared, swept, chunk=chunk, memory_budget=memory_budget,
                        one_device=one_device)
  results: list[Any] = [_finished(c) if c.resume else None for c in configs]
  chunks = _chunks(configs, [i for i, r in enumerate(results) if r is None], layout.width)
  skipped = sum(r is not None for r in results)
  if skipped:
    log.info('%d members finished before; skipped.', skipped)
  for indices in chunks:
    log.info('Training members %s of %d.', ', '.join(str(i + 1) for i in indices),
             len(configs))
    for index, result in zip(indices, loop.train_group([configs[i] for i in indices], shared,
                                                       swept, layout), strict=True):
      results[index] = result
  return results
