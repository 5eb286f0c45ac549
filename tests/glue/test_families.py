"""The fine-tuning command on every model family beside BERT (tests/glue/test_loop
and test_resume cover it): a ModernBERT run with ROSE-Ensemble on packed rows,
killed mid-epoch and resumed to the same parameters and files, the baselines
that perturb embeddings or mask by Fisher information, and a sweep."""

from pathlib import Path

import chex
import numpy as np
import pytest

from rose_jax.glue import loop, sweep
from rose_jax.models import ModernBertForSequenceClassification, load_pretrained
from tests import helpers
from tests.helpers.runs import check_finished_run, read_run, run_killed_at


@pytest.fixture(scope='module')
def modernbert(tmp_path_factory):
  return str(helpers.tiny_checkpoint(tmp_path_factory.mktemp('modernbert'), family='modernbert'))


def _config(files, model, out, **overrides):
  return loop.TrainConfig(**helpers.run_settings(files, out, model=model, **overrides))


def test_a_modernbert_run_resumes_exactly(files, modernbert, tmp_path, monkeypatch):
  assert isinstance(load_pretrained(modernbert), ModernBertForSequenceClassification)
  # 6 steps, a checkpoint at step 2, killed at 5: resumed mid-epoch.
  settings = dict(save_every=2, method='rose-ensemble')
  expected = loop.run(_config(files, modernbert, tmp_path / 'whole', **settings))
  check_finished_run(tmp_path / 'whole', 'rose-ensemble', epochs=1)
  run_killed_at(monkeypatch, 5, _config(files, modernbert, tmp_path / 'run', **settings))
  resumed = loop.run(_config(files, modernbert, tmp_path / 'run', resume=True, **settings))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(tmp_path / 'run') == read_run(tmp_path / 'whole')
  # The best model is a ModernBERT checkpoint again, with the run's dropout.
  saved = load_pretrained(tmp_path / 'whole' / 'best_model')
  assert saved.config == load_pretrained(modernbert).config.with_dropout(0.1, 0.1)


# SMART perturbs the embeddings as FreeLB does; CHILD-TUNING_D makes a Fisher pass.
@pytest.mark.parametrize('method', ['smart', 'child-tuning-d'])
def test_the_baselines_train_modernbert(files, modernbert, tmp_path, method):
  results = loop.run(_config(files, modernbert, tmp_path / method, method=method,
                             max_train_samples=16, smart_step_size=1e-3))
  assert results['finished']
  check_finished_run(tmp_path / method, method, epochs=1)


def test_a_modernbert_sweep_trains_its_members_over_devices(files, modernbert, tmp_path):
  # A sweep's members equal their runs alone whatever the model
  # (tests/glue/test_sweep.py); here the members are ModernBERTs.
  base = _config(files, modernbert, tmp_path, max_train_samples=16, parallel=None)
  configs = sweep.member_configs(base, sweep.parse_grid(['learning_rate=1e-3,3e-3']),
                                 tmp_path / 'sweep')
  together = sweep.run_sweep(configs)
  assert all(member['finished'] for member in together)
  for config in configs:
    check_finished_run(Path(config.output_dir), 'rose-ensemble', epochs=1)
  kernels = [member['final_params']['classifier']['kernel'] for member in together]
  assert not np.allclose(*kernels)
