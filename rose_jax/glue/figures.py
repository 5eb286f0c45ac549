"""Figures from what fine-tuning runs logged, without evaluating anything: the
mask maps of ROSE runs (``masks.bin``), the training curves
(``metrics.jsonl``) and the dropout disagreement over steps."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from rose_jax.baselines.adversarial import Smart
from rose_jax.glue import plots
from rose_jax.glue.labels import row_labels, run_labels
from rose_jax.glue.masks import mask_parts, read_masks
from rose_jax.glue.run_dir import RunDirectory
from rose_jax.training.methods import get_method

log = logging.getLogger(__name__)

TENSOR_KINDS = (('attention/self/query', 'query'), ('attention/self/key', 'key'),
                ('attention/self/value', 'value'), ('attention/output/dense', 'attn output'),
                ('attention/output/LayerNorm', 'attn LayerNorm'),
                ('intermediate', 'intermediate'), ('output/dense', 'output'),
                ('output/LayerNorm', 'output LayerNorm'))


def tensor_row(name: str) -> tuple[int, int, str]:
  """``(layer, kind index, row label)`` of a ranked tensor's name; tensors
  outside the layers (embeddings, pooler) come first as layer -1."""
  parts = name.split('/')
  layer = int(parts[parts.index('layer') + 1]) if 'layer' in parts else -1
  for index, (pattern, kind) in enumerate(TENSOR_KINDS):
    if pattern in name:
      return layer, index, f'L{layer} {kind}'
  kind = 'embeddings' if 'embeddings' in name else parts[-2] if len(parts) > 1 else name
  return layer, -1, kind if layer < 0 else f'L{layer} {kind}'


def mask_rows(names: list[str], masks: np.ndarray, *,
              columns: int = 400) -> tuple[list[str], np.ndarray, np.ndarray]:
  """A mask record as a heat map: the mean mask per (layer, tensor kind) row,
  ``[rows, steps]``, with steps averaged into at most ``columns`` bins.
  Returns the row labels, the bins' last steps' indices and the values."""
  keys = [tensor_row(n) for n in names]
  rows = sorted(set(keys))
  values = np.stack([masks[:, [k == row for k in keys]].mean(1) for row in rows])
  steps = np.arange(1, masks.shape[0] + 1)
  if masks.shape[0] > columns:
    edges = np.linspace(0, masks.shape[0], columns + 1).astype(int)
    values = np.stack([values[:, a:b].mean(1) for a, b in itertools.pairwise(edges)], 1)
    steps = edges[1:]
  return [row[2] for row in rows], steps, values


def metric_lines(path: Path) -> list[dict]:
  """A run's metric lines; a line cut short (a killed run writes a line at a
  time) is left out, with a warning."""
  if not path.exists():
    return []
  lines, cut = [], 0
  for text in path.read_text(encoding='utf-8').splitlines():
    try:
      lines.append(json.loads(text))
    except json.JSONDecodeError:
      cut += 1
  if cut:
    log.warning('%s: %d line(s) cut short or damaged, left out.', path, cut)
  return [x for x in lines if isinstance(x, dict)]


def _labelled(run_dirs: list[str | Path]) -> list[tuple[str, str, Path, dict]]:
  """``(label, row, run_dir, config)`` for each run: its own label, its
  report row's (:mod:`rose_jax.glue.labels`) and its saved settings."""
  runs = []
  for run_dir in map(Path, run_dirs):
    results = RunDirectory(run_dir).raw_results()
    if results is None or 'config' not in results:
      raise ValueError(f'{run_dir} is not a run directory (no results.json).')
    runs.append({'config': results['config'], 'path': run_dir})
  return list(zip(run_labels(runs), row_labels(runs), [r['path'] for r in runs],
                  [r['config'] for r in runs], strict=True))


def _step_and_epoch_lines(path: Path) -> tuple[list[dict], list[dict]]:
  lines = metric_lines(path / 'metrics.jsonl')
  return ([x for x in lines if x.get('type') != 'epoch'],
          [x for x in lines if x.get('type') == 'epoch'])


