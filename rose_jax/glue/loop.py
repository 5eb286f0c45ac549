"""The fine-tuning loop: train on a GLUE task, evaluate each epoch on GLUE and
AdvGLUE dev sets, keep the best epoch by GLUE dev accuracy.

A run, followed from ``examples/finetune.py``:

1. :func:`rose_jax.glue.run_dir.preflight` checks the settings, the paths, the
   model and the run directory (:mod:`~rose_jax.glue.run_dir` also says what
   the directory holds);
2. :class:`rose_jax.glue.shared.Shared` loads the model, the tokenizer and the
   tokenised data once for the runs of a group;
3. :func:`train_group` opens each run's directory and records
   (:mod:`~rose_jax.glue.records`), restores or starts their state, and hands
   them to a trainer (:mod:`~rose_jax.glue.trainers`);
4. the epochs below step the trainer, log, evaluate and checkpoint.

:func:`run` trains one run; :func:`train_group` trains several that differ
only in what a sweep varies as one vmapped program (:mod:`rose_jax.glue.sweep`),
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

from rose_jax._src import atomic, seeds
from rose_jax.glue import batching
from rose_jax.glue.checkpoints import Checkpoints, restore_together
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.evaluation import Evaluator
from rose_jax.glue.metrics_log import MaskLog, MetricsLog, progress_bar
from rose_jax.glue.optimizers import build_optimizer
from rose_jax.glue.records import RunRecord, RunState, TrainingDiverged
from rose_jax.glue.run_dir import data_digests, output_dir, preflight, read_results, trim_to
from rose_jax.glue.shared import Shared, batch_layout, fisher_pass
from rose_jax.glue.trainers import (
  MASK_METRICS,
  Optimizers,
  SweepLayout,
  Trainer,
  ensemble_masks,
  make_trainer,
  mask_names,
)
from rose_jax.training import step as step_lib
from rose_jax.transform import ScaleByRoseState

log = logging.getLogger(__name__)


def run(config: TrainConfig) -> dict[str, Any]:
  """Fine-tunes, evaluates and writes one run; returns its results."""
  config = preflight(config)
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
  run alone would write. Call :func:`preflight` on each config first.

  Returns:
    Each run's results, with ``final_params``.
  """
  method, data, apply_fn = shared.method, shared.data, shared.apply_fn
  first, alone = configs[0], len(configs) == 1 and not swept and layout is None
  optimizers = Optimizers(first, method, shared.total_steps, alone=alone, swept=swept)
  # A sweep's states live on the host between steps: every process holds
  # every member's, as its checkpoints are written and restored.
  own = (lambda tree: tree) if alone else jax.device_get
  # One process writes the run's files; every process computes.
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    records = []
    for config in configs:
      out, started = stack.enter_context(output_dir(config, is_main))
      checkpoints = Checkpoints(out / 'checkpoints')
      stack.callback(checkpoints.close)
      params = own(shared.params(config))
      if alone and config.parallel == 'shard_map':
        params = step_lib.replicate_on_mesh(params, step_lib.data_mesh())
      results = {'config': dataclasses.asdict(config), 'epochs': [], 'finished': False,
                 'data_digests': data_digests(config)}
      state = RunState.initial(
          config, params, own(optimizers.plain(optimizers.initial_state(config, params))))
      records.append(RunRecord(config, out, results, checkpoints, started, state, alone=alone,
                               is_main=is_main, names=step_lib.metric_names(method)))
    restored = restore_together([(r.checkpoints, r.state.tree()) for r in records]) \
        if first.resume else None
    if restored is not None:
      for record, tree in zip(records, restored[1], strict=True):
        record.state = RunState.from_tree(tree)
        previous = read_results(record.out) or {}
        record.results['epochs'] = previous.get('epochs', [])
        if 'diverged' in previous:
          record.results['diverged'] = previous['diverged']
    elif method.fisher_mask:
      # The mask lives in the optimizer state; a checkpoint at step 0 keeps a
      # resumed run from redoing the pass.
      for record in records:
        mask = fisher_pass(record.config, data, apply_fn, record.state.params)
        record.state.opt_state = own(optimizers.plain(
            optimizers.initial_state(record.config, record.state.params, mask)))
        record.checkpoints.save(0, record.state.tree())
    completed, global_step = records[0].state.epoch, records[0].state.step
    for record in records:
      if is_main:
        trim_to(record.out, record.results, completed, global_step)
        atomic.write_json(record.out / 'results.json', record.results)
    if restored is not None:
      log.info('Resuming at epoch %d, batch %d (step %d).', completed + 1,
               records[0].state.batch, global_step)
    # ROSE-Ensemble's two masks, from rose_jax.rose's state (another
    # optimizer, such as rose_jax.selective, records the applied mask alone).
    extra_metrics = ensemble_masks(first, shared.total_steps) if (
        first.record_masks and method.rose_variant == 'ensemble' and isinstance(
            step_lib.find_rose_state(records[0].state.opt_state), ScaleByRoseState)) else None
    trainer = make_trainer(optimizers, apply_fn, method, [
        (r.config, r.state.params, r.state.opt_state) for r in records], data.train.pad_id,
        layout, extra_metrics)
    _train(records, trainer, shared, tuple(MASK_METRICS) if extra_metrics else ('mask',))
  return [{**r.results, 'final_params': trainer.member(i)[0]} for i, r in enumerate(records)]


def _train(records: list[RunRecord], trainer: Trainer, shared: Shared,
           mask_parts: tuple[str, ...]) -> None:
  """The epochs: steps every run, folds the metrics in, logs, checkpoints,
  evaluates at each epoch's end and marks the runs finished; the step reports
  the ``mask_parts`` of :data:`MASK_METRICS`."""
  config, data = records[0].config, shared.data
  global_step = records[0].state.step
  start_epoch, start_batch = records[0].state.epoch, records[0].state.batch
  dropout_keys = [jax.random.wrap_key_data(np.asarray(r.state.dropout_key)) for r in records]
  evaluator = Evaluator(shared.apply_fn, config.eval_batch_size,
                        sharded=config.parallel != 'none', buckets=config.buckets,
                        row_length=config.max_length if config.packing else None)
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

  records_masks = config.record_masks and step_lib.find_rose_state(
      records[0].state.opt_state) is not None
  for record in records:
    record.metrics_log = MetricsLog(record.out, enabled=record.is_main,
                                    tensorboard=config.tensorboard,
                                    resume_after=global_step if global_step else None)
    if records_masks:
      record.mask_log = MaskLog(record.out, mask_names(record.state.opt_state), parts=mask_parts,
                                enabled=record.is_main, start_step=global_step)
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
        record.end_epoch(epoch, global_step, seconds, trainer.member(index)[0], evaluator, data,
                         shared.apply_fn, shared.tokenizer)
      save(epoch + 1, 0)
    for record in records:
      record.finish()
  finally:
    bar.close()
    for record in records:
      for log_file in (record.metrics_log, record.mask_log):
        if log_file is not None:
          log_file.close()


__all__ = ['Shared', 'TrainConfig', 'TrainingDiverged', 'build_optimizer', 'preflight', 'run',
           'train_group']
