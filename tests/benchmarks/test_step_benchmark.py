"""The benchmark script runs on its smallest config, so it cannot rot.

No timing is asserted: benchmarks measure, tests check that they run.
"""

import json

import pytest

from benchmarks import step_benchmark, step_setup
from rose_jax.training import methods


def _floor(label: str) -> float:
  _, method, _, options = step_benchmark.row_of(label)
  return step_benchmark.flop_floor(method, **options) / step_benchmark.flop_floor('vanilla')


def test_each_methods_flop_floor_is_what_xla_counts_in_its_step():
  # The FLOP floor in forward passes, counted by hand: each dropout pass is a
  # forward, each gradient taken from it a backward of two forwards.
  # R-Drop + ROSE-First needs no CE gradient (only the second-order risk uses one).
  # SMART (one ascent step): clean and adversarial passes with their backward
  # (2 * 3), and the ascent's forward and input-only backward (2). FreeLB: 3
  # passes, each a forward and a full backward.
  forwards = {'vanilla': 1 * 3, 'rdrop': 2 * 3, 'child-tuning-d': 1 * 3, 'smart': 2 * 3 + 2,
              'freelb': 3 * 3, 'rose-second': 1 * 3, 'rose-first': 2 * 5,
              'rose-ensemble': 2 * 5, 'rdrop-rose-first': 2 * 5, 'rdrop-rose-second': 2 * 5,
              'rdrop-rose-ensemble': 2 * 7}
  # The cheaper first-order risks: a sub-batch of f runs the method's passes on f
  # of the batch and one pass with its backward on the rest; a refresh every k
  # steps averages one such step with k - 1 steps of one pass (ROSE-First and
  # -Ensemble need no KL passes between refreshes).
  cheap = {'rose-ensemble (k=2)': (10 + 3) / 2, 'rose-ensemble (k=4)': (10 + 3 * 3) / 4,
           'rose-first (k=4)': (10 + 3 * 3) / 4, 'rose-ensemble (f=0.25)': 0.25 * 10 + 0.75 * 3,
           'rose-first (f=0.5)': 0.5 * 10 + 0.5 * 3,
           'rose-ensemble (k=4, f=0.5)': (0.5 * 10 + 0.5 * 3 + 3 * 3) / 4}
  assert set(forwards) == set(methods.METHOD_NAMES)
  for name, expected in {**forwards, **cheap}.items():
    assert _floor(name) == pytest.approx(expected / 3), name
  # XLA's own FLOP count of each step (traced, not compiled) agrees with the
  # floor: a step that ran a backward too many or too few would be off by a
  # third or more. (Embedding gathers and the optimizer keep the tiny model a
  # little under.) A sub-batch's KL backward runs through the drawn examples
  # alone: through the whole first pass it would be (5 + 3 f) / 3, a third
  # more at f = 0.25. A refresh schedule's step holds both branches, so no row.
  apply_fn, params, batch = step_setup.model_and_batch('tiny')
  flops = {label: step_setup.lower_method(apply_fn, params, batch, method, **options)[0]
           .cost_analysis()['flops']
           for label, method, _, options in step_benchmark.ROWS
           if label in forwards or label in ('rose-ensemble (f=0.25)', 'rose-first (f=0.5)')}
  for name, count in flops.items():
    ratio = count / flops['vanilla']
    assert 0.75 * _floor(name) <= ratio <= 1.05 * _floor(name), (name, ratio, _floor(name))


