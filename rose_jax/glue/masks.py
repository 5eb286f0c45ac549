"""The mask file of a ROSE run: what ROSE kept of every ranked tensor at every step.

``masks.json`` names the ranked tensors (``"encoder/layer/0/attention/query/kernel"``)
and the row layout; ``masks.bin`` holds one row per step: the global step
and, for each part, each tensor's mask value (with ``granularity="element"``,
the share of the tensor kept), as :func:`mask_dtype` lays it out. The parts
are the mask the optimizer applied (``mask``) and, for ROSE-Ensemble, the
first- and second-order masks it mixed (``first``, ``second``).
:class:`rose_jax.glue.writers.MaskFile` writes it;
:func:`read_masks` reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rose_jax._src import json_files

MASK_FILE, MASK_HEADER = 'masks.bin', 'masks.json'
# What a row may hold beside the step, by the name of the train step's metric
# that carries it.
MASK_PARTS = {'mask': 'mask', 'first': 'first_mask', 'second': 'second_mask'}


def mask_dtype(tensors: int, parts: tuple[str, ...] = ('mask',)) -> np.dtype:
  """One row of ``masks.bin``: the global step and, for each of ``parts``,
  each ranked tensor's mask."""
  return np.dtype([('step', '<i8'), *((part, '<f4', (tensors,)) for part in parts)])


def header(tensors: list[str], parts: tuple[str, ...]) -> dict:
  """``masks.json``'s content."""
  fields = ', '.join(f'("{part}", "<f4", (len(tensors),))' for part in parts)
  return {'tensors': tensors, 'parts': list(parts),
          'row': {'step': 'int64', **{part: f'float32[{len(tensors)}]' for part in parts}},
          'format': f'little-endian rows, numpy.dtype([("step", "<i8"), {fields}])'}


def parts_of(header: dict) -> tuple[str, ...]:
  """The parts of a file's rows, in row order (a file of a run without
  ensembles: the mask alone)."""
  return tuple(header.get('parts', ['mask']))


def _read_header(directory: Path) -> dict:
  header = json_files.read_object(directory / MASK_HEADER,
                                  'the names of the ranked tensors and the row layout')
  if not isinstance(header.get('tensors'), list):
    raise ValueError(f'{directory / MASK_HEADER} names no ranked tensors ("tensors").')
  return header


def mask_parts(directory: str | Path) -> tuple[str, ...]:
  """What a run's ``masks.bin`` records (see :func:`read_masks`)."""
  return parts_of(_read_header(Path(directory)))


def read_masks(directory: str | Path, part: str = 'mask') -> tuple[list[str], np.ndarray,
                                                                   np.ndarray]:
  """A run's recorded masks: the tensor names, the steps ``[n]`` and the masks
  ``[n, tensors]`` of ``part``: ``"mask"``, what the optimizer applied, or
  for ROSE-Ensemble ``"first"`` or ``"second"`` (see :func:`mask_parts`).

  Raises:
    FileNotFoundError: the run recorded no masks, with how to record them.
    KeyError: the run did not record ``part``.
  """
  directory = Path(directory)
  if not (directory / MASK_HEADER).exists() or not (directory / MASK_FILE).exists():
    raise FileNotFoundError(
        f'{directory} has no {MASK_FILE}: only ROSE methods record masks. Train with a '
        '--method rose-... (masks are recorded unless --no-record-masks is given).')
  header = _read_header(directory)
  parts = parts_of(header)
  if part not in parts:
    raise KeyError(f'{directory}/{MASK_FILE} holds {list(parts)}, not {part!r}: only '
                   'ROSE-Ensemble runs record the first- and second-order masks.')
  tensors = header['tensors']
  dtype = mask_dtype(len(tensors), parts)
  raw = np.fromfile(directory / MASK_FILE, np.uint8)
  rows = raw[:len(raw) // dtype.itemsize * dtype.itemsize].view(dtype)
  return tensors, rows['step'].copy(), rows[part].copy()