# The panels of a ROSE-Ensemble run that recorded the masks it mixed, as the
# paper's figure shows them side by side.
_ENSEMBLE_PANELS = (('first', 'ROSE-First mask'), ('second', 'ROSE-Second mask'),
                    ('mask', 'ensemble (applied)'))


def mask_map(run_dirs: list[str | Path], stem: str | Path) -> list[Path]:
  """Heat maps of what each ROSE run kept (one panel per run), from its
  ``masks.bin``; a ROSE-Ensemble run that recorded its first- and
  second-order masks gets three panels: those two and the ensemble it
  applied. FileNotFoundError names a run without masks and how to record them."""
  panels = {}
  for label, _, run_dir, _ in _labelled(run_dirs):
    names, _, masks = read_masks(run_dir)
    if not len(masks):
      raise ValueError(f'{run_dir}/masks.bin holds no steps yet.')
    parts = mask_parts(run_dir)
    if not {'first', 'second'} <= set(parts):
      panels[label] = mask_rows(names, masks)
      continue
    for part, title in _ENSEMBLE_PANELS:
      panels[f'{label}: {title}'] = mask_rows(names, read_masks(run_dir, part)[2])
  return plots.mask_maps(panels, Path(stem))


def curve_series(run_dirs: list[str | Path]) -> dict[str, dict]:
  """Each run's logged series for :func:`rose_jax.glue.plots.curves`, by label;
  without the KL of a method that computes none (one dropout pass, not
  SMART) and the kept fraction of one that masks nothing (not ROSE). A run
  whose method's runs differ in settings has ``legend``: its row, whose
  seeds share one line style."""
  runs = {}
  for label, row, run_dir, config in _labelled(run_dirs):
    steps, epochs = _step_and_epoch_lines(run_dir)
    method = get_method(config['method'])
    computed = {'loss', 'ce'}
    if method.passes == 2 or isinstance(method.adversary, Smart):
      computed.add('kl')
    if method.uses_rose:
      computed.add('kept_fraction')
    data = {'steps': {}, 'epochs': {}}
    for metric in ('loss', 'ce', 'kl', 'kept_fraction'):
      if steps and metric in steps[0] and metric in computed:
        data['steps'][metric] = ([x['step'] for x in steps], [x[metric] for x in steps])
    for metric in RunDirectory(run_dir).task().result_keys():
      if epochs and metric in epochs[0]:
        data['epochs'][metric] = ([x['epoch'] for x in epochs], [x[metric] for x in epochs])
    if row != config['method']:
      data['legend'] = row  # a row's seeds share a line style and a legend entry
    runs[label] = data
  return runs


def training_curves(run_dirs: list[str | Path], stem: str | Path) -> list[Path]:
  """Loss, CE, KL and kept fraction per logged step and dev accuracies per
  epoch, every run overlaid; a panel only for what some run computed."""
  return plots.curves(curve_series(run_dirs), Path(stem))


def disagreement_over_steps(run_dirs: list[str | Path], stem: str | Path) -> list[Path]:
  """The dropout disagreement that two-pass methods' steps logged, one line
  per run; ValueError if no run logged it."""
  series = {}
  for label, _, run_dir, _ in _labelled(run_dirs):
    steps, _ = _step_and_epoch_lines(run_dir)
    if steps and 'disagreement' in steps[0]:
      series[label] = (
          np.asarray([x['step'] for x in steps]), np.asarray([x['disagreement'] for x in steps]))
  if not series:
    raise ValueError('None of these runs logged dropout disagreement: only methods with two '
                     'dropout passes (rdrop, rose-first, rose-ensemble, rdrop-rose-*) do. '
                     'Measure any run with `analyze.py disagreement`.')
  return plots.lines_over_steps(series, Path(stem), ylabel='share of examples',
                                title='Dropout disagreement of the two training passes')
