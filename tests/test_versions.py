"""Too old a library is refused at import, with the fix."""

import importlib.metadata

import pytest

from rose_jax import _versions


def test_installed_versions_pass():
  _versions.check(*_versions.MINIMUM)


def test_an_old_version_names_the_package_and_the_fix(monkeypatch):
  monkeypatch.setattr(importlib.metadata, 'version', lambda name: '0.7.2')
  with pytest.raises(ImportError, match=r'needs jax>=0.8.0, but jax 0.7.2 .* pip install -U'):
    _versions.check('jax')


def test_the_bounds_are_those_of_pyproject():
  tomllib = pytest.importorskip("tomllib")
  from pathlib import Path
  project = tomllib.loads((Path(__file__).parent.parent / 'pyproject.toml').read_text())
  requirements = project['project']['dependencies'] + \
      project['project']['optional-dependencies']['models']
  for package, version in _versions.MINIMUM.items():
    assert f'{package}>={".".join(map(str, version))}' in requirements, package


@pytest.mark.parametrize('text, parsed', [('0.8.0', (0, 8, 0)), ('0.10.2', (0, 10, 2)),
                                          ('2.13.0+cpu', (2, 13, 0)), ('0.12.0rc1', (0, 12, 0))])
def test_versions_parse(text, parsed):
  assert _versions._parse(text) == parsed
