"""How much memory a compiled program needs, how much a device has free, and
how many copies of a program's batchable part fit between the two.

Used to size a sweep's chunks (:mod:`rose_jax.training.sweep`) and the chunks
of grid points of a loss landscape (:mod:`rose_jax.analysis.landscape`) from
XLA's own estimate rather than a guess.
"""

from __future__ import annotations

import os

import jax


def compiled_bytes(compiled) -> int | None:
  """XLA's memory estimate of a compiled program: arguments + outputs +
  temporaries - aliased (donated) buffers; None where the backend has none."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # not every backend reports it
    return None


def chunk_size(members: int, fixed: int, per_member: int, budget: int) -> int:
  """How many members to train at once within ``budget`` bytes (at least one);
  all of them when a member adds nothing measurable."""
  if per_member <= 0:
    return max(1, members)
  return int(max(1, min(members, (budget - fixed) // per_member)))


def available_memory(device: jax.Device | None = None, *, share: float = 0.8) -> int:
  """``share`` of the memory the device has free: from ``memory_stats()`` on
  accelerators, from ``MemAvailable`` in ``/proc/meminfo`` on a CPU."""
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'bytes_limit' in stats:
    free = stats['bytes_limit'] - stats.get('bytes_in_use', 0)
  else:
    free = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    try:
      with open('/proc/meminfo') as f:
        for line in f:
          if line.startswith('MemAvailable:'):
            free = int(line.split()[1]) * 1024
    except OSError:
      pass
  return int(share * free)
