"""The fine-tuning command across two processes (4 CPU devices each, gloo
collectives, jax.distributed started by --distributed): a run and a sweep,
uninterrupted and killed mid-epoch and resumed, end where one process of 8
devices ends. A command also runs under a jax.distributed that an earlier
command of the same processes started."""

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


def _launch(*commands: list) -> list[tuple[int, str]]:
  """Two processes, each running ``commands`` (``[at, args]`` or ``[at, args,
  copies]``: see tests/helpers/multihost_worker.py) under one jax.distributed."""
  port = free_port()
  workers = []
  for i in range(2):
    (at, first, *copies), *rest = commands
    first = [*first, '--distributed', '--coordinator-address', f'localhost:{port}',
             '--num-processes', '2', '--process-id', str(i)]
    workers.append(subprocess.Popen(
        [sys.executable, '-m', 'tests.helpers.multihost_worker', 'finetune',
         json.dumps([(at, first, *copies), *rest])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = [w.communicate(timeout=300)[0] for w in workers]
  return [(w.returncode, log) for w, log in zip(workers, logs, strict=True)]


def _args(root: Path, settings: dict, *more: str) -> list[str]:
  args = ['--no-progress', '--output-root', str(root), *more]
  for name, value in settings.items():
    args += [f'--{name.replace("_", "-")}', str(value)]
  return args


def _exit(launched, code: int) -> None:
  assert all(c == code for c, _ in launched), '\n'.join(log for _, log in launched)


def test_killed_two_process_run_and_sweep_resume_to_the_one_process_results(tmp_path):
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  data = helpers.write_sst2(tmp_path / 'data')
  # A run: 48 rows in global batches of 16, 3 steps an epoch; checkpoints at
  # steps 2, 3 (epoch end) and 4; copied as a kill at step 6 leaves it.
  run = dict(task='sst2', method='rose-ensemble', model=str(model), epochs=2, batch_size=16,
             max_length=12, log_every=1, save_every=2, **data)
  run_args = lambda root, *more: _args(root, run, '--parallel', 'shard_map', *more)
  # A sweep: four members, each over 2 of the 8 devices, the member axis across
  # both processes; 3 steps, a checkpoint at step 2; copied at step 3, mid-epoch.
  swept = {**run, 'epochs': 1, 'devices_per_member': 2}
  values = ['learning_rate=1e-3,3e-3', 'seed=1,2']
  sweep_args = lambda root, *more: _args(root, swept, '--sweep', *values, '--sweep-chunk', '4',
                                         *more)
  name = 'sst2-rose-ensemble-seed1'
  whole, killed = tmp_path / 'two', tmp_path / 'killed'

  # Two launches: the run and the sweep to their ends, each copied where a
  # kill would have left it (under the same jax.distributed); both copies resumed.
  _exit(_launch((6, run_args(whole), {str(whole / name): str(killed / name)}),
                (3, sweep_args(tmp_path / 'two-sweep'),
                 {str(tmp_path / 'two-sweep'): str(tmp_path / 'killed-sweep')})), 0)
  assert not json.loads((killed / name / 'results.json').read_text())['finished']
  _exit(_launch((0, run_args(killed, '--resume')),
                (0, sweep_args(tmp_path / 'killed-sweep', '--resume'))), 0)

  _check_run(run, [whole / name, killed / name], tmp_path / 'one')
  _check_sweep(swept, values, [tmp_path / 'two-sweep', tmp_path / 'killed-sweep'],
               tmp_path / 'one-sweep')


def _check_run(settings: dict, run_dirs: list[Path], one_dir: Path) -> None:
  from safetensors.numpy import load_file
  loop.run(loop.TrainConfig(**settings, output_dir=str(one_dir), progress=False,
                            parallel='shard_map'))
  one = json.loads((one_dir / 'results.json').read_text())
  assert one['finished']
  for run_dir in run_dirs:
    two = json.loads((run_dir / 'results.json').read_text())
    assert two['finished']
    for key in ('glue_dev_accuracy', 'adv_dev_accuracy', 'best_epoch'):
      assert two[key] == one[key]
    np.testing.assert_allclose([e['train_loss'] for e in two['epochs']],
                               [e['train_loss'] for e in one['epochs']], rtol=1e-5)
    steps = [json.loads(x).get('step')
             for x in (run_dir / 'metrics.jsonl').read_text().splitlines() if '"type"' not in x]
    assert steps == list(range(1, 7))  # each step logged once, the resumed run's too
    chex.assert_trees_all_close(load_file(run_dir / 'best_model' / 'model.safetensors'),
                                load_file(one_dir / 'best_model' / 'model.safetensors'),
                                rtol=1e-4, atol=1e-6)


def _check_sweep(settings: dict, values: list[str], two_roots: list[Path],
                 one_root: Path) -> None:
  configs = grid.member_configs(loop.TrainConfig(**settings, progress=False),
                                grid.parse_grid(values), one_root)
  whole = sweep.run_sweep(configs, chunk=4)
  for config, expected in zip(configs, whole, strict=True):
    one = Path(config.output_dir)
    theirs = read_run(one)
    for two_root in two_roots:
      two = two_root / one.name
      mine = read_run(two)
      assert mine['predictions'] == theirs['predictions']
      for key in ('glue_dev_accuracy', 'adv_dev_accuracy', 'best_epoch', 'finished'):
        assert mine['results'][key] == theirs['results'][key] == expected[key]
      steps = [line['step'] for line in mine['metrics'] if 'type' not in line]
      assert steps == [1, 2, 3]  # each step logged once, the resumed sweep's too
      np.testing.assert_allclose([line['loss'] for line in mine['metrics'] if 'type' not in line],
                                 [line['loss'] for line in theirs['metrics']
                                  if 'type' not in line], rtol=1e-5)
      for part in ('mask', 'first', 'second'):
        np.testing.assert_array_equal(read_masks(two, part)[2], read_masks(one, part)[2])
