"""The package as released: one version, a changelog entry for it, typed, licensed."""

import importlib.metadata
import re
from pathlib import Path

import pytest

import rose_jax

tomllib = pytest.importorskip('tomllib')  # Python 3.11+, as in test_versions

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_written_once_and_the_changelog_leads_with_it():
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  assert 'version' not in project and 'version' in project['dynamic']
  assert importlib.metadata.version('rose-jax') == rose_jax.__version__
  newest = re.search(r'^## (\S+)', (ROOT / 'CHANGELOG.md').read_text(), re.M).group(1)
  assert newest == rose_jax.__version__


def test_the_package_is_typed_and_licensed_in_spdx_form():
  assert (Path(rose_jax.__file__).parent / 'py.typed').exists()
  project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
  assert project['license'] == 'Apache-2.0'
  assert 'Apache License' in (ROOT / 'LICENSE').read_text()
