"""The analyses of :mod:`rose_jax.analysis` over fine-tuning run directories.

Each reads a run's ``best_model/`` and ``results.json`` (task, data files,
dropout) and writes under ``RUN/analysis/``: the raw numbers (``.npz``),
the figures (PNG and SVG, :mod:`rose_jax.glue.plots`) and the run's
flatness numbers (``flatness.json``), which ``report.py`` tabulates per
method. The loss is the task's (the mean cross-entropy, or the mean squared
error for regression) over a fixed evaluation subset: the first
``examples`` of the task's first evaluation set, all padded to one length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src import atomic, json_files
from rose_jax._src.apply_fn import ApplyFn
from rose_jax._src.objectives import get_objective
from rose_jax.analysis import disagreement as disagreement_lib
from rose_jax.analysis import landscape as landscape_lib
from rose_jax.glue import batching, packing, plots
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.run_dir import RunDirectory
from rose_jax.glue.shared import load_eval_set
from rose_jax.glue.tasks import Task
from rose_jax.models import ModuleApply, as_apply_fn, load_pretrained, load_tokenizer

FLATNESS = 'flatness.json'


@dataclasses.dataclass
class Run:
  """A finished run's best model and settings."""
  path: Path
  config: dict
  apply_fn: ModuleApply
  params: Any
  tokenizer: Any
  settings: TrainConfig
  task: Task

  @property
  def label(self) -> str:
    return f'{self.config["method"]} (seed {self.config["seed"]})'


def load_run(path: str | Path) -> Run:
  """The run in ``path``; ValueError if it is no run or has no best model yet."""
  path = Path(path)
  settings = RunDirectory(path).config()
  if not (path / 'best_model').is_dir():
    raise ValueError(f'{path} has no best_model/: the run has not finished an epoch yet.')
  task = settings.build_task()
  model = load_pretrained(path / 'best_model', num_labels=task.num_labels,
                          hidden_dropout=settings.dropout, attention_dropout=settings.dropout)
  tokenizer = load_tokenizer(str(path / 'best_model'), model.config)
  apply_fn, params = as_apply_fn(model)
  return Run(path, dataclasses.asdict(settings), apply_fn, params, tokenizer, settings, task)