def test_benchmark_runs_one_step_of_everything(tmp_path, capsys):
  # Timed: vanilla, the exact recipe, and of the cheaper risks a refresh
  # schedule and the two sub-batches (each method's FLOPs are checked above).
  timed = ['vanilla', 'rose-ensemble', 'rose-ensemble (k=2)', 'rose-ensemble (f=0.25)',
           'rose-first (f=0.5)']
  assert step_benchmark.main(['--config', 'tiny', '--steps', '1', '--warmup', '1', '--torch',
                              '--profile', 'rose-ensemble', '--sweep', '2', '--families',
                              '--rows', *timed, '--output', str(tmp_path)]) == 0
  result = json.loads(next(tmp_path.glob('step-tiny-*.json')).read_text())
  rows = {r['method']: r for r in result['steps']}
  assert set(rows) == set(timed), 'a row missing, or one not asked for'
  assert all(r['median_s'] > 0 and r['times_s'] and min(r['times_s']) > 0 for r in rows.values())
  for name in timed:
    assert rows[name]['floor'] == pytest.approx(_floor(name)), name
    assert rows[name]['ratio'] == pytest.approx(
        rows[name]['median_s'] / rows['vanilla']['median_s'])
    assert len(rows[name]['times_s']) % rows[name].get('first_order_every', 1) == 0, \
        'not whole refresh cycles'
  # The compiled step's FLOPs in the table: as the floor, where the step has one program.
  for name in ('rose-ensemble', 'rose-ensemble (f=0.25)', 'rose-first (f=0.5)'):
    assert 0.75 * rows[name]['floor'] <= rows[name]['flops_ratio'] <= 1.05 * rows[name]['floor'], \
        (name, rows[name]['flops_ratio'], rows[name]['floor'])
  assert 'flops_ratio' not in rows['rose-ensemble (k=2)']
  modes = {r['mode']: r for r in result['sweep']}
  assert modes['vmapped sweep']['members'] == 2 and modes['sequential']['median_s'] > 0
  assert modes['vmapped sweep']['per_member_mb'] > 0 and modes['vmapped sweep']['fits'] >= 1
  assert modes['vmapped sweep']['config_steps_per_s'] == pytest.approx(
      2 / modes['vmapped sweep']['median_s'])
  # The test session's 8 devices: two members padded to one per device.
  sharded = modes['sharded sweep, 8 devices']
  assert sharded['padded_to'] == 8 and sharded['speedup'] > 0
  # One device holds one member's program, less than the two-member vmapped one.
  assert 0 < sharded['device_mb'] < modes['vmapped sweep']['device_mb']
  families = {(r['family'], r['method']): r for r in result['families']}
  assert set(families) == {(f, m) for f in ('roberta', 'modernbert', 'deberta-v2')
                           for m in ('vanilla', 'rose-ensemble')}
  assert families['roberta', 'vanilla']['ratio'] == 1 and all(
      r['median_s'] > 0 and r['params_m'] > 0 for r in families.values())
  state = {r['granularity']: r for r in result['state']}
  assert state['element']['state_mb'] == state['tensor']['state_mb'] > 0
  assert state['element']['element_mask_mb'] > 0
  assert {r['mask'].split(',')[0] for r in result['masks']} >= {'element'}
  assert result['torch']['median_s'] > 0
  out = capsys.readouterr().out
  assert '| method | step (s) | x vanilla | FLOP floor |' in out
  # What it printed is its JSON's report, whose sections the performance guide picks.
  assert step_benchmark.report(result) in out
  sweep_only = step_benchmark.report(result, ('sweep',))
  assert '| ROSE-Ensemble, 2 settings |' in sweep_only and '| method |' not in sweep_only
  with pytest.raises(ValueError, match='No sections'):
    step_benchmark.report(result, ('steps', 'speed'))
  assert result['meta']['jax'] and result['meta']['device_kind'] and result['meta']['allocator']
  profile = result['profile']
  kinds = {r['kind']: r['share'] for r in profile['kinds']}
  assert profile['matmul_gflops'] > 0 and result['meta']['matmul_gflops'] > 0
  assert kinds['matmul'] > 0 and abs(sum(kinds.values()) - 1) < 1e-6
  assert profile['op_s'] > 0 and (tmp_path / profile['trace']).exists()
  assert '| kind of op | op time (s) | share |' in out
