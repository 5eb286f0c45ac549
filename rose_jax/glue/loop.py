"""The fine-tuning loop: train on a GLUE task, evaluate each epoch on GLUE and
AdvGLUE dev sets, keep the best epoch by GLUE dev accuracy.

Everything a run writes lives in its output directory:

* ``results.json``: the configuration (written before training starts),
  per-epoch accuracies, the best epoch and ``finished``; rewritten
  atomically after each epoch;
* ``metrics.jsonl``: one JSON line per ``log_every`` steps and per epoch;
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
import optax
from flax import nnx

import rose_jax
from rose_jax import atomic, child_tuning, selection
from rose_jax.glue import batching, seeds
from rose_jax.glue import data as data_lib
from rose_jax.glue.checkpoints import Checkpoints
from rose_jax.glue.config import ConfigError, TrainConfig, flag
from rose_jax.glue.evaluation import Evaluator
from rose_jax.glue.metrics_log import MetricsLog, trim_lines
from rose_jax.models import load_pretrained, load_tokenizer, save_pretrained
from rose_jax.models.loading import looks_like_a_path, read_config, resolve_checkpoint
from rose_jax.training import fisher as fisher_lib
from rose_jax.training import step as step_lib
from rose_jax.training.methods import Method

log = logging.getLogger(__name__)

METRICS = ('loss', 'ce', 'kl', 'accuracy', 'kept_fraction')


class TrainingDiverged(ValueError):
  """A loss became NaN or infinite."""


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear decay to 0 after an optional linear warm-up, for every method."""
  warmup = int(config.warmup_ratio * total_steps)
  if not warmup:
    return optax.linear_schedule(config.learning_rate, 0.0, max(total_steps, 1))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
       optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1))],
      [warmup])


def build_optimizer(config: TrainConfig, method: Method, total_steps: int, *,
                    fisher_mask=None):
  """The method's optimizer, on one footing: Hugging Face's AdamW form
  (:func:`rose_jax.hf_adamw`) with the authors' decay rule, the same schedule
  and the same clipping, masked by ROSE or by CHILD-TUNING_D's fixed
  ``fisher_mask`` (None: a placeholder that a restored state replaces)."""
  schedule = learning_rate_schedule(config, total_steps)
  adam = dict(b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
              weight_decay_mask=selection.authors_decay_mask)
  if method.uses_rose:
    return rose_jax.rose(
        schedule, variant=method.rose_variant, upper=config.upper, lower=config.lower,
        gamma=config.gamma, granularity=config.granularity,
        warmup_steps=int(config.warmup_ratio * total_steps),
        selectable=selection.authors_selectable,
        # Clips the KL and CE gradients that ROSE ranks by the same factor.
        max_grad_norm=config.max_grad_norm or None, **adam)
  if method.fisher_mask:
    # Official order: clip the unmasked gradient, then mask, then AdamW.
    core = rose_jax.child_tuning_d(schedule, mask=fisher_mask, **adam)
  else:
    core = rose_jax.hf_adamw(schedule, **adam)
  if getattr(method.adversary, 'bregman_mu', 0):
    # SMART's momentum teacher: beta 0.99 for the first 10% of updates, then 0.999.
    switch = max(int(0.1 * total_steps), 1)
    beta = optax.join_schedules([optax.constant_schedule(0.99),
                                 optax.constant_schedule(0.999)], [switch])
    core = optax.chain(core, rose_jax.params_ema(beta))
  if config.max_grad_norm:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), core)
  return core


def fisher_pass(config: TrainConfig, data: Data, graphdef, params):
  """CHILD-TUNING_D's fixed mask from one shuffled pass over the training data
  (every process reads all of it, so all derive the same mask)."""
  included = child_tuning.included_tensors(params)
  batches = batching.train_batches(
      data.train, config.batch_size, seeds.stream_seed(config.seed, 'noise'), 0,
      buckets=config.buckets, group_by_length=config.group_by_length)
  bar = _progress(data.steps_per_epoch, 0, config.progress)
  bar.set_description('fisher')
  try:
    estimate = fisher_lib.fisher_information(
        graphdef, params, (b.arrays for b in batches), seeds.stream_key(config.seed, 'noise'),
        included=included, max_grad_norm=config.max_grad_norm or 1.0, progress=bar.update)
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


