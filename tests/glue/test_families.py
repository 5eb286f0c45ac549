"""The fine-tuning command on every model family beside BERT (tests/glue/test_loop
and test_resume cover it): for ModernBERT and DeBERTa-v3, a run with
ROSE-Ensemble on packed rows killed mid-epoch and resumed to the same
parameters and files; the baselines that perturb embeddings or mask by
Fisher information; a regression sweep over the devices."""

import copy
import functools
from pathlib import Path

import chex
import numpy as np
import pytest

from rose_jax.glue import analysis, figures, grid, loop, sweep
from rose_jax.glue.commands import finetune
from rose_jax.models import (
  DebertaV2ForSequenceClassification,
  ModernBertForSequenceClassification,
  load_pretrained,
)
from tests import helpers
from tests.helpers import cli_args, fails
from tests.helpers.files import write_glue_task
from tests.helpers.parity import assert_float32_parity, per_example
from tests.helpers.runs import check_finished_run, read_run, run_copied_at

FAMILIES = {'modernbert': ModernBertForSequenceClassification,
            'deberta-v2': DebertaV2ForSequenceClassification}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  return {family: str(helpers.tiny_checkpoint(tmp_path_factory.mktemp(family), family=family))
          for family in FAMILIES}


def _config(files, model, out, **overrides):
  return loop.TrainConfig(**helpers.run_settings(files, out, model=model, **overrides))


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_a_run_resumes_exactly(files, checkpoints, tmp_path, monkeypatch, family):
  model = checkpoints[family]
  assert isinstance(load_pretrained(model), FAMILIES[family])
  # 6 steps, a checkpoint at step 2, killed at 5: resumed mid-epoch.
  settings = dict(save_every=2, method='rose-ensemble')
  expected = run_copied_at(
      monkeypatch, 5, lambda: loop.run(_config(files, model, tmp_path / 'whole', **settings)),
      {tmp_path / 'whole': tmp_path / 'run'})
  check_finished_run(tmp_path / 'whole', 'rose-ensemble', epochs=1)
  resumed = loop.run(_config(files, model, tmp_path / 'run', resume=True, **settings))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(tmp_path / 'run') == read_run(tmp_path / 'whole')
  # The best model is a checkpoint of its family again, with the run's dropout,
  # and transformers' class of the family gives its logits.
  saved = load_pretrained(tmp_path / 'whole' / 'best_model')
  assert saved.config == load_pretrained(model).config.with_dropout(0.1, 0.1)
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  reference = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / 'whole' / 'best_model', attn_implementation='eager').eval()
  assert type(reference).__name__ == f'{FAMILIES[family].__name__}'
  ids = np.asarray([[2, 10, 11, 12, 13, 3, 0, 0], [2, 14, 15, 3, 0, 0, 0, 0]])
  mask = (ids != 0).astype(int)
  exact = copy.deepcopy(reference).double()

  def logits(model, ids, mask):
    with torch.no_grad():
      return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()

  assert_float32_parity(saved(ids, mask), logits(reference, ids, mask),
                        per_example(functools.partial(logits, exact), ids, mask),
                        layers=saved.config.num_hidden_layers)
  # The analysis commands read it: the loss landscape around it, and the masks.
  analysis.landscape(tmp_path / 'whole', points=3, examples=8, progress=False)
  assert np.isfinite(analysis.flatness(tmp_path / 'whole')['centre_loss'])
  figures.mask_map([tmp_path / 'whole'], tmp_path / 'masks')
  assert (tmp_path / 'masks.png').stat().st_size > 5000


# SMART and FreeLB perturb the embeddings (data parallel over the 8 devices
# here); CHILD-TUNING_D makes a Fisher pass.
@pytest.mark.parametrize('family, method, parallel', [('modernbert', 'smart', 'shard_map'),
                                                      ('modernbert', 'child-tuning-d', 'none'),
                                                      ('deberta-v2', 'freelb', 'shard_map')])
def test_the_baselines_train_each_family(files, checkpoints, tmp_path, family, method,
                                         parallel):
  results = loop.run(_config(files, checkpoints[family], tmp_path / method, method=method,
                             max_train_samples=16, smart_step_size=1e-3, parallel=parallel))
  assert results['finished']
  check_finished_run(tmp_path / method, method, epochs=1)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_a_length_beyond_the_model_is_one_line_before_anything_is_written(
    files, checkpoints, tmp_path, capsys, family):
  argv = cli_args(files, tmp_path / 'runs', model=checkpoints[family], max_length='100')
  fails(finetune.main, argv, capsys, f"--max-length 100 exceeds what {checkpoints[family]}'s "
        'position table holds (64)')
  assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_each_family_trains_a_regression_sweep(files, checkpoints, tmp_path, family):
  # STS-B's one-output head on each family, two members sharded over the devices.
  stsb = write_glue_task(tmp_path / 'stsb', 'stsb')
  base = _config(files, checkpoints[family], tmp_path, task='stsb', method='rdrop-rose-ensemble',
                 train_file=stsb['train_file'], dev_file=stsb['dev_file'], adv_file=None,
                 max_train_samples=16, parallel=None)
  configs = grid.member_configs(base, grid.parse_grid(['seed=1,2']), tmp_path / 'sweep')
  members = sweep.run_sweep(configs)
  for member in members:
    assert member['finished'] and member['config']['task'] == 'stsb'
    assert np.isfinite(member['epochs'][0]['train_kl'])
    assert {'glue_dev_pearson', 'glue_dev_spearman'} <= set(member['epochs'][0])
  kernels = [member['final_params']['classifier']['kernel'] for member in members]
  assert not np.allclose(*kernels)  # each member trained its own
  assert load_pretrained(Path(configs[0].output_dir) / 'best_model').config.num_labels == 1
