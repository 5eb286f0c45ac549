"""Builds the documentation: runs every example as a doctest, then the HTML,
with warnings (a broken cross-reference, a public name left out) as errors.

  python docs/build.py            # HTML in docs/_build/html
"""

import sys
from pathlib import Path

from sphinx.cmd.build import build_main

DOCS = Path(__file__).resolve().parent


def main() -> int:
  for builder in ('doctest', 'html'):
    status = build_main(['-E', '-W', '-n', '--keep-going', '-q', '-b', builder, str(DOCS),
                         str(DOCS / '_build' / builder)])
    if status:
      return status
  print(f'built {DOCS / "_build" / "html" / "index.html"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
