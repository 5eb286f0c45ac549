"""Reproduce a table of the paper: every task, method and seed of the protocol,
with the paper's presets, trained where not finished, then the report.

  rose-reproduce --tasks sst2 rte qnli qqp --model roberta-base \
      --seeds 1 2 3 4 5 --output-root runs/table1
  rose-reproduce --tasks ../shared/data/msgs/control_raising_length \
      --methods vanilla rose-ensemble --seeds 1 2 3 4 5 --output-root runs/probing

A task is a GLUE task (files under --data-dir TASK/ in the release layout,
else the hub) or an MSGS task folder (train.jsonl, test.jsonl). The seeds of
a task and method train together as a sweep over the devices. Run it again
to continue a killed invocation; --dry-run prints the plan and an estimate
of its time from a few measured steps of each method. Any fine-tuning option
(--epochs, --max-train-samples, --preset...) applies to every run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rose_jax._src import distributed
from rose_jax.glue import options, report, reproduce
from rose_jax.glue.cli import one_line_errors, run_as_process
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.options import ConfigError
from rose_jax.training.methods import METHOD_NAMES

# Set per run by the plan, so not options here.
_PLANNED = ('task', 'task_name', 'train_file', 'dev_file', 'adv_file', 'eval_files', 'no_adv',
            'text_columns', 'label_column', 'labels', 'method', 'resume', 'overwrite')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--tasks', nargs='+', required=True, metavar='TASK',
                 help='GLUE tasks, or MSGS task folders')
  p.add_argument('--methods', nargs='+', default=list(METHOD_NAMES), metavar='METHOD',
                 help='the methods [all of Table 1]')
  p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3, 4, 5], help='[1 2 3 4 5]')
  p.add_argument('--output-root', default='runs/reproduce')
  p.add_argument('--data-dir', help="GLUE files as DIR/TASK/train.tsv and dev.tsv (MNLI's "
                 'mismatched dev set as dev_mismatched.tsv); default: the hub')
  p.add_argument('--adv-file', help="AdvGLUE's dev.json (default: the hub, or none with "
                 '--data-dir)')
  p.add_argument('--no-sweeps', dest='sweeps', action='store_false',
                 help="train a task and method's seeds one by one, not as one sweep")
  p.add_argument('--dry-run', action='store_true',
                 help='print the plan and an estimate of its time, and train nothing')
  p.add_argument('--measured-steps', type=int, default=3,
                 help='steps timed per method for the estimate; 0: the plan alone [3]')
  p.add_argument('--distributed', action='store_true',
                 help='call jax.distributed.initialize() first (as rose-finetune)')
  group = p.add_argument_group('fine-tuning options, for every run')
  options.add_arguments(group, TrainConfig, only=[
      f.name for f in dataclasses.fields(TrainConfig) if f.name not in _PLANNED])
  return p.parse_args(argv)


@one_line_errors
def main(argv=None) -> int:
  args = parse_args(argv)
  unknown = sorted(set(args.methods) - set(METHOD_NAMES))
  if unknown:
    raise ConfigError(f'--methods {" ".join(unknown)}: choose from {", ".join(METHOD_NAMES)}.')
  if len(set(args.seeds)) < len(args.seeds):
    raise ConfigError('--seeds lists a seed more than once.')
  if args.measured_steps < 0:
    raise ConfigError(f'--measured-steps must be 0 (no estimate) or more, got '
                      f'{args.measured_steps}.')
  distributed.initialize(distributed=args.distributed)
  base = options.from_arguments(args, TrainConfig)
  groups = reproduce.plan(base, args.tasks, args.methods, args.seeds, args.output_root,
                          data_dir=args.data_dir, adv_file=args.adv_file, sweeps=args.sweeps)
  if args.dry_run:
    print(reproduce.describe(groups, reproduce.estimate(groups,
                                                        measured_steps=args.measured_steps)))
    return 0
  print(reproduce.describe(groups))
  reproduce.execute(groups, sweeps=args.sweeps)
  runs = [config.output_dir for group in groups for config in group.configs]
  files = report.write_report(runs, Path(args.output_root) / 'report')
  print(files['markdown'].read_text(), end='')
  print(f'\nwrote {", ".join(str(f) for f in files.values())}')
  return 0


def cli() -> None:
  """The ``rose-reproduce`` console command."""
  run_as_process(main)


if __name__ == '__main__':
  cli()
