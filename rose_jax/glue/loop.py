"""The fine-tuning loop: train on a GLUE task, evaluate each epoch on GLUE and
AdvGLUE dev sets, keep the best epoch by GLUE dev accuracy.

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
model, the tokenizer and the data have all been checked.

:func:`run` trains one run; :func:`train_group` trains several that differ
only in what a sweep varies as one vmapped program (:mod:`rose_jax.glue.sweep`),
each writing the directory it would write alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src import atomic, seeds
from rose_jax.baselines import child_tuning
from rose_jax.baselines import fisher as fisher_lib
from rose_jax.glue import batching, packing
from rose_jax.glue import data as data_lib
from rose_jax.glue.checkpoints import Checkpoints, restore_together
from rose_jax.glue.config import ConfigError, TrainConfig, flag
from rose_jax.glue.evaluation import Evaluator
from rose_jax.glue.metrics_log import MaskLog, MetricsLog, trim_lines
from rose_jax.glue.optimizers import build_optimizer, sweep_optimizer
from rose_jax.models import (
  ModuleApply,
  as_apply_fn,
  load_pretrained,
  load_tokenizer,
  save_pretrained,
)
from rose_jax.models.loading import looks_like_a_path, read_config, resolve_checkpoint
from rose_jax.training import step as step_lib
from rose_jax.training import sweep as sweep_lib
from rose_jax.training.methods import Method

log = logging.getLogger(__name__)

# Every metric a step may log (step_lib.metric_names says which a method's does).
METRICS = ('loss', 'ce', 'kl', 'accuracy', 'kept_fraction', 'disagreement')


class TrainingDiverged(ValueError):
  """A loss became NaN or infinite."""


def fisher_pass(config: TrainConfig, data: Data, apply_fn: ModuleApply, params):
  """CHILD-TUNING_D's fixed mask from one shuffled pass over the training data
  (every process reads all of it, so all derive the same mask)."""
  included = child_tuning.included_tensors(params)
  batches = batching.train_batches(
      data.train, config.batch_size, seeds.stream_seed(config.seed, 'noise'), 0,
      buckets=config.buckets, group_by_length=config.group_by_length,
      layout=batch_layout(config))
  bar = _progress(data.steps_per_epoch, 0, config.progress)
  bar.set_description('fisher')
  try:
    estimate = fisher_lib.fisher_information(
        apply_fn, params, (b.arrays for b in batches), seeds.stream_key(config.seed, 'noise'),
        included=included, max_grad_norm=config.max_grad_norm, progress=bar.update)
  finally:
    bar.close()
  return child_tuning.fisher_mask(estimate, reserve_p=config.reserve_p, included=included)


# ---------------------------------------------------------------------------
# Checks before anything is written.


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


def _read_results(out: Path) -> dict | None:
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
  results = _read_results(out)
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


# ---------------------------------------------------------------------------
# Data.


class Data:
  """Tokenised train, GLUE dev and AdvGLUE dev arrays for a run."""

  def __init__(self, config: TrainConfig, tokenizer):
    task = data_lib.get_task(config.task)
    if config.train_file:
      train = data_lib.load_local(task, config.train_file)
    else:
      train = data_lib.load_hub(task, 'train')
    if config.dev_file:
      dev = data_lib.load_local(task, config.dev_file)
    else:
      dev = data_lib.load_hub(task, task.hub_validation_split)
    adv = None
    if not config.no_adv:
      adv = (data_lib.load_adv_glue_file(task, config.adv_file) if config.adv_file
             else data_lib.load_hub(task, 'validation', adversarial=True))
    train = train.take(config.max_train_samples)
    if len(train) < config.batch_size:
      raise data_lib.DataError(f'{len(train)} training examples make no batch of '
                               f'{config.batch_size}; lower --batch-size.')
    self.train = self._tokenize(tokenizer, train, 'train', config.max_length)
    self.eval = {'glue_dev': self._tokenize(tokenizer, dev.take(config.max_eval_samples),
                                            'glue_dev', config.max_length)}
    if adv is not None:
      self.eval['adv_dev'] = self._tokenize(tokenizer, adv.take(config.max_eval_samples),
                                            'adv_dev', config.max_length)
    self.steps_per_epoch = len(train) // config.batch_size

  @staticmethod
  def _tokenize(tokenizer, split: data_lib.Split, name: str,
                max_length: int) -> batching.Encoded:
    encoded = batching.tokenize(tokenizer, split, max_length)
    if encoded.truncated:
      log.warning('%d of %d %s examples (%.1f%%) are longer than --max-length %d and were '
                  'truncated.', encoded.truncated, len(encoded), name,
                  100 * encoded.truncated / len(encoded), max_length)
    return encoded


# ---------------------------------------------------------------------------
# The output directory.


def _sync_processes(name: str) -> None:
  """A barrier across processes (nothing to wait for on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _output_dir(config: TrainConfig, is_main: bool) -> Iterator[tuple[Path, Callable[[], None]]]:
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
  state = {'started': False}

  def started() -> None:
    if moved and not state['started']:
      shutil.rmtree(aside, ignore_errors=True)
    state['started'] = True

  try:
    yield out, started
  except BaseException:
    if moved and not state['started']:
      shutil.rmtree(out, ignore_errors=True)
      os.replace(aside, out)
      log.info('The new run failed before its first step; %s is as it was.', out)
    raise


# ---------------------------------------------------------------------------
# Running metric means that survive a checkpoint.


def _zero_sums() -> dict[str, np.ndarray]:
  return {name: np.zeros((), np.float64)
          for name in (*METRICS, 'count', 'real_tokens', 'padded_tokens')}


def _add(sums: dict[str, np.ndarray], metrics: dict) -> None:
  for name in metrics:
    sums[name] = sums[name] + np.float64(metrics[name])
  sums['count'] = sums['count'] + 1


def _means(sums: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, float]:
  return {name: float(sums[name] / sums['count']) for name in names}


# ---------------------------------------------------------------------------
# The run.


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  # The default format shows the elapsed time and the estimated time left.
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              desc='train', unit='step')


