"""A sweep's members, sharded over 8 devices, equal their runs alone, write the
same directories, compile once (the last chunk padded), resume after a kill
(on other devices too), and refuse what cannot vary."""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from rose_jax._src import memory
from rose_jax.glue import grid, loop, report, sweep
from rose_jax.glue.commands import finetune
from rose_jax.glue.config import ConfigError
from rose_jax.glue.masks import read_masks
from rose_jax.training import sweep as sweep_lib
from tests import helpers
from tests.helpers import cli_args, fails, snapshot
from tests.helpers.runs import read_run, run_copied_at

GRID = ['learning_rate=1e-3,3e-3', 'upper=0.4,0.6', 'seed=1,2']


def _base(files, out, **overrides):
  # One bucket: a step pads every member's batch to the longest among them
  # (see rose_jax.glue.sweep), and with one length that is each one's own.
  # parallel=None: the members are sharded over the 8 devices.
  settings = dict(epochs=2, save_every=4, packing=False, buckets=(12,), parallel=None,
                  **overrides)
  return loop.TrainConfig(**helpers.run_settings(files, out, **settings))


def _members(files, root, **overrides):
  return grid.member_configs(_base(files, root, **overrides), grid.parse_grid(GRID), root)


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
  """The 2 x 2 x 2 grid trained as a sweep over 8 devices, a member on each;
  its members' directories as a kill at step 9 left them are under
  ``root.parent / 'killed'``."""
  root = tmp_path_factory.mktemp('swept') / 'runs'
  configs = _members(files, root)
  killed = root.parent / 'killed'
  with pytest.MonkeyPatch.context() as monkeypatch:
    made = _compiles(monkeypatch)
    results = run_copied_at(monkeypatch, 9, functools.partial(sweep.run_sweep, configs),
                            {Path(c.output_dir): killed / Path(c.output_dir).name
                             for c in configs}, sweep_lib, 'make_sweep_step')
  return root, results, made


def test_a_sweep_over_devices_equals_its_runs_alone(files, tmp_path, swept):
  root, together, made = swept
  assert jax.device_count() == 8
  assert sum(f._cache_size() for f in made) == 1, 'the sweep compiled its step more than once'
  configs = _members(files, root)
  assert sorted(p.name for p in root.iterdir()) == sorted(Path(c.output_dir).name
                                                          for c in configs)
  # Trained alone: half of the grid, each learning rate, threshold and seed
  # twice and no two members alike in more than one (the grid's order is
  # learning rate, upper, seed: member 5 is 3e-3, 0.4, seed 2).
  checked = (0, 3, 5, 6)
  assert {(configs[i].learning_rate, configs[i].upper, configs[i].seed) for i in checked} == {
      (1e-3, 0.4, 1), (1e-3, 0.6, 2), (3e-3, 0.4, 2), (3e-3, 0.6, 1)}
  for config, member in ((configs[i], together[i]) for i in checked):
    out = tmp_path / Path(config.output_dir).name
    alone = loop.run(dataclasses.replace(config, output_dir=str(out), parallel='none'))
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
  # Every setting took effect: no two of the eight members ended alike.
  heads = [member['final_params']['classifier']['kernel'] for member in together]
  assert not any(np.allclose(heads[i], heads[j]) for i in range(8) for j in range(i))


def test_the_mask_file_reproduces_the_logged_kept_fraction(swept):
  root, _, _ = swept
  for run in root.iterdir():
    _, steps, masks = read_masks(run)
    assert steps.tolist() == list(range(1, 13))
    logged = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]
    for line in (x for x in logged if 'type' not in x):
      window = masks[(steps > line['step'] - 2) & (steps <= line['step'])]
      np.testing.assert_allclose(window.mean(), line['kept_fraction'], rtol=1e-6)
    # The ensemble at gamma 0.5 and tensor granularity: 0, 1/2 or 1 per tensor,
    # the mean of the two masks it mixed, each ranked at the member's own upper.
    assert set(np.unique(masks)) <= {0.0, 0.5, 1.0} and masks.min() < 1
    first, second = read_masks(run, 'first')[2], read_masks(run, 'second')[2]
    np.testing.assert_array_equal((first + second) / 2, masks)


def test_the_report_reads_a_sweep(swept, tmp_path):
  root, _, _ = swept
  table = report.summarise(report.collect([root]))
  assert len(table) == 4 and all('learning_rate=0.00' in row and 'upper=0.' in row
                                 for row in table)
  assert all(len(cell['sst2']['glue_dev'].scores) == 2 for cell in table.values())  # 2 seeds


