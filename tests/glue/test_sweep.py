"""A sweep's members equal their runs alone, write the same directories, compile
once, resume after a kill, and refuse what cannot vary."""

import dataclasses
import json
import shutil
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from examples import finetune
from rose_jax._src import memory
from rose_jax.glue import loop, report, sweep
from rose_jax.glue.config import ConfigError
from rose_jax.glue.metrics_log import read_masks
from rose_jax.training import sweep as sweep_lib
from tests import helpers
from tests.helpers import cli_args, fails, snapshot
from tests.helpers.runs import Killed, kill_at_step, read_run

GRID = ['learning_rate=1e-3,3e-3', 'seed=1,2']


def _base(files, out, **overrides):
  # Packed rows (the default): members with other seeds draw other batches, and
  # a step pads them all to the most rows among them (see rose_jax.glue.sweep).
  settings = dict(epochs=2, save_every=4, **overrides)
  return loop.TrainConfig(**helpers.run_settings(files, out, **settings))


def _members(files, root, **overrides):
  return sweep.member_configs(_base(files, root, **overrides), sweep.parse_grid(GRID), root)


def _compiles(monkeypatch):
  """The sweep steps that ``make_sweep_step`` returns, to count their compilations."""
  made = []
  real = sweep_lib.make_sweep_step

  def recording(*args, **kwargs):
    made.append(real(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(sweep_lib, 'make_sweep_step', recording)
  return made


def _run_files(out: Path) -> dict:
  return {**read_run(out), 'masks': read_masks(out)}


@pytest.fixture(scope='module')
def swept(files, tmp_path_factory):
  """The grid trained as a sweep, 3 members at a time (a chunk of 3, then 1)."""
  root = tmp_path_factory.mktemp('swept')
  monkeypatch = pytest.MonkeyPatch()
  made = _compiles(monkeypatch)
  results = sweep.run_sweep(_members(files, root), chunk=3)
  monkeypatch.undo()
  return root, results, made


def test_a_sweep_equals_its_runs_alone(files, tmp_path, swept):
  root, together, made = swept
  assert [f._cache_size() for f in made] == [1, 1], 'a chunk compiled its step more than once'
  configs = _members(files, root)
  assert sorted(p.name for p in root.iterdir()) == sorted(Path(c.output_dir).name
                                                          for c in configs)
  for config, member in zip(configs, together, strict=True):
    out = tmp_path / Path(config.output_dir).name
    alone = loop.run(dataclasses.replace(config, output_dir=str(out)))
    chex.assert_trees_all_close(member['final_params'], alone['final_params'], rtol=1e-5,
                                atol=1e-6)
    from_sweep, from_alone = _run_files(Path(config.output_dir)), _run_files(out)
    # Exactly equal: masks, predictions and accuracies; float tolerance: losses.
    names, steps, masks = from_sweep.pop('masks')
    assert (names, steps.tolist()) == (from_alone['masks'][0], from_alone['masks'][1].tolist())
    np.testing.assert_array_equal(masks, from_alone.pop('masks')[2])
    assert from_sweep['predictions'] == from_alone['predictions']
    assert from_sweep['results'].keys() == from_alone['results'].keys()
    for epoch, expected in zip(from_sweep['results'].pop('epochs'),
                               from_alone['results'].pop('epochs'), strict=True):
      assert epoch.keys() == expected.keys()
      np.testing.assert_allclose([epoch[k] for k in sorted(epoch)],
                                 [expected[k] for k in sorted(epoch)], rtol=1e-5)
    assert from_sweep['results'] == from_alone['results']
    for line, expected in zip(from_sweep['metrics'], from_alone['metrics'], strict=True):
      assert line.keys() == expected.keys()
      np.testing.assert_allclose([line[k] for k in sorted(line) if k != 'type'],
                                 [expected[k] for k in sorted(line) if k != 'type'], rtol=1e-5)
  # The learning rates took effect: members of one seed ended apart.
  assert not np.allclose(together[0]['final_params']['classifier']['kernel'],
                         together[2]['final_params']['classifier']['kernel'])


def test_the_mask_file_reproduces_the_logged_kept_fraction(swept):
  root, _, _ = swept
  for run in root.iterdir():
    _, steps, masks = read_masks(run)
    assert steps.tolist() == list(range(1, 13))
    logged = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    for line in (x for x in logged if 'type' not in x):
      window = masks[(steps > line['step'] - 2) & (steps <= line['step'])]
      np.testing.assert_allclose(window.mean(), line['kept_fraction'], rtol=1e-6)
    # The ensemble at gamma 0.5 and tensor granularity: 0, 1/2 or 1 per tensor.
    assert set(np.unique(masks)) <= {0.0, 0.5, 1.0} and masks.min() < 1


def test_the_report_reads_a_sweep(swept, tmp_path):
  root, _, _ = swept
  table = report.summarise(report.collect([root]))
  assert sorted(table) == ['rose-ensemble (learning_rate=0.001)',
                           'rose-ensemble (learning_rate=0.003)']
  assert all(len(cell['sst2']['glue']) == 2 for cell in table.values())  # two seeds each


def test_a_killed_sweep_resumes_to_the_same_runs(files, tmp_path, monkeypatch, swept):
  whole_root, whole, _ = swept
  root = tmp_path / 'runs'
  configs = _members(files, root)
  restore = kill_at_step(monkeypatch, 9, sweep_lib, 'make_sweep_step')  # in the first chunk
  with pytest.raises(Killed):
    sweep.run_sweep(configs, chunk=3)
  restore()
  # Killed between two members' checkpoints: the third has lost its newest one.
  third = Path(configs[2].output_dir) / 'checkpoints'
  newest = max(int(p.name) for p in third.iterdir() if p.name.isdigit())
  assert newest == 8
  shutil.rmtree(third / str(newest))
  with pytest.raises(ConfigError, match='--resume'):
    sweep.run_sweep(configs, chunk=3)

  resumed = sweep.run_sweep([dataclasses.replace(c, resume=True) for c in configs], chunk=3)
  for config, member, expected in zip(configs, resumed, whole, strict=True):
    chex.assert_trees_all_equal(member['final_params'], expected['final_params'])
    mine, theirs = _run_files(Path(config.output_dir)), _run_files(
        whole_root / Path(config.output_dir).name)
    for name in ('metrics', 'predictions'):
      assert mine[name] == theirs[name]
    np.testing.assert_array_equal(mine['masks'][2], theirs['masks'][2])
  # Resuming a finished sweep skips it.
  before = snapshot(root)
  again = sweep.run_sweep([dataclasses.replace(c, resume=True) for c in configs], chunk=3)
  assert [r['glue_dev_accuracy'] for r in again] == [r['glue_dev_accuracy'] for r in resumed]
  assert snapshot(root) == before


def test_the_automatic_chunk_follows_the_memory_estimate(files, tmp_path):
  configs = [loop.preflight(c) for c in _members(files, tmp_path)]
  shared = loop.Shared(configs[0])
  swept = sweep.swept_names(configs)
  assert swept == ('learning_rate', 'seed')
  tx = sweep.sweep_optimizer(configs[0], shared.method, shared.total_steps, ['learning_rate'])
  opt_state = jax.eval_shape(tx.init, shared.param_shapes)
  batch = {k: jax.ShapeDtypeStruct((8, 12), 'int32') for k in shared.data.train.tokens}
  batch['labels'] = jax.ShapeDtypeStruct((8,), shared.data.train.labels.dtype)
  fixed, per_member = sweep_lib.member_memory(shared.apply_fn, tx, shared.method,
                                              shared.param_shapes, opt_state, batch)
  # Each member brings its own params, optimizer state and batch.
  state_bytes = sum(x.size * x.dtype.itemsize
                    for x in jax.tree.leaves((shared.param_shapes, opt_state, batch)))
  assert per_member >= state_bytes
  assert memory.chunk_size(4, fixed, per_member, 10**12) == 4
  assert memory.chunk_size(4, fixed, per_member, 1) == 1
  # Two members' worth of budget beyond the fixed part: two members at a time.
  budget = fixed + 2 * per_member + per_member // 2
  assert sweep.automatic_chunk(configs, shared, swept, budget=budget) == 2


@pytest.mark.parametrize('options, message', [
    (['--sweep', 'batch_size=8,16'], 'cannot vary batch_size: it sets the shapes'),
    (['--sweep', 'max_length=12,16'], 'cannot vary max_length: it sets the shapes'),
    (['--sweep', 'method=vanilla,rdrop'], 'cannot vary method: it chooses the compiled'),
    (['--sweep', 'dropout=0.1,0.2'], 'cannot vary dropout: it is fixed'),
    (['--sweep', 'lr=1e-3'], "there is no setting 'lr'"),
    (['--sweep', 'learning_rate'], 'is not NAME=V1,V2'),
    (['--sweep', 'upper=0.4,0.4'], "upper lists ['0.4'] more than once"),
    (['--sweep', 'upper=0.4', 'upper=0.6'], 'names upper twice'),
    (['--sweep', 'seed=1.5'], "'1.5' is not an integer"),
    (['--sweep', 'upper=high'], "'high' is not a number"),
    (['--sweep', 'upper=0.4,60'], '--upper must be a fraction'),
    (['--sweep', 'seed=1,2', '--seeds', '3'], 'Give the seeds once'),
    (['--sweep', 'seed=1,2', '--parallel', 'pmap'], 'on one device'),
    (['--sweep', 'seed=1,2', '--distributed'], 'runs on one host'),
    (['--sweep', 'seed=1,2', '--sweep-chunk', '0'], '--sweep-chunk must be at least 1'),
    (['--sweep-chunk', '2'], '--sweep-chunk needs --sweep'),
    (['--method', 'vanilla', '--sweep', 'upper=0.3,0.5'],
     '--method vanilla does not use --upper'),
    (['--method', 'rose-first', '--sweep', 'gamma=0.3,0.5'],
     '--method rose-first does not use --gamma (only ROSE-Ensemble'),
])
def test_a_sweep_refuses_what_cannot_vary(files, tmp_path, capsys, options, message):
  args = [a for a in cli_args(files, tmp_path / 'runs', parallel=None) if a]
  fails(finetune.main, [*args, *options], capsys, message)
  assert not (tmp_path / 'runs').exists()
