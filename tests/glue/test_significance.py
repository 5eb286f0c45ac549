"""The paper's significance marks on hand-written runs: each ROSE row against
each baseline by scipy's one-tailed Welch t-test, the bold cells in the
Markdown table, the p-values in significance.csv, and cells left unmarked for
want of seeds."""

import csv

import numpy as np
import pytest
import scipy.stats

from rose_jax.glue import significance
from rose_jax.glue.commands import report as report_cli
from tests.helpers.runs import write_finished_run

# Each run's GLUE dev accuracy by method: ROSE-Ensemble clearly above vanilla,
# ROSE-First within its spread.
ACCURACY = {'vanilla': (0.60, 0.62, 0.61), 'rose-ensemble': (0.80, 0.82, 0.81),
            'rose-first': (0.60, 0.70, 0.62)}


def _write(root, accuracies, seeds=(1, 2, 3)):
  for method, values in accuracies.items():
    for seed, value in zip(seeds, values, strict=False):
      right = round(100 * value)
      pairs = [(1, 1)] * right + [(0, 1)] * (100 - right)
      write_finished_run(root / f'sst2-{method}-seed{seed}', method=method, seed=seed,
                         predictions={'glue_dev': [pairs]})


def test_the_marks_are_scipys_one_tailed_welch_tests(tmp_path):
  _write(tmp_path / 'runs', ACCURACY)
  assert report_cli.main([str(tmp_path / 'runs'), '--output-dir', str(tmp_path / 'out')]) == 0
  with open(tmp_path / 'out' / 'significance.csv') as f:
    rows = {(r['row'], r['baseline']): r for r in csv.DictReader(f)}
  for rose in ('rose-ensemble', 'rose-first'):
    want = scipy.stats.ttest_ind(100 * np.asarray(ACCURACY[rose]),
                                 100 * np.asarray(ACCURACY['vanilla']), equal_var=False,
                                 alternative='greater')
    row = rows[(rose, 'vanilla')]
    assert float(row['p_one_tailed']) == pytest.approx(want.pvalue, rel=1e-5)
    assert float(row['t']) == pytest.approx(want.statistic, rel=1e-5)
    assert row['column'] == 'SST2 GLUE' and row['seeds'] == row['baseline_seeds'] == '3'
  assert float(rows[('rose-ensemble', 'vanilla')]['p_one_tailed']) < 0.05
  assert float(rows[('rose-first', 'vanilla')]['p_one_tailed']) > 0.05
  table = (tmp_path / 'out' / 'table.md').read_text()
  assert '| rose-ensemble | 3 | **81.00 ± 0.82** |' in table
  assert '| rose-first | 3 | 64.00 ± 4.32 |' in table  # not significant: not bold
  assert 'Bold: a ROSE row above every baseline of its column at p < 0.05' in table


def test_one_seed_leaves_the_mark_out_and_says_why(tmp_path):
  _write(tmp_path / 'runs', {'vanilla': (0.60, 0.62), 'rose-ensemble': (0.90,)})
  assert report_cli.main([str(tmp_path / 'runs'), '--output-dir', str(tmp_path / 'out')]) == 0
  table = (tmp_path / 'out' / 'table.md').read_text()
  assert '**' not in table
  assert 'Not tested (fewer than two seeds on a side): rose-ensemble (SST2 GLUE).' in table


def test_a_cell_must_beat_every_baseline():
  found = significance.tests({'A': {'vanilla': [1.0, 1.1, 0.9], 'smart': [5.0, 5.2, 4.8],
                                    'rose-second': [3.0, 3.1, 2.9]}})
  assert {t.baseline for t in found} == {'vanilla', 'smart'}
  assert significance.marked(found) == set()  # above vanilla, below SMART
  found = significance.tests({'A': {'vanilla': [1.0, 1.1, 0.9], 'rose-second': [3.0, 3.1, 2.9]}})
  assert significance.marked(found) == {('rose-second', 'A')}
