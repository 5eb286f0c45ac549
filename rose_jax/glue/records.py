"""A run's records while it trains: the state its checkpoints hold
(:class:`RunState`) and what it keeps as it goes (:class:`RunRecord`: running
metric means, its :class:`~rose_jax.glue.results.Results`, and the writers it
reports to)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rose_jax._src import atomic, seeds
from rose_jax.glue import batching
from rose_jax.glue.checkpoints import Checkpoints
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.evaluation import Evaluated
from rose_jax.glue.masks import MASK_PARTS
from rose_jax.glue.results import Epoch, Results
from rose_jax.glue.writers import EpochReport, Writers
from rose_jax.training.gradients import METRIC_NAMES

log = logging.getLogger(__name__)

Sums = dict[str, np.ndarray]


class TrainingDiverged(ValueError):
  """A loss became NaN or infinite."""


# What a step between refreshes of the first-order risk does not measure
# (NaN there): their means count only the steps that measure them.
SOMETIMES_MEASURED = ('kl', 'disagreement')


def zero_sums(sometimes_measured: bool = False) -> Sums:
  """Running sums of every metric, the step count and the tokens, all zero
  (float64 host arrays, so that a checkpoint keeps them exactly); with
  ``sometimes_measured``, also the count of steps that measured each of
  :data:`SOMETIMES_MEASURED` (a run with ``first_order_every``)."""
  counted = tuple(f'{name}_steps' for name in SOMETIMES_MEASURED) if sometimes_measured else ()
  return {name: np.zeros((), np.float64)
          for name in (*METRIC_NAMES, 'count', 'real_tokens', 'padded_tokens', *counted)}


def _reset(sums: Sums) -> None:
  sums.update({name: np.zeros((), np.float64) for name in sums})


def _add(sums: Sums, metrics: dict) -> None:
  for name in metrics:
    value = np.float64(metrics[name])
    if f'{name}_steps' in sums:
      if np.isnan(value):
        continue
      sums[f'{name}_steps'] = sums[f'{name}_steps'] + 1
    sums[name] = sums[name] + value
  sums['count'] = sums['count'] + 1


def _means(sums: Sums, names: tuple[str, ...]) -> dict[str, float]:
  def mean(name):
    steps = sums.get(f'{name}_steps', sums['count'])
    return float(sums[name] / steps) if steps else float('nan')
  return {name: mean(name) for name in names}


@dataclasses.dataclass
class RunState:
  """What a run's checkpoint holds.

  Attributes:
    params: the trained parameters.
    opt_state: the optimizer state (a sweep's without its settings).
    step: global steps taken.
    epoch: epochs completed.
    batch: batches of the current epoch taken.
    dropout_key: the run's dropout key data (each step folds in its number).
    epoch_sums: the running sums of this epoch's metrics.
    window_sums: those since the last metric line.
  """
  params: Any
  opt_state: Any
  step: int = 0
  epoch: int = 0
  batch: int = 0
  dropout_key: np.ndarray | None = None
  epoch_sums: Sums = dataclasses.field(default_factory=zero_sums)
  window_sums: Sums = dataclasses.field(default_factory=zero_sums)

  @classmethod
  def initial(cls, config: TrainConfig, params, opt_state) -> RunState:
    # Host arrays: a process-local device array cannot be saved by several processes.
    key = np.asarray(jax.random.key_data(seeds.stream_key(config.seed, 'dropout')))
    scheduled = config.first_order_every is not None
    return cls(params, opt_state, dropout_key=key, epoch_sums=zero_sums(scheduled),
               window_sums=zero_sums(scheduled))

  def tree(self) -> dict[str, Any]:
    """The checkpoint's pytree (the layout every version has written)."""
    position = {'step': np.asarray(self.step, np.int64), 'epoch': np.asarray(self.epoch, np.int64),
                'batch': np.asarray(self.batch, np.int64)}
    return {'params': self.params, 'opt_state': self.opt_state, 'position': position,
            'dropout_key': self.dropout_key, 'epoch_sums': self.epoch_sums,
            'window_sums': self.window_sums}

  @classmethod
  def from_tree(cls, tree: dict[str, Any]) -> RunState:
    position = tree['position']
    return cls(tree['params'], tree['opt_state'], step=int(position['step']),
               epoch=int(position['epoch']), batch=int(position['batch']),
               dropout_key=np.asarray(tree['dropout_key']), epoch_sums=tree['epoch_sums'],
               window_sums=tree['window_sums'])


@dataclasses.dataclass
class RunRecord:
  """One run directory while it trains, alone or in a sweep.

  Attributes:
    config: the run's settings.
    out: its directory.
    results: its results so far (replaced, never changed in place).
    checkpoints: its checkpoints.
    started: to be called after the first step (a replaced run is then deleted).
    state: what its next checkpoint will hold.
    stops_all: a divergence raises :class:`TrainingDiverged` (a run alone), or
      marks this run diverged while the others go on (a sweep).
    is_main: this process writes the files.
    names: the metrics the method's step returns.
    writers: where it reports (none on a process that writes no files).
  """
  config: TrainConfig
  out: Path
  results: Results
  checkpoints: Checkpoints
  started: Callable[[], None]
  state: RunState
  stops_all: bool
  is_main: bool
  names: tuple[str, ...]
  writers: Writers = dataclasses.field(default_factory=Writers)
  timed_tokens: int = 0

  @property
  def diverged(self) -> str | None:
    return self.results.diverged

  def write_results(self) -> None:
    if self.is_main:
      atomic.write_json(self.out / 'results.json', self.results.to_json())

  def add(self, metrics: dict, step: int) -> None:
    """Adds one step's host metrics to the running sums; a non-finite loss
    raises TrainingDiverged or marks the run diverged (see ``stops_all``)."""
    if self.diverged:
      return
    masks = {part: metrics.pop(name) for part, name in MASK_PARTS.items() if name in metrics}
    # A KL that a step did not measure is NaN; one it measured is checked.
    bad = [k for k in ('loss', 'ce', 'kl') if not np.isfinite(metrics[k]) and not (
        f'{k}_steps' in self.state.window_sums and np.isnan(metrics[k]))]
    if bad:
      message = (f'Training diverged at step {step}: {", ".join(bad)} is {metrics[bad[0]]}. '
                 'Lower --learning-rate or check the data; the checkpoints written before it '
                 f'remain in {self.out / "checkpoints"}.')
      if self.stops_all:
        raise TrainingDiverged(message)
      log.warning('%s: %s', self.out, message)
      self.results = dataclasses.replace(self.results, diverged=message)
      self.write_results()
      return
    for sums in (self.state.epoch_sums, self.state.window_sums):
      _add(sums, metrics)
    if masks:
      self.writers.masks(np.asarray([step]),
                         {part: np.asarray(mask)[None] for part, mask in masks.items()})

  def count_tokens(self, batch: batching.Batch) -> None:
    self.timed_tokens += batch.real_tokens
    self.state.epoch_sums['real_tokens'] += batch.real_tokens
    self.state.epoch_sums['padded_tokens'] += batch.padded_tokens

  def log_window(self, step: int, epoch: int) -> dict[str, float] | None:
    if self.diverged:
      return None
    means = _means(self.state.window_sums, self.names)
    _reset(self.state.window_sums)
    self.writers.step({'step': step, 'epoch': epoch + 1, **means})
    return means

  def save(self, params, opt_state, step: int, epoch: int, batch: int) -> None:
    self.state = dataclasses.replace(self.state, params=params, opt_state=opt_state, step=step,
                                     epoch=epoch, batch=batch)
    self.checkpoints.save(step, self.state.tree())

  def end_epoch(self, epoch: int, step: int, seconds: float,
                evaluation: Callable[[], dict[str, Evaluated]],
                model: Callable[[], Any]) -> None:
    """Records the epoch: its numbers, ``evaluation()``'s metrics (each set's,
    called unless the run diverged) and the writers' files (not the
    checkpoint); ``model()`` gives the epoch's model for the best model."""
    sums = self.state.epoch_sums
    timing = {'seconds': round(seconds, 2),
              # Timed from this process's start of the epoch (or of the resume).
              'tokens_per_second': round(self.timed_tokens / seconds, 1),
              'padding_efficiency': float(sums['real_tokens'] / sums['padded_tokens'])}
    self.timed_tokens = 0
    train = {} if self.diverged else {
        f'train_{k}': v for k, v in _means(sums, self.names).items()}
    _reset(sums)
    _reset(self.state.window_sums)
    if self.diverged:
      return
    evaluated = evaluation()
    record = Epoch(epoch + 1, step, timing, train, evaluation={
        f'{scored}_{metric}': value for result in evaluated.values()
        for scored, metrics in result.metrics.items() for metric, value in metrics.items()})
    self.results = self.results.with_epoch(record)
    self.writers.epoch(EpochReport(
        record, is_best=self.results.best().epoch == record.epoch,
        predictions={name: result.columns() for name, result in evaluated.items()},
        model=model))
    # Results after the epoch's files, then the checkpoint: a resume redoes
    # an epoch whose checkpoint is missing and trims the results to it.
    self.write_results()

  def finish(self) -> None:
    if not self.diverged:
      self.results = dataclasses.replace(self.results, finished=True)
    self.write_results()

  def close(self) -> None:
    self.writers.close()
