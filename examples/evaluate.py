"""Evaluate a fine-tuned checkpoint on a GLUE dev set and its AdvGLUE dev set.

  python examples/evaluate.py runs/sst2-rose-ensemble-seed1/best_model --task sst2

The checkpoint is any directory in the Hugging Face layout (a run's
``best_model/``, or a hub name). Prints accuracies and, with --output,
writes them as JSON. Batches are split over all local devices.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from rose_jax._src import atomic
from rose_jax.glue import batching
from rose_jax.glue import config as config_lib
from rose_jax.glue import data as data_lib
from rose_jax.glue.cli import one_line_errors, run_as_process
from rose_jax.glue.evaluation import Evaluator
from rose_jax.models import as_apply_fn, load_pretrained, load_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('model', help='checkpoint directory or hub name')
  p.add_argument('--task', choices=sorted(data_lib.TASKS), required=True)
  p.add_argument('--dev-file', help='GLUE dev file (default: hub)')
  p.add_argument('--adv-file', help='AdvGLUE dev.json (default: hub)')
  p.add_argument('--no-adv', action='store_true')
  p.add_argument('--max-length', type=int, default=128)
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  p.add_argument('--output', help='write the accuracies to this JSON file')
  args = p.parse_args(argv)
  config_lib.at_least_one('batch_size', args.batch_size)
  config_lib.at_least_one('max_length', args.max_length)
  return args


@one_line_errors
def main(argv=None) -> int:
  args = parse_args(argv)
  task = data_lib.get_task(args.task)
  splits = {'glue_dev': data_lib.load_local(task, args.dev_file) if args.dev_file
            else data_lib.load_hub(task, task.hub_validation_split)}
  if not args.no_adv:
    splits['adv_dev'] = (data_lib.load_adv_glue_file(task, args.adv_file) if args.adv_file
                         else data_lib.load_hub(task, 'validation', adversarial=True))
  model = load_pretrained(args.model, num_labels=task.num_labels, dtype=jnp.dtype(args.dtype))
  tokenizer = load_tokenizer(args.model, model.config)
  apply_fn, params = as_apply_fn(model)
  evaluator = Evaluator(apply_fn, args.batch_size, sharded=jax.device_count() > 1,
                        buckets=batching.default_buckets(args.max_length))
  params = evaluator.place_params(params)
  accuracies = {}
  for name, split in splits.items():
    encoded = batching.tokenize(tokenizer, split, args.max_length)
    _, accuracies[f'{name}_accuracy'] = evaluator(params, encoded)
    print(f'{name}: {100 * accuracies[f"{name}_accuracy"]:.2f}% of {len(split)}')
  if args.output:
    atomic.write_json(args.output, accuracies)
  return 0


if __name__ == '__main__':
  run_as_process(main)
