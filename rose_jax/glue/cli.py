"""What the command-line scripts share: one ``error:`` line for a user's
mistake, the settings that belong to a command's whole process, and the
progress bar."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from rose_jax._src import cpu_malloc
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


def run_as_process(main: Callable[[], int]) -> NoReturn:
  """A command's ``if __name__ == '__main__'``: sets what belongs to the whole
  process (glibc malloc's reuse of freed memory, before JAX starts its CPU
  threads, and INFO logging for rose_jax), then exits with ``main()``'s
  status. Made here, not in ``main``, so that calling ``main(argv)`` from
  Python leaves the caller's process as it was."""
  cpu_malloc.keep_freed_memory()
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  logging.getLogger('rose_jax').setLevel(logging.INFO)
  sys.exit(main())


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar of ``total`` steps from ``initial``; nothing shown unless ``enabled``."""
  from tqdm.auto import tqdm
  # The default format shows the elapsed time and the estimated time left.
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              desc='train', unit='step')
