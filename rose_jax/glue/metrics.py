"""Evaluation metrics by name, each a function of predictions and labels.

They are scikit-learn's and scipy's, as GLUE's official scorer and Hugging
Face's ``evaluate`` compute them:

| name | what | for |
|---|---|---|
| ``accuracy`` | share of correct predictions | classes |
| ``f1`` | F1 of class 1 with two classes (MRPC, QQP), else the macro mean | classes |
| ``mcc`` | Matthews correlation (CoLA, MSGS) | classes |
| ``pearson`` | Pearson correlation (STS-B) | regression |
| ``spearman`` | Spearman rank correlation (STS-B) | regression |

Every one is "higher is better". Where the libraries leave a value
undefined, it is what they return: F1 with no positive prediction and no
positive label is 0 (``zero_division=0``), MCC with one class on either side
is 0, and a correlation of constant predictions is NaN (no ranking; a run's
best epoch never is one with NaN).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Metric:
  """A metric: its name, whether it scores classes or numbers, and the function."""
  name: str
  classes: bool
  compute: Callable[[np.ndarray, np.ndarray, int], float]


def _accuracy(predictions, labels, classes):
  del classes
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def _f1(predictions, labels, classes):
  from sklearn.metrics import f1_score
  if classes == 2:
    return float(f1_score(labels, predictions, pos_label=1, average='binary', zero_division=0))
  return float(f1_score(labels, predictions, labels=list(range(classes)), average='macro',
                        zero_division=0))


def _mcc(predictions, labels, classes):
  del classes
  from sklearn.metrics import matthews_corrcoef
  with warnings.catch_warnings():  # one class on both sides: 0, as documented above
    warnings.simplefilter('ignore', UserWarning)
    return float(matthews_corrcoef(labels, predictions))


def _correlation(kind: str):
  def compute(predictions, labels, classes):
    del classes
    import scipy.stats
    with warnings.catch_warnings():  # constant input: NaN, as documented above
      warnings.simplefilter('ignore', scipy.stats.ConstantInputWarning)
      test = scipy.stats.pearsonr if kind == 'pearson' else scipy.stats.spearmanr
      return float(test(np.asarray(predictions, np.float64),
                        np.asarray(labels, np.float64))[0])
  return compute


METRICS = {m.name: m for m in (
    Metric('accuracy', True, _accuracy),
    Metric('f1', True, _f1),
    Metric('mcc', True, _mcc),
    Metric('pearson', False, _correlation('pearson')),
    Metric('spearman', False, _correlation('spearman')),
)}


def check(names: Sequence[str], *, regression: bool) -> tuple[str, ...]:
  """``names`` when each is a metric that fits the task; ValueError naming the
  metric, what it fits and the choices otherwise."""
  names = tuple(names)
  if not names:
    raise ValueError('A task needs at least one metric; choose from '
                     f'{", ".join(METRICS)}.')
  for name in names:
    if name not in METRICS:
      raise ValueError(f'There is no metric {name!r}; choose from {", ".join(METRICS)}.')
    if METRICS[name].classes == regression:
      kind = 'regression' if regression else 'classification'
      fitting = [m for m, metric in METRICS.items() if metric.classes != regression]
      raise ValueError(f'The metric {name!r} scores '
                       f'{"classes" if METRICS[name].classes else "numbers"}, but this is a '
                       f'{kind} task; use {", ".join(fitting)}.')
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'The metrics {repeated} are listed more than once.')
  return names


def compute(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray,
            classes: int) -> dict[str, float]:
  """Each metric of ``names`` on ``predictions`` against ``labels``;
  ``classes`` is the number of classes (1 for regression)."""
  return {name: METRICS[name].compute(predictions, labels, classes) for name in names}


def score(values: Sequence[float]) -> float:
  """A task's one number: the mean of its metrics (GLUE's convention for the
  tasks with two)."""
  return float(np.mean(values))


def higher(value: float | None) -> float:
  """A metric as a sort key: NaN and missing values rank below every number."""
  return -math.inf if value is None or math.isnan(value) else value
