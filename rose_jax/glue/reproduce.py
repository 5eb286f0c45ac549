"""Reproducing a table of the paper in one command.

A plan is every ``(task, method, seed)`` run of the protocol: the paper's
presets give each method its learning rate and threshold per task, and the
seeds of one task and method train together as a sweep (one vmapped program
over the devices; :mod:`rose_jax.glue.sweep`). :func:`execute` trains what is
not finished yet, resuming what was started, so that a second invocation
continues a killed one; then it writes the report (Table 1 with its
significance marks, Tables 3 and 4 and Figure 3 where the runs hold them).
:func:`estimate` times a few steps of each method on the current devices to
say how long the plan will take.

Each run's directory is the one ``finetune.py`` would write
(``TASK-METHOD-seedN``), so the report, the analyses and ``--resume`` read
them alike; runs there with other settings are refused before anything is
written.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from rose_jax._src import seeds as seeds_lib
from rose_jax.glue import batching, loop, sweep, task_settings
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.options import ConfigError
from rose_jax.glue.run_dir import RunDirectory
from rose_jax.glue.shared import Shared, batch_layout
from rose_jax.glue.tasks import MSGS, TASKS
from rose_jax.glue.trainers import make_trainer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Group:
  """One task and method: a run per seed, trained together.

  Attributes:
    task: the task's name in the run directories (a GLUE task, or an MSGS
      task folder's name).
    method: the method.
    configs: one per seed.
  """
  task: str
  method: str
  configs: list[TrainConfig]

  def status(self) -> list[str]:
    """Each run's state: ``finished``, ``started`` (it has checkpoints) or ``new``."""
    out = []
    for config in self.configs:
      run = RunDirectory(config.output_dir)
      out.append('finished' if run.finished else 'started' if run.checkpoint_steps()
                 else 'new')
    return out

  def todo(self) -> list[TrainConfig]:
    return [c for c, s in zip(self.configs, self.status(), strict=True) if s != 'finished']


def task_settings_of(task: str, data_dir: str | None, adv_file: str | None) -> dict:
  """The settings that name a task's data: a GLUE task (files under
  ``data_dir/TASK/`` in the release layout, else the hub) or an MSGS task
  folder (``train.jsonl`` and ``test.jsonl``)."""
  folder = Path(task)
  if folder.is_dir() and (folder / 'train.jsonl').exists():
    return {'task': MSGS, 'task_name': folder.name, 'train_file': str(folder / 'train.jsonl'),
            'eval_files': (f'msgs={folder / "test.jsonl"}',)}
  name = task.lower().replace('-', '')
  if name not in TASKS:
    raise ConfigError(f'--tasks {task}: not a GLUE task ({", ".join(TASKS)}) nor an MSGS '
                      'task folder (one that holds train.jsonl and test.jsonl).')
  settings = {'task': name}
  if data_dir:
    files = Path(data_dir) / name
    settings.update(train_file=str(files / 'train.tsv'), dev_file=str(files / 'dev.tsv'))
    if (files / 'dev_mismatched.tsv').exists():
      settings['eval_files'] = (f'glue_dev_mismatched={files / "dev_mismatched.tsv"}',)
  if adv_file:
    settings['adv_file'] = adv_file
  elif data_dir:
    settings['no_adv'] = True
  return settings


def plan(base: TrainConfig, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
         output_root: str | Path, *, data_dir: str | None = None, adv_file: str | None = None,
         sweeps: bool = True) -> list[Group]:
  """Every run of the protocol, each checked (settings, files, the model and
  a run already in its directory: one with other settings is refused, naming
  them) before anything is written; with ``sweeps`` a group's seeds will
  train as one sweep (whose members train and record ``parallel="none"``)."""
  as_member = sweeps and len(seeds) > 1
  groups = []
  for task in tasks:
    settings = task_settings_of(task, data_dir, adv_file)
    name = settings.get('task_name', settings['task'])
    for method in methods:
      configs = [dataclasses.replace(base, **settings, method=method, seed=seed, resume=True,
                                     output_dir=str(Path(output_root) / f'{name}-{method}-seed'
                                                    f'{seed}'))
                 for seed in seeds]
      for config in configs:
        try:
          loop.preflight(dataclasses.replace(config, parallel='none') if as_member else config,
                         finished_ok=True)
        except ConfigError as error:
          if 'settings differ' not in str(error):
            raise
          raise ConfigError(f'{error} To keep both, give this plan another --output-root.'
                            ) from None
      groups.append(Group(name, method, configs))
  return groups


