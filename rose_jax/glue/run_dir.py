"""A run directory's contract: what it holds, its one reader
(:class:`RunDirectory`, for the loop, the sweep, the report and the
analyses), the checks made before anything is written (:func:`preflight`),
and how a new run takes over what is there.

Everything a run writes lives in its output directory:

* ``results.json``: the configuration (written before training starts),
  each epoch's numbers, the best epoch and ``finished``
  (:mod:`rose_jax.glue.results`); rewritten atomically after each epoch;
* ``metrics.jsonl``: one JSON line per ``log_every`` steps and per epoch;
* ``masks.bin`` and ``masks.json``: ROSE's kept mask per ranked tensor at
  every step (:mod:`rose_jax.glue.masks`);
* ``predictions/epoch{E}-{set}.jsonl``: each evaluation example's prediction;
* ``checkpoints/``: orbax checkpoints every ``save_every`` steps and at each
  epoch's end (:mod:`rose_jax.glue.checkpoints`); ``resume=True`` continues
  from the newest one to bit-identical final parameters, each file trimmed
  to it by its writer (:mod:`rose_jax.glue.writers`);
* ``best_model/``: the best epoch's model and tokenizer in the Hugging Face
  layout, with the task's label names, replaced as a whole directory;
* ``tensorboard/``: with ``tensorboard=True``, the metrics as events.

Nothing is written or deleted before the configuration, the paths, the
model, the tokenizer and the data have all been checked (:func:`preflight`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from rose_jax._src import json_files
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.options import ConfigError, flag
from rose_jax.glue.results import Results
from rose_jax.glue.tasks import Task
from rose_jax.models.files import looks_like_a_path, resolve_checkpoint
from rose_jax.models.loading import read_config

log = logging.getLogger(__name__)


def data_files(config: TrainConfig) -> dict[str, str]:
  """The run's local data files by option: ``train_file``, ``dev_file`` and
  ``adv_file`` as before, each other evaluation set's as ``eval_file:NAME``."""
  files = {name: getattr(config, name) for name in ('train_file', 'dev_file', 'adv_file')
           if getattr(config, name) and not (name == 'adv_file' and config.no_adv)}
  for item in config.eval_files:
    name, _, path = item.partition('=')
    files[f'eval_file:{name.strip()}'] = path.strip()
  return files


def _as_given(name: str, value: str) -> str:
  """A :func:`data_files` item as the command line gave it."""
  if ':' in name:
    return f'--eval-file {name.split(":", 1)[1]}={value}'
  return f'{flag(name)} {value}'



def file_digest(path: str | Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def data_digests(config: TrainConfig) -> dict[str, str]:
  """The SHA-256 of each local data file, by option name, as results.json keeps them."""
  return {name: file_digest(value) for name, value in data_files(config).items()}


def check_paths(config: TrainConfig) -> None:
  """Data files that exist and are files; an output location that can be a directory."""
  for name, value in data_files(config).items():
    path = Path(value)
    if not path.exists():
      raise ConfigError(f'{_as_given(name, value)} does not exist.')
    if not path.is_file():
      raise ConfigError(f'{_as_given(name, value)} is a directory; give a file.')
    if not os.access(path, os.R_OK):
      raise ConfigError(f'{_as_given(name, value)} is not readable.')
  out = Path(config.output_dir)
  for parent in (out, *out.parents):
    if parent.exists():
      if not parent.is_dir():
        raise ConfigError(f'The output location {out} cannot be a directory: {parent} is a '
                          'file. Choose another --output-root.')
      if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f'The output location {out} is not writable ({parent} is not); '
                          'choose another --output-root.')
      break