def check_output_dir(config: TrainConfig) -> None:
  """Raises ConfigError if ``output_dir`` holds something this run would clobber,
  or a run that ``resume`` cannot continue with this configuration."""
  out = Path(config.output_dir)
  if config.overwrite or not out.exists() or not any(out.iterdir()):
    return
  results = _read_results(out)
  if results is None:
    raise ConfigError(f'{out} holds files but no rose_jax run (no results.json); choose '
                      'another --output-root, or pass --overwrite to replace it.')
  if results.get('finished'):
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


def preflight(config: TrainConfig) -> TrainConfig:
  """All checks that need no model weights or data: call before anything is written."""
  config = config.resolved(jax.device_count())
  check_paths(config)
  check_model(config)
  check_output_dir(config)
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
  for name in METRICS:
    sums[name] = sums[name] + np.float64(metrics[name])
  sums['count'] = sums['count'] + 1


def _means(sums: dict[str, np.ndarray]) -> dict[str, float]:
  return {name: float(sums[name] / sums['count']) for name in METRICS}


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


def run(config: TrainConfig) -> dict[str, Any]:
  """Fine-tunes, evaluates and writes one run; returns its results."""
  config = preflight(config)
  method = config.build_method()
  task = data_lib.get_task(config.task)
  model = load_pretrained(config.model, num_labels=task.num_labels,
                          hidden_dropout=config.dropout, attention_dropout=config.dropout,
                          dtype=jnp.dtype(config.dtype),
                          seed=seeds.stream_seed(config.seed, 'head'),
                          ignore_mismatched_head=True)
  if config.max_length > model.config.max_sequence_length:
    raise ConfigError(f'--max-length {config.max_length} exceeds what {config.model}\'s '
                      f'position table holds ({model.config.max_sequence_length}).')
  tokenizer = load_tokenizer(config.model, model.config)
  data = Data(config, tokenizer)
  total_steps = data.steps_per_epoch * config.epochs
  tx = build_optimizer(config, method, total_steps)
  graphdef, params = step_lib.split_model(model)
  opt_state = tx.init(params)
  if config.parallel == 'shard_map':
    # Replicated over the mesh, as the step returns them; a checkpoint restores
    # to the target's placement.
    params, opt_state = step_lib.replicate_on_mesh((params, opt_state), step_lib.data_mesh())
  # One process writes the run's files; every process computes.
  is_main = jax.process_index() == 0
  results = {'config': dataclasses.asdict(config), 'epochs': [], 'finished': False,
             'data_digests': {k: file_digest(v) for k, v in data_files(config).items()}}

  with _output_dir(config, is_main) as (out, started):
    checkpoints = Checkpoints(out / 'checkpoints')
    position = {'step': np.zeros((), np.int64), 'epoch': np.zeros((), np.int64),
                'batch': np.zeros((), np.int64)}
    dropout_key = jax.random.key_data(seeds.stream_key(config.seed, 'dropout'))
    # Host arrays: a process-local device array cannot be saved by several processes.
    state = {'params': params, 'opt_state': opt_state, 'position': position,
             'dropout_key': np.asarray(dropout_key),
             'epoch_sums': _zero_sums(), 'window_sums': _zero_sums()}
    restored = checkpoints.restore_latest(state) if config.resume else None
    if restored is not None:
      checkpoints.discard_after(restored[0])
      state = restored[1]
      previous = _read_results(out) or {}
      results['epochs'] = previous.get('epochs', [])
    elif method.fisher_mask:
      # The mask lives in the optimizer state; a checkpoint at step 0 keeps a
      # resumed run from redoing the pass.
      tx = build_optimizer(config, method, total_steps,
                           fisher_mask=fisher_pass(config, data, graphdef, params))
      opt_state = tx.init(params)
      if config.parallel == 'shard_map':
        opt_state = step_lib.replicate_on_mesh(opt_state, step_lib.data_mesh())
      state['opt_state'] = opt_state
      checkpoints.save(0, state)
    completed, global_step = int(state['position']['epoch']), int(state['position']['step'])
    if is_main:
      _trim_to(out, results, completed, global_step)
      atomic.write_json(out / 'results.json', results)
    if restored is not None:
      log.info('Resuming at epoch %d, batch %d (step %d).', completed + 1,
               int(state['position']['batch']), global_step)
    try:
      results = _train(config, method, data, tx, graphdef, tokenizer, state, results,
                       checkpoints, out, is_main, started)
    finally:
      checkpoints.close()
  return results


