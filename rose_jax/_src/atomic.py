"""Writes that leave the old file or the new one, never half of one.

Each write goes to a temporary name beside the target and is renamed over it
only once it is complete and synced; a failure (disk full, permissions, a
kill) removes the temporary and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _temporary_beside(path: Path, suffix: str) -> Iterator[Path]:
  """A temporary path next to ``path``, removed unless it was renamed."""
  tmp = path.with_name(f'.{path.name}.{os.getpid()}{suffix}')
  try:
    yield tmp
  finally:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` through a synced temporary file and a rename."""
  path = Path(path)
  with _temporary_beside(path, '.tmp') as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def write_json(path: str | os.PathLike, payload: Any) -> None:
  write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode('utf-8'))


def write_directory(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
  """Replaces the directory ``path`` by one that ``fill(tmp_dir)`` writes.

  The old directory stays in place until the new one is complete; the swap
  is two renames, and a failure in ``fill`` leaves the old directory alone.
  """
  path = Path(path)
  with _temporary_beside(path, '.new') as new, _temporary_beside(path, '.old') as old:
    new.mkdir(parents=True)
    fill(new)
    if path.exists():
      os.replace(path, old)
    os.replace(new, path)


def write_npz(path: str | os.PathLike, **arrays) -> None:
  """``numpy.savez`` of ``arrays`` to ``path``, atomically."""
  import io

  import numpy as np
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(path, buffer.getvalue())
