"""Starting JAX's multi-process runtime from the command line.

``jax.distributed.initialize()`` must run before any other JAX call that
touches devices. It is called when asked (``--distributed``, or a
coordinator address) or when a cluster launcher that JAX knows has started
several processes of this command; JAX then reads its peers from that
launcher's environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Launchers whose environment jax.distributed.initialize() reads by itself,
# with the variable that says how many processes they started.
_LAUNCHERS = {
    'SLURM': 'SLURM_NTASKS',
    'Open MPI': 'OMPI_COMM_WORLD_SIZE',
    'MPICH': 'PMI_SIZE',
}


def detected_launcher(environ: Mapping[str, str] = os.environ) -> str | None:
  """The launcher that started several processes of this command, if any."""
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  for name, variable in _LAUNCHERS.items():
    try:
      if int(environ.get(variable, '1')) > 1:
        return name
    except ValueError:
      continue
  hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return 'TPU pod slice'
  return None


def initialize(*, distributed: bool = False, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               environ: Mapping[str, str] = os.environ) -> bool:
  """Calls ``jax.distributed.initialize`` when asked or launched on a cluster.

  Returns whether it did. Explicit arguments win over the launcher's
  environment.
  """
  explicit = coordinator_address is not None or num_processes is not None or \
      process_id is not None
  if not (distributed or explicit or detected_launcher(environ)):
    return False
  import jax
  # CPU processes need a collectives backend of their own; GPUs and TPUs
  # ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True
