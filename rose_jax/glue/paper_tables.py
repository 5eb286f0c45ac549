"""The paper's Tables 3 and 4 from runs that hold their numbers.

* Table 3: ROSE-Ensemble at each ``gamma`` (a sweep's members), its
  GLUE+AdvGLUE average and average drop, as Table 1 computes them
  (:mod:`rose_jax.glue.report`).
* Table 4: the share of training examples whose two dropout passes predict
  different labels at chosen steps, from each run's logged ``disagreement``
  (methods with two dropout passes log it every ``--log-every`` steps; the
  value at a step is the last line logged at or before it), x100, the mean
  over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rose_jax.glue import figures
from rose_jax.glue import labels as labels_lib
from rose_jax.glue import report as report_lib

PAPER_STEPS = (200, 600, 2000, 4000)
ENSEMBLES = ('rose-ensemble', 'rdrop-rose-ensemble')


def gamma_table(runs: list[dict]) -> tuple[list[str], list[list[str]]] | None:
  """Table 3's rows, ``gamma`` ascending, or None where no ensemble method
  was trained with two values of ``gamma``."""
  ensemble = [run for run in runs if run['config']['method'] in ENSEMBLES]
  if len({run['config'].get('gamma') for run in ensemble}) < 2:
    return None
  table = report_lib.summarise(ensemble)
  header, body = report_lib.rows(table, ensemble)
  labels = labels_lib.row_labels(ensemble)
  gammas = {label: run['config']['gamma'] for label, run in zip(labels, ensemble, strict=True)}
  body = sorted(body, key=lambda row: (row[0].split(' ')[0], gammas[row[0]], row[0]))
  return (['Method', 'gamma', 'Seeds', *header[-2:]],
          [[row[0], f'{gammas[row[0]]:g}', row[1], *row[-2:]] for row in body])


def disagreement_at(run_dir: Path, steps: Sequence[int]) -> list[float | None]:
  """A run's logged disagreement at each of ``steps``: None before its first
  line, after the run's last step (a shorter run has no value there, as RTE
  has none at step 4000 in the paper), or where it logged none."""
  every = figures.metric_lines(run_dir / 'metrics.jsonl')
  last = max((x['step'] for x in every), default=0)
  lines = [x for x in every if x.get('type') != 'epoch' and x.get('disagreement') is not None]
  values = []
  for step in steps:
    before = [x for x in lines if x['step'] <= step]
    values.append(before[-1]['disagreement'] if before and step <= last else None)
  return values


def disagreement_table(runs: list[dict], steps: Sequence[int] = PAPER_STEPS,
                       ) -> tuple[list[str], list[list[str]]] | None:
  """Table 4's rows (a method, or a method with settings, per row), or None
  where no run logged the disagreement."""
  labels = labels_lib.row_labels(runs)
  by_row: dict[str, list[list[float | None]]] = {}
  for run, label in zip(runs, labels, strict=True):
    values = disagreement_at(Path(run['path']).parent, steps)
    if any(v is not None for v in values):
      by_row.setdefault(label, []).append(values)
  if not by_row:
    return None
  body = []
  for label in report_lib.row_order(by_row):
    cells = []
    for column in zip(*by_row[label], strict=True):
      logged = [100 * v for v in column if v is not None]
      cells.append(f'{np.mean(logged):.2f}' if logged else '-')
    body.append([label, str(len(by_row[label])), *cells])
  return ['Method', 'Seeds', *(f'step {s}' for s in steps)], body
