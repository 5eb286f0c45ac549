"""The step benchmark's tables from its result: what ``step_benchmark.py``
prints, and what the performance guide renders of its JSON
(``docs/benchmark_tables.py``)."""

from __future__ import annotations

from benchmarks.step_setup import markdown

SECTIONS = ('matmul', 'steps', 'state', 'sweep', 'families', 'masks', 'torch', 'profile')


def report(result: dict, sections: tuple[str, ...] = SECTIONS) -> str:
  """The Markdown tables of a result, those of ``sections`` (of
  :data:`SECTIONS`) that it holds: what the script prints, and what the
  performance guide shows of its JSON."""
  meta, parts = result['meta'], {}
  if meta.get('matmul_gflops'):
    parts['matmul'] = (f'One float32 matmul at the feed-forward shape runs at '
                       f'{meta["matmul_gflops"]:.0f} GFLOP/s.')
  parts['steps'] = markdown(result['steps'], [
      ('method', 'method', 's'), ('median_s', 'step (s)', '.3f'), ('ratio', 'x vanilla', '.2f'),
      ('floor', 'FLOP floor', '.2f'), ('flops_ratio', 'XLA FLOPs x vanilla', '.2f'),
      ('memory_ratio', 'memory x vanilla', '.2f'), ('page_faults', 'page faults', '.0f'),
      ('tokens_per_s', 'tokens/s', '.0f'), ('mfu', 'MFU', '.1%')])
  parts['state'] = markdown(result['state'], [
      ('granularity', 'granularity', 's'), ('params_mb', 'params (MB)', '.1f'),
      ('state_mb', 'ROSE state (MB)', '.1f'), ('mask_mb', 'of which mask (MB)', '.4f'),
      ('element_mask_mb', 'a mask per scalar would add (MB)', '.1f')])
  if 'sweep' in result:
    members = next(r['members'] for r in result['sweep'] if 'members' in r)
    parts['sweep'] = markdown(result['sweep'], [
        ('mode', f'ROSE-Ensemble, {members} settings', 's'), ('padded_to', 'padded to', 'd'),
        ('median_s', 'time per step of all (s)', '.3f'),
        ('config_steps_per_s', 'configurations x steps / s', '.2f'),
        ('speedup', 'x sequential', '.2f'), ('device_mb', 'memory per device (MB)', '.1f'),
        ('fixed_mb', 'step memory (MB)', '.1f'), ('per_member_mb', '+ per member (MB)', '.1f'),
        ('fits', 'members in 80% of free memory', 'd')])
  if 'families' in result:
    parts['families'] = markdown(result['families'], [
        ('family', 'family', 's'), ('method', 'method', 's'), ('params_m', 'params (M)', '.1f'),
        ('median_s', 'step (s)', '.3f'), ('ratio', "x RoBERTa's vanilla", '.2f')])
  if 'masks' in result:
    parts['masks'] = markdown(result['masks'], [('mask', 'mask', 's'),
                                                ('elements', 'ranked elements', 'd'),
                                                ('median_s', 'time (s)', '.3f')])
  if 'torch' in result:
    torch_row = result['torch']
    parts['torch'] = (f'PyTorch {torch_row["torch_version"]} recipe (ROSE-Ensemble): '
                      f'{torch_row["median_s"]:.3f} s/step; JAX/PyTorch = '
                      f'{torch_row["jax_over_torch"]:.2f}')
  if 'profile' in result:
    profile = result['profile']
    rate = profile.get('matmul_gflops')
    parts['profile'] = (
        f'One {profile["method"]} step under jax.profiler: {profile["wall_s"]:.3f} s wall, '
        f'{profile["page_faults"]} page faults, {profile["op_s"]:.3f} s of op time (ops that '
        'overlap count in full)' +
        (f"; its matmuls ran at {rate:.0f} GFLOP/s (XLA's FLOPs of the step over their op "
         'time)' if rate else '') + '.\n\n' +
        markdown(profile['kinds'], [('kind', 'kind of op', 's'), ('op_s', 'op time (s)', '.3f'),
                                    ('share', 'share', '.1%')]))
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise ValueError(f'No sections {sorted(unknown)} in a step benchmark result: {SECTIONS}.')
  return '\n\n'.join(parts[name] for name in sections if name in parts)
