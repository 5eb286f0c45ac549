"""Fine-tune an encoder checkpoint (BERT, RoBERTa, ModernBERT, DeBERTa-v3) on a
GLUE task, or on your own data, with ROSE or a baseline, evaluating each epoch
on the task's evaluation sets (GLUE's and AdvGLUE's dev sets) with its metrics.

  rose-finetune --task sst2 --method rose-ensemble --seeds 1 2 3
  rose-finetune --task custom --text-columns review --label-column sentiment \
      --labels bad,good,mixed --metrics accuracy,f1 --train-file train.csv \
      --eval-file dev=dev.csv --eval-file shifted=other.csv

Each seed writes to OUTPUT_ROOT/TASK-METHOD-seedN; summarise them with
rose-report. A grid of learning rates, thresholds and seeds trains as
one vmapped program, each run in its own directory, its members sharded over
all devices (of all hosts with --distributed):

  rose-finetune --task sst2 --sweep learning_rate=1e-5,2e-5 upper=0.4,0.6 seed=1,2

On several hosts, run the same command on each with --distributed (a TPU pod
slice, SLURM or MPI launch is detected by itself).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rose_jax._src import distributed
from rose_jax.glue import config as config_lib
from rose_jax.glue import grid as grid_lib
from rose_jax.glue import loop, sweep
from rose_jax.glue.cli import one_line_errors, run_as_process
from rose_jax.glue.options import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  config_lib.add_arguments(p)
  p.add_argument('--output-root', default='runs', help='where the run directories go [runs]')
  p.add_argument('--seeds', type=int, nargs='+', help='one run per seed [1]')
  group = p.add_argument_group('sweeps (one vmapped program for a grid of runs)')
  group.add_argument('--sweep', nargs='+', metavar='NAME=V1,V2',
                     help='train the product of these values together; NAME is seed or one '
                     f'of the optimizer settings {", ".join(grid_lib.SWEPT_NUMBERS)}')
  group.add_argument('--sweep-chunk', type=int, metavar='N',
                     help='members trained at once (default: as many as fit 80%% of the free '
                     'device memory, from XLA\'s estimate of the step)')
  group = p.add_argument_group('multi-host (jax.distributed)')
  group.add_argument('--distributed', action='store_true',
                     help='call jax.distributed.initialize() first (found from the cluster '
                     "launcher's environment unless the options below are given)")
  group.add_argument('--coordinator-address', help='host:port of process 0')
  group.add_argument('--num-processes', type=int)
  group.add_argument('--process-id', type=int)
  return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[config_lib.TrainConfig]:
  """One config per run: per seed, or per member of ``--sweep``."""
  seeds = args.seeds or [1]
  repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
  if repeated:
    raise ConfigError(f'--seeds lists {repeated} more than once; each seed is one '
                                 'run directory.')
  root = Path(args.output_root)
  if args.sweep_chunk is not None and not args.sweep:
    raise ConfigError('--sweep-chunk needs --sweep.')
  if args.sweep:
    grid = grid_lib.parse_grid(args.sweep)
    if 'seed' in grid.names and args.seeds:
      raise ConfigError('Give the seeds once: in --sweep seed=... or in --seeds.')
    if 'seed' not in grid.names:
      grid = grid_lib.parse_grid([*args.sweep, 'seed=' + ','.join(map(str, seeds))])
    return grid_lib.member_configs(config_lib.from_arguments(args, output_dir=str(root)), grid,
                                root)
  task = args.task_name or args.task
  return [config_lib.from_arguments(args, seed=seed,
                                    output_dir=str(root / f'{task}-{args.method}-seed{seed}'))
          for seed in seeds]


@one_line_errors
def main(argv=None) -> int:
  args = parse_args(argv)
  if args.devices_per_member != 1 and not args.sweep:
    raise ConfigError('--devices-per-member sets how a sweep shares out its '
                                 'devices; a run alone uses --parallel. Add --sweep or leave '
                                 'it out.')
  distributed.initialize(distributed=args.distributed,
                         coordinator_address=args.coordinator_address,
                         num_processes=args.num_processes, process_id=args.process_id)
  runs = configs(args)
  if args.sweep:
    finished = sweep.run_sweep(runs, chunk=args.sweep_chunk)
  else:
    runs = [loop.preflight(config) for config in runs]  # all checked before any trains
    finished = (loop.train(config) for config in runs)
  for config, results in zip(runs, finished, strict=True):
    print(summary(config, results))
  return 0


def summary(config: config_lib.TrainConfig, results: dict) -> str:
  """``OUT: best epoch E, glue_dev accuracy 91.20, adv_dev accuracy 55.00``."""
  task = config_lib.TrainConfig.from_saved(results['config']).build_task()
  numbers = ', '.join(f'{key.replace("_" + metric, " " + metric)} '
                      f'{_percent(results[key])}'
                      for s in task.eval_sets for metric in task.metrics
                      for key in [f'{s.name}_{metric}'] if key in results)
  return f'{config.output_dir}: best epoch {results.get("best_epoch", "-")}, {numbers}'


def _percent(value) -> str:
  return 'undefined' if value is None else f'{100 * value:.2f}'


def cli() -> None:
  """The ``rose-finetune`` console command."""
  run_as_process(main)


if __name__ == '__main__':
  cli()
