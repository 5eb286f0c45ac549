"""Evaluate a fine-tuned checkpoint on a task's evaluation sets with its metrics.

  rose-evaluate runs/sst2-rose-ensemble-seed1/best_model --task sst2
  rose-evaluate runs/custom-rose-ensemble-seed1/best_model --task custom \
      --text-columns review --eval-file shifted=other.csv

The checkpoint is any directory in the Hugging Face layout (a run's
``best_model/``, or a hub name). A custom task's labels default to the
checkpoint's (its ``id2label``, which fine-tuning writes). Prints each set's
metrics and, with --output, writes them as JSON. Batches are split over all
devices.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from rose_jax._src import atomic
from rose_jax.glue import batching, options, task_settings
from rose_jax.glue.cli import one_line_errors, run_as_process
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.evaluation import Evaluator, evaluate
from rose_jax.glue.options import ConfigError
from rose_jax.glue.shared import check_room_for_text, load_eval_set
from rose_jax.glue.tasks import CUSTOM
from rose_jax.models import as_apply_fn, load_pretrained, load_tokenizer, resolve_checkpoint

TASK_OPTIONS = ('task', 'dev_file', 'eval_files', 'adv_file', 'no_adv', 'text_columns',
                'label_column', 'labels', 'metrics')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('model', help='checkpoint directory or hub name')
  options.add_arguments(p, TrainConfig, only=TASK_OPTIONS)
  p.add_argument('--max-length', type=int, default=128)
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  p.add_argument('--output', help='write the metrics to this JSON file')
  args = p.parse_args(argv)
  options.at_least_one('batch_size', args.batch_size)
  options.at_least_two('max_length', args.max_length)
  return args


def _checkpoint_labels(model: str) -> tuple[str, ...] | None:
  """The class names a checkpoint was saved with, if they are names."""
  try:
    saved = json.loads((resolve_checkpoint(model) / 'config.json').read_text())
  except (OSError, ValueError):
    return None
  if saved.get('problem_type') == 'regression':
    return ('regression',)
  names = [name for _, name in sorted(saved.get('id2label', {}).items(), key=lambda i: int(i[0]))]
  return tuple(names) if names and names != [f'LABEL_{i}' for i in range(len(names))] else None


@one_line_errors
def main(argv=None) -> int:
  args = parse_args(argv)
  config = options.from_arguments(args, TrainConfig, model=args.model,
                                  max_length=args.max_length)
  if config.task == CUSTOM and config.labels is None:
    config.labels = _checkpoint_labels(args.model)
    if config.labels is None:
      raise ConfigError(f'--task {CUSTOM} needs --labels: {args.model} names no labels (its '
                        'id2label is LABEL_0...); give the class names in index order, or '
                        "'regression'.")
  config = task_settings.resolve(config, training=False)
  task = config.build_task()
  model = load_pretrained(args.model, num_labels=task.num_labels, dtype=jnp.dtype(args.dtype))
  if args.max_length > model.config.max_sequence_length:
    raise ConfigError(f'--max-length {args.max_length} exceeds what {args.model}\'s position '
                      f'table holds ({model.config.max_sequence_length}).')
  tokenizer = load_tokenizer(args.model, model.config)
  check_room_for_text(tokenizer, task, args.max_length)
  sets = {name: batching.tokenize(tokenizer, load_eval_set(config, task, name, source),
                                  args.max_length)
          for name, source in config.eval_sources().items()}
  apply_fn, params = as_apply_fn(model)
  evaluator = Evaluator(apply_fn, args.batch_size, sharded=jax.device_count() > 1,
                        buckets=batching.default_buckets(args.max_length),
                        objective=task.objective)
  results = {}
  for name, evaluated in evaluate(evaluator, evaluator.place_params(params), task,
                                  sets).items():
    for scored, metrics in evaluated.metrics.items():
      for metric, value in metrics.items():
        results[f'{scored}_{metric}'] = value
        print(f'{scored} {metric}: {100 * value:.2f} ({name}: {len(evaluated.labels)} '
              'examples)')
  if args.output:
    atomic.write_json(args.output, results)
  return 0


def cli() -> None:
  """The ``rose-evaluate`` console command."""
  run_as_process(main)


if __name__ == '__main__':
  cli()
