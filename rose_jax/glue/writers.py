"""What a run reports as it trains, each destination one :class:`Writer`.

A writer takes the step's metric lines, the masks, and at each epoch's end
an :class:`EpochReport` (the epoch's numbers, each evaluation set's
predictions, the model); each implements what it keeps and ignores the
rest, so that a new logger is one class. A resumed run's writers first drop
what a killed run wrote after its checkpoint, so that every line, row and
file is written once:

* :class:`MetricLines`: ``metrics.jsonl``, a line per ``log_every`` steps
  (``{"step": S, "epoch": E, ...}``) and per epoch (``"type": "epoch"``);
* :class:`TensorBoard`: the same numbers as events under ``tensorboard/``;
* :class:`MaskFile`: ``masks.bin`` (:mod:`rose_jax.glue.masks`);
* :class:`PredictionFiles`: ``predictions/epoch{E}-{set}.jsonl``;
* :class:`BestModel`: ``best_model/`` whenever an epoch is the best so far.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rose_jax._src import atomic
from rose_jax.glue import masks as masks_lib
from rose_jax.glue.results import Epoch


@dataclasses.dataclass
class EpochReport:
  """An epoch's end.

  Attributes:
    epoch: its numbers.
    is_best: it is the best epoch so far.
    predictions: per evaluation set, columns of one row per example:
      ``prediction``, ``label`` and any the task adds (MSGS's ``condition``).
    model: returns the epoch's model on the host (called only if needed).
  """
  epoch: Epoch
  is_best: bool
  predictions: dict[str, dict[str, np.ndarray]]
  model: Callable[[], Any]


class Writer:
  """A destination of what a run reports; each call does nothing unless overridden."""

  def step(self, record: dict[str, Any]) -> None:
    """A metric line: ``step``, ``epoch`` and the metrics' means since the last."""

  def masks(self, steps: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    """ROSE's masks of ``steps``, ``[n, tensors]`` per part."""

  def epoch(self, report: EpochReport) -> None:
    """An epoch's end."""

  def close(self) -> None:
    """Nothing more comes."""


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


class MetricLines(Writer):
  """``metrics.jsonl`` in ``directory``, from the checkpoint's ``step`` and
  ``epoch`` on (lines written after them are dropped)."""

  def __init__(self, directory: Path, *, step: int = 0, epoch: int = 0):
    path = directory / 'metrics.jsonl'
    self.dropped = trim_lines(path, last_step=step, last_epoch=epoch)
    self._file = path.open('a', encoding='utf-8')

  def _write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def step(self, record: dict[str, Any]) -> None:
    # A mean of no measurement (the KL over steps between refreshes) is null.
    self._write({name: None if isinstance(value, float) and math.isnan(value) else value
                 for name, value in record.items()})

  def epoch(self, report: EpochReport) -> None:
    self._write({'type': 'epoch', **report.epoch.to_json()})

  def close(self) -> None:
    self._file.close()


class TensorBoard(Writer):
  """The metric lines as TensorBoard scalars under ``directory/tensorboard``;
  a resumed run hides the events written after its checkpoint's ``step``."""

  def __init__(self, directory: Path, *, step: int = 0):
    from tensorboardX import SummaryWriter
    self._writer = SummaryWriter(str(directory / 'tensorboard'),
                                 purge_step=step + 1 if step else None)

  def _scalars(self, record: dict, step: int, prefix: str) -> None:
    for name, value in record.items():
      if name not in ('step', 'epoch', 'type') and isinstance(value, int | float):
        self._writer.add_scalar(f'{prefix}/{name}', value, step)
    self._writer.flush()

  def step(self, record: dict[str, Any]) -> None:
    self._scalars(record, record['step'], 'train')

  def epoch(self, report: EpochReport) -> None:
    self._scalars(report.epoch.to_json(), report.epoch.step, 'epoch')

  def close(self) -> None:
    self._writer.close()


class MaskFile(Writer):
  """``masks.bin`` and ``masks.json`` in ``directory``.

  Args:
    directory: the run directory.
    tensors: the ranked tensors' names, in the order of each row.
    parts: what each row holds, of :data:`rose_jax.glue.masks.MASK_PARTS`; a
      file already there keeps its own (a run resumed from an older version
      goes on recording what it recorded).
    step: the global step training starts from (a resumed run's
      checkpoint); rows after it are dropped.
  """

  def __init__(self, directory: Path, tensors: list[str], *,
               parts: Sequence[str] = ('mask',), step: int = 0):
    path, header_path = directory / masks_lib.MASK_FILE, directory / masks_lib.MASK_HEADER
    if path.exists() and header_path.exists():
      parts = masks_lib.parts_of(json.loads(header_path.read_text()))
    self.parts = tuple(parts)
    self._dtype = masks_lib.mask_dtype(len(tensors), self.parts)
    atomic.write_json(header_path, masks_lib.header(tensors, self.parts))
    if path.exists():
      rows = np.fromfile(path, np.uint8)
      whole = len(rows) // self._dtype.itemsize * self._dtype.itemsize
      kept = rows[:whole].view(self._dtype)
      kept = kept[kept['step'] <= step]
      if len(kept) * self._dtype.itemsize != len(rows):
        atomic.write_bytes(path, kept.tobytes())
    self._file = path.open('ab')

  def masks(self, steps: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    rows = np.empty(len(steps), self._dtype)
    rows['step'] = steps
    for part in self.parts:
      rows[part] = masks[part]
    self._file.write(rows.tobytes())
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class PredictionFiles(Writer):
  """``predictions/epoch{E}-{set}.jsonl`` in ``directory``: a line per example,
  ``{"idx": i, "prediction": ..., "label": ..., ...}``; files of epochs after
  the checkpoint's ``epoch`` are dropped."""

  def __init__(self, directory: Path, *, epoch: int = 0):
    self._directory = directory / 'predictions'
    if self._directory.is_dir():
      for file in self._directory.glob('epoch*-*.jsonl'):
        if int(file.name[5:].split('-')[0]) > epoch:
          file.unlink()

  def epoch(self, report: EpochReport) -> None:
    self._directory.mkdir(exist_ok=True)
    for name, columns in report.predictions.items():
      rows = zip(*(np.asarray(c).tolist() for c in columns.values()), strict=True)
      atomic.write_text(self._directory / f'epoch{report.epoch.epoch}-{name}.jsonl', ''.join(
          json.dumps({'idx': i, **dict(zip(columns, row, strict=True))}) + '\n'
          for i, row in enumerate(rows)))


class BestModel(Writer):
  """``best_model/`` in ``directory``: the best epoch's model, in the Hugging
  Face layout with the task's label names (``id2label``), and the tokenizer;
  replaced as a whole directory, so a kill leaves the old one or the new."""

  def __init__(self, directory: Path, tokenizer, *, label_names: Sequence[str] | None):
    self._directory, self._tokenizer = directory / 'best_model', tokenizer
    self._label_names = label_names

  def epoch(self, report: EpochReport) -> None:
    if not report.is_best:
      return
    from rose_jax.models import save_pretrained
    model = report.model()
    atomic.write_directory(self._directory, lambda d: (
        save_pretrained(model, d, label_names=self._label_names),
        self._tokenizer.save_pretrained(str(d))))


class Writers(Writer):
  """Several writers as one (none on a process that writes no files)."""

  def __init__(self, writers: Sequence[Writer] = ()):
    self.writers = list(writers)

  def step(self, record: dict[str, Any]) -> None:
    for writer in self.writers:
      writer.step(record)

  def masks(self, steps: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    for writer in self.writers:
      writer.masks(steps, masks)

  def epoch(self, report: EpochReport) -> None:
    for writer in self.writers:
      writer.epoch(report)

  def close(self) -> None:
    for writer in self.writers:
      writer.close()
