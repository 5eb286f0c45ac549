"""Fine-tune a RoBERTa/BERT checkpoint on a GLUE task with ROSE or a baseline,
evaluating each epoch on the GLUE and AdvGLUE dev sets.

  python examples/finetune.py --task sst2 --method rose-ensemble --seeds 1 2 3

Each seed writes to OUTPUT_ROOT/TASK-METHOD-seedN; summarise them with
examples/report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from rose_jax.training import loop
from rose_jax.training.data import TASKS
from rose_jax.training.methods import METHOD_NAMES
from rose_jax.training.presets import PRESETS


def parse_args(argv=None) -> argparse.Namespace:
  defaults = loop.TrainConfig()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--task', choices=sorted(TASKS), default=defaults.task)
  p.add_argument('--method', choices=METHOD_NAMES, default=defaults.method)
  p.add_argument('--model', default=defaults.model,
                 help='hub name or local checkpoint directory (config.json, model.safetensors)')
  p.add_argument('--output-root', default='runs')
  p.add_argument('--seeds', type=int, nargs='+', default=[1])
  p.add_argument('--train-file', help='GLUE TSV, CSV, JSON lines or parquet (default: hub)')
  p.add_argument('--dev-file', help='GLUE dev set file (default: hub)')
  p.add_argument('--adv-file', help="AdvGLUE dev.json (default: hub 'adv_glue')")
  p.add_argument('--no-adv', action='store_true', help='skip AdvGLUE evaluation')
  p.add_argument('--max-train-samples', type=int)
  p.add_argument('--max-eval-samples', type=int)
  p.add_argument('--max-length', type=int, default=defaults.max_length)
  p.add_argument('--preset', choices=[*sorted(PRESETS), 'none'], default=defaults.preset)
  p.add_argument('--learning-rate', type=float)
  p.add_argument('--upper', type=float, help='upper quantile threshold, a fraction (0.6)')
  p.add_argument('--lower', type=float, default=defaults.lower)
  p.add_argument('--gamma', type=float, default=defaults.gamma)
  p.add_argument('--granularity', choices=['tensor', 'element'], default=defaults.granularity)
  p.add_argument('--epochs', type=int, default=defaults.epochs)
  p.add_argument('--batch-size', type=int, help='default 32, 16 for RTE')
  p.add_argument('--warmup-ratio', type=float, default=defaults.warmup_ratio)
  p.add_argument('--weight-decay', type=float, default=defaults.weight_decay)
  p.add_argument('--b2', type=float, default=defaults.b2)
  p.add_argument('--eps', type=float, default=defaults.eps)
  p.add_argument('--max-grad-norm', type=float, default=defaults.max_grad_norm)
  p.add_argument('--dropout', type=float, default=defaults.dropout)
  p.add_argument('--rdrop-alpha', type=float, default=defaults.rdrop_alpha)
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default=defaults.dtype)
  p.add_argument('--parallel', choices=['none', 'shard_map', 'pmap'])
  p.add_argument('--cotangents', choices=['vmap', 'sequential'], default=defaults.cotangents,
                 help='one vmapped backward, or one backward per gradient')
  p.add_argument('--log-every', type=int, default=defaults.log_every)
  p.add_argument('--no-progress', action='store_true')
  p.add_argument('--resume', action='store_true', help='continue killed runs')
  p.add_argument('--overwrite', action='store_true', help='replace existing runs')
  return p.parse_args(argv)


def configs(args: argparse.Namespace) -> list[loop.TrainConfig]:
  shared = {f.name: getattr(args, f.name) for f in dataclasses.fields(loop.TrainConfig)
            if hasattr(args, f.name) and f.name not in ('seed', 'output_dir')}
  shared['preset'] = None if args.preset == 'none' else args.preset
  shared['progress'] = not args.no_progress
  return [loop.TrainConfig(**shared, seed=seed, output_dir=str(
      Path(args.output_root) / f'{args.task}-{args.method}-seed{seed}')) for seed in args.seeds]


def main(argv=None) -> int:
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  logging.getLogger('rose_jax').setLevel(logging.INFO)
  args = parse_args(argv)
  runs = configs(args)
  try:
    for config in runs:  # every run's settings are checked before any trains
      loop.preflight(config)
  except (ValueError, FileExistsError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  for config in runs:
    results = loop.run(config)
    print(f'{config.output_dir}: best epoch {results["best_epoch"]}, GLUE dev '
          f'{100 * results["glue_dev_accuracy"]:.2f}'
          + (f', AdvGLUE dev {100 * results["adv_dev_accuracy"]:.2f}'
             if 'adv_dev_accuracy' in results else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
