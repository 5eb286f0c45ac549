"""The benchmark script runs on its smallest config, so it cannot rot.

No timing is asserted: benchmarks measure, tests check that they run.
"""

import json

from benchmarks import step_benchmark


def test_benchmark_runs_one_step_of_everything(tmp_path, capsys):
  assert step_benchmark.main(['--config', 'tiny', '--steps', '1', '--warmup', '1', '--torch',
                              '--profile', 'rose-ensemble', '--output', str(tmp_path)]) == 0
  result = json.loads(next(tmp_path.glob('step-tiny-*.json')).read_text())
  assert [r['method'] for r in result['steps']] == [r[0] for r in step_benchmark.ROWS]
  assert all(r['median_s'] > 0 and r['ratio'] > 0 for r in result['steps'])
  assert result['steps'][0]['ratio'] == 1.0
  assert {r['mask'].split(',')[0] for r in result['masks']} >= {'element'}
  assert result['torch']['median_s'] > 0
  out = capsys.readouterr().out
  assert '| method | step (s) | x vanilla | FLOP floor |' in out
  assert result['meta']['jax'] and result['meta']['device_kind'] and result['meta']['allocator']
  assert all(r['page_faults'] >= 0 for r in result['steps'])
  profile = result['profile']
  kinds = {r['kind']: r['share'] for r in profile['kinds']}
  assert kinds['matmul'] > 0 and abs(sum(kinds.values()) - 1) < 1e-6
  assert profile['op_s'] > 0 and (tmp_path / profile['trace']).exists()
  assert '| kind of op | op time (s) | share |' in out
