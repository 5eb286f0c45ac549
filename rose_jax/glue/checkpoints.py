"""Training checkpoints of a run: orbax, newest first, falling back past damage.

A checkpoint is one pytree: the parameters, the optimizer state (ROSE's
masks and moments), where training stands (global step, epoch, batch within
the epoch), the dropout stream's key and the running metric sums, so that a
run killed anywhere resumes to bit-identical parameters. Orbax writes each
checkpoint to a temporary directory and renames it when complete; a
checkpoint that is damaged later (a truncated file, a missing part) is
skipped with a warning for the one before it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No checkpoint of a run could be restored."""


class Checkpoints:
  """The checkpoints under ``directory``, keyed by global step."""

  def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp
    self.directory = Path(directory).absolute()
    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Writes ``state`` as the checkpoint of ``step`` and waits until it is complete."""
    self._manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, target: Any) -> tuple[int, Any] | None:
    """``(step, state)`` of the newest checkpoint that restores, or None if
    there is none; ``target`` gives the structure, shapes and dtypes.

    Raises:
      CheckpointError: checkpoints exist and none of them restores.
    """
    steps = self.steps()
    failures = []
    for step in reversed(steps):
      try:
        state = self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
      except Exception as error:  # orbax raises many kinds for damaged files
        failures.append(f'step {step}: {type(error).__name__}: {str(error)[:200]}')
        log.warning('Checkpoint %s/%d cannot be restored (%s); trying the one before.',
                    self.directory, step, failures[-1])
        continue
      return step, state
    if failures:
      raise CheckpointError(
          f'No checkpoint in {self.directory} can be restored ({"; ".join(failures)}). '
          'Pass --overwrite to start the run over, or choose a new --output-root.')
    return None

  def discard_after(self, step: int) -> None:
    """Deletes the checkpoints newer than ``step`` (ones that did not restore):
    the resumed run writes those steps again."""
    for newer in self.steps():
      if newer > step:
        self._manager.delete(newer)

  def close(self) -> None:
    self._manager.close()
