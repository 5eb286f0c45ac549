"""Runs the code blocks of the guides and the README, as the docs build does.

Each page's fenced ``python`` and ``bash`` blocks run in order, as a notebook
runs its cells: the python blocks in one namespace, the bash blocks in one
scratch directory (the python blocks' working directory too, where
``examples/`` and ``benchmarks/`` are the checkout's), each page in a process
of its own, as many pages at once as there are cores. A block whose first
line is ``# needs: WHAT`` is not run and is listed instead; ``WHAT`` is one
of :data:`NEEDS`. A block that fails fails the build, with the page, the
block's line and the end of its output.

  python docs/run_blocks.py                   # every page
  python docs/run_blocks.py docs/guides/own_loop.md
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / 'README.md', ROOT / 'docs' / 'index.md',
         *sorted((ROOT / 'docs').glob('guides/*.md')))
# Why a block may be left out of the build: it reads the Hugging Face Hub, a
# data set the repository does not ship, the run directories of a fine-tuning
# on them, or an accelerator, it installs, CI runs it itself (the test
# suite), or it takes longer than a build may (a benchmark at full size,
# whose code tests/benchmarks runs at the smallest shapes).
NEEDS = ('hub', 'data', 'runs', 'accelerator', 'install', 'ci', 'time')
RUN = ('python', 'bash')
# Users' compiler settings: the blocks train real checkpoints, whose steps
# run several times slower unoptimised than the tests' tiny ones.
XLA_FLAGS = '--xla_force_host_platform_device_count=8'
_FENCE = re.compile(r'^(`{3,})(\w*)\s*$')
_NEEDS = re.compile(r'^#\s*needs:\s*(\w+)')


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int
  language: str
  code: str

  @property
  def needs(self) -> str | None:
    first = self.code.lstrip().splitlines()[0] if self.code.strip() else ''
    match = _NEEDS.match(first)
    return match[1] if match else None


def blocks(path: Path) -> list[Block]:
  """The fenced blocks of a Markdown page, with their first line's number."""
  found, lines, index = [], path.read_text(encoding='utf-8').splitlines(), 0
  while index < len(lines):
    opening = _FENCE.match(lines[index])
    if not opening:
      index += 1
      continue
    fence, language, start = opening[1], opening[2], index + 1
    index += 1
    while index < len(lines) and lines[index].strip() != fence:
      index += 1
    found.append(Block(str(path.relative_to(ROOT)), start + 1, language,
                       '\n'.join(lines[start:index]) + '\n'))
    index += 1
  return found


# The child that runs one page's blocks: python in one namespace, bash through
# the shell, both in the page's scratch directory.
_CHILD = r'''
import json, subprocess, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {'__name__': '__main__'}
for number, block in enumerate(blocks):
  print(f'--- block at line {block["line"]} ({block["language"]})', flush=True)
  if block['language'] == 'python':
    try:
      exec(compile(block['code'], f'{block["page"]}:{block["line"]}', 'exec'), namespace)
    except BaseException:
      traceback.print_exc()
      print(f'FAILED {block["line"]}', flush=True)
      sys.exit(1)
  else:
    done = subprocess.run(['bash', '-euo', 'pipefail', '-c', block['code']])
    if done.returncode:
      print(f'FAILED {block["line"]}', flush=True)
      sys.exit(1)
'''


def run_page(path: Path, *, timeout: float = 900, cache: str | None = None
             ) -> tuple[list[Block], list[Block], str | None]:
  """Runs a page's blocks; returns those run, those left out (``needs``), and
  the failure (the page, the block's line and the output's end) or None.
  ``cache``: an XLA compilation cache folder that the pages share."""
  ran = [b for b in blocks(path) if b.language in RUN and b.needs is None]
  skipped = [b for b in blocks(path) if b.language in RUN and b.needs is not None]
  unknown = [b for b in skipped if b.needs not in NEEDS]
  if unknown:
    return ran, skipped, (f'{unknown[0].page}:{unknown[0].line}: "# needs: {unknown[0].needs}" '
                          f'is none of {NEEDS}.')
  if not ran:
    return ran, skipped, None
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1',
         'XLA_FLAGS': os.environ.get('XLA_FLAGS', XLA_FLAGS), 'PYTHONUNBUFFERED': '1',
         'MPLBACKEND': 'Agg'}
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  with tempfile.TemporaryDirectory(prefix='rose_jax-docs-') as scratch:
    for folder in ('examples', 'benchmarks'):  # as a checkout's commands name them
      (Path(scratch) / folder).symlink_to(ROOT / folder)
    done = subprocess.run([sys.executable, '-c', _CHILD], cwd=scratch, env=env, text=True,
                          input=json.dumps([dataclasses.asdict(b) for b in ran]),
                          capture_output=True, timeout=timeout)
  if done.returncode:
    output = (done.stdout + done.stderr).strip().splitlines()
    failed = next((line.split()[1] for line in reversed(output) if line.startswith('FAILED ')),
                  '?')
    return ran, skipped, f'{path.relative_to(ROOT)}:{failed}: the block failed:\n' + \
        '\n'.join(output[-30:])
  return ran, skipped, None


def main(paths: list[str]) -> int:
  pages = [Path(p).resolve() for p in paths] or list(PAGES)
  failures, skipped_all = [], []

  # Pages are independent processes: as many at once as there are cores.
  with tempfile.TemporaryDirectory(prefix='rose_jax-docs-xla-cache-') as cache, \
       futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:

    def timed(page: Path):
      began = time.time()
      return *run_page(page, cache=cache), time.time() - began

    for page, (ran, skipped, failure, seconds) in zip(pages, pool.map(timed, pages),
                                                       strict=True):
      skipped_all += skipped
      print(f'{page.relative_to(ROOT)}: {len(ran)} blocks run, {len(skipped)} left out '
            f'({seconds:.0f} s)', flush=True)
      if failure:
        failures.append(failure)
  if skipped_all:
    print('Left out of the build:')
    for block in skipped_all:
      print(f'  {block.page}:{block.line} ({block.language}) needs {block.needs}')
  for failure in failures:
    print(f'\n{failure}', file=sys.stderr)
  return int(bool(failures))


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
