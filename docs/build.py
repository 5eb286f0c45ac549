"""Builds the documentation: checks that the performance guide's tables are
its benchmark results' (docs/benchmark_tables.py), runs every code block of
the README and the guides (docs/run_blocks.py), every docstring example as
a doctest, then the HTML, with warnings (a broken cross-reference, a public
name left out) as errors.

  python docs/build.py            # HTML in docs/_build/html
"""

import sys
from pathlib import Path

from sphinx.cmd.build import build_main

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))

import benchmark_tables  # noqa: E402
import run_blocks  # noqa: E402


def main() -> int:
  if benchmark_tables.main(['--check']) or run_blocks.main([]):
    return 1
  for builder in ('doctest', 'html'):
    status = build_main(['-E', '-W', '-n', '--keep-going', '-q', '-b', builder, str(DOCS),
                         str(DOCS / '_build' / builder)])
    if status:
      return status
  print(f'built {DOCS / "_build" / "html" / "index.html"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
