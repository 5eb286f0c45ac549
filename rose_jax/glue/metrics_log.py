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


def mask_dtype(tensors: int) -> np.dtype:
  """One row of ``masks.bin``: the global step and each ranked tensor's mask."""
  return np.dtype([('step', '<i8'), ('mask', '<f4', (tensors,))])


class MaskLog:
  """ROSE's kept mask at every step, beside ``metrics.jsonl``.

  ``masks.json`` names the ranked tensors (``"encoder/layer/0/attention/query/kernel"``)
  and the row layout; ``masks.bin`` holds one row per step: the step and
  each tensor's mask value (with ``granularity="element"``, the share of the
  tensor kept), as :func:`mask_dtype` lays it out. A RoBERTa-base run ranks
  about 200 tensors: 0.8 KB a step. Read it with :func:`read_masks`.

  Args:
    directory: the run directory.
    tensors: the ranked tensors' names, in the order of each row.
    enabled: write anything at all (one process of several writes).
    start_step: the global step training starts from (a resumed run's
      checkpoint); rows after it are dropped.
  """

  def __init__(self, directory: Path, tensors: list[str], *, enabled: bool = True,
               start_step: int = 0):
    self.enabled = enabled
    self._dtype = mask_dtype(len(tensors))
    self._file = None
    if not enabled:
      return
    header = {'tensors': tensors, 'row': {'step': 'int64', 'mask': f'float32[{len(tensors)}]'},
              'format': 'little-endian rows, numpy.dtype([("step", "<i8"), ("mask", "<f4", '
                        '(len(tensors),))])'}
    atomic.write_json(directory / MASK_HEADER, header)
    path = directory / MASK_FILE
    if path.exists():
      rows = np.fromfile(path, np.uint8)
      whole = len(rows) // self._dtype.itemsize * self._dtype.itemsize
      kept = rows[:whole].view(self._dtype)
      kept = kept[kept['step'] <= start_step]
      if len(kept) * self._dtype.itemsize != len(rows):
        atomic.write_bytes(path, kept.tobytes())
    self._file = path.open('ab')

  def write(self, steps: np.ndarray, masks: np.ndarray) -> None:
    """Appends the rows of ``steps`` (``[n]``) and ``masks`` (``[n, tensors]``)."""
    if self._file is None:
      return
    rows = np.empty(len(steps), self._dtype)
    rows['step'], rows['mask'] = steps, masks
    self._file.write(rows.tobytes())
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def read_masks(directory: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
  """A run's recorded masks: the tensor names, the steps ``[n]`` and the masks
  ``[n, tensors]``.

  Raises:
    FileNotFoundError: the run recorded no masks, with how to record them.
  """
  directory = Path(directory)
  if not (directory / MASK_HEADER).exists() or not (directory / MASK_FILE).exists():
    raise FileNotFoundError(
        f'{directory} has no {MASK_FILE}: only ROSE methods record masks. Train with a '
        '--method rose-... (masks are recorded unless --no-record-masks is given).')
  tensors = json.loads((directory / MASK_HEADER).read_text())['tensors']
  dtype = mask_dtype(len(tensors))
  raw = np.fromfile(directory / MASK_FILE, np.uint8)
  rows = raw[:len(raw) // dtype.itemsize * dtype.itemsize].view(dtype)
  return tensors, rows['step'].copy(), rows['mask'].copy()


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar of ``total`` steps from ``initial``; nothing shown unless ``enabled``."""
  from tqdm.auto import tqdm
  # The default format shows the elapsed time and the estimated time left.
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              desc='train', unit='step')
