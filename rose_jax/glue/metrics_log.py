"""What a run reports as it goes: its metric lines (``metrics.jsonl`` and,
when asked, TensorBoard events), its masks and the progress bar.

Step lines are ``{"step": S, "epoch": E, ...}``; epoch lines carry
``"type": "epoch"``. On resume, :meth:`MetricsLog.trim` drops what was
written after the checkpoint, so the resumed run writes each line once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rose_jax._src import atomic


def trim_lines(path: Path, *, last_step: int, last_epoch: int) -> int:
  """Keeps the step lines up to ``last_step`` and the epoch lines up to
  ``last_epoch``; rewrites ``path`` atomically; returns the lines dropped."""
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text(encoding='utf-8').splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by the kill
      dropped += 1
      continue
    limit = (record.get('epoch', 0), last_epoch) if record.get('type') == 'epoch' else \
        (record.get('step', 0), last_step)
    if limit[0] <= limit[1]:
      kept.append(line + '\n')
    else:
      dropped += 1
  if dropped:
    atomic.write_text(path, ''.join(kept))
  return dropped


class MetricsLog:
  """Appends metric records to ``metrics.jsonl`` (and TensorBoard) in ``directory``.

  Args:
    directory: the run directory.
    enabled: write anything at all (one process of several writes).
    tensorboard: also write scalars under ``directory/tensorboard``.
    resume_after: the checkpoint's global step when resuming; TensorBoard
      hides the events a killed run wrote after it.
  """

  def __init__(self, directory: Path, *, enabled: bool = True, tensorboard: bool = False,
               resume_after: int | None = None):
    self.enabled = enabled
    self._file = (directory / 'metrics.jsonl').open('a', encoding='utf-8') if enabled else None
    self._writer = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter
      purge = None if resume_after is None else resume_after + 1
      self._writer = SummaryWriter(str(directory / 'tensorboard'), purge_step=purge)

  def write(self, record: dict, *, step: int, prefix: str = 'train') -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._writer is not None:
      for name, value in record.items():
        if name not in ('step', 'epoch', 'type') and isinstance(value, int | float):
          self._writer.add_scalar(f'{prefix}/{name}', value, step)
      self._writer.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._writer is not None:
      self._writer.close()


MASK_FILE, MASK_HEADER = 'masks.bin', 'masks.json'
# What a row may hold beside the step: the mask the optimizer applied and, for
# ROSE-Ensemble, the first- and second-order masks it mixed.
MASK_PARTS = ('mask', 'first', 'second')


def mask_dtype(tensors: int, parts: tuple[str, ...] = ('mask',)) -> np.dtype:
  """One row of ``masks.bin``: the global step and, for each of ``parts``,
  each ranked tensor's mask."""
  return np.dtype([('step', '<i8'), *((part, '<f4', (tensors,)) for part in parts)])


def _header(tensors: list[str], parts: tuple[str, ...]) -> dict:
  fields = ', '.join(f'("{part}", "<f4", (len(tensors),))' for part in parts)
  return {'tensors': tensors, 'parts': list(parts),
          'row': {'step': 'int64', **{part: f'float32[{len(tensors)}]' for part in parts}},
          'format': f'little-endian rows, numpy.dtype([("step", "<i8"), {fields}])'}


def _parts_of(header: dict) -> tuple[str, ...]:
  # In row order (the JSON's keys are sorted); files before ensembles: the mask alone.
  return tuple(header.get('parts', ['mask']))


class MaskLog:
  """ROSE's kept mask at every step, beside ``metrics.jsonl``.

  ``masks.json`` names the ranked tensors (``"encoder/layer/0/attention/query/kernel"``)
  and the row layout; ``masks.bin`` holds one row per step: the step and
  each tensor's mask value (with ``granularity="element"``, the share of the
  tensor kept), as :func:`mask_dtype` lays it out. ROSE-Ensemble's rows also
  hold the first- and second-order masks that it mixed (``parts``). A
  RoBERTa-base run ranks about 200 tensors: 0.8 KB a step and part. Read it
  with :func:`read_masks`.

  Args:
    directory: the run directory.
    tensors: the ranked tensors' names, in the order of each row.
    parts: what each row holds, from :data:`MASK_PARTS`; a file already
      there keeps its own (a run resumed from an older version goes on
      recording what it recorded).
    enabled: write anything at all (one process of several writes).
    start_step: the global step training starts from (a resumed run's
      checkpoint); rows after it are dropped.
  """

  def __init__(self, directory: Path, tensors: list[str], *, parts: tuple[str, ...] = ('mask',),
               enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    path, header_path = directory / MASK_FILE, directory / MASK_HEADER
    if path.exists() and header_path.exists():
      parts = _parts_of(json.loads(header_path.read_text()))
    self.parts = parts
    self._dtype = mask_dtype(len(tensors), parts)
    self._file = None
    if not enabled:
      return
    atomic.write_json(header_path, _header(tensors, parts))
    if path.exists():
      rows = np.fromfile(path, np.uint8)
      whole = len(rows) // self._dtype.itemsize * self._dtype.itemsize
      kept = rows[:whole].view(self._dtype)
      kept = kept[kept['step'] <= start_step]
      if len(kept) * self._dtype.itemsize != len(rows):
        atomic.write_bytes(path, kept.tobytes())
    self._file = path.open('ab')

  def write(self, steps: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    """Appends the rows of ``steps`` (``[n]``) and, for each part, its masks
    (``[n, tensors]``); parts this file does not hold are left out."""
    if self._file is None:
      return
    rows = np.empty(len(steps), self._dtype)
    rows['step'] = steps
    for part in self.parts:
      rows[part] = masks[part]
    self._file.write(rows.tobytes())
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


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
  header = json.loads((directory / MASK_HEADER).read_text())
  parts = _parts_of(header)
  if part not in parts:
    raise KeyError(f'{directory}/{MASK_FILE} holds {list(parts)}, not {part!r}: only '
                   'ROSE-Ensemble runs record the first- and second-order masks.')
  tensors = header['tensors']
  dtype = mask_dtype(len(tensors), parts)
  raw = np.fromfile(directory / MASK_FILE, np.uint8)
  rows = raw[:len(raw) // dtype.itemsize * dtype.itemsize].view(dtype)
  return tensors, rows['step'].copy(), rows[part].copy()


def mask_parts(directory: str | Path) -> tuple[str, ...]:
  """What a run's ``masks.bin`` records (see :func:`read_masks`)."""
  return _parts_of(json.loads((Path(directory) / MASK_HEADER).read_text()))


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar of ``total`` steps from ``initial``; nothing shown unless ``enabled``."""
  from tqdm.auto import tqdm
  # The default format shows the elapsed time and the estimated time left.
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              desc='train', unit='step')
