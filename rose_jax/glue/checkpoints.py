"""Training checkpoints of a run: orbax, newest first, falling back past damage.

A checkpoint is one pytree: the parameters, the optimizer state (ROSE's
masks and moments), where training stands (global step, epoch, batch within
the epoch), the dropout stream's key and the running metric sums, so that a
run killed anywhere resumes to bit-identical parameters. Orbax writes each
checkpoint to a temporary directory and renames it when complete; a
checkpoint that is damaged later (a truncated file, a missing part) is
skipped with a warning for the one before it. The members of a sweep
(:mod:`rose_jax.glue.sweep`) each keep their own checkpoints and resume
together from the newest step they all have.
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

  def restore(self, step: int, target: Any) -> Any:
    """The checkpoint of ``step``; ``target`` gives the structure, shapes and dtypes.

    Raises:
      CheckpointError: it cannot be restored (missing or damaged).
    """
    try:
      return self._manager.restore(step, args=self._ocp.args.StandardRestore(target))
    except Exception as error:  # orbax raises many kinds for damaged files
      raise CheckpointError(f'{self.directory}/{step}: {type(error).__name__}: '
                            f'{str(error)[:200]}') from error

  def discard_after(self, step: int) -> None:
    """Deletes the checkpoints newer than ``step``."""
    for newer in self.steps():
      if newer > step:
        self._manager.delete(newer)

  def close(self) -> None:
    self._manager.close()


def restore_together(runs: list[tuple[Checkpoints, Any]]) -> tuple[int, list[Any]] | None:
  """The newest step that every run has a checkpoint of and restores, and the states.

  ``runs`` pairs each run's checkpoints with its restore target. A damaged
  checkpoint is skipped with a warning for an older step; the runs' newer
  checkpoints are deleted, since the resumed runs write those steps again.
  Returns None, and deletes every checkpoint, when no step is common to all
  runs (a run killed while the first checkpoints were written starts over).

  Raises:
    CheckpointError: common checkpoints exist and none of them restores.
  """
  found = [set(checkpoints.steps()) for checkpoints, _ in runs]
  common = sorted(set.intersection(*found), reverse=True)
  failures = []
  for step in common:
    try:
      states = [checkpoints.restore(step, target) for checkpoints, target in runs]
    except CheckpointError as error:
      failures.append(str(error))
      log.warning('Checkpoint %s cannot be restored; trying the one before.', error)
      continue
    for checkpoints, _ in runs:
      checkpoints.discard_after(step)
    return step, states
  if failures:
    raise CheckpointError(
        f'No checkpoint can be restored ({"; ".join(failures)}). Pass --overwrite to start '
        'the run over, or choose a new --output-root.')
  if any(found):
    log.warning('The runs have no checkpoint step in common; they start over.')
    for checkpoints, _ in runs:
      checkpoints.discard_after(-1)
  return None