def _trim_to(out: Path, results: dict, completed_epochs: int, last_step: int) -> None:
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
    results.update(_best(results['epochs']))
  if dropped:
    log.info('Dropped %d metric lines written after the checkpoint.', dropped)


class Shared:
  """What the runs of one group share: the method, the tokenizer, the data,
  the model's graph and the schedule's length. Checks ``--max-length``
  against the model's position table.

  Args:
    config: any run of the group (they differ only in what a sweep varies).
  """

  def __init__(self, config: TrainConfig):
    self.method = config.build_method()
    model = _load_model(config)
    if config.max_length > model.config.max_sequence_length:
      raise ConfigError(f'--max-length {config.max_length} exceeds what {config.model}\'s '
                        f'position table holds ({model.config.max_sequence_length}).')
    self.tokenizer = load_tokenizer(config.model, model.config)
    self.data = Data(config, self.tokenizer)
    self.total_steps = self.data.steps_per_epoch * config.epochs
    self.apply_fn, params = as_apply_fn(model)
    self.param_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    self._loaded = {config.seed: params}

  def params(self, config: TrainConfig):
    """The pre-trained params with ``config``'s newly initialised head."""
    if config.seed in self._loaded:
      return self._loaded.pop(config.seed)
    return as_apply_fn(_load_model(config))[1]


def _load_model(config: TrainConfig):
  task = data_lib.get_task(config.task)
  return load_pretrained(config.model, num_labels=task.num_labels,
                         hidden_dropout=config.dropout, attention_dropout=config.dropout,
                         dtype=jnp.dtype(config.dtype),
                         seed=seeds.stream_seed(config.seed, 'head'),
                         ignore_mismatched_head=True)


def batch_layout(config: TrainConfig) -> batching.Layout | None:
  """Packed rows over the step's devices (``--packing``), or None for buckets."""
  if not config.packing:
    return None
  devices = 1 if config.parallel == 'none' else jax.device_count()
  return packing.layout(packing.Packing(config.max_length, devices))


def run(config: TrainConfig) -> dict[str, Any]:
  """Fine-tunes, evaluates and writes one run; returns its results."""
  config = preflight(config)
  return train_group([config], Shared(config))[0]


@jax.jit
def _stack_mask(mask) -> jax.Array:
  return jnp.stack([jnp.asarray(leaf, jnp.float32) for leaf in jax.tree.leaves(mask)], -1)


