"""A run's metric lines: ``metrics.jsonl`` and, when asked, TensorBoard events.

Step lines are ``{"step": S, "epoch": E, ...}``; epoch lines carry
``"type": "epoch"``. On resume, :meth:`MetricsLog.trim` drops what was
written after the checkpoint, so the resumed run writes each line once.
"""

from __future__ import annotations

import json
from pathlib import Path

from rose_jax import atomic


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
