"""Gathers runs' ``results.json`` into the paper's Table 1 layout, for any task.

For each method (a row) and each task's evaluation set (a column): the best
epoch's score (by the task's first metric on its first set), mean +- std
over seeds, x100. A task with one metric shows it (accuracy for SST-2,
Matthews correlation for CoLA); one with two shows their mean with both
beside it (GLUE's convention: F1 and accuracy for MRPC and QQP, Pearson and
Spearman for STS-B). Then the macro average over all columns and the
average drop from each GLUE set to its AdvGLUE counterpart. Written as
Markdown and CSV, with a bar plot per method, every run's training curves,
and a table of the flatness numbers that ``analyze.py`` measured
(:mod:`rose_jax.glue.analysis`). Runs of one method and task with other
settings (a sweep's members) get a row each, labelled with the settings that
differ; only seeds are pooled.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rose_jax._src import atomic, json_files
from rose_jax.glue import analysis, figures, plots, significance
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.labels import row_labels
from rose_jax.glue.tables import markdown, to_csv, with_marks
from rose_jax.glue.tasks import GLUE_ORDER, Task
from rose_jax.training.methods import METHOD_NAMES

# Table 1's tasks first, then GLUE's others, then any other task.
TASK_ORDER = ('sst2', 'rte', 'qnli', 'qqp', 'mnli',
              *(t for t in GLUE_ORDER if t not in ('sst2', 'rte', 'qnli', 'qqp', 'mnli')))
SET_TITLES = {'glue_dev': 'GLUE', 'adv_dev': 'AdvGLUE', 'glue_dev_mismatched': 'GLUE-mm',
              'adv_dev_mismatched': 'AdvGLUE-mm'}
# Each GLUE set and its AdvGLUE counterpart, whose gap is the drop.
ADVERSARIAL_PAIRS = (('glue_dev', 'adv_dev'), ('glue_dev_mismatched', 'adv_dev_mismatched'))


def collect(paths) -> list[dict]:
  """Finished runs' results under ``paths`` (files or directories); each
  carries the file it came from as ``"path"``."""
  runs = []
  for path in map(Path, paths):
    if not path.exists():
      raise ValueError(f'{path} does not exist.')
    files = [path] if path.is_file() else sorted(path.rglob('results.json'))
    for file in files:
      result = json_files.read_object(file, "a run's settings and results (finetune.py "
                                      'writes it)')
      if not isinstance(result.get('config', {}), dict):
        raise ValueError(f'{file} is not a rose_jax results file: its "config" is no run\'s '
                         'settings.')
      if result.get('finished') and 'config' in result:
        try:
          task_of(result)
        except ValueError as error:
          raise ValueError(f'{file}: {error}') from None
        runs.append({**result, 'path': str(file)})
  if not runs:
    raise ValueError(f'No finished run (results.json with "finished": true) under {paths}.')
  return runs


@functools.cache
def _task(config_json: str) -> Task:
  return TrainConfig.from_saved(json.loads(config_json)).build_task()


def task_of(run: dict) -> Task:
  """The task a run's saved settings name."""
  return _task(json.dumps(run['config'], sort_keys=True))


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


@dataclasses.dataclass
class Cell:
  """One row's runs on one evaluation set: each run's score (the mean of the
  task's metrics) and each metric, x100."""
  scores: list[float] = dataclasses.field(default_factory=list)
  metrics: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))


def summarise(runs: list[dict]) -> dict:
  """``{row: {task: {set: Cell}}}`` over seeds; a row is a method, or a method
  with settings (see :func:`rose_jax.glue.labels.row_labels`). A run contributes to a set the
  best epoch's numbers its results hold."""
  labels = row_labels(runs)
  check_poolable(runs, labels)
  table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(Cell)))
  for run, label in zip(runs, labels, strict=True):
    task = task_of(run)
    for scored in (s for eval_set in task.eval_sets for s in task.scored_sets(eval_set.name)):
      values = [run.get(f'{scored}_{m}') for m in task.metrics]
      if any(v is None for v in values):
        continue  # not evaluated (AdvGLUE left out), or a metric undefined there
      cell = table[label][task.name][scored]
      cell.scores.append(100 * float(np.mean(values)))
      for metric, value in zip(task.metrics, values, strict=True):
        cell.metrics[metric].append(100 * value)
  return table


