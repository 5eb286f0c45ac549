"""A run directory's contract: what it holds, the checks made before anything
is written, and how a new run takes over, or a resumed run trims, what is
there.

Everything a run writes lives in its output directory:

* ``results.json``: the configuration (written before training starts),
  per-epoch accuracies, the best epoch and ``finished``; rewritten
  atomically after each epoch;
* ``metrics.jsonl``: one JSON line per ``log_every`` steps and per epoch;
* ``masks.bin`` and ``masks.json``: ROSE's kept mask per ranked tensor at
  every step (:class:`rose_jax.glue.metrics_log.MaskLog`);
* ``predictions/epoch{E}-{split}.jsonl``: each dev example's prediction;
* ``checkpoints/``: orbax checkpoints every ``save_every`` steps and at each
  epoch's end (:mod:`rose_jax.glue.checkpoints`); ``resume=True`` continues
  from the newest one to bit-identical final parameters, after trimming
  ``metrics.jsonl``, the predictions and the results to it;
* ``best_model/``: the best epoch's model and tokenizer in the Hugging Face
  layout, replaced as a whole directory;
* ``tensorboard/``: with ``tensorboard=True``, the metrics as events.

Nothing is written or deleted before the configuration, the paths, the
model, the tokenizer and the data have all been checked (:func:`preflight`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jax

from rose_jax.glue.config import ConfigError, TrainConfig, flag
from rose_jax.glue.metrics_log import trim_lines
from rose_jax.models.loading import looks_like_a_path, read_config, resolve_checkpoint

log = logging.getLogger(__name__)


def data_files(config: TrainConfig) -> dict[str, str]:
  """The run's local data files by option name."""
  return {name: getattr(config, name) for name in ('train_file', 'dev_file', 'adv_file')
          if getattr(config, name) and not (name == 'adv_file' and config.no_adv)}


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
      raise ConfigError(f'{flag(name)} {value} does not exist.')
    if not path.is_file():
      raise ConfigError(f'{flag(name)} {value} is a directory; give a file.')
    if not os.access(path, os.R_OK):
      raise ConfigError(f'{flag(name)} {value} is not readable.')
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


def read_results(out: Path) -> dict | None:
  """The run's ``results.json``, or None where there is none."""
  try:
    return json.loads((out / 'results.json').read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as error:
    raise ConfigError(f'{out / "results.json"} cannot be read ({error}); pass --overwrite to '
                      'start the run over, or choose another --output-root.') from None


def _has_checkpoint(out: Path) -> bool:
  directory = out / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check_output_dir(config: TrainConfig, *, finished_ok: bool = False) -> None:
  """Raises ConfigError if ``output_dir`` holds something this run would clobber,
  or a run that ``resume`` cannot continue with this configuration; with
  ``finished_ok``, a finished run counts as one to continue (a sweep's member
  that finished before the others)."""
  out = Path(config.output_dir)
  if config.overwrite or not out.exists() or not any(out.iterdir()):
    return
  results = read_results(out)
  if results is None:
    raise ConfigError(f'{out} holds files but no rose_jax run (no results.json); choose '
                      'another --output-root, or pass --overwrite to replace it.')
  if results.get('finished') and not finished_ok:
    raise ConfigError(f'{out} already holds a finished run; choose another --output-root or '
                      'pass --overwrite to replace it.')
  if not _has_checkpoint(out):
    return  # nothing was trained: a new run may start over in it
  if not config.resume:
    raise ConfigError(f'{out} holds an unfinished run; pass --resume to continue it or '
                      '--overwrite to start over.')
  differences = config.differences(results.get('config', {}))
  saved_digests = results.get('data_digests', {})
  for name, value in data_files(config).items():
    if name in saved_digests and saved_digests[name] != file_digest(value):
      differences.append(f'{flag(name)}: {value} has changed since the run '
                         'started')
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


def best_epoch(epochs: list[dict]) -> dict:
  """The epoch with the best GLUE dev accuracy (the first of ties), as the
  results' ``best_epoch`` and accuracies."""
  best = max(epochs, key=lambda r: (r['glue_dev_accuracy'], -r['epoch']))
  summary = {'best_epoch': best['epoch'], 'glue_dev_accuracy': best['glue_dev_accuracy']}
  if 'adv_dev_accuracy' in best:
    summary['adv_dev_accuracy'] = best['adv_dev_accuracy']
  return summary


def trim_to(out: Path, results: dict, completed_epochs: int, last_step: int) -> None:
  """Drops what a killed run wrote after its checkpoint."""
  dropped = trim_lines(out / 'metrics.jsonl', last_step=last_step,
                       last_epoch=completed_epochs)
  predictions = out / 'predictions'
  if predictions.is_dir():
    for file in predictions.glob('epoch*-*.jsonl'):
      if int(file.name[5:].split('-')[0]) > completed_epochs:
        file.unlink()
  results['epochs'] = results['epochs'][:completed_epochs]
  for key in ('best_epoch', 'glue_dev_accuracy', 'adv_dev_accuracy'):
    results.pop(key, None)
  if results['epochs']:
    results.update(best_epoch(results['epochs']))
  if dropped:
    log.info('Dropped %d metric lines written after the checkpoint.', dropped)
