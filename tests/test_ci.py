"""The reproducible test environment: CI installs the pinned versions the README
names, the pins cover every requirement, and ``.ci/versions.py`` derives the
lowest versions from ``pyproject.toml``'s bounds."""

import importlib.util
import re
from pathlib import Path

import pytest

from rose_jax._src import versions as versions_lib

tomllib = pytest.importorskip('tomllib')  # Python 3.11+, as in test_versions

ROOT = Path(__file__).resolve().parents[1]


def _versions_script():
  spec = importlib.util.spec_from_file_location('ci_versions', ROOT / '.ci' / 'versions.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _requirements() -> list[str]:
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  listed = [*project['dependencies'],
            *(r for extra in project['optional-dependencies'].values() for r in extra)]
  return [r for r in listed if not r.startswith('rose-jax')]


def test_ci_installs_with_the_pins_as_the_readme_says():
  install = 'python -m pip install -e ".[test]" -c .ci/constraints.txt'
  assert install in (ROOT / 'README.md').read_text()
  run = (ROOT / '.ci' / 'run').read_text()
  assert install in run
  assert 'pip freeze' in run  # CI prints the versions it ran with


def test_every_requirement_is_pinned_within_its_range():
  script = _versions_script()
  pins = script.read_pins((ROOT / '.ci' / 'constraints.txt').read_text())
  for requirement in _requirements():
    name = script.normalise(re.match(r'[A-Za-z0-9_.\-]+', requirement)[0])
    assert name in pins, f'{name} is required but not pinned in .ci/constraints.txt'
    bound = re.search(r'>=\s*([^\s,;]+)', requirement)
    if bound:
      assert versions_lib._parse(pins[name]) >= versions_lib._parse(bound[1]), requirement


def test_the_oldest_versions_are_the_lower_bounds():
  script = _versions_script()
  pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  lowest = script.read_pins('\n'.join(script.lowest_bounds(pyproject)))
  for package, version in versions_lib.MINIMUM.items():
    assert lowest[package] == '.'.join(map(str, version))
  assert lowest['transformers'] == '5.0'


def test_the_report_lists_each_moved_version_and_failure():
  script = _versions_script()
  rows = script.changes({'jax': '0.10.2', 'flax': '0.12.8'},
                        {'jax': '0.11.0', 'flax': '0.12.8', 'new-one': '1.0'})
  assert rows == ['| jax | 0.10.2 | 0.11.0 |', '| new-one | - | 1.0 |']
  log = 'x\nFAILED tests/a.py::b - AssertionError\nERROR tests/c.py\n1 failed, 2 passed\n'
  assert script.failed_tests(log) == ['FAILED tests/a.py::b - AssertionError',
                                      'ERROR tests/c.py']