def _mask_row(opt_state) -> jax.Array | None:
  """ROSE's mask in the state, one value per ranked tensor in the order of
  :func:`mask_names` (a leading axis stays), or None without ROSE."""
  rose_state = step_lib.find_rose_state(opt_state)
  return None if rose_state is None else _stack_mask(rose_state.mask)


def mask_names(opt_state) -> list[str]:
  """The names of the ranked tensors, in the order of a mask row."""
  paths = jax.tree.flatten_with_path(step_lib.find_rose_state(opt_state).mask)[0]
  return [jax.tree_util.keystr(path, simple=True, separator='/') for path, _ in paths]


class _Alone:
  """One run's params and optimizer state, and its step, data parallel as
  ``config.parallel`` says."""

  def __init__(self, config: TrainConfig, apply_fn: ModuleApply, tx, method: Method, params,
               opt_state):
    self._step = step_lib.make_train_step(apply_fn, tx, method, parallel=config.parallel,
                                          cotangents=config.cotangents)
    mesh = step_lib.data_mesh() if config.parallel == 'shard_map' else None
    self._place = {'none': lambda b: b, 'pmap': step_lib.split_for_pmap,
                   'shard_map': lambda b: step_lib.shard_batch(b, mesh)}[config.parallel]
    if config.parallel == 'pmap':
      params, opt_state = step_lib.replicate(params), step_lib.replicate(opt_state)
    # One copy of a replicated tree: pmap's carry a leading device axis.
    self._single = step_lib.unreplicate if config.parallel == 'pmap' else (lambda t: t)
    self.params, self.opt_state = params, opt_state
    self._pmap = config.parallel == 'pmap'

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
    """The params and optimizer state as a run's checkpoint holds them."""
    return self._single(self.params), self._single(self.opt_state)


class _Stacked:
  """A sweep's runs stacked along a leading member axis, one vmapped step for
  all; each member's batch is padded to the longest of the step's batches."""

  def __init__(self, config: TrainConfig, apply_fn: ModuleApply, tx, method: Method, params: list,
               opt_states: list, pad_id: int):
    self._step = sweep_lib.make_sweep_step(apply_fn, tx, method, cotangents=config.cotangents)
    self.params, self.opt_state = sweep_lib.stack(params), sweep_lib.stack(opt_states)
    self._pad_id = pad_id

  def step(self, batches: list[batching.Batch], keys: list[jax.Array]) -> dict:
    if 'segment_ids' in batches[0].arrays:  # packed: the members' row counts may differ
      rows = max(b.arrays['segment_ids'].shape[0] for b in batches)
      padded = [packing.pad_rows(b.arrays, rows, self._pad_id) for b in batches]
    else:
      length = max(b.arrays['input_ids'].shape[1] for b in batches)
      padded = [batching.pad_to(b.arrays, length, self._pad_id) for b in batches]
    arrays = {key: np.stack([p[key] for p in padded]) for key in padded[0]}
    self.params, self.opt_state, metrics = self._step(self.params, self.opt_state, arrays,
                                                      jnp.stack(keys))
    mask = _mask_row(self.opt_state)
    return metrics if mask is None else {**metrics, 'mask': mask}

  def split(self, metrics: dict) -> list[dict]:
    count = len(next(iter(metrics.values())))
    return [{name: value[i] for name, value in metrics.items()} for i in range(count)]

  def member(self, index: int) -> tuple[Any, Any]:
    """Member ``index``'s params and optimizer state as a plain run's
    checkpoint holds them (without the injected hyperparameters)."""
    return (sweep_lib.member(self.params, index),
            sweep_lib.member(self.opt_state, index).inner_state)