class RunDirectory:
  """A run's directory as the loop, the sweep, the report and the analyses
  read it.

  Args:
    path: the run directory.
  """

  def __init__(self, path: str | Path):
    self.path = Path(path)

  def raw_results(self) -> dict | None:
    """``results.json`` as saved, or None where there is none; ConfigError for
    one that cannot be read."""
    file = self.path / 'results.json'
    if not file.exists():
      return None
    data = json_files.read_object(file, "a run's settings and results", ConfigError)
    if not isinstance(data.get('config', {}), dict):
      raise ConfigError(f'{file} is not a rose_jax results file: its "config" is no run\'s '
                        'settings.')
    return data

  def config(self) -> TrainConfig:
    """The settings the run saved; ValueError where it has no results."""
    data = self.raw_results()
    if data is None or 'config' not in data:
      raise ConfigError(f'{self.path} is not a run directory (no results.json with a config); '
                        'give a directory that finetune.py wrote.')
    return TrainConfig.from_saved(data['config'])

  def task(self) -> Task:
    """The run's task, as its settings name it."""
    return self.config().build_task()

  def results(self) -> Results | None:
    """The run's :class:`~rose_jax.glue.results.Results`, or None."""
    data = self.raw_results()
    if data is None:
      return None
    return Results.from_json(data, self.task().best_key if 'config' in data else '')

  @property
  def finished(self) -> bool:
    data = self.raw_results()
    return bool(data and data.get('finished'))

  def checkpoint_steps(self) -> set[int]:
    """The global steps of the checkpoints in ``checkpoints/``."""
    directory = self.path / 'checkpoints'
    return {int(p.name) for p in directory.iterdir() if p.name.isdigit()} \
        if directory.is_dir() else set()

  def holds_files(self) -> bool:
    return self.path.exists() and any(self.path.iterdir())


def check_output_dir(config: TrainConfig, *, finished_ok: bool = False) -> None:
  """Raises ConfigError if ``output_dir`` holds something this run would clobber,
  or a run that ``resume`` cannot continue with this configuration; with
  ``finished_ok``, a finished run counts as one to continue (a sweep's member
  that finished before the others)."""
  run = RunDirectory(config.output_dir)
  out = run.path
  if config.overwrite or not run.holds_files():
    return
  try:
    results = run.raw_results()
  except ConfigError as error:
    raise ConfigError(f'{error} Pass --overwrite to start the run over, or choose another '
                      '--output-root.') from None
  if results is None:
    raise ConfigError(f'{out} holds files but no rose_jax run (no results.json); choose '
                      'another --output-root, or pass --overwrite to replace it.')
  if results.get('finished') and not finished_ok:
    raise ConfigError(f'{out} already holds a finished run; choose another --output-root or '
                      'pass --overwrite to replace it.')
  if not run.checkpoint_steps():
    return  # nothing was trained: a new run may start over in it
  if not config.resume:
    raise ConfigError(f'{out} holds an unfinished run; pass --resume to continue it or '
                      '--overwrite to start over.')
  differences = config.differences(results.get('config', {}))
  saved_digests = results.get('data_digests', {})
  for name, value in data_files(config).items():
    if name in saved_digests and saved_digests[name] != file_digest(value):
      differences.append(f'{_as_given(name, value)} has changed since the run started')
  if differences:
    raise ConfigError(f'Cannot resume {out}: its settings differ from this command\'s: '
                      + '; '.join(differences)
                      + '. Resume with the original settings, pass --overwrite to start '
                      'over, or choose a new --output-root.')


def check_model(config: TrainConfig) -> None:
  """A local model directory exists and holds a usable config.json (hub names
  are checked when they are fetched)."""
  if Path(config.model).expanduser().exists() or looks_like_a_path(config.model):
    read_config(resolve_checkpoint(config.model))


def preflight(config: TrainConfig, *, finished_ok: bool = False) -> TrainConfig:
  """All checks that need no model weights or data: call before anything is
  written. ``finished_ok``: see :func:`check_output_dir`."""
  config = config.resolved(jax.device_count())
  check_paths(config)
  check_model(config)
  check_output_dir(config, finished_ok=finished_ok)
  return config


def _sync_processes(name: str) -> None:
  """A barrier across processes (nothing to wait for on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def output_dir(config: TrainConfig, is_main: bool) -> Iterator[tuple[Path, Callable[[], None]]]:
  """The run directory; with ``overwrite``, the old one is moved aside and
  restored if the new run fails before ``started()`` is called.

  Yields the directory and ``started``, which deletes the old run.
  """
  out = Path(config.output_dir)
  aside = out.with_name(f'.{out.name}.replaced')
  moved = False
  if config.overwrite and out.exists() and is_main:
    if aside.exists():
      shutil.rmtree(aside)
    os.replace(out, aside)
    moved = True
  _sync_processes('rose_jax: old run moved aside')
  if is_main:
    out.mkdir(parents=True, exist_ok=True)
  _sync_processes('rose_jax: output directory ready')
  has_started = False

  def started() -> None:
    nonlocal has_started
    if moved and not has_started:
      shutil.rmtree(aside, ignore_errors=True)
    has_started = True

  try:
    yield out, started
  except BaseException:
    if moved and not has_started:
      shutil.rmtree(out, ignore_errors=True)
      os.replace(aside, out)
      log.info('The new run failed before its first step; %s is as it was.', out)
    raise
