"""Runs killed anywhere resume to the same parameters, logs and files."""

import functools
import json
import shutil

import chex
import jax
import numpy as np
import pytest

from rose_jax._src import seeds
from rose_jax.glue import checkpoints, loop
from rose_jax.glue.config import ConfigError
from rose_jax.training import step as step_lib
from tests import helpers
from tests.helpers.runs import (
  Killed,
  check_finished_run,
  read_run,
  run_copied_at,
  run_killed_at,
)

# 48 training rows in batches of 8: 6 steps an epoch. With save_every=4 the
# checkpoints are at steps 4, 6 (epoch end), 8 (epoch 2, batch 2), 12, ...
STEPS_PER_EPOCH = 6


def _config(files, out, **overrides):
  return loop.TrainConfig(**helpers.run_settings(files, out,
                                                 **{'epochs': 2, 'save_every': 4, **overrides}))


# Packed rows (the default) on one device and on 8, buckets on one, and the
# cheaper first-order risk (refreshed every 3 steps: the resumed run's first
# step, 9, is a refresh; from half of each packed batch).
MODES = {'none': {'parallel': 'none'}, 'shard_map': {'parallel': 'shard_map'},
         'buckets': {'parallel': 'none', 'packing': False},
         'cheap': {'parallel': 'none', 'first_order_every': 3, 'kl_fraction': 0.5}}


@pytest.fixture(scope='module')
def runs(files, tmp_path_factory):
  """Per mode, the uninterrupted run and the directory it had when step 11
  was called, as a run killed there leaves it: the newest checkpoint is step
  8 (epoch 2, batch 2), and the metric line of step 10 was written after it.
  Copy a killed directory before resuming it."""
  out = tmp_path_factory.mktemp('runs')
  made = {}
  with pytest.MonkeyPatch.context() as monkeypatch:
    for mode, settings in MODES.items():
      whole_dir, killed_dir = out / mode, out / f'{mode}-killed'
      result = run_copied_at(monkeypatch, 11,
                             functools.partial(loop.run, _config(files, whole_dir, **settings)),
                             {whole_dir: killed_dir})
      made[mode] = (result, whole_dir, killed_dir)
  return made


@pytest.fixture(scope='module')
def whole(runs):
  """Uninterrupted runs, one per mode: (results, directory)."""
  return {mode: (result, whole_dir) for mode, (result, whole_dir, _) in runs.items()}


@pytest.fixture(scope='module')
def killed(runs):
  """Runs killed at step 11, one per mode (see ``runs``)."""
  return {mode: killed_dir for mode, (_, _, killed_dir) in runs.items()}


def _copy(run, tmp_path):
  shutil.copytree(run, tmp_path / 'run')
  return tmp_path / 'run'


@pytest.mark.parametrize('mode', sorted(MODES))
def test_killed_mid_epoch_resumes_bit_identical(files, tmp_path, whole, killed, mode):
  assert jax.device_count() == 8
  expected, whole_dir = whole[mode]
  settings = MODES[mode]
  out = _copy(killed[mode], tmp_path)
  lines = (out / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(x).get('step') for x in lines][-1] == 10
  assert checkpoints.Checkpoints(out / 'checkpoints').steps()[-1] == 8
  with pytest.raises(ConfigError, match='--resume'):
    loop.run(_config(files, out, **settings))

  resumed = loop.run(_config(files, out, **settings, resume=True))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(out) == read_run(whole_dir)
  steps = [x['step'] for x in read_run(out)['metrics'] if 'type' not in x]
  assert steps == list(range(2, 2 * STEPS_PER_EPOCH + 1, 2))
  with pytest.raises(ConfigError, match='finished run'):
    loop.run(_config(files, out, **settings, resume=True))


def test_killed_during_evaluation_redoes_the_epoch(files, tmp_path, monkeypatch, whole):
  expected, whole_dir = whole['none']
  out = tmp_path / 'run'
  real = loop.Evaluator.__call__
  calls = {'n': 0}

  def dies_in_second_epoch(self, params, arrays):
    calls['n'] += 1
    if calls['n'] == 4:  # the AdvGLUE split of epoch 2, after its GLUE predictions
      raise Killed('killed during evaluation')
    return real(self, params, arrays)

  monkeypatch.setattr(loop.Evaluator, '__call__', dies_in_second_epoch)
  with pytest.raises(Killed):
    loop.run(_config(files, out))
  monkeypatch.setattr(loop.Evaluator, '__call__', real)
  # The epoch's files wait for every set's scores: none of epoch 2 was written.
  assert (out / 'predictions' / 'epoch1-glue_dev.jsonl').exists()
  assert not (out / 'predictions' / 'epoch2-glue_dev.jsonl').exists()
  resumed = loop.run(_config(files, out, resume=True))
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(out) == read_run(whole_dir)