@dataclasses.dataclass
class _Member:
  """One run directory while it trains, alone or in a sweep."""
  config: TrainConfig
  out: Path
  results: dict
  checkpoints: Checkpoints
  started: Callable[[], None]
  state: dict
  alone: bool
  is_main: bool
  names: tuple[str, ...]
  metrics_log: MetricsLog | None = None
  mask_log: MaskLog | None = None
  timed_tokens: int = 0

  @property
  def diverged(self) -> str | None:
    return self.results.get('diverged')

  def add(self, metrics: dict, step: int) -> None:
    """Adds one step's host metrics to the running sums; a non-finite loss
    raises TrainingDiverged (alone) or marks the member diverged (in a sweep,
    the others go on)."""
    if self.diverged:
      return
    mask = metrics.pop('mask', None)
    bad = [k for k in ('loss', 'ce', 'kl') if not np.isfinite(metrics[k])]
    if bad:
      message = (f'Training diverged at step {step}: {", ".join(bad)} is {metrics[bad[0]]}. '
                 'Lower --learning-rate or check the data; the checkpoints written before it '
                 f'remain in {self.out / "checkpoints"}.')
      if self.alone:
        raise TrainingDiverged(message)
      log.warning('%s: %s', self.out, message)
      self.results['diverged'] = message
      if self.is_main:
        atomic.write_json(self.out / 'results.json', self.results)
      return
    for sums in (self.state['epoch_sums'], self.state['window_sums']):
      _add(sums, metrics)
    if mask is not None and self.mask_log is not None:
      self.mask_log.write(np.asarray([step]), np.asarray(mask)[None])

  def count_tokens(self, batch: batching.Batch) -> None:
    self.timed_tokens += batch.real_tokens
    self.state['epoch_sums']['real_tokens'] += batch.real_tokens
    self.state['epoch_sums']['padded_tokens'] += batch.padded_tokens

  def log_window(self, step: int, epoch: int) -> dict[str, float] | None:
    if self.diverged:
      return None
    means = _means(self.state['window_sums'], self.names)
    self.state['window_sums'].update(_zero_sums())
    self.metrics_log.write({'step': step, 'epoch': epoch + 1, **means}, step=step)
    return means

  def save(self, params, opt_state, step: int, epoch: int, batch: int) -> None:
    position = {'step': np.asarray(step, np.int64), 'epoch': np.asarray(epoch, np.int64),
                'batch': np.asarray(batch, np.int64)}
    self.state.update(params=params, opt_state=opt_state, position=position)
    self.checkpoints.save(step, self.state)

  def end_epoch(self, epoch: int, step: int, seconds: float, params, evaluator: Evaluator,
                data: Data, apply_fn: ModuleApply, tokenizer) -> None:
    """Evaluates the epoch's params and writes the epoch's files (not the checkpoint)."""
    sums = self.state['epoch_sums']
    record = {'epoch': epoch + 1, 'step': step, 'seconds': round(seconds, 2),
              # Timed from this process's start of the epoch (or of the resume).
              'tokens_per_second': round(self.timed_tokens / seconds, 1),
              'padding_efficiency': float(sums['real_tokens'] / sums['padded_tokens'])}
    self.timed_tokens = 0
    diverged = self.diverged
    if not diverged:
      record.update({f'train_{k}': v for k, v in _means(sums, self.names).items()})
    sums.update(_zero_sums())
    self.state['window_sums'].update(_zero_sums())
    if diverged:
      return
    out = self.out
    eval_params = evaluator.place_params(params)
    if self.is_main:
      (out / 'predictions').mkdir(exist_ok=True)
    for split, encoded in data.eval.items():
      predictions, accuracy = evaluator(eval_params, encoded)
      record[f'{split}_accuracy'] = accuracy
      if self.is_main:
        atomic.write_text(out / 'predictions' / f'epoch{epoch + 1}-{split}.jsonl', ''.join(
            json.dumps({'idx': i, 'prediction': int(p), 'label': int(y)}) + '\n'
            for i, (p, y) in enumerate(zip(predictions, encoded.labels, strict=True))))
    self.metrics_log.write({'type': 'epoch', **record}, step=step, prefix='epoch')
    self.results['epochs'].append(record)
    self.results.update(_best(self.results['epochs']))
    if self.is_main and self.results['best_epoch'] == epoch + 1:
      # The best epoch's model, loadable by load_pretrained and transformers.
      model = apply_fn.merge(jax.device_get(params))
      atomic.write_directory(out / 'best_model', lambda d, m=model: (
          save_pretrained(m, d), tokenizer.save_pretrained(str(d))))
    # Results first, then the checkpoint: a resume redoes an epoch whose
    # checkpoint is missing and trims the results to the checkpoint.
    if self.is_main:
      atomic.write_json(out / 'results.json', self.results)

  def finish(self) -> None:
    if not self.diverged:
      self.results['finished'] = True
    if self.is_main:
      atomic.write_json(self.out / 'results.json', self.results)


