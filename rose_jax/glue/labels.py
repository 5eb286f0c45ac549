"""What a run is called in reports and figures: its row (the method, and the
settings that tell runs of one method and task apart, as a sweep's members
or the cheaper risks' options) and, for one run, the row with its seed."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

from rose_jax.glue.config import TrainConfig

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


def run_labels(runs: list[dict]) -> list[str]:
  """Each run's own label: ``rose-ensemble (seed 1)``, or its row's with the
  seed, ``rose-ensemble (upper=0.4; seed 1)``, where runs of its method differ
  in settings. A label that a run at another ``path`` already has (copies
  of a run, runs of one seed in two output roots) gets the path too, so that
  no run stands in for another; one run given twice keeps one label."""
  labels: list[str] = []
  owners: dict[str, Path] = {}
  for run, row in zip(runs, row_labels(runs), strict=True):
    seed = f'seed {run["config"]["seed"]}'
    label = f'{row[:-1]}; {seed})' if row.endswith(')') else f'{row} ({seed})'
    if owners.setdefault(label, Path(run['path'])) != Path(run['path']):
      label = f'{label[:-1]}; {Path(run["path"])})'
    labels.append(label)
  return labels
