"""The fine-tuning loop: train on a GLUE task, evaluate each epoch on GLUE and
AdvGLUE dev sets, keep the best epoch by GLUE dev accuracy.

Everything a run writes lives in its output directory:

* ``metrics.jsonl``: one JSON line per ``log_every`` steps and per epoch;
* ``predictions/epoch{E}-{split}.jsonl``: each dev example's prediction;
* ``checkpoints/``: orbax checkpoints after each epoch (params, optimizer
  state, step), written atomically by orbax; ``resume=True`` continues from
  the last one and reaches the same final parameters as an uninterrupted run;
* ``results.json``: per-epoch accuracies, the best epoch, ``finished``;
  rewritten atomically after each epoch;
* ``best_model/``: the best epoch's model and tokenizer in the Hugging Face
  layout (``config.json``, ``model.safetensors``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rose_jax
from rose_jax import selection
from rose_jax.models import load_pretrained, load_tokenizer, save_pretrained
from rose_jax.models.loading import write_atomically
from rose_jax.training import data as data_lib
from rose_jax.training import step as step_lib
from rose_jax.training.methods import METHOD_NAMES, Method, get_method
from rose_jax.training.presets import preset_values

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
  """One fine-tuning run. Defaults follow the paper (section 3.3)."""
  task: str = 'sst2'
  method: str = 'rose-ensemble'
  model: str = 'roberta-base'
  output_dir: str = 'runs/sst2-rose-ensemble-seed1'
  seed: int = 1
  # Data: None reads the dataset hub.
  train_file: str | None = None
  dev_file: str | None = None
  adv_file: str | None = None
  no_adv: bool = False
  max_train_samples: int | None = None
  max_eval_samples: int | None = None
  max_length: int = 128
  # Optimisation.
  preset: str | None = 'paper-base'
  learning_rate: float | None = None
  upper: float | None = None
  lower: float = 0.0
  gamma: float = 0.5
  granularity: str = 'tensor'
  epochs: int = 10
  batch_size: int | None = None  # 32, or 16 for RTE
  warmup_ratio: float = 0.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  max_grad_norm: float | None = 1.0
  dropout: float = 0.1
  rdrop_alpha: float = 1.0
  dtype: str = 'float32'
  parallel: str | None = None  # none | shard_map | pmap; default by device count
  cotangents: str = 'sequential'  # or 'vmap': how ROSE's two gradients are taken
  log_every: int = 50
  eval_batch_size: int = 64
  progress: bool = True
  resume: bool = False
  overwrite: bool = False

  def resolved(self) -> TrainConfig:
    """Checks every field and fills in the defaults that depend on others."""
    task = data_lib.get_task(self.task)
    method = get_method(self.method, rdrop_alpha=self.rdrop_alpha)
    lr, upper = preset_values(self.preset, method.rose_variant, task.name)
    batch = self.batch_size or (16 if task.name == 'rte' else 32)
    parallel = self.parallel or ('shard_map' if jax.device_count() > 1 else 'none')
    out = dataclasses.replace(
        self, task=task.name, learning_rate=self.learning_rate or lr,
        upper=self.upper if self.upper is not None else upper, batch_size=batch,
        parallel=parallel)
    if out.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16, got {out.dtype!r}.')
    if out.epochs < 1 or batch < 1 or out.max_length < 2:
      raise ValueError('epochs, batch_size and max_length must be positive.')
    if not 0 <= out.warmup_ratio < 1:
      raise ValueError(f'warmup_ratio must be in [0, 1), got {out.warmup_ratio}.')
    if parallel not in ('none', 'shard_map', 'pmap'):
      raise ValueError(f'Unknown parallel={parallel!r}; choose none, shard_map or pmap.')
    devices = jax.local_device_count() if parallel != 'none' else 1
    if batch % devices:
      raise ValueError(f'batch_size {batch} does not divide over {devices} devices.')
    if method.uses_rose:  # builds the optimizer once to check its settings early
      rose_jax.rose(out.learning_rate, variant=method.rose_variant, upper=out.upper,
                    lower=out.lower, gamma=out.gamma, granularity=out.granularity)
    return out


def build_optimizer(config: TrainConfig, method: Method, total_steps: int):
  """AdamW for vanilla and R-Drop, ROSE for the rest, both with the authors'
  decay rule, a linear schedule with optional warm-up, and clipping."""
  warmup = int(config.warmup_ratio * total_steps)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
       optax.linear_schedule(config.learning_rate, 0.0, max(total_steps - warmup, 1))],
      [warmup]) if warmup else optax.linear_schedule(config.learning_rate, 0.0,
                                                     max(total_steps, 1))
  if method.uses_rose:
    core = rose_jax.rose(
        schedule, variant=method.rose_variant, upper=config.upper, lower=config.lower,
        gamma=config.gamma, granularity=config.granularity, warmup_steps=warmup,
        b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
        selectable=selection.authors_selectable,
        weight_decay_mask=selection.authors_decay_mask)
  else:
    core = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=config.weight_decay, mask=selection.authors_decay_mask)
  if config.max_grad_norm:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), core)
  return core


def _write_json(path: Path, payload: dict) -> None:
  write_atomically(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def check_output_dir(config: TrainConfig) -> None:
  """Raises FileExistsError if ``output_dir`` holds a run this config would clobber."""
  out = Path(config.output_dir)
  if config.overwrite or not out.exists() or not any(out.iterdir()):
    return
  results = out / 'results.json'
  if results.exists() and json.loads(results.read_text()).get('finished'):
    raise FileExistsError(f'{out} already holds a finished run; choose another '
                          '--output-dir or pass --overwrite.')
  if not config.resume:
    raise FileExistsError(f'{out} holds an unfinished run; pass --resume to continue '
                          'it or --overwrite to start over.')


def preflight(config: TrainConfig) -> TrainConfig:
  """All checks that need no model or data: call before any training starts."""
  config = config.resolved()
  check_output_dir(config)
  return config


def _sync_processes(name: str) -> None:
  """A barrier across processes (nothing to wait for on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _prepare_output_dir(config: TrainConfig) -> Path:
  out = Path(config.output_dir)
  if config.overwrite and out.exists() and jax.process_index() == 0:
    import shutil
    shutil.rmtree(out)
  out.mkdir(parents=True, exist_ok=True)
  return out


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
    make = lambda s: data_lib.tokenize(tokenizer, s.take(config.max_eval_samples),
                                       config.max_length)
    self.train = data_lib.tokenize(tokenizer, train, config.max_length)
    self.eval = {'glue_dev': make(dev)}
    if adv is not None:
      self.eval['adv_dev'] = make(adv)
    self.steps_per_epoch = len(train) // config.batch_size


def evaluate(eval_step, params, arrays: dict[str, np.ndarray], batch_size: int):
  """Predictions and accuracy over one split."""
  predictions = []
  for batch, real in data_lib.eval_batches(arrays, batch_size):
    logits = eval_step(params, {k: v for k, v in batch.items() if k != 'labels'})
    predictions.append(np.asarray(jnp.argmax(logits, axis=-1))[:real])
  predictions = np.concatenate(predictions)
  return predictions, float(np.mean(predictions == arrays['labels']))


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              desc='train')


