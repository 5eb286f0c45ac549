"""Renders the benchmarks' JSON results into the performance guide.

Each table of ``docs/guides/performance.md`` sits between

  <!-- benchmark: FILE [SECTION ...] -->
  <!-- end benchmark -->

where ``FILE`` is a result in ``docs/benchmarks/`` as a benchmark wrote it
and the sections, where given, are those of its tables to show (the step
benchmark's :data:`~benchmarks.step_report.SECTIONS`).
Between the two lines goes the command that made it, its date, CPU,
versions and allocator, then the tables that the benchmark itself prints
(its ``report`` function), so that a table and its command cannot drift
apart.

  python docs/benchmark_tables.py           # rewrite the page from the results
  python docs/benchmark_tables.py --check   # exit 1 where the page is stale (the docs build)

To publish a new result, copy the JSON a benchmark wrote into
``docs/benchmarks/`` and run the first command.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'docs' / 'benchmarks'
PAGE = ROOT / 'docs' / 'guides' / 'performance.md'
_BLOCK = re.compile(
    r'(<!-- benchmark: (?P<file>[\w.-]+)(?P<sections>(?: \w+)*) -->\n)(?P<body>.*?)'
    r'(<!-- end benchmark -->)', re.DOTALL)


def _report_of(command: str):
  """The ``report`` function of the benchmark that ``command`` ran."""
  sys.path.insert(0, str(ROOT))
  from benchmarks import attention_benchmark, e2e_benchmark, mask_agreement, step_benchmark
  scripts = {'step_benchmark.py': step_benchmark, 'e2e_benchmark.py': e2e_benchmark,
             'attention_benchmark.py': attention_benchmark, 'mask_agreement.py': mask_agreement}
  script = Path(command.split()[1]).name
  if script not in scripts:
    raise ValueError(f'{command!r} runs none of the benchmarks {sorted(scripts)}.')
  return scripts[script].report


def heading(meta: dict) -> str:
  """The line above a result's tables: its command and where it ran."""
  versions = ', '.join(f'{name} {meta[name]}' for name in ('jax', 'flax', 'optax', 'torch')
                       if meta.get(name))
  allocator = meta.get('allocator') or meta.get('malloc') or 'unknown allocator'
  flags = f', `XLA_FLAGS={meta["xla_flags"]}`' if meta.get('xla_flags') else ''
  return (f'`{meta["command"]}`: {meta["date"]}, {meta["cpu_model"]} ({meta["cpu_count"]} '
          f'cores), {versions}, {allocator}{flags}.')


def render(file: str, sections: tuple[str, ...] = ()) -> str:
  """The Markdown that stands for the result ``file`` (its ``sections`` alone,
  where given)."""
  result = json.loads((RESULTS / file).read_text())
  report = _report_of(result['meta']['command'])
  tables = report(result, sections) if sections else report(result)
  return f'{heading(result["meta"])}\n\n{tables}\n\n'


def rendered(page: str) -> str:
  """``page`` with every benchmark block rendered from its result."""
  return _BLOCK.sub(
      lambda m: m[1] + render(m['file'], tuple(m['sections'].split())) + m[5], page)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='exit 1, changing nothing, where the page is not its results')
  args = parser.parse_args(argv)
  page = PAGE.read_text(encoding='utf-8')
  new = rendered(page)
  if args.check:
    if new != page:
      print(f'{PAGE.relative_to(ROOT)} is not what its results render: run '
            'python docs/benchmark_tables.py', file=sys.stderr)
      return 1
    return 0
  PAGE.write_text(new, encoding='utf-8')
  print(f'rendered {len(_BLOCK.findall(page))} results into {PAGE.relative_to(ROOT)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