def train_group(configs: list[TrainConfig], shared: Shared,
                swept: tuple[str, ...] = ()) -> list[dict[str, Any]]:
  """Trains ``configs`` together and writes each one's run directory.

  One config trains alone, data parallel as it says. Several train as one
  vmapped program (:func:`rose_jax.training.sweep.make_sweep_step`): they
  must differ only in the seed and the optimizer settings ``swept`` (each
  one of :data:`rose_jax.glue.optimizers.SWEPT_NUMBERS`), which enter as
  traced hyperparameters. Each run's directory, checkpoints included, is
  what the run alone would write. Call :func:`preflight` on each config
  first.

  Returns:
    Each run's results, with ``final_params``.
  """
  method, data, apply_fn = shared.method, shared.data, shared.apply_fn
  first, alone = configs[0], len(configs) == 1 and not swept
  numbers = tuple(name for name in swept if name != 'seed')

  def optimizer(fisher_mask=None):
    if alone:
      return build_optimizer(first, method, shared.total_steps, fisher_mask=fisher_mask)
    return sweep_optimizer(first, method, shared.total_steps, numbers, fisher_mask=fisher_mask)

  def initial_state(config: TrainConfig, params, fisher_mask=None):
    """The optimizer state to train with (a sweep member's carries its settings)."""
    state = optimizer(fisher_mask).init(params)
    if alone:
      if config.parallel == 'shard_map':
        # Replicated over the mesh, as the step returns them; a checkpoint
        # restores to the target's placement.
        state = step_lib.replicate_on_mesh(state, step_lib.data_mesh())
      return state
    return sweep_lib.with_hyperparams(state, **{n: getattr(config, n) for n in numbers})

  plain = (lambda state: state) if alone else (lambda state: state.inner_state)
  tx = optimizer()
  # One process writes the run's files; every process computes.
  is_main = jax.process_index() == 0
  with contextlib.ExitStack() as stack:
    members = []
    for config in configs:
      out, started = stack.enter_context(_output_dir(config, is_main))
      checkpoints = Checkpoints(out / 'checkpoints')
      stack.callback(checkpoints.close)
      params = shared.params(config)
      if alone and config.parallel == 'shard_map':
        params = step_lib.replicate_on_mesh(params, step_lib.data_mesh())
      results = {'config': dataclasses.asdict(config), 'epochs': [], 'finished': False,
                 'data_digests': {k: file_digest(v) for k, v in data_files(config).items()}}
      # Host arrays: a process-local device array cannot be saved by several processes.
      state = {'params': params, 'opt_state': plain(initial_state(config, params)),
               'position': {'step': np.zeros((), np.int64), 'epoch': np.zeros((), np.int64),
                            'batch': np.zeros((), np.int64)},
               'dropout_key': np.asarray(jax.random.key_data(
                   seeds.stream_key(config.seed, 'dropout'))),
               'epoch_sums': _zero_sums(), 'window_sums': _zero_sums()}
      members.append(_Member(config, out, results, checkpoints, started, state, alone=alone,
                             is_main=is_main, names=step_lib.metric_names(method)))
    restored = restore_together([(m.checkpoints, m.state) for m in members]) \
        if first.resume else None
    if restored is not None:
      for member, state in zip(members, restored[1], strict=True):
        member.state = state
        previous = _read_results(member.out) or {}
        member.results['epochs'] = previous.get('epochs', [])
        if 'diverged' in previous:
          member.results['diverged'] = previous['diverged']
    elif method.fisher_mask:
      # The mask lives in the optimizer state; a checkpoint at step 0 keeps a
      # resumed run from redoing the pass.
      for member in members:
        mask = fisher_pass(member.config, data, apply_fn, member.state['params'])
        member.state['opt_state'] = plain(initial_state(member.config, member.state['params'],
                                                        mask))
        member.checkpoints.save(0, member.state)
    position = members[0].state['position']
    completed, global_step = int(position['epoch']), int(position['step'])
    for member in members:
      if is_main:
        _trim_to(member.out, member.results, completed, global_step)
        atomic.write_json(member.out / 'results.json', member.results)
    if restored is not None:
      log.info('Resuming at epoch %d, batch %d (step %d).', completed + 1,
               int(position['batch']), global_step)
    if alone:
      trainer = _Alone(first, apply_fn, tx, method, members[0].state['params'],
                       members[0].state['opt_state'])
    else:
      trainer = _Stacked(first, apply_fn, tx, method, [m.state['params'] for m in members], [
          initial_state(m.config, m.state['params'])._replace(inner_state=m.state['opt_state'])
          for m in members], data.train.pad_id)
    _train(members, trainer, shared)
  return [{**m.results, 'final_params': trainer.member(i)[0]} for i, m in enumerate(members)]


