"""Gathers runs' ``results.json`` into the paper's Table 1 layout.

For each method and task: GLUE and AdvGLUE dev accuracy of the best epoch
(by GLUE dev accuracy), mean +- std over seeds; then the macro average over
all GLUE and AdvGLUE columns and the average drop GLUE - AdvGLUE. Written as
Markdown and CSV, with a bar plot of GLUE vs AdvGLUE per method, every
run's training curves, and a table of the flatness numbers that
``analyze.py`` measured (:mod:`rose_jax.glue.analysis`). Runs of one
method and task with other settings (a sweep's members) get a row each,
labelled with the settings that differ; only seeds are pooled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from rose_jax._src import atomic
from rose_jax.glue import analysis, plots
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.data import TASKS
from rose_jax.training.methods import METHOD_NAMES

TASK_ORDER = ('sst2', 'rte', 'qnli', 'qqp', 'mnli')


def collect(paths) -> list[dict]:
  """Finished runs' results under ``paths`` (files or directories); each
  carries the file it came from as ``"path"``."""
  runs = []
  for path in map(Path, paths):
    if not path.exists():
      raise ValueError(f'{path} does not exist.')
    files = [path] if path.is_file() else sorted(path.rglob('results.json'))
    for file in files:
      try:
        result = json.loads(file.read_text(encoding='utf-8'))
        finished = result.get('finished') and 'config' in result
      except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise ValueError(f'{file} is not a rose_jax results file ({error}).') from None
      if finished:
        runs.append({**result, 'path': str(file)})
  if not runs:
    raise ValueError(f'No finished run (results.json with "finished": true) under {paths}.')
  return runs


# Settings that may differ between runs pooled into one row: the seed, and
# those that do not shape training (logging, checkpoints, progress).
_POOLED_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                       if f.metadata['resume'] and f.name not in ('seed', 'output_dir'))


def _settings(run: dict) -> tuple:
  return tuple(json.dumps(run['config'].get(name)) for name in _POOLED_FIELDS)


def row_labels(runs: list[dict]) -> list[str]:
  """Each run's row: its method, and where runs of one method and task were
  trained with other settings (a sweep), the settings that tell them apart,
  as ``rose-ensemble (learning_rate=1e-05, upper=0.4)``."""
  by_cell: dict = defaultdict(dict)
  for run in runs:
    by_cell[(run['config']['method'], run['config']['task'])][_settings(run)] = run['config']
  varying: dict = defaultdict(set)
  for (method, _), configs in by_cell.items():
    for name in _POOLED_FIELDS:
      if len({json.dumps(c.get(name)) for c in configs.values()}) > 1:
        varying[method].add(name)
  labels = []
  for run in runs:
    config = run['config']
    names = [n for n in _POOLED_FIELDS if n in varying[config['method']]]
    labels.append(config['method'] + (' (' + ', '.join(f'{n}={config.get(n)}' for n in names)
                                      + ')' if names else ''))
  return labels


def check_poolable(runs: list[dict], labels: list[str]) -> None:
  """Raises ValueError for one seed of one row twice, or for runs of one
  method and task on different data."""
  seen: dict = {}
  data: dict = {}
  for run, label in zip(runs, labels, strict=True):
    config = run['config']
    seed = (label, config['task'], config['seed'])
    if seed in seen:
      raise ValueError(f'{seen[seed]} and {run["path"]} are both {label} on {config["task"]} '
                       f'with seed {config["seed"]}: the same run twice would count as two '
                       'seeds. Leave one of them out.')
    seen[seed] = run['path']
    cell = (config['method'], config['task'])
    reference = data.setdefault(cell, run)
    if reference.get('data_digests') != run.get('data_digests'):
      raise ValueError(f'{reference["path"]} and {run["path"]} are both {cell[0]} on {cell[1]} '
                       'but were trained on different data files. Report runs on one data set '
                       'together.')


def summarise(runs: list[dict]) -> dict:
  """``{row: {task: {'glue': [..], 'adv': [..]}}}`` over seeds, percent; a row
  is a method, or a method with settings (see :func:`row_labels`)."""
  labels = row_labels(runs)
  check_poolable(runs, labels)
  table: dict = defaultdict(lambda: defaultdict(lambda: {'glue': [], 'adv': []}))
  for run, label in zip(runs, labels, strict=True):
    cell = table[label][run['config']['task']]
    cell['glue'].append(100 * run['glue_dev_accuracy'])
    if 'adv_dev_accuracy' in run:
      cell['adv'].append(100 * run['adv_dev_accuracy'])
  return table


def _row_order(table: dict) -> list[str]:
  """Rows in Table 1's method order, then by label."""
  rank = {m: i for i, m in enumerate(METHOD_NAMES)}
  return sorted(table, key=lambda label: (rank.get(label.split(' ')[0], len(rank)), label))


