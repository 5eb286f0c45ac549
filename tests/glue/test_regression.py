"""STS-B, a regression task, end to end: every method that can train a number
(all but SMART, refused by name), a run killed mid-epoch and resumed to the
same parameters and files, and the saved one-output model as transformers
reads it."""

import json

import chex
import numpy as np
import pytest

from rose_jax.glue import loop
from rose_jax.glue.commands import finetune
from rose_jax.models import load_pretrained
from tests.helpers import fails
from tests.helpers.files import write_glue_task
from tests.helpers.runs import read_run, run_copied_at

METHODS = ('vanilla', 'rdrop', 'child-tuning-d', 'freelb', 'rose-first', 'rose-second',
           'rose-ensemble', 'rdrop-rose-first', 'rdrop-rose-second', 'rdrop-rose-ensemble')


@pytest.fixture(scope='module')
def stsb(tmp_path_factory):
  return write_glue_task(tmp_path_factory.mktemp('stsb'), 'stsb', train=24)


def _config(files, stsb, out, **overrides):
  return loop.TrainConfig(**{
      'task': 'stsb', 'model': files['model'], 'train_file': stsb['train_file'],
      'dev_file': stsb['dev_file'], 'output_dir': str(out), 'epochs': 1, 'batch_size': 8,
      'max_length': 12, 'progress': False, 'parallel': 'none', 'learning_rate': 1e-3,
      'log_every': 1, **overrides})


@pytest.mark.parametrize('method', METHODS)
def test_each_method_trains_stsb(files, stsb, tmp_path, method):
  results = loop.run(_config(files, stsb, tmp_path / method, method=method))
  assert results['finished'] and results['best_epoch'] == 1
  epoch = results['epochs'][0]
  for key in ('glue_dev_pearson', 'glue_dev_spearman', 'train_loss', 'train_ce'):
    assert key in epoch and epoch[key] is not None and np.isfinite(epoch[key]), key
  assert 'train_accuracy' not in epoch and 'train_disagreement' not in epoch
  lines = [json.loads(x) for x in
           (tmp_path / method / 'predictions' / 'epoch1-glue_dev.jsonl').read_text().splitlines()]
  assert all(isinstance(x['prediction'], float) for x in lines)
  np.testing.assert_allclose([x['label'] for x in lines], stsb['labels']['dev'], rtol=1e-6)
  # Two passes compare their outputs: a consistency term wherever the method has one.
  two_passes = method.startswith(('rdrop', 'rose-first', 'rose-ensemble'))
  steps = [json.loads(x) for x in (tmp_path / method / 'metrics.jsonl').read_text().splitlines()
           if 'type' not in x]
  assert all((x['kl'] > 0) == two_passes for x in steps), method


def test_smart_is_refused_before_anything_is_written(files, stsb, tmp_path, capsys):
  fails(finetune.main, ['--task', 'stsb', '--method', 'smart', '--model', files['model'],
                        '--train-file', stsb['train_file'], '--dev-file', stsb['dev_file'],
                        '--output-root', str(tmp_path)], capsys,
        '--method smart cannot train stsb: smart regularises with a KL divergence')
  assert not any(tmp_path.iterdir())


def test_a_killed_regression_run_resumes_exactly(files, stsb, tmp_path, monkeypatch):
  settings = dict(method='rose-ensemble', save_every=1)
  expected = run_copied_at(
      monkeypatch, 2, lambda: loop.run(_config(files, stsb, tmp_path / 'whole', **settings)),
      {tmp_path / 'whole': tmp_path / 'run'})
  resumed = loop.run(_config(files, stsb, tmp_path / 'run', resume=True, **settings))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(tmp_path / 'run') == read_run(tmp_path / 'whole')
  # The best model: one output, saved as regression, the same numbers in transformers.
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  saved = tmp_path / 'whole' / 'best_model'
  assert json.loads((saved / 'config.json').read_text())['problem_type'] == 'regression'
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(saved).eval()
  ids = np.asarray([[2, 10, 11, 12, 3, 0], [2, 14, 3, 0, 0, 0]])
  mask = (ids != 0).astype(int)
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  ours = load_pretrained(saved)
  assert ours.config.num_labels == 1
  np.testing.assert_allclose(ours(ids, mask), want.numpy(), atol=1e-5, rtol=1e-5)