def _train(config: TrainConfig, method: Method, data: Data, tx, graphdef, tokenizer,
           state: dict, results: dict, checkpoints: Checkpoints, out: Path, is_main: bool,
           started) -> dict:
  params, opt_state = state['params'], state['opt_state']
  epoch_sums, window_sums = state['epoch_sums'], state['window_sums']
  global_step = int(state['position']['step'])
  start_epoch, start_batch = int(state['position']['epoch']), int(state['position']['batch'])
  dropout_key = jax.random.wrap_key_data(np.asarray(state['dropout_key']))
  data_seed = seeds.stream_seed(config.seed, 'data')

  step = step_lib.make_train_step(graphdef, tx, method, parallel=config.parallel,
                                  cotangents=config.cotangents)
  evaluator = Evaluator(graphdef, config.eval_batch_size, sharded=config.parallel != 'none',
                        buckets=config.buckets)
  mesh = step_lib.data_mesh() if config.parallel == 'shard_map' else None
  place = {'none': lambda b: b, 'pmap': step_lib.split_for_pmap,
           'shard_map': lambda b: step_lib.shard_batch(b, mesh)}[config.parallel]
  if config.parallel == 'pmap':
    params, opt_state = step_lib.replicate(params), step_lib.replicate(opt_state)
  # One copy of a replicated tree: pmap's carry a leading device axis.
  single = step_lib.unreplicate if config.parallel == 'pmap' else (lambda t: t)
  pending: list = []
  has_started = False

  def fold_pending() -> None:
    for offset, metrics in enumerate(jax.device_get([single(m) for m in pending])):
      bad = [k for k in ('loss', 'ce', 'kl') if not np.isfinite(metrics[k])]
      if bad:
        at = global_step - len(pending) + offset + 1
        raise TrainingDiverged(
            f'Training diverged at step {at}: {", ".join(bad)} is {metrics[bad[0]]}. Lower '
            '--learning-rate or check the data; the checkpoints written before it remain '
            f'in {out / "checkpoints"}.')
      _add(epoch_sums, metrics)
      _add(window_sums, metrics)
    pending.clear()

  def save(epoch: int, batch: int) -> None:
    fold_pending()
    checkpoints.save(global_step, {
        'params': single(params), 'opt_state': single(opt_state),
        'position': {'step': np.asarray(global_step, np.int64),
                     'epoch': np.asarray(epoch, np.int64),
                     'batch': np.asarray(batch, np.int64)},
        'dropout_key': np.asarray(jax.random.key_data(dropout_key)),
        'epoch_sums': epoch_sums, 'window_sums': window_sums})

  metrics_log = MetricsLog(out, enabled=is_main, tensorboard=config.tensorboard,
                           resume_after=global_step if global_step else None)
  bar = _progress(data.steps_per_epoch * config.epochs, global_step, config.progress)
  try:
    for epoch in range(start_epoch, config.epochs):
      began = time.time()
      first = start_batch if epoch == start_epoch else 0
      batches = batching.train_batches(
          data.train, config.batch_size, data_seed, epoch, buckets=config.buckets,
          group_by_length=config.group_by_length, start=first,
          process_index=jax.process_index(), process_count=jax.process_count())
      timed_tokens = 0
      for index, batch in enumerate(batches, start=first):
        key = jax.random.fold_in(dropout_key, global_step)
        params, opt_state, metrics = step(params, opt_state, place(batch.arrays), key)
        global_step += 1
        timed_tokens += batch.real_tokens
        epoch_sums['real_tokens'] += batch.real_tokens
        epoch_sums['padded_tokens'] += batch.padded_tokens
        pending.append(metrics)
        if not has_started:  # the first step ran: the new run has started
          jax.block_until_ready(metrics)
          started()
          has_started = True
        bar.update(1)
        if global_step % config.log_every == 0:
          fold_pending()
          means = _means(window_sums)
          window_sums.update(_zero_sums())
          bar.set_postfix(loss=f'{means["loss"]:.4f}', kl=f'{means["kl"]:.4f}',
                          kept=f'{means["kept_fraction"]:.2f}')
          metrics_log.write({'step': global_step, 'epoch': epoch + 1, **means},
                            step=global_step)
        if config.save_every and global_step % config.save_every == 0 and \
            index + 1 < data.steps_per_epoch:
          save(epoch, index + 1)
      fold_pending()
      seconds = time.time() - began
      record = {'epoch': epoch + 1, 'step': global_step, 'seconds': round(seconds, 2),
                # Timed from this process's start of the epoch (or of the resume).
                'tokens_per_second': round(timed_tokens / seconds, 1),
                'padding_efficiency': float(epoch_sums['real_tokens']
                                            / epoch_sums['padded_tokens'])}
      record.update({f'train_{k}': v for k, v in _means(epoch_sums).items()})
      epoch_sums.update(_zero_sums())
      window_sums.update(_zero_sums())
      eval_params = evaluator.place_params(single(params))
      if is_main:
        (out / 'predictions').mkdir(exist_ok=True)
      for split, encoded in data.eval.items():
        predictions, accuracy = evaluator(eval_params, encoded)
        record[f'{split}_accuracy'] = accuracy
        if is_main:
          atomic.write_text(out / 'predictions' / f'epoch{epoch + 1}-{split}.jsonl', ''.join(
              json.dumps({'idx': i, 'prediction': int(p), 'label': int(y)}) + '\n'
              for i, (p, y) in enumerate(zip(predictions, encoded.labels, strict=True))))
      metrics_log.write({'type': 'epoch', **record}, step=global_step, prefix='epoch')
      results['epochs'].append(record)
      results.update(_best(results['epochs']))
      if is_main and results['best_epoch'] == epoch + 1:
        # The best epoch's model, loadable by load_pretrained and transformers.
        model = nnx.merge(graphdef, jax.device_get(single(params)))
        atomic.write_directory(out / 'best_model', lambda d, m=model: (
            save_pretrained(m, d), tokenizer.save_pretrained(str(d))))
      # Results first, then the checkpoint: a resume redoes an epoch whose
      # checkpoint is missing and trims the results to the checkpoint.
      if is_main:
        atomic.write_json(out / 'results.json', results)
      save(epoch + 1, 0)
    results['finished'] = True
    if is_main:
      atomic.write_json(out / 'results.json', results)
  finally:
    bar.close()
    metrics_log.close()
  results['final_params'] = single(params)
  return results


def _best(epochs: list[dict]) -> dict:
  """The epoch with the best GLUE dev accuracy (the first of ties)."""
  best = max(epochs, key=lambda r: (r['glue_dev_accuracy'], -r['epoch']))
  summary = {'best_epoch': best['epoch'], 'glue_dev_accuracy': best['glue_dev_accuracy']}
  if 'adv_dev_accuracy' in best:
    summary['adv_dev_accuracy'] = best['adv_dev_accuracy']
  return summary


__all__ = ['TrainConfig', 'build_optimizer', 'preflight', 'run']
