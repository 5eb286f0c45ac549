"""One process of a multi-process data-parallel run, for the multi-host tests.

  python -m tests.helpers.multihost_worker step PROCESS_ID NUM_PROCESSES PORT OUT
  python -m tests.helpers.multihost_worker finetune COMMANDS_JSON

Each process has 4 CPU devices. ``step`` runs three train steps, each
process feeding its own share of each global batch, and process 0 writes the
parameters to OUT (an .npz file). ``finetune`` runs fine-tuning commands one
after another, ``COMMANDS_JSON`` a list of ``[AT, ARGS]`` or ``[AT, ARGS,
COPIES]``: the first command's arguments start jax.distributed
(``--distributed``), which the later ones run under. With AT > 0 the process
dies at that train step of its command, as a killed job would; with COPIES
(``{source directory: target}``) it runs to the end instead, process 0
copying each source to its target as step AT is called: what a kill there
leaves (``tests.helpers.runs.run_copied_at``). The exit status is the first
nonzero command's, or 0.
"""

import os
import sys

# The test session's flags (tests/conftest.py), with 4 devices instead of 8.
os.environ['XLA_FLAGS'] = ' '.join(
    [f for f in os.environ.get('XLA_FLAGS', '').split()
     if not f.startswith('--xla_force_host_platform_device_count')]
    + ['--xla_force_host_platform_device_count=4'])
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax


def steps(process_id: int, num_processes: int, port: int, out_file: str) -> None:
  import numpy as np

  from rose_jax.glue import batching
  from rose_jax.models import as_apply_fn
  from rose_jax.training import step as step_lib
  from rose_jax.training.methods import get_method
  from tests.helpers import rose_chain, tiny_batch, tiny_model

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                             num_processes=num_processes, process_id=process_id)
  assert jax.device_count() == 4 * num_processes and jax.local_device_count() == 4
  method = get_method('rdrop-rose-ensemble')
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  tx = rose_chain()
  step = step_lib.make_train_step(apply_fn, tx, method, parallel='shard_map')
  mesh = step_lib.data_mesh()
  opt_state = tx.init(params)
  for i in range(3):
    batch = tiny_batch(i)
    rows = batching.process_rows(np.arange(len(batch['labels'])), process_id, num_processes)
    batch = step_lib.shard_batch({k: v[rows] for k, v in batch.items()}, mesh)
    params, opt_state, _ = step(params, opt_state, batch, jax.random.key(i))
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  if process_id == 0:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(host)[0]}
    np.savez(out_file, **flat)
  jax.distributed.shutdown()


def finetune(commands: list[list]) -> int:
  from rose_jax.glue.commands import finetune as cli
  from rose_jax.training import step as step_lib
  from rose_jax.training import sweep as sweep_lib
  from tests.helpers.runs import copy_once, killing
  builders = step_lib.make_train_step, sweep_lib.make_sweep_step
  die = lambda: os._exit(137)  # as SIGKILL: no clean-up, no shutdown
  for at, argv, *copies in commands:
    action = die
    if copies:
      copy = copy_once(copies[0])

      def action(copy=copy):
        # Asked when called: jax.distributed starts inside the command.
        if jax.process_index() == 0:  # the process that writes the run's files
          copy()

    step_lib.make_train_step, sweep_lib.make_sweep_step = (
        [killing(build, at, action) for build in builders] if at else builders)
    status = cli.main(argv)
    if status:
      return status
  return 0


if __name__ == '__main__':
  if sys.argv[1] == 'step':
    steps(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
  else:
    import json

    from rose_jax.glue.cli import run_as_process
    run_as_process(lambda: finetune(json.loads(sys.argv[2])))
