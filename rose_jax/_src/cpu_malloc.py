"""glibc malloc settings that keep XLA:CPU from faulting its memory in every step.

XLA:CPU allocates a step's temporaries afresh each step. glibc's malloc
serves blocks over 32 MiB with mmap, and gives a thread arena's heap back
to the system once it is wholly free, so every step faults new pages in.
With one arena, no mmap and no trimming, freed memory is reused, as under
tcmalloc, without a preloaded library or a restart (the performance guide
measures the three).

The price is that the process keeps its peak heap until it exits. GPUs and
TPUs are unaffected (XLA pools device memory itself), and the host side of
a run is small there.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
# A trim threshold of -1 turns trimming off (mallopt(3)); the largest positive
# one, 2 GiB, would still give back every step a model's temporaries over it.
_SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 64 << 20))
OPT_OUT = 'ROSE_JAX_SYSTEM_MALLOC'
_NOT_CALLED = 'left as it is (not set in this process)'
_done = _NOT_CALLED


def keep_freed_memory() -> str:
  """Sets glibc malloc to reuse freed memory, if this process uses glibc's
  malloc; returns what was done. Call it first in a command's process,
  before JAX starts its backend (its threads take their arenas then), and
  never from a library call: it changes the whole process for good
  (:func:`rose_jax.glue.cli.run_as_process` does it for the commands).

  Set ``ROSE_JAX_SYSTEM_MALLOC=1`` to leave malloc as it is.
  """
  global _done
  _done = _apply()
  return _done


def setting() -> str:
  """What :func:`keep_freed_memory` did in this process, or that it was not called."""
  return _done


def _apply() -> str:
  if os.environ.get(OPT_OUT):
    return f'left as it is ({OPT_OUT} is set)'
  if 'malloc' in os.environ.get('LD_PRELOAD', ''):
    return 'left as it is (a preloaded allocator is in use)'
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return 'left as it is (not glibc)'
  libc = ctypes.CDLL(None)
  if not all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS):
    return 'left as it is (mallopt refused a setting)'
  return 'glibc malloc: one arena, no mmap, no trimming'
