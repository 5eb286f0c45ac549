"""The paper's Tables 3 and 4 and Figure 3 from hand-written run directories:
ROSE-Ensemble per gamma, the dropout disagreement at chosen steps, and the
probing dots."""

import csv
import json

import numpy as np
import pytest

from rose_jax.glue import paper_tables
from rose_jax.glue.commands import report as report_cli
from tests.helpers.runs import write_finished_run


def _pairs(accuracy):
  right = round(100 * accuracy)
  return [(1, 1)] * right + [(0, 1)] * (100 - right)


def test_table_3_is_the_average_and_drop_per_gamma(tmp_path):
  root = tmp_path / 'runs'
  values = {0.1: (0.9, 0.5), 0.5: (0.8, 0.7), 0.9: (0.7, 0.6)}  # (GLUE, AdvGLUE) per gamma
  for gamma, (glue, adv) in values.items():
    for seed in (1, 2):
      write_finished_run(root / f'sst2-rose-ensemble-gamma{gamma}-seed{seed}',
                         method='rose-ensemble', seed=seed, gamma=gamma,
                         predictions={'glue_dev': [_pairs(glue)], 'adv_dev': [_pairs(adv)]})
  write_finished_run(root / 'sst2-vanilla-seed1', method='vanilla',
                     predictions={'glue_dev': [_pairs(0.5)], 'adv_dev': [_pairs(0.5)]})
  assert report_cli.main([str(root), '--output-dir', str(tmp_path / 'out')]) == 0
  with open(tmp_path / 'out' / 'gamma.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['gamma'] for r in rows] == ['0.1', '0.5', '0.9']
  for row, (glue, adv) in zip(rows, values.values(), strict=True):
    assert row['Avg GLUE+AdvGLUE'] == f'{100 * (glue + adv) / 2:.2f}'
    assert row['Avg Δ↓'] == f'{100 * (glue - adv):.2f}' and row['Seeds'] == '2'
  # Without two values of gamma there is no Table 3.
  assert paper_tables.gamma_table([{'config': {'method': 'vanilla', 'gamma': 0.5}}]) is None


def test_table_4_is_the_disagreement_logged_at_each_step(tmp_path):
  root = tmp_path / 'runs'
  # None: a window of steps that measured no disagreement (a refresh schedule's).
  logged = {'rdrop': [(100, 0.4), (200, 0.3), (400, 0.2), (450, None), (600, 0.1)],
            'rose-first': [(200, 0.2), (600, 0.05)]}
  for method, lines in logged.items():
    for seed in (1, 2):
      out = root / f'sst2-{method}-seed{seed}'
      write_finished_run(out, method=method, seed=seed, predictions={'glue_dev': [_pairs(0.5)]})
      scale = 1.0 if seed == 1 else 0.5
      (out / 'metrics.jsonl').write_text(''.join(
          json.dumps({'step': s, 'epoch': 1, 'loss': 0.1,
                      'disagreement': None if d is None else scale * d}) + '\n'
          for s, d in lines) + json.dumps({'type': 'epoch', 'epoch': 1, 'step': 600}) + '\n')
  write_finished_run(root / 'sst2-vanilla-seed1', method='vanilla',
                     predictions={'glue_dev': [_pairs(0.5)]})  # one pass: nothing logged
  assert report_cli.main([str(root), '--output-dir', str(tmp_path / 'out'),
                          '--disagreement-steps', '50', '200', '500', '700']) == 0
  with open(tmp_path / 'out' / 'disagreement.csv') as f:
    rows = {r['Method']: r for r in csv.DictReader(f)}
  assert set(rows) == {'rdrop', 'rose-first'}
  # The last line at or before each step; the mean over the two seeds (x1 and x0.5), in %.
  assert rows['rdrop']['step 50'] == '-'
  assert rows['rdrop']['step 200'] == f'{100 * 0.3 * 0.75:.2f}'
  assert rows['rdrop']['step 500'] == f'{100 * 0.2 * 0.75:.2f}'
  assert rows['rose-first']['step 500'] == f'{100 * 0.2 * 0.75:.2f}'
  # After the runs' last step (600) there is nothing to report.
  assert rows['rdrop']['step 700'] == rows['rose-first']['step 700'] == '-'


def test_figure_3_has_a_dot_per_probing_run(tmp_path):
  from rose_jax.glue import report
  runs = []
  for method, values in (('vanilla', (-0.5, -0.3)), ('rose-ensemble', (0.2, 0.4))):
    for seed, value in zip((1, 2), values, strict=True):
      runs.append({'config': {'task': 'msgs', 'task_name': 'control_raising_length',
                              'method': method, 'seed': seed, 'train_file': 't',
                              'eval_files': ['msgs=x']},
                   'msgs_test_mcc': value, 'msgs_training_mcc': 1.0, 'finished': True,
                   'path': str(tmp_path / f'{method}{seed}' / 'results.json')})
  points = report.probing_points(runs)
  assert points == {'control_raising_length': {'vanilla': [-0.5, -0.3],
                                               'rose-ensemble': [0.2, 0.4]}}
  from rose_jax.glue import plots
  png, _ = plots.dots(points, tmp_path / 'probing', ylabel='MCC', title='probing')
  assert png.stat().st_size > 5000
  assert np.mean(points['control_raising_length']['rose-ensemble']) == pytest.approx(0.3)
