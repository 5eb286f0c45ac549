"""rose_jax.glue.report and report.py on run directories written by hand: the
table's arithmetic, rows for runs with other settings, and what is refused."""

import json
import shutil

import numpy as np
import pytest

from rose_jax.glue import report
from rose_jax.glue.commands import report as report_cli
from tests.helpers import fails, snapshot
from tests.helpers.runs import write_finished_run

ROWS = 20


def _pairs(rng, accuracy: float) -> list[tuple[int, int]]:
  labels = rng.integers(0, 2, ROWS)
  right = rng.random(ROWS) < accuracy
  return [(int(y if ok else 1 - y), int(y)) for y, ok in zip(labels, right, strict=True)]


def _runs(root, grid) -> dict:
  """Runs for ``grid``: (method, task, seed, settings) each; their results by directory."""
  rng = np.random.default_rng(0)
  written = {}
  for method, task, seed, settings in grid:
    out = root / f'{task}-{method}-seed{seed}-{len(written)}'
    predictions = {split: [_pairs(rng, rng.uniform(0.3, 0.9)) for _ in range(3)]
                   for split in ('glue_dev', 'adv_dev')}
    written[out] = write_finished_run(out, predictions=predictions, method=method, task=task,
                                      seed=seed, **settings)
  return written


def test_the_table_is_the_mean_and_spread_of_the_best_epochs(tmp_path):
  grid = [(m, t, s, {}) for m in ('vanilla', 'rose-second') for t in ('rte', 'sst2')
          for s in (1, 2, 3)]
  runs = _runs(tmp_path / 'runs', grid)
  assert report_cli.main([str(tmp_path / 'runs'), '--output-dir', str(tmp_path / 'out')]) == 0
  lines = (tmp_path / 'out' / 'table.csv').read_text().splitlines()
  header, body = lines[0].split(','), [r.split(',') for r in lines[1:]]
  assert header == ['Method', 'Seeds', 'SST2 GLUE', 'SST2 AdvGLUE', 'RTE GLUE', 'RTE AdvGLUE',
                    'Avg GLUE+AdvGLUE', 'Avg Δ↓']
  assert [r[0] for r in body] == ['vanilla', 'rose-second']  # Table 1's order
  for row, method in zip(body, ('vanilla', 'rose-second'), strict=True):
    means, drops = [], []
    assert row[1] == '3'  # seeds
    for column, task in ((2, 'sst2'), (4, 'rte')):
      best = {split: [100 * r['epochs'][r['best_epoch'] - 1][f'{split}_accuracy']
                      for r in runs.values() if r['config']['method'] == method
                      and r['config']['task'] == task] for split in ('glue_dev', 'adv_dev')}
      # The best epoch is the first with the highest GLUE dev accuracy.
      for r in runs.values():
        accuracies = [e['glue_dev_accuracy'] for e in r['epochs']]
        assert r['best_epoch'] == 1 + accuracies.index(max(accuracies))
      glue, adv = best['glue_dev'], best['adv_dev']
      assert row[column] == f'{np.mean(glue):.2f} ± {np.std(glue):.2f}'
      assert row[column + 1] == f'{np.mean(adv):.2f} ± {np.std(adv):.2f}'
      means += [np.mean(glue), np.mean(adv)]
      drops.append(np.mean(glue) - np.mean(adv))
    assert row[6] == f'{np.mean(means):.2f}' and row[7] == f'{np.mean(drops):.2f}'
  assert '| vanilla |' in (tmp_path / 'out' / 'table.md').read_text()
  for name in ('accuracy', 'curves'):
    assert (tmp_path / 'out' / f'{name}.png').read_bytes()[:4] == b'\x89PNG'


def test_one_seed_has_no_spread_and_a_run_without_advglue_has_no_drop(tmp_path):
  runs = _runs(tmp_path / 'runs', [('vanilla', 'sst2', 1, {}),
                                   ('rose-first', 'sst2', 1, {'no_adv': True})])
  path = next(p for p, r in runs.items() if r['config']['method'] == 'rose-first')
  results = json.loads((path / 'results.json').read_text())
  del results['adv_dev_accuracy']
  (path / 'results.json').write_text(json.dumps(results))
  runs = report.collect([tmp_path / 'runs'])
  _, body = report.rows(report.summarise(runs), runs)
  by_method = {row[0]: row for row in body}
  assert ' ± ' not in by_method['vanilla'][2]
  assert by_method['rose-first'][3] == '-' and by_method['rose-first'][-1] == '-'


def test_runs_with_other_settings_are_rows_of_their_own(tmp_path, capsys):
  root = tmp_path / 'runs'
  _runs(root, [('vanilla', 'sst2', 1, {'learning_rate': 1e-3}),
               ('vanilla', 'sst2', 2, {'learning_rate': 2e-3}),
               ('rose-ensemble', 'sst2', 1, {'upper': 0.4}),
               ('rose-ensemble', 'sst2', 2, {'upper': 0.4})])
  before = snapshot(root)
  assert report_cli.main([str(root), '--output-dir', str(tmp_path / 'report')]) == 0
  table = (tmp_path / 'report' / 'table.md').read_text()
  assert '| vanilla (learning_rate=0.001) |' in table
  assert '| vanilla (learning_rate=0.002) |' in table
  assert '| rose-ensemble |' in table  # two seeds of one setting pool into one row
  assert snapshot(root) == before


def test_the_same_run_twice_or_other_data_is_refused(tmp_path, capsys):
  root = tmp_path / 'runs'
  runs = _runs(root, [('vanilla', 'sst2', 1, {})])
  run = next(iter(runs))
  copy = tmp_path / 'copy' / run.name
  shutil.copytree(run, copy)
  fails(report_cli.main, [str(run), str(copy.parent), '--output-dir', str(tmp_path / 'out')],
        capsys, 'the same run twice')
  changed = json.loads((copy / 'results.json').read_text())
  changed['config']['seed'], changed['data_digests']['train_file'] = 5, 'another file'
  (copy / 'results.json').write_text(json.dumps(changed))
  fails(report_cli.main, [str(run), str(copy.parent), '--output-dir', str(tmp_path / 'out')],
        capsys, 'different data files')
  assert not (tmp_path / 'out').exists()


def test_only_finished_runs_are_reported(tmp_path):
  runs = _runs(tmp_path / 'runs', [('vanilla', 'sst2', 1, {}), ('vanilla', 'sst2', 2, {})])
  unfinished = next(iter(runs))
  results = json.loads((unfinished / 'results.json').read_text())
  results['finished'] = False
  (unfinished / 'results.json').write_text(json.dumps(results))
  assert [r['config']['seed'] for r in report.collect([tmp_path / 'runs'])] == [2]
  with pytest.raises(ValueError, match='No finished run'):
    report.collect([unfinished])