def steps_of(config: TrainConfig) -> int | None:
  """The run's steps (epochs x batches of its training file), or None where
  its data comes from the hub."""
  if not config.train_file:
    return None
  config = task_settings.resolve(config)
  from rose_jax.glue import data as data_lib
  rows = len(data_lib.read_table(config.train_file, config.build_task().headerless)[0])
  rows = min(rows, config.max_train_samples or rows)
  rows += round(config.inoculation * rows) if config.inoculation else 0
  return config.epochs * (rows // (config.batch_size or 32))


def _step_seconds(config: TrainConfig, measured_steps: int) -> float:
  """Seconds per step of ``config``'s method on its data, after the compile."""
  # Nothing is written: the run's own directory may hold it already.
  config = loop.preflight(dataclasses.replace(
      config, resume=False, overwrite=False, progress=False,
      output_dir=str(Path(tempfile.gettempdir()) / 'rose_jax-estimate' / 'run')))
  shared = Shared(config)
  trainer = make_trainer([config], shared)
  params, opt_state = trainer.initial(config, shared.params(config))
  trainer.start([(config, params, opt_state)])
  batches = batching.train_batches(
      shared.data.train, config.batch_size, seeds_lib.stream_seed(config.seed, 'data'), 0,
      buckets=config.buckets, layout=batch_layout(config),
      process_index=trainer.batch_share[0], process_count=trainer.batch_share[1])
  key = jax.random.key(0)
  timings = []
  for index, batch in zip(range(measured_steps + 1), batches, strict=False):
    began = time.perf_counter()
    jax.block_until_ready(trainer.step([batch], [jax.random.fold_in(key, index)]))
    timings.append(time.perf_counter() - began)
  return float(np.median(timings[1:])) if len(timings) > 1 else float('nan')


def estimate(groups: list[Group], *, measured_steps: int = 3) -> dict[str, float]:
  """Seconds per step of each method, measured on the first group's task
  with a run alone (a sweep of N seeds costs about N of them per step on one
  device, less over several); none, and nothing compiled, for
  ``measured_steps=0``."""
  measured: dict[str, float] = {}
  if measured_steps < 1:
    return measured
  for group in groups:
    if group.method not in measured:
      measured[group.method] = _step_seconds(group.configs[0], measured_steps)
  return measured


def describe(groups: list[Group], seconds: dict[str, float] | None = None) -> str:
  """The plan as a table: each group's runs and their state, steps, and the
  time its unfinished runs will take (an estimate)."""
  lines = ['| task | method | seeds | state | steps a run | est. time |',
           '|---|---|---|---|---|---|']
  total = 0.0
  for group in groups:
    status = group.status()
    states = ', '.join(f'{status.count(s)} {s}' for s in ('finished', 'started', 'new')
                       if status.count(s))
    steps = steps_of(group.configs[0])
    left = len(group.todo())
    time_text = '-'
    if seconds and steps is not None and left:
      group_seconds = seconds[group.method] * steps * left
      total += group_seconds
      time_text = f'{group_seconds / 60:.1f} min'
    lines.append(f'| {group.task} | {group.method} | '
                 f'{" ".join(str(c.seed) for c in group.configs)} | {states} | '
                 f'{"?" if steps is None else steps} | {time_text} |')
  runs = sum(len(g.configs) for g in groups)
  left = sum(len(g.todo()) for g in groups)
  lines.append(f'\n{runs} runs, {left} to train' + (
      f'; about {total / 3600:.2f} h on {jax.device_count()} {jax.default_backend()} '
      'device(s) (an estimate from a few measured steps per method, each seed a step of its '
      'own)' if seconds else '') + '.')
  return '\n'.join(lines) + '\n'


def execute(groups: list[Group], *, sweeps: bool = True) -> None:
  """Trains every run not finished yet: a group's seeds as one sweep (or one
  by one), resuming those that were started."""
  for group in groups:
    todo = group.todo()
    if not todo:
      continue
    log.info('%s %s: training seeds %s.', group.task, group.method,
             ', '.join(str(c.seed) for c in todo))
    if sweeps and len(todo) > 1:
      sweep.run_sweep(todo)
      continue
    for config in todo:
      loop.train(loop.preflight(config, finished_ok=True))
