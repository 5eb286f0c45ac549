"""The test suite against other versions of the libraries than the pinned ones.

CI installs exactly the versions in ``.ci/constraints.txt``, so that a
release upstream cannot turn a fresh clone red between two landings. This
command runs the whole check (ruff and the test suite) in a fresh virtual
environment against

* ``newest``: the newest releases that the project's ranges allow, or
* ``oldest``: the lowest versions that ``pyproject.toml`` names (its ``>=``
  bounds, those of ``rose_jax/_src/versions.py`` among them),

and writes what it found to ``.ci-versions/NAME/``: ``report.md`` (each
pinned version that moved, the failed tests and the end of pytest's output),
``constraints.txt`` (the versions that ran, ready to become the new pins)
and ``pytest.log``.

  python .ci/versions.py newest      # about 15 minutes on 2 cores
  python .ci/versions.py oldest

Moving the pins forward is a change of its own: read the report, fix what
broke, then ``cp .ci-versions/newest/constraints.txt .ci/constraints.txt``
and commit that with the fixes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / '.ci' / 'constraints.txt'
TEST = 'python -m pytest -n 2 --durations=25 tests'


def read_pins(text: str) -> dict[str, str]:
  """``{name: version}`` of ``name==version`` lines (names normalised)."""
  pins = {}
  for line in text.splitlines():
    match = re.match(r'\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)', line)
    if match:
      pins[normalise(match[1])] = match[2]
  return pins


def normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def lowest_bounds(pyproject: dict) -> list[str]:
  """``name==version`` for every ``name>=version`` requirement of the project
  and its extras."""
  requirements = list(pyproject['project']['dependencies'])
  for extra in pyproject['project']['optional-dependencies'].values():
    requirements += extra
  lowest = {}
  for requirement in requirements:
    match = re.match(r'\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^\s,;]+)', requirement)
    if match:
      lowest[normalise(match[1])] = match[2]
  return [f'{name}=={version}' for name, version in sorted(lowest.items())]


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
  """One Markdown table row per package whose version differs."""
  rows = []
  for name in sorted(before.keys() | after.keys()):
    if before.get(name) != after.get(name):
      rows.append(f'| {name} | {before.get(name, "-")} | {after.get(name, "-")} |')
  return rows


def failed_tests(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith(('FAILED ', 'ERROR '))]


def run(command: str, venv: Path, log) -> int:
  print(f'$ {command}', flush=True)
  log.write(f'$ {command}\n')
  log.flush()
  return subprocess.run(f'. {venv}/bin/activate && {command}', shell=True, cwd=ROOT,
                        executable='/bin/bash', stdout=log, stderr=subprocess.STDOUT).returncode


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('which', choices=('newest', 'oldest'))
  args = parser.parse_args(argv)
  out = ROOT / '.ci-versions' / args.which
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  venv = out / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  install = ('python -m pip install --quiet --upgrade pip && '
             'python -m pip install --upgrade -e ".[test]"')
  if args.which == 'oldest':
    bounds = out / 'lowest.txt'
    pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    bounds.write_text('\n'.join(lowest_bounds(pyproject)) + '\n')
    install += f' -c {bounds}'
  log_path = out / 'pytest.log'
  with log_path.open('w') as log:
    installed = run(install, venv, log)
    frozen = subprocess.run(f'. {venv}/bin/activate && python -m pip freeze --exclude-editable',
                            shell=True, executable='/bin/bash', capture_output=True,
                            text=True).stdout
    (out / 'constraints.txt').write_text(
        f'# The versions `python .ci/versions.py {args.which}` ran with.\n' + frozen)
    status = run(f'ruff check . && {TEST}', venv, log) if installed == 0 else installed
  text = log_path.read_text()
  moved = changes(read_pins(PINS.read_text()), read_pins(frozen))
  summary = [line for line in text.splitlines() if re.search(r'\d+ (passed|failed)', line)]
  report = [f'# The suite against the {args.which} versions', '',
            f'Install: {"ok" if installed == 0 else "failed (see pytest.log)"}; '
            f'ruff and pytest: {"passed" if status == 0 else "failed"}.', '',
            f'pytest: {summary[-1] if summary else "no summary line"}', '',
            '## Versions that differ from .ci/constraints.txt', '',
            '| package | pinned | ran |', '|---|---|---|', *moved, '',
            '## Failed tests', '', *(failed_tests(text) or ['none']), '',
            '## The end of the log', '', '```', *text.splitlines()[-40:], '```', '']
  (out / 'report.md').write_text('\n'.join(report))
  print(f'{"passed" if status == 0 else "FAILED"}: {out / "report.md"}')
  return int(status != 0)


if __name__ == '__main__':
  sys.exit(main())
