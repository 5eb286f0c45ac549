"""The command line is derived from TrainConfig, and each setting is checked by name."""

import argparse
import dataclasses

import pytest

from rose_jax._src import distributed
from rose_jax.glue import config as config_lib
from rose_jax.glue.commands import finetune
from rose_jax.glue.config import ConfigError, TrainConfig


def test_every_field_is_an_option_with_the_configs_default():
  args = finetune.parse_args([])
  for field in dataclasses.fields(TrainConfig):
    if field.metadata['cli']:
      value = getattr(args, field.name)
      if field.metadata['repeated']:  # argparse appends to a list it makes
        value = tuple(value or ())
      assert value == field.default, field.name
  config = finetune.configs(args)[0]
  assert dataclasses.replace(config, output_dir=TrainConfig.output_dir) == TrainConfig()
  parser = argparse.ArgumentParser()
  config_lib.add_arguments(parser)
  options = {o for action in parser._actions for o in action.option_strings}
  assert {'--b1', '--b2', '--eps', '--save-every', '--tensorboard', '--no-progress',
          '--no-adv'} <= options


def test_options_reach_the_config():
  args = finetune.parse_args(['--b1', '0.8', '--learning-rate', '3e-5', '--no-progress',
                              '--tensorboard', '--seeds', '4', '5', '--output-root', 'out'])
  configs = finetune.configs(args)
  assert [(c.seed, c.output_dir) for c in configs] == [
      (4, 'out/sst2-rose-ensemble-seed4'), (5, 'out/sst2-rose-ensemble-seed5')]
  assert configs[0].b1 == 0.8 and configs[0].learning_rate == 3e-5
  assert not configs[0].progress and configs[0].tensorboard


BAD = [
    ('--learning-rate', '-1', 'positive'),
    ('--learning-rate', '0', 'positive'),
    ('--learning-rate', 'nan', 'positive'),
    ('--batch-size', '0', 'at least 1'),
    ('--batch-size', '-4', 'at least 1'),
    ('--epochs', '0', 'at least 1'),
    ('--max-train-samples', '-5', 'at least 1'),
    ('--max-eval-samples', '0', 'at least 1'),
    ('--log-every', '0', 'at least 1'),
    ('--save-every', '-1', '0 or more'),
    ('--warmup-ratio', '1', r'in \[0, 1\)'),
    ('--b1', '1', r'in \[0, 1\)'),
    ('--b2', '-0.1', r'in \[0, 1\)'),
    ('--eps', '0', 'positive'),
    ('--dropout', '1', r'in \[0, 1\)'),
    ('--max-length', '1', 'at least 2'),
    ('--upper', '60', r'fraction in \[0, 1\] \(write 0.6, not 60\)'),
    ('--gamma', '1.5', 'fraction'),
    ('--weight-decay', '-0.01', '0 or more'),
    ('--max-grad-norm', '-1', '0 or more'),
    ('--rdrop-alpha', '-1', '0 or more'),
    ('--seeds', '-1', '--seed must be 0 or more'),
    ('--reserve-p', '0', r'fraction in \(0, 1\]'),
    ('--reserve-p', '1.5', r'fraction in \(0, 1\]'),
    ('--smart-steps', '-1', '0 or more'),
    ('--smart-step-size', '-0.001', '0 or more'),
    ('--freelb-steps', '0', 'at least 1'),
    ('--freelb-max-norm', '-0.1', '0 or more'),
    ('--freelb-init-mag', '-1', '0 or more'),
]


def test_an_unknown_freelb_norm_is_refused():
  with pytest.raises(SystemExit):
    finetune.parse_args(['--freelb-norm', 'l1'])
  with pytest.raises(ConfigError, match='--freelb-norm must be one of'):
    TrainConfig(freelb_norm='l1').resolved()


@pytest.mark.parametrize(('option', 'value', 'requirement'), BAD)
def test_each_bad_number_names_its_option(option, value, requirement):
  args = finetune.parse_args([option, value])
  with pytest.raises(ConfigError, match=requirement) as error:
    finetune.configs(args)[0].resolved()
  name = '--seed' if option == '--seeds' else option
  assert str(error.value).startswith(f'{name} must be')


def test_explicit_values_are_never_replaced_by_defaults():
  resolved = TrainConfig(method='rose-ensemble', learning_rate=3e-5, upper=0.0,
                         batch_size=8).resolved()
  assert (resolved.learning_rate, resolved.upper, resolved.batch_size) == (3e-5, 0.0, 8)
  preset = TrainConfig(method='rose-ensemble').resolved()
  assert (preset.learning_rate, preset.upper, preset.batch_size) == (5e-5, 0.4, 32)
  assert TrainConfig(task='rte').resolved().batch_size == 16


def test_conflicting_settings_are_refused():
  with pytest.raises(ConfigError, match='--resume and --overwrite'):
    TrainConfig(resume=True, overwrite=True).resolved()
  with pytest.raises(ConfigError, match=r'--lower \(0.7\) must not exceed --upper \(0.6\)'):
    TrainConfig(lower=0.7, upper=0.6).resolved()
  with pytest.raises(ConfigError, match='--max-train-samples 4 makes no batch of 8'):
    TrainConfig(max_train_samples=4, batch_size=8).resolved()
  with pytest.raises(ConfigError, match='--batch-size 12 does not divide over 8 devices'):
    TrainConfig(batch_size=12).resolved(device_count=8)


def test_differences_name_each_setting_that_shapes_training():
  saved = dataclasses.asdict(TrainConfig(learning_rate=2e-5))
  now = TrainConfig(learning_rate=3e-5, epochs=3, log_every=7, resume=True,
                    output_dir='elsewhere')
  assert now.differences(saved) == ['--learning-rate: 2e-05 when started, 3e-05 now',
                                    '--epochs: 10 when started, 3 now']


@pytest.mark.parametrize(('environ', 'found'), [
    ({}, None),
    ({'SLURM_NTASKS': '1'}, None),
    ({'SLURM_NTASKS': '4'}, 'SLURM'),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 'Open MPI'),
    ({'PMI_SIZE': 'x'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'a'}, None),
    ({'TPU_WORKER_HOSTNAMES': 'a,b'}, 'TPU pod slice'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1'}, 'JAX_COORDINATOR_ADDRESS'),
])
def test_cluster_launchers_are_detected(environ, found):
  assert distributed.detected_launcher(environ) == found


def test_initialize_only_when_asked_or_launched(monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, 'update', lambda *args: None)
  assert not distributed.initialize(environ={})
  assert distributed.initialize(environ={'SLURM_NTASKS': '2'})
  assert distributed.initialize(coordinator_address='h:1', num_processes=2, process_id=1,
                                environ={})
  assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None),
                   dict(coordinator_address='h:1', num_processes=2, process_id=1)]


def test_a_setting_added_later_compares_with_what_older_runs_did():
  # Runs saved before --devices-per-member existed trained each member whole.
  saved = dataclasses.asdict(TrainConfig())
  del saved['devices_per_member']
  assert TrainConfig().differences(saved) == []
  assert TrainConfig(devices_per_member=2).differences(saved) == [
      '--devices-per-member: 1 when started, 2 now']
