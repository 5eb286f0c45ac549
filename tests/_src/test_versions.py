"""Too old a library is refused at import, with the fix."""

import importlib.metadata

import pytest

from rose_jax._src import versions


def test_installed_versions_pass():
  versions.check(*versions.MINIMUM)


def test_an_old_version_names_the_package_and_the_fix(monkeypatch):
  monkeypatch.setattr(importlib.metadata, 'version', lambda name: '0.7.2')
  with pytest.raises(ImportError, match=r'needs jax>=0.8.0, but jax 0.7.2 .* pip install -U'):
    versions.check('jax')


def test_the_bounds_are_those_of_pyproject():
  tomllib = pytest.importorskip("tomllib")
  from pathlib import Path
  project = tomllib.loads((Path(__file__).parents[2] / 'pyproject.toml').read_text())
  requirements = project['project']['dependencies'] + \
      project['project']['optional-dependencies']['models']
  for package, version in versions.MINIMUM.items():
    assert f'{package}>={".".join(map(str, version))}' in requirements, package


@pytest.mark.parametrize('text, parsed', [('0.8.0', (0, 8, 0)), ('0.10.2', (0, 10, 2)),
                                          ('2.13.0+cpu', (2, 13, 0)), ('0.12.0rc1', (0, 12, 0))])
def test_versions_parse(text, parsed):
  assert versions._parse(text) == parsed