def row_order(table: dict) -> list[str]:
  """Rows in Table 1's method order, then by label."""
  rank = {m: i for i, m in enumerate(METHOD_NAMES)}
  return sorted(table, key=lambda label: (rank.get(label.split(' ')[0], len(rank)), label))


def _fmt(values: list[float]) -> str:
  if not values:
    return '-'
  return f'{np.mean(values):.2f} ± {np.std(values):.2f}' if len(values) > 1 else \
      f'{values[0]:.2f}'


def _cell_text(cell: Cell | None, metrics: tuple[str, ...]) -> str:
  if cell is None or not cell.scores:
    return '-'
  if len(metrics) == 1:
    return _fmt(cell.scores)
  return _fmt(cell.scores) + ' (' + '/'.join(f'{np.mean(cell.metrics[m]):.2f}'
                                             for m in metrics) + ')'


def columns(table: dict, runs: list[dict]) -> list[tuple[Task, str]]:
  """The table's columns as ``(task, scored set)``: each task's evaluation
  sets (or, for MSGS, their conditions) that some row has, the tasks in
  :data:`TASK_ORDER`, then others by name."""
  tasks = {task_of(run).name: task_of(run) for run in runs}
  order = sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER
                                       else len(TASK_ORDER), t))
  return [(tasks[t], scored) for t in order for s in tasks[t].eval_sets
          for scored in tasks[t].scored_sets(s.name)
          if any(scored in by_task.get(t, {}) for by_task in table.values())]


def header_of(task: Task, set_name: str) -> str:
  metrics = f' ({"/".join(task.metrics)})' if len(task.metrics) > 1 else ''
  return f'{task.name.upper()} {SET_TITLES.get(set_name, set_name)}{metrics}'


def _seeds(cells: dict) -> str:
  counts = sorted({len(cell.scores) for by_set in cells.values() for cell in by_set.values()
                   if cell.scores})
  return '-' if not counts else str(counts[0]) if len(counts) == 1 else \
      f'{counts[0]}-{counts[-1]}'


def rows(table: dict, runs: list[dict]) -> tuple[list[str], list[list[str]]]:
  """The header and one row per method, in the paper's column order, with
  the number of seeds each row pools."""
  cols = columns(table, runs)
  # The averages are the paper's, over GLUE and AdvGLUE sets alone: a probing
  # condition or a set of the user's own is no part of them.
  averaged = any(name in SET_TITLES for _, name in cols)
  header = ['Method', 'Seeds', *(header_of(task, name) for task, name in cols),
            *(['Avg GLUE+AdvGLUE', 'Avg Δ↓'] if averaged else [])]
  body = []
  for method in row_order(table):
    cells = table[method]
    row, means, drops = [method, _seeds(cells)], [], []
    for task, name in cols:
      cell = cells.get(task.name, {}).get(name)
      row.append(_cell_text(cell, task.metrics))
      if cell is not None and cell.scores and name in SET_TITLES:
        means.append(np.mean(cell.scores))
    for task in {t.name: t for t, _ in cols}.values():
      for clean, adversarial in ADVERSARIAL_PAIRS:
        pair = [cells.get(task.name, {}).get(n) for n in (clean, adversarial)]
        if all(c is not None and c.scores for c in pair):
          drops.append(np.mean(pair[0].scores) - np.mean(pair[1].scores))
    if averaged:
      row += [f'{np.mean(means):.2f}' if means else '-',
              f'{np.mean(drops):.2f}' if drops else '-']
    body.append(row)
  return header, body


def score_columns(table: dict, runs: list[dict]) -> dict[str, dict[str, list[float]]]:
  """Each column's scores over seeds by row, as :mod:`rose_jax.glue.significance` tests them."""
  return {header_of(task, name): {row: table[row].get(task.name, {}).get(name, Cell()).scores
                                  for row in row_order(table)}
          for task, name in columns(table, runs)}


