"""What every benchmark result records of where it came from: the command
that made it, when, on which CPU, with which package versions.

The performance guide heads each table with these (``docs/benchmark_tables.py``),
so that a table and the command that made it cannot drift apart.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
from pathlib import Path

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'transformers', 'torch')


def cpu_model() -> str:
  """The CPU's model name (``/proc/cpuinfo`` on Linux), else what
  :mod:`platform` knows."""
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
  """The installed versions of :data:`PACKAGES` (those installed)."""
  found = {}
  for name in PACKAGES:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      found[name] = importlib.metadata.version(name)
  return found


def provenance(script: str, argv: list[str] | None) -> dict:
  """The command (``python benchmarks/SCRIPT ARGS``, without ``--output``),
  the UTC time, the CPU model and count, the machine, Python's and the
  packages' versions, and any ``XLA_FLAGS``."""
  args = list(sys.argv[1:] if argv is None else argv)
  if '--output' in args:  # where the result went is no part of what it measured
    at = args.index('--output')
    del args[at:at + 2]
  return {'command': shlex.join(['python', f'benchmarks/{script}', *args]),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
          'cpu_model': cpu_model(), 'cpu_count': os.cpu_count(), 'machine': platform.platform(),
          'python': platform.python_version(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          **versions()}