def test_a_killed_sweep_resumes_on_other_devices_to_the_same_runs(files, tmp_path, monkeypatch,
                                                                  swept):
  whole_root, whole, _ = swept
  root = tmp_path / 'runs'
  configs = _members(files, root)
  shutil.copytree(whole_root.parent / 'killed', root)
  # Killed between two members' checkpoints: the third has lost its newest one.
  third = Path(configs[2].output_dir) / 'checkpoints'
  newest = max(int(p.name) for p in third.iterdir() if p.name.isdigit())
  assert newest == 8
  shutil.rmtree(third / str(newest))
  with pytest.raises(ConfigError, match='--resume'):
    sweep.run_sweep(configs)

  # Resumed on one device, 4 members at a time, where it trained 8 over 8 devices.
  made = _compiles(monkeypatch)
  resumed = sweep.run_sweep([dataclasses.replace(c, resume=True, parallel='none')
                             for c in configs], chunk=4)
  assert sum(f._cache_size() for f in made) == 1
  for config, member, expected in zip(configs, resumed, whole, strict=True):
    chex.assert_trees_all_close(member['final_params'], expected['final_params'], rtol=1e-5,
                                atol=1e-6)
    mine, theirs = _run_files(Path(config.output_dir)), _run_files(
        whole_root / Path(config.output_dir).name)
    assert mine['predictions'] == theirs['predictions']
    assert [line['step'] for line in mine['metrics'] if 'type' not in line] == \
        [line['step'] for line in theirs['metrics'] if 'type' not in line]
    np.testing.assert_array_equal(mine['masks'][2], theirs['masks'][2])
  # Resuming a finished sweep skips it.
  before = snapshot(root)
  again = sweep.run_sweep([dataclasses.replace(c, resume=True) for c in configs])
  assert [r['glue_dev_accuracy'] for r in again] == [r['glue_dev_accuracy'] for r in resumed]
  assert snapshot(root) == before


def test_a_padded_last_chunk_compiles_nothing_new_and_writes_no_filler(files, tmp_path,
                                                                      monkeypatch, swept):
  # Five members, 4 at a time on 2 member devices (4 devices each): the
  # second chunk is one member and three copies of it.
  _, whole, _ = swept
  root = tmp_path / 'runs'
  configs = [dataclasses.replace(c, devices_per_member=4) for c in _members(files, root)[:5]]
  made = _compiles(monkeypatch)
  results = sweep.run_sweep(configs, chunk=3)  # rounded up to 4, a multiple of 2
  assert sum(f._cache_size() for f in made) == 1, 'the padded chunk compiled its own step'
  assert sorted(p.name for p in root.iterdir()) == sorted(Path(c.output_dir).name
                                                          for c in configs)
  assert len(results) == 5 and all(r['finished'] for r in results)
  # Data parallel over 4 devices, the members draw other dropout than on one
  # device: they are runs of their own, not copies of the grid's.
  assert not np.allclose(results[4]['final_params']['classifier']['kernel'],
                         whole[4]['final_params']['classifier']['kernel'])
  # Each is its run alone with --parallel shard_map over 4 devices: the step
  # of rose_jax.training.sweep checks that (tests/training/test_sweep.py).
  saved = json.loads((Path(configs[4].output_dir) / 'results.json').read_text())
  assert saved['config']['devices_per_member'] == 4
  with pytest.raises(ConfigError, match='--devices-per-member: 4 when started, 2 now'):
    sweep.run_sweep([dataclasses.replace(c, resume=True, devices_per_member=2)
                     for c in configs])


def test_the_automatic_chunk_follows_the_memory_estimate(files, tmp_path):
  configs = [loop.preflight(dataclasses.replace(c, parallel='none'))
             for c in _members(files, tmp_path)]
  shared = loop.Shared(configs[0])
  swept = grid.swept_names(configs)
  assert swept == ('learning_rate', 'seed', 'upper')
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
    (['--sweep', 'seed=1,2', '--parallel', 'pmap'], 'with shard_map: leave out --parallel pmap'),
    (['--sweep', 'seed=1,2', '--parallel', 'none', '--devices-per-member', '2'],
     '--devices-per-member 2 splits each member over several devices, but --parallel none'),
    (['--sweep', 'seed=1,2', '--devices-per-member', '3'],
     '--devices-per-member 3 does not divide the 8 devices; use a divisor of 8'),
    (['--devices-per-member', '2'], '--devices-per-member sets how a sweep shares out'),
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


def test_a_resume_groups_members_by_progress_and_refuses_chunks_without_a_common_step(
    files, tmp_path):
  # Six members as a killed sweep leaves them: two finished, two with
  # checkpoints, two not started. No training: only the chunking is asked.
  configs = [dataclasses.replace(c, resume=True)
             for c in _members(files, tmp_path)[:6]]
  steps = [None, None, (4, 8), (8,), (), ()]
  for config, kept in zip(configs, steps, strict=True):
    out = Path(config.output_dir)
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'results.json').write_text(json.dumps({'finished': kept is None}))
    for step in kept or ():
      (out / 'checkpoints' / str(step)).mkdir()
  (Path(configs[4].output_dir) / 'checkpoints' / '8.orbax-checkpoint-tmp-1').mkdir()
  todo = [i for i, c in enumerate(configs) if not sweep._finished(c)]
  assert todo == [2, 3, 4, 5]
  assert sweep._chunks(configs, todo, 2) == [[2, 3], [4, 5]]
  assert sweep._chunks(configs, todo, 4) == [[2, 3], [4, 5]]
  assert sweep._chunks([dataclasses.replace(c, resume=False) for c in configs], list(range(6)),
                       4) == [[0, 1, 2, 3], [4, 5]]
  # Trained in other chunks: the two started members share no step.
  shutil.rmtree(Path(configs[3].output_dir) / 'checkpoints' / '8')
  (Path(configs[3].output_dir) / 'checkpoints' / '12').mkdir()
  with pytest.raises(ConfigError, match=r'share no checkpoint step \(.*seed1 \[4, 8\], .*'
                                        r'\[12\]\).*another --sweep-chunk or device count'):
    sweep._chunks(configs, todo, 2)
