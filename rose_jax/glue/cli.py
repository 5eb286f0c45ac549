"""What the command-line scripts share: one ``error:`` line for a user's mistake."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from rose_jax.glue.checkpoints import CheckpointError as TrainingCheckpointError
from rose_jax.models.loading import CheckpointError as ModelCheckpointError

# Errors that a user's input or environment causes: data, settings, model
# files, checkpoints, disk and permissions. Anything else is a bug and keeps
# its traceback.
USER_ERRORS = (ValueError, OSError, ModelCheckpointError, TrainingCheckpointError)


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
  """Wraps a command's ``main``: a user error prints ``error: ...`` and returns 2."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs) -> int:
    try:
      return main(*args, **kwargs)
    except USER_ERRORS as error:
      message = ' '.join(str(error).split()) or type(error).__name__
      if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f'{message} ({error.filename})'
      print(f'error: {message}', file=sys.stderr)
      return 2

  return wrapped
