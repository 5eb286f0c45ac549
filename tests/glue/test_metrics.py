"""Each metric against its definition written out here in NumPy and against
scikit-learn and scipy on random predictions, the cases where the libraries'
edge cases differ (one class, constant predictions), and which metrics fit
which tasks."""

import math

import hypothesis
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from hypothesis import strategies as st

from rose_jax.glue import metrics


def _binary_f1(p, y):
  tp, fp, fn = np.sum((p == 1) & (y == 1)), np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
  return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _mcc(p, y, classes):
  c = np.zeros((classes, classes))
  np.add.at(c, (y, p), 1)
  t, q, s, n = c.sum(1), c.sum(0), np.trace(c), c.sum()
  denominator = np.sqrt(n**2 - q @ q) * np.sqrt(n**2 - t @ t)
  return 0.0 if denominator == 0 else (s * n - q @ t) / denominator


def _pearson(p, y):
  p, y = p - p.mean(), y - y.mean()
  return float(p @ y / np.sqrt((p @ p) * (y @ y)))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(classes=st.integers(2, 4), data=st.data())
def test_class_metrics_are_their_definitions_and_the_libraries(classes, data):
  n = data.draw(st.integers(2, 30))
  labels = np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
  predictions = np.asarray(data.draw(st.lists(st.integers(0, classes - 1), min_size=n,
                                              max_size=n)))
  got = metrics.compute(('accuracy', 'f1', 'mcc'), predictions, labels, classes)
  assert got['accuracy'] == pytest.approx(np.mean(predictions == labels))
  assert got['mcc'] == pytest.approx(_mcc(predictions, labels, classes), abs=1e-12)
  assert got['mcc'] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, predictions))
  if classes == 2:  # MRPC and QQP: F1 of class 1
    assert got['f1'] == pytest.approx(_binary_f1(predictions, labels))
  else:  # the mean of each class's F1, one against the rest
    per_class = [_binary_f1((predictions == c).astype(int), (labels == c).astype(int))
                 for c in range(classes)]
    assert got['f1'] == pytest.approx(np.mean(per_class))
    assert got['f1'] == pytest.approx(sklearn.metrics.f1_score(
        labels, predictions, labels=list(range(classes)), average='macro', zero_division=0))


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(data=st.data())
def test_correlations_are_their_definitions_and_scipys(data):
  n = data.draw(st.integers(3, 30))
  values = st.floats(-5, 5, allow_nan=False, width=32)
  labels = np.asarray(data.draw(st.lists(values, min_size=n, max_size=n)), np.float64)
  predictions = np.asarray(data.draw(st.lists(values, min_size=n, max_size=n)), np.float64)
  hypothesis.assume(np.ptp(labels) > 1e-3 and np.ptp(predictions) > 1e-3)
  got = metrics.compute(('pearson', 'spearman'), predictions, labels, 1)
  assert got['pearson'] == pytest.approx(_pearson(predictions, labels), abs=1e-9)
  assert got['pearson'] == pytest.approx(scipy.stats.pearsonr(predictions, labels)[0])
  ranks = [scipy.stats.rankdata(x) for x in (predictions, labels)]  # ties share a mean rank
  assert got['spearman'] == pytest.approx(_pearson(*ranks), abs=1e-9)
  assert got['spearman'] == pytest.approx(scipy.stats.spearmanr(predictions, labels)[0])


def test_where_the_libraries_leave_a_metric_undefined():
  ones = np.ones(6, int)
  # All one class on both sides: MCC 0 (no correlation), F1 of class 1 perfect.
  assert metrics.compute(('mcc', 'f1'), ones, ones, 2) == {'mcc': 0.0, 'f1': 1.0}
  # No positive prediction and no positive label: F1 0, not a warning and NaN.
  assert metrics.compute(('f1',), 0 * ones, 0 * ones, 2) == {'f1': 0.0}
  # One predicted class against two true ones: MCC 0.
  assert metrics.compute(('mcc',), ones, np.asarray([0, 1] * 3), 2) == {'mcc': 0.0}
  # Constant predictions have no correlation: NaN.
  got = metrics.compute(('pearson', 'spearman'), np.full(5, 2.5), np.arange(5.0), 1)
  assert math.isnan(got['pearson']) and math.isnan(got['spearman'])
  assert metrics.higher(float('nan')) < metrics.higher(-1.0) and metrics.higher(None) == -math.inf


@pytest.mark.parametrize('names, regression, match', [
    (('accuracy', 'bleu'), False, "There is no metric 'bleu'; choose from accuracy, f1"),
    (('f1',), True, "'f1' scores classes, but this is a regression task; use pearson"),
    (('pearson',), False, "'pearson' scores numbers, but this is a classification task"),
    (('mcc', 'mcc'), False, r"\['mcc'\] are listed more than once"),
    ((), False, 'at least one metric'),
])
def test_metrics_that_do_not_exist_or_fit_are_named(names, regression, match):
  with pytest.raises(ValueError, match=match):
    metrics.check(names, regression=regression)