def bar_plot(table: dict, cols: list[tuple[Task, str]], stem: Path) -> list[Path]:
  """Each row's mean score (over tasks and seeds) on the tasks' first
  evaluation sets (GLUE dev, for GLUE) and on the AdvGLUE sets, in each
  method's colour (the first solid, AdvGLUE pale)."""
  order = row_order(table)

  def mean(row: str, wanted) -> float:
    scores = [np.mean(cell.scores) for task, name in cols if wanted(task, name)
              for cell in [table[row].get(task.name, {}).get(name)] if cell and cell.scores]
    return float(np.mean(scores)) if scores else np.nan

  first = [mean(row, lambda task, name: name == task.scored_sets(task.eval_sets[0].name)[0])
           for row in order]
  adv = [mean(row, lambda task, name: name.startswith('adv_')) for row in order]
  return plots.bars(order, {'dev (first set)': first, 'AdvGLUE dev': adv}, stem,
                    ylabel='score (x100)', title='Dev score per method (mean over tasks and '
                    'seeds)')


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
          for label in row_order(dict.fromkeys(labels))]
  return header, body


def probing_points(runs: list[dict]) -> dict[str, dict[str, list[float]]]:
  """The paper's Figure 3: per probing task, each row's runs' Matthews
  correlation on the disambiguating rows (the first evaluation set's first
  group, MSGS's ``test``), at the best epoch."""
  labels = row_labels(runs)
  panels: dict = defaultdict(lambda: defaultdict(list))
  for run, label in zip(runs, labels, strict=True):
    task = task_of(run)
    if not task.group_column:
      continue
    value = run.get(f'{task.scored_sets(task.eval_sets[0].name)[0]}_{task.metrics[0]}')
    if value is not None:
      panels[task.name][label].append(value)
  return {task: {row: panels[task][row] for row in row_order(panels[task])}
          for task in sorted(panels)}


def write_report(paths, output_dir: str | Path, *,
                 disagreement_steps: Sequence[int] | None = None) -> dict[str, Path]:
  """Writes ``table.md`` and ``.csv`` (Table 1, the marks and
  ``significance.csv``), ``flatness.md`` and ``.csv``, ``accuracy.png`` and
  ``.svg``, ``curves.png`` and ``.svg`` (every run's training curves), and
  where the runs hold them ``gamma.md``/``.csv`` (Table 3),
  ``disagreement.md``/``.csv`` (Table 4, at ``disagreement_steps``, by
  default the paper's) and ``probing.png``/``.svg`` (Figure 3); returns their
  paths."""
  # Tables 3 and 4 are laid out by this module's table: imported here, not above.
  from rose_jax.glue import paper_tables
  runs = collect(paths)
  table = summarise(runs)
  header, body = rows(table, runs)
  found = significance.tests(score_columns(table, runs))
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = {'markdown': out / 'table.md', 'csv': out / 'table.csv',
           'significance': out / 'significance.csv',
           'flatness': out / 'flatness.md', 'flatness_csv': out / 'flatness.csv'}
  table_md = markdown(header, with_marks(header, body, significance.marked(found)))
  atomic.write_bytes(files['markdown'], (table_md + significance.notes(found)).encode())
  atomic.write_bytes(files['csv'], to_csv(header, body).encode())
  atomic.write_bytes(files['significance'], significance.csv_text(found).encode())
  flat_header, flat_body = flatness_rows(runs)
  atomic.write_bytes(files['flatness'], markdown(flat_header, flat_body).encode())
  atomic.write_bytes(files['flatness_csv'], to_csv(flat_header, flat_body).encode())
  files['plot'], files['plot_svg'] = bar_plot(table, columns(table, runs), out / 'accuracy')
  files['curves'], files['curves_svg'] = figures.training_curves(
      [Path(run['path']).parent for run in runs], out / 'curves')
  steps = paper_tables.PAPER_STEPS if disagreement_steps is None else disagreement_steps
  for name, made in (('gamma', paper_tables.gamma_table(runs)),
                     ('disagreement', paper_tables.disagreement_table(runs, steps))):
    if made is not None:
      files[name], files[f'{name}_csv'] = out / f'{name}.md', out / f'{name}.csv'
      atomic.write_bytes(files[name], markdown(*made).encode())
      atomic.write_bytes(files[f'{name}_csv'], to_csv(*made).encode())
  points = probing_points(runs)
  if points:
    files['probing'], files['probing_svg'] = plots.dots(
        points, out / 'probing', ylabel="Matthews correlation on disambiguating rows",
        title='Probing: 1 prefers the linguistic feature, -1 the surface one')
  return files
