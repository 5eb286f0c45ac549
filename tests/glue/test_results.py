"""A run's results as typed values: results.json's layout read and written
back unchanged, the best epoch by the task's metric (never an undefined one),
and run directories written before tasks had metrics of their own, reported
and resumed."""

import json
import math

import chex
import numpy as np

from rose_jax.glue import loop
from rose_jax.glue.commands import analyze
from rose_jax.glue.commands import report as report_cli
from rose_jax.glue.results import Epoch, Results
from rose_jax.glue.run_dir import RunDirectory
from tests import helpers
from tests.helpers.runs import read_run, run_copied_at, write_finished_run

# Settings that runs saved before tasks were data did not have.
NEW_SETTINGS = ('eval_files', 'text_columns', 'label_column', 'labels', 'metrics')


def _as_saved_before(out) -> dict:
  """``out``'s results.json as a run of the version before saved it."""
  results = json.loads((out / 'results.json').read_text())
  for name in NEW_SETTINGS:
    del results['config'][name]
  (out / 'results.json').write_text(json.dumps(results))
  return results


def test_results_json_reads_and_writes_back_unchanged(tmp_path):
  rng = np.random.default_rng(0)
  pairs = lambda: [(int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(10)]
  written = write_finished_run(tmp_path / 'run', predictions={
      'glue_dev': [pairs(), pairs(), pairs()], 'adv_dev': [pairs(), pairs(), pairs()]},
      method='vanilla')
  results = RunDirectory(tmp_path / 'run').results()
  assert results.best_key == 'glue_dev_accuracy'
  best = results.best()
  assert best.epoch == written['best_epoch'] and results.summary() == {
      k: written[k] for k in ('glue_dev_accuracy', 'adv_dev_accuracy')}
  # Typed and back: the same JSON, key for key and in order.
  assert json.dumps(results.to_json()) == json.dumps(written)


def test_the_best_epoch_is_never_an_undefined_one():
  epoch = lambda n, value: Epoch(n, n, evaluation={'dev_pearson': value})
  results = Results({}, 'dev_pearson', epochs=(epoch(1, float('nan')), epoch(2, -0.5),
                                              epoch(3, -0.5)))
  assert results.best().epoch == 2  # the first of ties, never NaN
  assert results.to_json()['epochs'][0]['dev_pearson'] is None  # null in JSON, not NaN
  only = Results({}, 'dev_pearson', epochs=(epoch(1, float('nan')),))
  assert only.best().epoch == 1 and only.to_json()['dev_pearson'] is None
  assert math.isnan(only.summary()['dev_pearson'])


def test_a_run_saved_before_tasks_had_metrics_is_reported(tmp_path):
  rng = np.random.default_rng(1)
  pairs = lambda: [(int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(10)]
  for seed in (1, 2):
    out = tmp_path / 'runs' / f'sst2-vanilla-seed{seed}'
    write_finished_run(out, predictions={'glue_dev': [pairs()], 'adv_dev': [pairs()]},
                       method='vanilla', seed=seed)
    _as_saved_before(out)
  assert report_cli.main([str(tmp_path / 'runs'), '--output-dir', str(tmp_path / 'out')]) == 0
  header = (tmp_path / 'out' / 'table.csv').read_text().splitlines()[0]
  assert header.startswith('Method,Seeds,SST2 GLUE,SST2 AdvGLUE,')
  assert analyze.main(['curves', str(tmp_path / 'runs' / 'sst2-vanilla-seed1'), '--output-dir',
                       str(tmp_path / 'analysis')]) == 0
  assert (tmp_path / 'analysis' / 'curves.png').stat().st_size > 5000


def test_a_run_killed_before_tasks_had_metrics_resumes_exactly(files, tmp_path, monkeypatch):
  settings = dict(save_every=2, log_every=1, max_train_samples=40)
  config = lambda out, **more: loop.TrainConfig(**helpers.run_settings(files, out, **settings,
                                                                       **more))
  expected = run_copied_at(monkeypatch, 4, lambda: loop.run(config(tmp_path / 'whole')),
                           {tmp_path / 'whole': tmp_path / 'run'})
  _as_saved_before(tmp_path / 'run')
  resumed = loop.run(config(tmp_path / 'run', resume=True))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  got, want = read_run(tmp_path / 'run'), read_run(tmp_path / 'whole')
  assert got == want
