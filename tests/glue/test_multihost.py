"""The fine-tuning command across two processes (4 CPU devices each, gloo
collectives, jax.distributed started by --distributed): a run and a sweep,
killed mid-epoch and resumed, end where one process of 8 devices ends
uninterrupted."""

import json
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np

from rose_jax.glue import grid, loop, sweep
from rose_jax.glue.masks import read_masks
from tests import helpers
from tests.helpers import free_port
from tests.helpers.runs import read_run

ROOT = Path(__file__).resolve().parents[2]


def _launch(args: list[str], kill_at: int = 0) -> list[tuple[int, str]]:
  port = free_port()
  workers = [subprocess.Popen(
      [sys.executable, '-m', 'tests.helpers.multihost_worker', 'finetune', str(kill_at), '--',
       *args, '--distributed', '--coordinator-address', f'localhost:{port}',
       '--num-processes', '2', '--process-id', str(i)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [w.communicate(timeout=300)[0] for w in workers]
  return [(w.returncode, log) for w, log in zip(workers, logs, strict=True)]


def test_killed_two_process_run_resumes_to_the_one_process_result(tmp_path):
  from safetensors.numpy import load_file
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  data = helpers.write_sst2(tmp_path / 'data')
  settings = dict(task='sst2', method='rose-ensemble', model=str(model), epochs=2,
                  batch_size=16, max_length=12, log_every=1, save_every=2, **data)
  args = ['--no-progress', '--output-root', str(tmp_path / 'two'), '--parallel', 'shard_map']
  for name, value in settings.items():
    args += [f'--{name.replace("_", "-")}', str(value)]

  # 48 rows in global batches of 16: 3 steps an epoch; checkpoints at steps
  # 2, 3 (epoch end) and 4. Both processes die at step 6.
  killed = _launch(args, kill_at=6)
  assert all(code == 137 for code, _ in killed), '\n'.join(log for _, log in killed)
  run_dir = tmp_path / 'two' / 'sst2-rose-ensemble-seed1'
  assert not json.loads((run_dir / 'results.json').read_text())['finished']
  resumed = _launch([*args, '--resume'])
  assert all(code == 0 for code, _ in resumed), '\n'.join(log for _, log in resumed)

  loop.run(loop.TrainConfig(**settings, output_dir=str(tmp_path / 'one'), progress=False,
                            parallel='shard_map'))
  two = json.loads((run_dir / 'results.json').read_text())
  one = json.loads((tmp_path / 'one' / 'results.json').read_text())
  assert two['finished'] and one['finished']
  for key in ('glue_dev_accuracy', 'adv_dev_accuracy', 'best_epoch'):
    assert two[key] == one[key]
  np.testing.assert_allclose([e['train_loss'] for e in two['epochs']],
                             [e['train_loss'] for e in one['epochs']], rtol=1e-5)
  steps = [json.loads(x).get('step') for x in (run_dir / 'metrics.jsonl').read_text().splitlines()
           if '"type"' not in x]
  assert steps == list(range(1, 7))  # each step logged once despite the kill
  chex.assert_trees_all_close(load_file(run_dir / 'best_model' / 'model.safetensors'),
                              load_file(tmp_path / 'one' / 'best_model' / 'model.safetensors'),
                              rtol=1e-4, atol=1e-6)


def test_killed_two_process_sweep_resumes_to_the_one_process_sweep(tmp_path):
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  data = helpers.write_sst2(tmp_path / 'data')
  settings = dict(task='sst2', method='rose-ensemble', model=str(model), epochs=1,
                  batch_size=16, max_length=12, log_every=1, save_every=2,
                  devices_per_member=2, **data)
  values = ['learning_rate=1e-3,3e-3', 'seed=1,2']
  args = ['--no-progress', '--output-root', str(tmp_path / 'two'), '--sweep', *values,
          '--sweep-chunk', '4']
  for name, value in settings.items():
    args += [f'--{name.replace("_", "-")}', str(value)]

  # Four members, each over 2 of the 8 devices, the member axis across both
  # processes; 3 steps, a checkpoint at step 2; killed at 3, mid-epoch.
  killed = _launch(args, kill_at=3)
  assert all(code == 137 for code, _ in killed), '\n'.join(log for _, log in killed)
  resumed = _launch([*args, '--resume'])
  assert all(code == 0 for code, _ in resumed), '\n'.join(log for _, log in resumed)

  configs = grid.member_configs(loop.TrainConfig(**settings, progress=False),
                                 grid.parse_grid(values), tmp_path / 'one')
  whole = sweep.run_sweep(configs, chunk=4)
  for config, expected in zip(configs, whole, strict=True):
    two, one = tmp_path / 'two' / Path(config.output_dir).name, Path(config.output_dir)
    mine, theirs = read_run(two), read_run(one)
    assert mine['predictions'] == theirs['predictions']
    for key in ('glue_dev_accuracy', 'adv_dev_accuracy', 'best_epoch', 'finished'):
      assert mine['results'][key] == theirs['results'][key] == expected[key]
    steps = [line['step'] for line in mine['metrics'] if 'type' not in line]
    assert steps == [1, 2, 3]  # each step logged once despite the kill
    np.testing.assert_allclose([line['loss'] for line in mine['metrics'] if 'type' not in line],
                               [line['loss'] for line in theirs['metrics']
                                if 'type' not in line], rtol=1e-5)
    for part in ('mask', 'first', 'second'):
      np.testing.assert_array_equal(read_masks(two, part)[2], read_masks(one, part)[2])