def _train(members: list[_Member], trainer, shared: Shared) -> None:
  config, data = members[0].config, shared.data
  position = members[0].state['position']
  global_step = int(position['step'])
  start_epoch, start_batch = int(position['epoch']), int(position['batch'])
  dropout_keys = [jax.random.wrap_key_data(np.asarray(m.state['dropout_key'])) for m in members]
  evaluator = Evaluator(shared.apply_fn, config.eval_batch_size,
                        sharded=config.parallel != 'none', buckets=config.buckets,
                        row_length=config.max_length if config.packing else None)
  pending: list = []
  has_started = False

  def fold_pending() -> None:
    for offset, metrics in enumerate(jax.device_get(pending)):
      at = global_step - len(pending) + offset + 1
      for member, own in zip(members, trainer.split(metrics), strict=True):
        member.add(own, at)
    pending.clear()

  def save(epoch: int, batch: int) -> None:
    fold_pending()
    for index, member in enumerate(members):
      member.save(*trainer.member(index), global_step, epoch, batch)

  records_masks = config.record_masks and step_lib.find_rose_state(
      members[0].state['opt_state']) is not None
  for member in members:
    member.metrics_log = MetricsLog(member.out, enabled=member.is_main,
                                    tensorboard=config.tensorboard,
                                    resume_after=global_step if global_step else None)
    if records_masks:
      member.mask_log = MaskLog(member.out, mask_names(member.state['opt_state']),
                                enabled=member.is_main, start_step=global_step)
  bar = _progress(data.steps_per_epoch * config.epochs, global_step, config.progress)
  try:
    for epoch in range(start_epoch, config.epochs):
      began = time.time()
      first = start_batch if epoch == start_epoch else 0
      streams = [batching.train_batches(
          data.train, config.batch_size, seeds.stream_seed(member.config.seed, 'data'), epoch,
          buckets=config.buckets, group_by_length=config.group_by_length, start=first,
          process_index=jax.process_index(), process_count=jax.process_count(),
          layout=batch_layout(config))
          for member in members]
      for index, batches in enumerate(zip(*streams, strict=True), start=first):
        keys = [jax.random.fold_in(key, global_step) for key in dropout_keys]
        pending.append(trainer.step(list(batches), keys))
        global_step += 1
        for member, batch in zip(members, batches, strict=True):
          member.count_tokens(batch)
        if not has_started:  # the first step ran: the new runs have started
          jax.block_until_ready(pending[-1])
          for member in members:
            member.started()
          has_started = True
        bar.update(1)
        if global_step % config.log_every == 0:
          fold_pending()
          means = [member.log_window(global_step, epoch) for member in members]
          if len(members) == 1 and means[0]:
            bar.set_postfix(loss=f'{means[0]["loss"]:.4f}', kl=f'{means[0]["kl"]:.4f}',
                            kept=f'{means[0]["kept_fraction"]:.2f}')
        if config.save_every and global_step % config.save_every == 0 and \
            index + 1 < data.steps_per_epoch:
          save(epoch, index + 1)
      fold_pending()
      seconds = time.time() - began
      for index, member in enumerate(members):
        member.end_epoch(epoch, global_step, seconds, trainer.member(index)[0], evaluator, data,
                         shared.apply_fn, shared.tokenizer)
      save(epoch + 1, 0)
    for member in members:
      member.finish()
  finally:
    bar.close()
    for member in members:
      for record in (member.metrics_log, member.mask_log):
        if record is not None:
          record.close()


def _best(epochs: list[dict]) -> dict:
  """The epoch with the best GLUE dev accuracy (the first of ties)."""
  best = max(epochs, key=lambda r: (r['glue_dev_accuracy'], -r['epoch']))
  summary = {'best_epoch': best['epoch'], 'glue_dev_accuracy': best['glue_dev_accuracy']}
  if 'adv_dev_accuracy' in best:
    summary['adv_dev_accuracy'] = best['adv_dev_accuracy']
  return summary


__all__ = ['TrainConfig', 'build_optimizer', 'preflight', 'run']
