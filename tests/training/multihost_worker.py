"""One process of a multi-process data-parallel run, for test_multihost.py.

  python -m tests.training.multihost_worker PROCESS_ID NUM_PROCESSES PORT OUT [MODEL DATA_DIR]

Each process has 4 CPU devices and feeds its own share of each global batch.
Without MODEL, three train steps run and process 0 writes the parameters to
OUT (an .npz file); with MODEL and DATA_DIR (from tests/helpers.py), the
whole fine-tuning loop runs with OUT as its output directory.
"""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax

jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def run_loop(out_dir: str, model: str, data_dir: str) -> None:
  from rose_jax.training import loop
  loop.run(loop.TrainConfig(
      task='sst2', method='rose-ensemble', model=model, output_dir=out_dir,
      train_file=f'{data_dir}/train.tsv', dev_file=f'{data_dir}/dev.tsv',
      adv_file=f'{data_dir}/adv_dev.json', epochs=2, batch_size=16, max_length=12,
      log_every=2, progress=False, parallel='shard_map'))


def main(process_id: int, num_processes: int, port: int, out_file: str, *loop_args) -> None:
  jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                             num_processes=num_processes, process_id=process_id)
  if loop_args:
    run_loop(out_file, *loop_args)
    jax.distributed.shutdown()
    return
  import numpy as np

  from rose_jax.training import loop
  from rose_jax.training import step as step_lib
  from rose_jax.training.methods import get_method
  from tests.training.test_step import _rose, tiny_batch, tiny_model

  assert jax.device_count() == 4 * num_processes and jax.local_device_count() == 4
  method = get_method('rdrop-rose-ensemble')
  graphdef, params = step_lib.split_model(tiny_model(dropout=0.0))
  tx = _rose()
  step = step_lib.make_train_step(graphdef, tx, method, parallel='shard_map')
  mesh = step_lib.data_mesh()
  opt_state = tx.init(params)
  for i in range(3):
    batch = step_lib.shard_batch(loop.process_share(tiny_batch(i)), mesh)
    params, opt_state, _ = step(params, opt_state, batch, jax.random.key(i))
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
  if process_id == 0:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(host)[0]}
    np.savez(out_file, **flat)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
