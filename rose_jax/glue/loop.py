"""The fine-tuning loop: train on a task, evaluate each epoch on its
evaluation sets, keep the best epoch by the task's first metric.

A run, followed from ``examples/finetune.py``:

1. :mod:`~rose_jax.glue.config` reads the settings and
   :mod:`~rose_jax.glue.task_settings` the task they name;
2. :func:`rose_jax.glue.run_dir.preflight` checks the settings, the paths, the
   model and the run directory (:mod:`~rose_jax.glue.run_dir` also says what
   the directory holds);
3. :class:`rose_jax.glue.shared.Shared` loads the model, the tokenizer and the
   tokenised data once for the runs of a group;
4. :func:`train_group` opens each run's directory, makes the trainer
   (:mod:`~rose_jax.glue.trainers`, which owns the optimizer), restores or
   starts each run's state and its records (:mod:`~rose_jax.glue.records`);
5. the epochs below step the trainer, log through the run's writers
   (:mod:`~rose_jax.glue.writers`), evaluate
   (:mod:`~rose_jax.glue.evaluation`) and checkpoint.

:func:`run` checks and trains one run; :func:`train` trains one that
:func:`preflight` checked; :func:`train_group` trains several that differ only
in what a sweep varies as one vmapped program (:mod:`rose_jax.glue.sweep`),
each writing the directory it would write alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from rose_jax._src import seeds
from rose_jax.glue import batching
from rose_jax.glue import writers as writers_lib
from rose_jax.glue.checkpoints import Checkpoints, restore_together
from rose_jax.glue.cli import progress_bar
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.evaluation import Evaluator, evaluate
from rose_jax.glue.masks import MASK_PARTS
from rose_jax.glue.records import RunRecord, RunState, TrainingDiverged
from rose_jax.glue.results import Results
from rose_jax.glue.run_dir import RunDirectory, data_digests, output_dir, preflight
from rose_jax.glue.shared import Shared, batch_layout, fisher_pass
from rose_jax.glue.trainers import SweepLayout, Trainer, ensemble_masks, make_trainer, mask_names
from rose_jax.training import step as step_lib
from rose_jax.transform import ScaleByRoseState

log = logging.getLogger(__name__)


def run(config: TrainConfig) -> dict[str, Any]:
  """Checks, fine-tunes, evaluates and writes one run; returns its results."""
  return train(preflight(config))


def train(config: TrainConfig) -> dict[str, Any]:
  """Fine-tunes, evaluates and writes one run that :func:`preflight` returned."""
  return train_group([config], Shared(config))[0]


def train_group(configs: list[TrainConfig], shared: Shared, swept: tuple[str, ...] = (),
                layout: SweepLayout | None = None) -> list[dict[str, Any]]:
  """Trains ``configs`` together and writes each one's run directory.

  One config trains alone, data parallel as it says. Several train as one
  vmapped program (:func:`rose_jax.training.sweep.make_sweep_step`), on
  one device or as ``layout`` places them: they must differ only in the
  seed and the optimizer settings ``swept`` (each one of
  :data:`rose_jax.glue.optimizers.SWEPT_NUMBERS`), which enter as traced
  hyperparameters. Each run's directory, checkpoints included, is what the
  run alone would write. Each config comes from :func:`preflight`.

  Returns:
    Each run's results (as ``results.json`` holds them), with ``final_params``.
  """
  method, task = shared.method, shared.task
  first = configs[0]
  trainer = make_trainer(configs, shared, swept=swept, layout=layout)
  # One process writes the run's files; every process computes.
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    records = []
    for config in configs:
      out, started = stack.enter_context(output_dir(config, is_main))
      checkpoints = Checkpoints(out / 'checkpoints')
      stack.callback(checkpoints.close)
      params, opt_state = trainer.initial(config, shared.params(config))
      results = Results(dataclasses.asdict(config), task.best_key,
                        data_digests=data_digests(config))
      records.append(RunRecord(
          config, out, results, checkpoints, started, RunState.initial(config, params, opt_state),
          stops_all=trainer.stops_all, is_main=is_main,
          names=step_lib.metric_names(method, task.objective)))
    restored = restore_together([(r.checkpoints, r.state.tree()) for r in records]) \
        if first.resume else None
    if restored is not None:
      for record, tree in zip(records, restored[1], strict=True):
        record.state = RunState.from_tree(tree)
        previous = RunDirectory(record.out).results()
        if previous is not None:
          record.results = dataclasses.replace(record.results, epochs=previous.epochs,
                                               diverged=previous.diverged)
    elif method.fisher_mask:
      # The mask lives in the optimizer state; a checkpoint at step 0 keeps a
      # resumed run from redoing the pass.
      for record in records:
        mask = fisher_pass(record.config, task, shared.data, shared.apply_fn,
                           record.state.params)
        record.state.opt_state = trainer.initial(record.config, record.state.params, mask)[1]
        record.checkpoints.save(0, record.state.tree())
    completed, global_step = records[0].state.epoch, records[0].state.step
    for record in records:
      record.results = record.results.trimmed(completed)
      record.write_results()
    if restored is not None:
      log.info('Resuming at epoch %d, batch %d (step %d).', completed + 1,
               records[0].state.batch, global_step)
    # ROSE-Ensemble's two masks, from rose_jax.rose's state (another
    # optimizer, such as rose_jax.selective, records the applied mask alone).
    ensemble = first.record_masks and method.rose_variant == 'ensemble' and isinstance(
        step_lib.find_rose_state(records[0].state.opt_state), ScaleByRoseState)
    trainer.start([(r.config, r.state.params, r.state.opt_state) for r in records],
                  ensemble_masks(first, shared.total_steps) if ensemble else None)
    parts = tuple(MASK_PARTS) if ensemble else ('mask',)
    for record in records:
      record.writers = _writers(record, shared, parts, completed, global_step)
      stack.callback(record.close)
    _train(records, trainer, shared)
  return [{**r.results.to_json(), 'final_params': trainer.member(i)[0]}
          for i, r in enumerate(records)]


def _writers(record: RunRecord, shared: Shared, mask_parts: tuple[str, ...], completed: int,
             step: int) -> writers_lib.Writers:
  """Where ``record`` reports, each writer trimmed to the checkpoint (none on
  a process that writes no files)."""
  if not record.is_main:
    return writers_lib.Writers()
  out, config = record.out, record.config
  writers = [writers_lib.MetricLines(out, step=step, epoch=completed),
             writers_lib.PredictionFiles(out, epoch=completed),
             writers_lib.BestModel(out, shared.tokenizer, label_names=shared.task.label_names)]
  if writers[0].dropped:
    log.info('Dropped %d metric lines written after the checkpoint.', writers[0].dropped)
  if config.tensorboard:
    writers.append(writers_lib.TensorBoard(out, step=step))
  if config.record_masks and step_lib.find_rose_state(record.state.opt_state) is not None:
    writers.append(writers_lib.MaskFile(out, mask_names(record.state.opt_state),
                                        parts=mask_parts, step=step))
  return writers_lib.Writers(writers)


def _train(records: list[RunRecord], trainer: Trainer, shared: Shared) -> None:
  """The epochs: steps every run, folds the metrics in, logs, checkpoints,
  evaluates at each epoch's end and marks the runs finished."""
  config, data = records[0].config, shared.data
  global_step = records[0].state.step
  start_epoch, start_batch = records[0].state.epoch, records[0].state.batch
  dropout_keys = [jax.random.wrap_key_data(np.asarray(r.state.dropout_key)) for r in records]
  evaluator = Evaluator(shared.apply_fn, config.eval_batch_size,
                        sharded=config.parallel != 'none', buckets=config.buckets,
                        row_length=config.max_length if config.packing else None,
                        objective=shared.task.objective)
  pending: list = []
  has_started = False

  def fold_pending() -> None:
    for offset, metrics in enumerate(jax.device_get(pending)):
      at = global_step - len(pending) + offset + 1
      for record, own in zip(records, trainer.split(metrics), strict=True):
        record.add(own, at)
    pending.clear()

  def save(epoch: int, batch: int) -> None:
    fold_pending()
    for index, record in enumerate(records):
      record.save(*trainer.member(index), global_step, epoch, batch)

  bar = progress_bar(data.steps_per_epoch * config.epochs, global_step, config.progress)
  try:
    for epoch in range(start_epoch, config.epochs):
      began = time.time()
      first = start_batch if epoch == start_epoch else 0
      streams = [batching.train_batches(
          data.train, config.batch_size, seeds.stream_seed(record.config.seed, 'data'), epoch,
          buckets=config.buckets, group_by_length=config.group_by_length, start=first,
          process_index=trainer.batch_share[0], process_count=trainer.batch_share[1],
          layout=batch_layout(config))
          for record in records]
      for index, batches in enumerate(zip(*streams, strict=True), start=first):
        keys = [jax.random.fold_in(key, global_step) for key in dropout_keys]
        pending.append(trainer.step(list(batches), keys))
        global_step += 1
        for record, batch in zip(records, batches, strict=True):
          record.count_tokens(batch)
        if not has_started:  # the first step ran: the new runs have started
          jax.block_until_ready(pending[-1])
          for record in records:
            record.started()
          has_started = True
        bar.update(1)
        if global_step % config.log_every == 0:
          fold_pending()
          means = [record.log_window(global_step, epoch) for record in records]
          if len(records) == 1 and means[0]:
            bar.set_postfix(loss=f'{means[0]["loss"]:.4f}', kl=f'{means[0]["kl"]:.4f}',
                            kept=f'{means[0]["kept_fraction"]:.2f}')
        if config.save_every and global_step % config.save_every == 0 and \
            index + 1 < data.steps_per_epoch:
          save(epoch, index + 1)
      fold_pending()
      seconds = time.time() - began
      for index, record in enumerate(records):
        params = trainer.member(index)[0]
        record.end_epoch(
            epoch, global_step, seconds,
            evaluation=lambda p=params: evaluate(evaluator, evaluator.place_params(p),
                                                 shared.task, data.eval),
            model=lambda p=params: shared.apply_fn.merge(jax.device_get(p)))
      save(epoch + 1, 0)
    for record in records:
      record.finish()
  finally:
    bar.close()


__all__ = ['Shared', 'TrainConfig', 'TrainingDiverged', 'preflight', 'run', 'train',
           'train_group']