def evaluation_subset(run: Run, examples: int = 512, batch_size: int | None = None,
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The first ``examples`` of the task's first evaluation set as ``[batches, ...]`` arrays and
  ``[batches, batch_size]`` weights (0 for filler examples).

  Each batch is padded to one length for all, or, for a run that trained on
  packed rows, packed into one row count for all (its labels and weights in
  packed order). By default one batch holds them all: grid points, not
  examples, are what the evaluation splits into chunks, and XLA's FLOP count
  is exact without a loop."""
  name, source = next(iter(run.settings.eval_sources().items()))
  dev = load_eval_set(run.settings, run.task, name, source).take(examples)
  encoded = batching.tokenize(run.tokenizer, dev, run.config['max_length'])
  n = len(encoded)
  batch_size = batch_size or n
  batches = -(-n // batch_size)
  rows = np.minimum(np.arange(batches * batch_size), n - 1).reshape(batches, batch_size)
  weights = (np.arange(batches * batch_size) < n).astype(np.float32).reshape(batches, batch_size)
  if not run.config.get('packing', False):
    arrays = encoded.take(rows.reshape(-1), int(encoded.lengths.max()))
    return ({k: v.reshape(batches, batch_size, *v.shape[1:]) for k, v in arrays.items()},
            weights)
  length = run.config['max_length']
  count = packing.common_row_count(encoded, rows, length)
  packs = [packing.pack(encoded, r, length, rows=count) for r in rows]
  return ({k: np.stack([p.arrays[k] for p in packs]) for k in packs[0].arrays},
          np.stack([w[p.order] for w, p in zip(weights, packs, strict=True)]))


def subset_loss(apply_fn: ApplyFn, batches: dict[str, np.ndarray], weights: np.ndarray,
                objective: str = 'classification',
                ) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
  """``params -> (mean loss, accuracy)`` over the subset, dropout off: the
  task loss of ``objective`` per example (cross-entropy, or for regression
  the squared error, whose accuracy is NaN)."""
  batches = jax.tree.map(jnp.asarray, batches)
  weights = jnp.asarray(weights)
  objective = get_objective(objective)
  # The batch mean of one example is that example's loss.
  per_example = jax.vmap(lambda o, y: objective.task_loss(o[None], y[None]))

  def loss_fn(params):
    def one(totals, xs):
      batch, w = xs
      outputs = apply_fn(params, batch, dropout_key=None).astype(jnp.float32)
      loss = per_example(outputs, batch['labels'])
      correct = objective.predict(outputs) == batch['labels'] if objective.classes else \
          jnp.full(w.shape, jnp.nan)
      return (totals[0] + jnp.sum(loss * w), totals[1] + jnp.sum(correct * w)), None

    (ce, correct), _ = jax.lax.scan(one, (jnp.zeros(()), jnp.zeros(())), (batches, weights))
    return ce / jnp.sum(weights), correct / jnp.sum(weights)

  return loss_fn


def _record_flatness(run_dir: Path, **numbers) -> dict:
  path = run_dir / 'analysis' / FLATNESS
  path.parent.mkdir(exist_ok=True)
  current = _read_flatness(path)
  current.update(numbers)
  atomic.write_json(path, current)
  return current


def _bar(total: int, enabled: bool, description: str):
  from tqdm.auto import tqdm
  return tqdm(total=total, disable=not enabled, desc=description, unit='point')


def landscape(run_dir: str | Path, *, points: int = 51, low: float = -0.25,
              high: float = 0.25, examples: int = 512, seed: int = 0,
              chunk: int | None = None, memory_budget: int | None = None,
              rise: float = 0.1, progress: bool = True) -> dict:
  """The 2D loss landscape around a run's best model (ROSE, Figure 2).

  Writes ``analysis/landscape.npz`` (``alphas``, ``betas``, ``loss``,
  ``accuracy``), ``analysis/landscape.png`` and ``.svg``, and the flat area
  (:func:`rose_jax.analysis.flat_area`, loss within ``rise`` of the centre)
  into ``analysis/flatness.json``. Returns the summary, with throughput.
  """
  if not rise >= 0:
    raise ValueError(f'--rise must be 0 or more (the flat area is where the loss is within '
                     f'RISE of the centre), got {rise}.')
  run = load_run(run_dir)
  axis = landscape_lib.grid(low, high, points)
  loss_fn = subset_loss(run.apply_fn, *evaluation_subset(run, examples), run.task.objective)
  delta_key, eta_key = jax.random.split(jax.random.key(seed))
  delta = landscape_lib.filter_normalized_direction(delta_key, run.params)
  eta = landscape_lib.filter_normalized_direction(eta_key, run.params)
  bar = _bar(points * points, progress, 'landscape')
  try:
    result = landscape_lib.loss_surface(loss_fn, run.params, delta, eta, axis, axis,
                                        chunk=chunk, memory_budget=memory_budget,
                                        progress=bar.update)
  finally:
    bar.close()
  out = run.path / 'analysis'
  out.mkdir(exist_ok=True)
  atomic.write_npz(out / 'landscape.npz', alphas=axis, betas=axis, loss=result.loss,
                   accuracy=result.accuracy)
  plots.contour(axis, axis, result.loss, out / 'landscape', method=run.config['method'],
                title=f'Loss landscape: {run.label}')
  area = landscape_lib.flat_area(result.loss, axis, axis, rise=rise)
  _record_flatness(run.path, flat_area=area, flat_area_rise=rise,
                   centre_loss=float(result.loss[points // 2, points // 2]))
  return {'flat_area': area, 'points': points * points, 'chunk': result.chunk,
          'seconds': result.seconds, 'compile_seconds': result.compile_seconds,
          'points_per_second': result.points_per_second,
          'gflops_per_second': (result.flops_per_second or 0) / 1e9}


def interpolate(first_dir: str | Path, second_dir: str | Path, output_dir: str | Path, *,
                points: int = 51, low: float = -0.5, high: float = 1.5, examples: int = 512,
                chunk: int | None = None, progress: bool = True) -> dict:
  """The loss and accuracy on the line from one run's best model to another's
  (ROSE, Figure 4), on the first run's evaluation subset.

  Writes ``interpolation.npz`` and the plot into ``output_dir``, and each
  run's curvature along the line at its own end (``interpolation_sharpness``)
  into its ``analysis/flatness.json``; a run whose end has no grid point
  beyond it (``low`` 0 or ``high`` 1) gets none, and its summary entry is
  None. ValueError for two architectures.
  """
  first, second = load_run(first_dir), load_run(second_dir)
  landscape_lib.check_same_architecture(first.params, second.params,
                                        (str(first.path), str(second.path)))
  alphas = landscape_lib.grid(low, high, points)
  loss_fn = subset_loss(first.apply_fn, *evaluation_subset(first, examples),
                        first.task.objective)
  bar = _bar(points, progress, 'interpolation')
  try:
    result = landscape_lib.interpolation(loss_fn, first.params, second.params, alphas,
                                         chunk=chunk, progress=bar.update)
  finally:
    bar.close()
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  atomic.write_npz(out / 'interpolation.npz', alphas=alphas, loss=result.loss,
                   accuracy=result.accuracy)
  plots.interpolation(alphas, result.loss, result.accuracy, out / 'interpolation',
                      labels=(first.label, second.label))
  summary = {'barrier': landscape_lib.interpolation_barrier(result.loss, alphas),
             'first_sharpness': _sharpness_at(result.loss, alphas, 0.0),
             'second_sharpness': _sharpness_at(result.loss, alphas, 1.0),
             'points_per_second': result.points_per_second}
  # A line that ends at a run has no point past it: no curvature there.
  for run, name in ((first, 'first_sharpness'), (second, 'second_sharpness')):
    if summary[name] is not None:
      _record_flatness(run.path, interpolation_sharpness=summary[name])
  atomic.write_json(out / 'interpolation.json', {
      'first': str(first.path), 'second': str(second.path), **summary})
  return summary


def _sharpness_at(losses: np.ndarray, alphas: np.ndarray, at: float) -> float | None:
  """:func:`rose_jax.analysis.endpoint_sharpness` at ``at``, or None where the
  grid has no point on one side of it."""
  try:
    return landscape_lib.endpoint_sharpness(losses, alphas, at)
  except ValueError:
    return None


def disagreement(run_dir: str | Path, *, passes: int = 2, examples: int = 512,
                 seed: int = 0, dropout: bool = True) -> float:
  """The share of the evaluation subset on which ``passes`` dropout passes of
  the run's best model disagree; recorded as ``disagreement`` in
  ``analysis/flatness.json``."""
  run = load_run(run_dir)
  if run.task.regression:
    raise ValueError(f'{run_dir} is a regression run: dropout disagreement counts examples '
                     'whose passes predict different classes, and a number has none.')
  batches, weights = evaluation_subset(run, examples)
  pairs = (({k: v[i] for k, v in batches.items()}, weights[i] > 0) for i in range(len(weights)))
  share = disagreement_lib.dropout_disagreement(
      run.apply_fn, run.params, pairs, jax.random.key(seed) if dropout else None, passes=passes)
  _record_flatness(run.path, disagreement=share, disagreement_passes=passes)
  return share


def flatness(run_dir: str | Path) -> dict:
  """A run's recorded flatness numbers (empty if none were measured)."""
  path = Path(run_dir) / 'analysis' / FLATNESS
  return _read_flatness(path)


def _read_flatness(path: Path) -> dict:
  if not path.exists():
    return {}
  return json_files.read_object(path, "the run's flatness numbers (analyze.py writes them; "
                                'delete the file to measure them again)')