def test_resume_refuses_other_settings_and_names_each(files, tmp_path, killed):
  out = _copy(killed['none'], tmp_path)
  before = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
  changed = tmp_path / 'train.tsv'
  shutil.copy(files['train_file'], changed)
  with changed.open('a') as f:
    f.write('good film \t1\n')
  with pytest.raises(ConfigError) as error:
    loop.run(_config(files, out, resume=True, learning_rate=3e-5, upper=0.5, seed=2,
                     max_length=10, train_file=str(changed)))
  message = str(error.value)
  for option in ('--learning-rate', '--upper', '--seed', '--max-length', '--train-file',
                 '--overwrite', '--output-root'):
    assert option in message
  assert {p: p.read_bytes() for p in out.rglob('*') if p.is_file()} == before


def test_a_changed_data_file_at_the_same_path_is_refused(files, tmp_path, monkeypatch):
  train = tmp_path / 'train.tsv'
  shutil.copy(files['train_file'], train)
  out = tmp_path / 'run'
  run_killed_at(monkeypatch, 5, _config(files, out, train_file=str(train)))
  with train.open('a') as f:
    f.write('good film \t1\n')
  with pytest.raises(ConfigError, match=r'--train-file .* has changed'):
    loop.run(_config(files, out, train_file=str(train), resume=True))


def test_a_damaged_checkpoint_falls_back_to_the_one_before(files, tmp_path, whole, killed,
                                                          caplog):
  expected, _ = whole['none']
  out = _copy(killed['none'], tmp_path)
  steps = checkpoints.Checkpoints(out / 'checkpoints').steps()
  assert steps == [6, 8]
  for file in (out / 'checkpoints' / '8').rglob('*'):
    if file.is_file() and file.stat().st_size > 100:
      file.write_bytes(file.read_bytes()[:50])  # truncated
  resumed = loop.run(_config(files, out, resume=True))
  assert 'cannot be restored' in caplog.text
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])


def test_no_restorable_checkpoint_names_the_directory(files, tmp_path, killed):
  out = _copy(killed['none'], tmp_path)
  for file in (out / 'checkpoints').rglob('*'):
    if file.is_file() and file.stat().st_size > 100:
      file.write_bytes(b'')
  with pytest.raises(checkpoints.CheckpointError, match=str(out / 'checkpoints')):
    loop.run(_config(files, out, resume=True))


def test_random_streams_are_separate_and_documented():
  values = {(seed, stream): seeds.stream_seed(seed, stream)
            for seed in range(4) for stream in seeds.STREAM_IDS}
  assert len(set(values.values())) == len(values)
  assert seeds.stream_seed(1, 'data') == int(
      np.random.SeedSequence((1, seeds.STREAM_IDS['data'])).generate_state(1)[0])
  with pytest.raises(ValueError, match='Unknown random stream'):
    seeds.stream_seed(1, 'dropuot')


def test_data_order_and_dropout_use_their_own_streams(files, tmp_path, monkeypatch):
  """The loop draws the data order from the data stream and dropout keys from
  the dropout stream, not from the seed itself."""
  from rose_jax.glue import batching
  orders, keys = [], []
  real_order, real_make = batching.epoch_order, step_lib.make_train_step

  def order(n, data_seed, epoch):
    orders.append(data_seed)
    return real_order(n, data_seed, epoch)

  def make(*args, **kwargs):
    step = real_make(*args, **kwargs)

    def recorded(params, opt_state, batch, key):
      keys.append(np.asarray(jax.random.key_data(key)))
      return step(params, opt_state, batch, key)
    return recorded

  monkeypatch.setattr(batching, 'epoch_order', order)
  monkeypatch.setattr(step_lib, 'make_train_step', make)
  loop.run(_config(files, tmp_path / 'run', epochs=1, seed=3))
  assert set(orders) == {seeds.stream_seed(3, 'data')}
  base = seeds.stream_key(3, 'dropout')
  np.testing.assert_array_equal(keys[1], jax.random.key_data(jax.random.fold_in(base, 1)))


# SMART with its teacher covers plain SMART's path too (test_loop trains plain SMART).
@pytest.mark.parametrize('method, extra', [('child-tuning-d', {}),
                                           ('smart', {'smart_bregman_mu': 1.0}), ('freelb', {})])
def test_each_baseline_runs_and_resumes_exactly(files, tmp_path, monkeypatch, method, extra):
  from rose_jax.baselines import fisher
  passes = {'n': 0}
  real_fisher = fisher.fisher_information

  def counted_fisher(*args, **kwargs):
    passes['n'] += 1
    return real_fisher(*args, **kwargs)

  monkeypatch.setattr(fisher, 'fisher_information', counted_fisher)
  settings = dict(method=method, epochs=1, save_every=2, smart_step_size=1e-3, **extra)
  out = tmp_path / 'run'  # as killed at step 5
  expected = run_copied_at(monkeypatch, 5,
                           functools.partial(loop.run, _config(files, tmp_path / 'whole',
                                                               **settings)),
                           {tmp_path / 'whole': out})
  check_finished_run(tmp_path / 'whole', method, epochs=1)
  assert passes['n'] == (method == 'child-tuning-d')
  resumed = loop.run(_config(files, out, resume=True, **settings))
  assert passes['n'] == (method == 'child-tuning-d'), 'the resume redid the Fisher pass'
  chex.assert_trees_all_equal(resumed['final_params'], expected['final_params'])
  assert read_run(out) == read_run(tmp_path / 'whole')