def run(config: TrainConfig) -> dict[str, Any]:
  """Fine-tunes, evaluates and writes one run; returns its results."""
  config = preflight(config)
  method = get_method(config.method, rdrop_alpha=config.rdrop_alpha)
  _sync_processes('rose_jax: output directory checked')
  out = _prepare_output_dir(config)
  _sync_processes('rose_jax: output directory ready')
  model = load_pretrained(config.model, num_labels=data_lib.get_task(config.task).num_labels,
                          hidden_dropout=config.dropout, attention_dropout=config.dropout,
                          dtype=jnp.dtype(config.dtype), seed=config.seed,
                          ignore_mismatched_head=True)
  tokenizer = load_tokenizer(config.model, model.config)
  data = Data(config, tokenizer)
  total_steps = data.steps_per_epoch * config.epochs
  tx = build_optimizer(config, method, total_steps)
  graphdef, params = step_lib.split_model(model)
  opt_state = tx.init(params)

  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(
      (out / 'checkpoints').absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  results = {'config': dataclasses.asdict(config), 'epochs': [], 'finished': False}
  start_epoch, global_step = 0, 0
  if config.resume and manager.latest_step() is not None:
    start_epoch = manager.latest_step()
    target = {'params': params, 'opt_state': opt_state, 'step': 0}
    restored = manager.restore(start_epoch, args=ocp.args.StandardRestore(target))
    params, opt_state = restored['params'], restored['opt_state']
    global_step = int(restored['step'])
    if (out / 'results.json').exists():
      previous = json.loads((out / 'results.json').read_text())
      results['epochs'] = previous['epochs'][:start_epoch]
    log.info('Resuming after epoch %d (step %d).', start_epoch, global_step)

  step = step_lib.make_train_step(graphdef, tx, method, parallel=config.parallel,
                                  cotangents=config.cotangents)
  eval_step = step_lib.make_eval_step(graphdef)
  mesh = step_lib.data_mesh() if config.parallel == 'shard_map' else None
  place = {'none': lambda b: b, 'pmap': step_lib.split_for_pmap,
           'shard_map': lambda b: step_lib.shard_batch(b, mesh)}[config.parallel]
  prepare = lambda b: place(process_share(b))
  if config.parallel == 'pmap':
    params, opt_state = step_lib.replicate(params), step_lib.replicate(opt_state)
  # One copy of a replicated tree: pmap's carry a leading device axis.
  single = step_lib.unreplicate if config.parallel == 'pmap' else (lambda t: t)
  mean_of = lambda fetched: {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  base_key = jax.random.key(config.seed)
  # One process writes the run's files; every process computes.
  is_main = jax.process_index() == 0
  metrics_file = (out / 'metrics.jsonl').open('a') if is_main else io.StringIO()
  bar = _progress(total_steps, global_step, config.progress)
  try:
    for epoch in range(start_epoch, config.epochs):
      running, started = [], time.time()
      for batch in data_lib.train_batches(data.train, config.batch_size, config.seed, epoch):
        key = jax.random.fold_in(base_key, global_step)
        params, opt_state, metrics = step(params, opt_state, prepare(batch), key)
        global_step += 1
        running.append(metrics)
        bar.update(1)
        if global_step % config.log_every == 0:
          averaged = mean_of(jax.device_get([single(m) for m in running[-config.log_every:]]))
          bar.set_postfix(loss=f'{averaged["loss"]:.4f}', kl=f'{averaged["kl"]:.4f}',
                          kept=f'{averaged["kept_fraction"]:.2f}')
          metrics_file.write(json.dumps({'step': global_step, 'epoch': epoch + 1,
                                         **averaged}) + '\n')
          metrics_file.flush()
      eval_params = single(params)
      record = {'epoch': epoch + 1, 'step': global_step,
                'seconds': round(time.time() - started, 2)}
      epoch_means = mean_of(jax.device_get([single(m) for m in running]))
      record.update({f'train_{k}': v for k, v in epoch_means.items()})
      (out / 'predictions').mkdir(exist_ok=True)
      for split, arrays in data.eval.items():
        predictions, accuracy = evaluate(eval_step, eval_params, arrays,
                                         config.eval_batch_size)
        record[f'{split}_accuracy'] = accuracy
        lines = ''.join(json.dumps({'idx': i, 'prediction': int(p), 'label': int(y)}) + '\n'
                        for i, (p, y) in enumerate(zip(predictions, arrays['labels'],
                                                       strict=True)))
        if is_main:
          write_atomically(out / 'predictions' / f'epoch{epoch + 1}-{split}.jsonl',
                           lines.encode())
      metrics_file.write(json.dumps({'type': 'epoch', **record}) + '\n')
      metrics_file.flush()
      results['epochs'].append(record)
      results.update(_best(results['epochs']))
      if is_main and results['best_epoch'] == epoch + 1:
        # The best epoch's model, loadable by load_pretrained and transformers.
        save_pretrained(nnx.merge(graphdef, eval_params), out / 'best_model')
        tokenizer.save_pretrained(str(out / 'best_model'))
      # Results first, then the checkpoint: a resume redoes an epoch whose
      # checkpoint is missing and trims the results to the checkpoint.
      if is_main:
        _write_json(out / 'results.json', results)
      manager.save(epoch + 1, args=ocp.args.StandardSave(
          {'params': eval_params,
           'opt_state': single(opt_state),
           'step': global_step}))
      manager.wait_until_finished()
    results['finished'] = True
    if is_main:
      _write_json(out / 'results.json', results)
  finally:
    bar.close()
    metrics_file.close()
    manager.close()
  results['final_params'] = single(params)
  return results


def process_share(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a global batch (all of it on one host)."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return batch
  size = len(batch['labels'])
  if size % count:
    raise ValueError(f'The batch of {size} does not divide over {count} processes.')
  share = size // count
  return {k: v[index * share:(index + 1) * share] for k, v in batch.items()}


def _best(epochs: list[dict]) -> dict:
  """The epoch with the best GLUE dev accuracy (the first of ties)."""
  best = max(epochs, key=lambda r: (r['glue_dev_accuracy'], -r['epoch']))
  summary = {'best_epoch': best['epoch'], 'glue_dev_accuracy': best['glue_dev_accuracy']}
  if 'adv_dev_accuracy' in best:
    summary['adv_dev_accuracy'] = best['adv_dev_accuracy']
  return summary


__all__ = ['METHOD_NAMES', 'TrainConfig', 'build_optimizer', 'evaluate', 'preflight', 'run']
