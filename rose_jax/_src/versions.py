"""The oldest versions of the libraries we run on, checked at import.

These are the versions the test suite has passed on (jax and jaxlib 0.8.0,
flax 0.12.0, optax 0.2.6, chex 0.1.90); ``pyproject.toml`` requires the same.
Older ones lack APIs we call (``jax.shard_map``, ``jax.typeof``,
``optax.tree``, ``nnx.List``...) and would fail later, deep inside a trace,
so an install that bypassed the requirements (``--no-deps``, a pinned
environment) is refused here with the fix.
"""

from __future__ import annotations

import importlib.metadata
import re

MINIMUM = {'jax': (0, 8, 0), 'jaxlib': (0, 8, 0), 'optax': (0, 2, 6), 'chex': (0, 1, 90),
           'flax': (0, 12, 0)}


def _parse(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in re.findall(r'\d+', version.split('+')[0])[:3])


def check(*packages: str) -> None:
  """Raises ImportError, naming the fix, if an installed package is too old."""
  for package in packages:
    try:
      installed = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      continue  # the import itself will say that it is missing
    needed = MINIMUM[package]
    if _parse(installed) < needed:
      wanted = '.'.join(map(str, needed))
      raise ImportError(
          f'rose_jax needs {package}>={wanted}, but {package} {installed} is installed; '
          f'upgrade it with: pip install -U "{package}>={wanted}"')