def _fmt(values: list[float]) -> str:
  if not values:
    return '-'
  return f'{np.mean(values):.2f} ± {np.std(values):.2f}' if len(values) > 1 else \
      f'{values[0]:.2f}'


def rows(table: dict) -> tuple[list[str], list[list[str]]]:
  """The header and one row per method, in the paper's column order."""
  tasks = [t for t in TASK_ORDER if any(t in by_task for by_task in table.values())]
  header = ['Method']
  for task in tasks:
    header += [f'{TASKS[task].name.upper()} GLUE', f'{TASKS[task].name.upper()} AdvGLUE']
  header += ['Avg GLUE+AdvGLUE', 'Avg Δ↓']
  order = _row_order(table)
  body = []
  for method in order:
    row, columns, drops = [method], [], []
    for task in tasks:
      cell = table[method].get(task, {'glue': [], 'adv': []})
      row += [_fmt(cell['glue']), _fmt(cell['adv'])]
      for key in ('glue', 'adv'):
        if cell[key]:
          columns.append(np.mean(cell[key]))
      if cell['glue'] and cell['adv']:
        drops.append(np.mean(cell['glue']) - np.mean(cell['adv']))
    row += [f'{np.mean(columns):.2f}' if columns else '-',
            f'{np.mean(drops):.2f}' if drops else '-']
    body.append(row)
  return header, body


def markdown(header: list[str], body: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in body]
  return '\n'.join(lines) + '\n'


def to_csv(header: list[str], body: list[list[str]]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(header)
  writer.writerows(body)
  return buffer.getvalue()


def bar_plot(table: dict, stem: Path) -> list[Path]:
  """Mean GLUE and AdvGLUE accuracy (over tasks and seeds) per row, in each
  method's colour (GLUE solid, AdvGLUE pale)."""
  rows = _row_order(table)
  glue = [np.mean([np.mean(c['glue']) for c in table[m].values() if c['glue']]) for m in rows]
  adv = [np.mean([np.mean(c['adv']) for c in table[m].values() if c['adv']] or [np.nan])
         for m in rows]
  return plots.bars(rows, {'GLUE dev': glue, 'AdvGLUE dev': adv}, stem,
                    ylabel='accuracy (%)', title='Dev accuracy per method (mean over tasks '
                    'and seeds)')


# Flatness columns: (header, run-level number), each the mean over a row's runs.
FLATNESS_COLUMNS = (
    ('Flat area (landscape)', lambda run, numbers: numbers.get('flat_area')),
    ('Sharpness (interpolation)', lambda run, numbers: numbers.get('interpolation_sharpness')),
    ('Dropout disagreement (dev)', lambda run, numbers: numbers.get('disagreement')),
    ('Dropout disagreement (last epoch, train)', lambda run, numbers: (
        run['epochs'][-1].get('train_disagreement') if run.get('epochs') else None)),
)


def flatness_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
  """Per row (method, or method with settings): the mean of each flatness
  number over the runs that have it (``analyze.py`` measures them)."""
  labels = row_labels(runs)
  values: dict = defaultdict(lambda: defaultdict(list))
  for run, label in zip(runs, labels, strict=True):
    numbers = analysis.flatness(Path(run['path']).parent)
    for header, read in FLATNESS_COLUMNS:
      value = read(run, numbers)
      if value is not None:
        values[label][header].append(value)
  header = ['Method', *(h for h, _ in FLATNESS_COLUMNS)]
  body = [[label, *(f'{np.mean(values[label][h]):.4f}' if values[label][h] else '-'
                    for h, _ in FLATNESS_COLUMNS)]
          for label in _row_order(dict.fromkeys(labels))]
  return header, body


def write_report(paths, output_dir: str | Path) -> dict[str, Path]:
  """Writes ``table.md`` and ``.csv`` (Table 1), ``flatness.md`` and ``.csv``,
  ``accuracy.png`` and ``.svg`` and ``curves.png`` and ``.svg`` (every run's
  training curves); returns their paths."""
  runs = collect(paths)
  table = summarise(runs)
  header, body = rows(table)
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = {'markdown': out / 'table.md', 'csv': out / 'table.csv',
           'flatness': out / 'flatness.md', 'flatness_csv': out / 'flatness.csv'}
  atomic.write_bytes(files['markdown'], markdown(header, body).encode())
  atomic.write_bytes(files['csv'], to_csv(header, body).encode())
  flat_header, flat_body = flatness_rows(runs)
  atomic.write_bytes(files['flatness'], markdown(flat_header, flat_body).encode())
  atomic.write_bytes(files['flatness_csv'], to_csv(flat_header, flat_body).encode())
  files['plot'], files['plot_svg'] = bar_plot(table, out / 'accuracy')
  files['curves'], files['curves_svg'] = analysis.training_curves(
      [Path(run['path']).parent for run in runs], out / 'curves')
  return files
