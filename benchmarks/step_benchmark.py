"""Times the real train step of every method, side by side, and the ROSE mask.

  python benchmarks/step_benchmark.py --config small       # 4 layers of 256, batch 8, length 64
  python benchmarks/step_benchmark.py --config base        # roberta-base, batch 8, length 128
  python benchmarks/step_benchmark.py --config base-32     # the same at the paper's batch of 32
  python benchmarks/step_benchmark.py --config base --torch  # adds the authors' recipe in PyTorch
  python benchmarks/step_benchmark.py --config base --profile rose-ensemble  # where time goes
  python benchmarks/step_benchmark.py --rows rose-first 'rose-first (k=4)'   # some rows only

With several devices (on a CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
the sweep table adds the members sharded over all of them.

Prints Markdown tables and writes a JSON file with the command, the date,
the CPU, the versions, the allocator and the device kind (what the
performance guide renders its tables from). Step time is the median over repeated steps
after compilation (``block_until_ready``); memory is XLA's compiled estimate
(arguments + outputs + temporaries, less donated aliases) and, on GPUs, the
device's peak. Each ratio is to vanilla measured in the same run, next to
its floor from counting FLOPs (forward = 1, backward = 2 per cotangent).
The rows of the cheaper first-order risks (``k=``: ``first_order_every``,
``f=``: ``kl_fraction``) time whole refresh cycles and report their mean.

On CPUs, page faults are counted per step: XLA:CPU allocates each step's
temporaries afresh, and glibc's default malloc gives large blocks back to
the system, so every step would fault its working set in again. The script first sets glibc's
malloc to keep freed memory (:mod:`rose_jax._src.cpu_malloc`), as the
fine-tuning command does; ``ROSE_JAX_SYSTEM_MALLOC=1`` leaves it as it is,
and a preloaded allocator (``LD_PRELOAD=libtcmalloc_minimal.so.4``) is
used as it is. The allocator in use is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rose_jax
from rose_jax import masking, selection
from rose_jax._src import cpu_malloc, memory
from rose_jax.baselines import adversarial
from rose_jax.glue.cli import run_as_process
from rose_jax.models import EncoderForSequenceClassification
from rose_jax.training import gradients, methods, sweep
from rose_jax.training import step as step_lib

if not __package__:  # run as a script: its sibling module is found from the repository root
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import hlo_profile, provenance, torch_steps
from benchmarks.step_report import SECTIONS, report  # noqa: F401 (the results' tables)
from benchmarks.step_setup import (
  CONFIGS,
  allocator,
  compile_method,
  encoder_config,
  make_batch,
  matmul_gflops,
  model_and_batch,
  optimizer,
  time_calls,
  time_method,
  timing,
)

# (label, method, granularity, cheaper first-order risk: first_order_every, kl_fraction)
ROWS = [*((name, name, 'tensor', {}) for name in methods.METHOD_NAMES),
        ('rose-ensemble (vmap cotangents)', 'rose-ensemble', 'tensor', {}),
        ('rose-ensemble (element)', 'rose-ensemble', 'element', {}),
        *((f'{name} (k={k})', name, 'tensor', {'first_order_every': k})
          for name in ('rose-ensemble', 'rose-first') for k in (2, 4)),
        *((f'{name} (f={f})', name, 'tensor', {'kl_fraction': f})
          for name in ('rose-ensemble', 'rose-first') for f in (0.25, 0.5)),
        ('rose-ensemble (k=4, f=0.5)', 'rose-ensemble', 'tensor',
         {'first_order_every': 4, 'kl_fraction': 0.5})]
# Dense bf16 peak FLOP/s per device kind, for model FLOP utilisation.
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12,
              'TPU v5e': 197e12, 'TPU v5p': 459e12}


def flop_floor(method_name: str, first_order_every: int | None = None,
               kl_fraction: float | None = None) -> float:
  """A step's FLOPs in forward passes: every dropout pass costs a forward, and
  every gradient taken from it a backward of two forwards (one for the input
  gradients, one for the weights'). SMART's ascent steps need only input
  gradients; FreeLB's passes each need both. A sub-batch of a fraction ``f``
  runs the method's passes on ``f`` of the batch and one pass with one
  backward on the rest; a refresh every ``k`` steps averages one such step
  with ``k - 1`` steps of the method without the KL passes."""
  method = methods.get_method(method_name)
  if first_order_every or kl_fraction:
    f = kl_fraction or 1.0
    full = f * flop_floor(method_name) + (1 - f) * 3
    cheap = flop_floor_of(method.without_first_order())
    k = first_order_every or 1
    return (full + (k - 1) * cheap) / k
  return flop_floor_of(method)


def flop_floor_of(method: methods.Method) -> float:
  """:func:`flop_floor` of a :class:`~rose_jax.training.Method`."""
  if isinstance(method.adversary, adversarial.Smart):
    # clean and final adversarial forwards and their backward, plus per
    # ascent step a forward and an input-only backward
    return 2 * 3 + method.adversary.steps * 2
  if isinstance(method.adversary, adversarial.FreeLB):
    return method.adversary.steps * 3
  return method.passes * (1 + 2 * len(gradients.gradient_rows(method)))


def row_of(label: str) -> tuple[str, str, str, dict]:
  return next(r for r in ROWS if r[0] == label)


def cotangents_of(label: str) -> str:
  return 'vmap' if 'vmap' in label else 'sequential'


def bench_families(name: str, steps: int, warmup: int) -> list[dict]:
  """Vanilla and ROSE-Ensemble steps of each model family at the config's
  size, against RoBERTa's vanilla step in the same run."""
  rows = []
  for family in ('roberta', 'modernbert', 'deberta-v2'):
    apply_fn, params, batch = model_and_batch(name, family)
    count = sum(x.size for x in jax.tree.leaves(params))
    for method_name in ('vanilla', 'rose-ensemble'):
      timed = time_method(apply_fn, params, batch, method_name, 'tensor', steps, warmup,
                          'sequential')
      rows.append({'family': family, 'method': method_name, 'params_m': count / 1e6,
                   'median_s': timed['median_s']})
  base = rows[0]['median_s']
  for row in rows:
    row['ratio'] = row['median_s'] / base
  return rows


def profile_method(name: str, label: str, log_dir: Path, warmup: int) -> dict:
  """One step of the row ``label`` under jax.profiler, summed by kind of op."""
  _, method_name, granularity, cheaper = row_of(label)
  compiled, run = compile_method(*model_and_batch(name), method_name, granularity,
                                 cotangents_of(label), **cheaper)
  # Two warm-up steps at least: a caching allocator grows its heap in the first.
  for _ in range(max(warmup, 2)):
    jax.block_until_ready(run())
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    (wall,), (faults,) = time_calls(run, steps=1, warmup=0)
  trace = hlo_profile.newest_trace(log_dir)
  seconds = hlo_profile.time_by_kind(trace, hlo_profile.op_kinds(compiled.as_text()))
  total = sum(seconds.values())
  rows = [{'kind': kind, 'op_s': seconds[kind], 'share': seconds[kind] / total}
          for kind in hlo_profile.KINDS if kind in seconds]
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, list) else cost or {}).get('flops')
  # The step's FLOPs are nearly all its matmuls': their rate, to hold against
  # the rate of one matmul alone (matmul_gflops).
  matmul_s = seconds.get('matmul')
  return {'method': label, 'wall_s': wall, 'page_faults': faults, 'op_s': total,
          'trace': str(trace), 'kinds': rows, 'xla_flops': flops,
          'matmul_gflops': flops / matmul_s / 1e9 if flops and matmul_s else None}


def bench_steps(name: str, steps: int, warmup: int, labels: list[str] | None = None
                ) -> list[dict]:
  """Each row of :data:`ROWS` (or of ``labels``, vanilla first always) timed."""
  _, batch_size, length = encoder_config(name)
  apply_fn, params, batch = model_and_batch(name)
  chosen = [r for r in ROWS if labels is None or r[0] in labels or r[0] == 'vanilla']
  rows = [{'method': label, **cheaper,
           **time_method(apply_fn, params, batch, method_name, granularity, steps, warmup,
                         cotangents_of(label), **cheaper)}
          for label, method_name, granularity, cheaper in chosen]
  for row in rows:
    row['tokens_per_s'] = batch_size * length / row['median_s']
  base = rows[0]
  for row, (_, method_name, _, cheaper) in zip(rows, chosen, strict=True):
    row['ratio'] = row['median_s'] / base['median_s']
    row['floor'] = flop_floor(method_name, **cheaper) / flop_floor('vanilla')
    if row['xla_flops'] and base['xla_flops']:
      row['flops_ratio'] = row['xla_flops'] / base['xla_flops']
    if row['compiled_bytes'] and base['compiled_bytes']:
      row['memory_ratio'] = row['compiled_bytes'] / base['compiled_bytes']
    peak = next((v for k, v in PEAK_FLOPS.items() if k in jax.devices()[0].device_kind), None)
    if peak and row['xla_flops']:
      row['mfu'] = row['xla_flops'] / row['median_s'] / peak
  return rows


def bench_masks(name: str, steps: int, warmup: int) -> list[dict]:
  """The mask alone over the ranked tensors of a model of this config's shape."""
  config, _, _ = encoder_config(name)
  abstract = nnx.eval_shape(lambda: EncoderForSequenceClassification(config, rngs=nnx.Rngs(0)))
  shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  ranked = selection.authors_selectable(shapes)
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(shapes))))
  risks = jax.tree.map(lambda s, r: jax.random.uniform(next(keys), s.shape) if r
                       else optax.MaskedNode(), shapes, ranked)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(risks))
  tensor_risks = jax.tree.map(lambda x: jnp.sqrt(jnp.sum(x * x)), risks)
  tensor = jax.jit(lambda r: masking.quantile_mask(r, upper=0.6, granularity='tensor'))
  element = jax.jit(lambda r: masking.quantile_mask(r, upper=0.6, granularity='element'))
  reference = jax.jit(lambda r: jnp.quantile(
      jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(r)]), 0.6))
  rows = []
  for label, fn, arg in (('tensor (norms -> quantile -> mask)', tensor, tensor_risks),
                         ('element, radix select', element, risks),
                         ('element, jnp.quantile (sort)', reference, risks)):
    times, _ = time_calls(lambda fn=fn, arg=arg: fn(arg), steps, warmup)
    rows.append({'mask': label, 'elements': count, 'median_s': statistics.median(times)})
  return rows


def bench_state(name: str) -> list[dict]:
  """The ROSE optimizer state's size at this config's shapes, per granularity,
  beside what a float32 mask per ranked scalar (what the state kept before)
  would add. Shapes only: nothing is allocated."""
  config, _, _ = encoder_config(name)
  abstract = nnx.eval_shape(lambda: EncoderForSequenceClassification(config, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  ranked = selection.authors_selectable(params)
  ranked_scalars = sum(x.size for x, r in zip(jax.tree.leaves(params), jax.tree.leaves(ranked),
                                              strict=True) if r)
  rows = []
  for granularity in ('tensor', 'element'):
    tx = optimizer(methods.get_method('rose-ensemble'), granularity)
    state = jax.eval_shape(tx.init, params)
    rows.append({'granularity': granularity, 'params_mb': nbytes(params) / 1e6,
                 'state_mb': nbytes(state) / 1e6, 'mask_mb': nbytes(state.mask) / 1e6,
                 'element_mask_mb': 4 * ranked_scalars / 1e6 if granularity == 'element' else None})
  return rows


def _sharded_sweep(apply_fn, tx, method, params, states, batch, keys, steps: int,
                   warmup: int) -> dict:
  """The sweep step with its members sharded over all devices (padded to fill
  them), timed, and XLA's memory estimate of one device's program."""
  mesh = sweep.sweep_mesh()
  width = sweep.padded_count(len(states), mesh)
  fill = lambda xs: [*xs, *[xs[-1]] * (width - len(xs))]
  placed = (sweep.shard_members(sweep.stack(fill([params] * len(states))), mesh),
            sweep.shard_members(sweep.stack(fill(states)), mesh),
            sweep.shard_members(sweep.stack(fill([batch] * len(states))), mesh, batch=True),
            sweep.shard_members(jnp.stack(fill(list(keys))), mesh))
  step = sweep.make_sweep_step(apply_fn, tx, method, donate=False, mesh=mesh)
  times, _ = time_calls(lambda: step(*placed)[2], steps, warmup)
  median = statistics.median(times)
  return {'mode': f'sharded sweep, {jax.device_count()} devices', 'members': len(states),
          'padded_to': width, 'median_s': median, 'config_steps_per_s': len(states) / median,
          'device_mb': memory.compiled_bytes(step.lower(*placed).compile()) / 2**20}


def bench_sweep(name: str, members: int, steps: int, warmup: int) -> list[dict]:
  """ROSE-Ensemble for ``members`` settings: one vmapped sweep step on one
  device and, with several devices, one with the members sharded over all
  of them, against the members' steps run one after another on one device,
  in configurations x steps per second, with XLA's memory estimate of one
  device's program (``device_mb``)."""
  apply_fn, params, batch = model_and_batch(name)
  method = methods.get_method('rose-ensemble')
  tx = optax.inject_hyperparams(sweep.with_peak_learning_rate(rose_jax.rose),
                                static_args=sweep.ROSE_STATIC)(
      learning_rate=1e-5, upper=0.6, variant='ensemble',
      selectable=selection.authors_selectable, weight_decay_mask=selection.authors_decay_mask)
  states = [sweep.with_hyperparams(tx.init(params), learning_rate=1e-5 * (1 + i),
                                   upper=0.4 + 0.1 * (i % 3)) for i in range(members)]
  keys = jax.random.split(jax.random.key(0), members)
  one = step_lib.make_train_step(apply_fn, tx, method, donate=False)
  many = sweep.make_sweep_step(apply_fn, tx, method, donate=False)
  stacked = (sweep.stack([params] * members), sweep.stack(states),
             sweep.stack([batch] * members), keys)
  sequential, _ = time_calls(lambda: [one(params, st, batch, k)[2]
                                      for st, k in zip(states, keys, strict=True)], steps, warmup)
  vmapped, _ = time_calls(lambda: many(*stacked)[2], steps, warmup)
  rows = []
  for label, times in (('sequential', sequential), ('vmapped sweep', vmapped)):
    median = statistics.median(times)
    rows.append({'mode': label, 'members': members, 'median_s': median,
                 'config_steps_per_s': members / median})
  rows[0]['device_mb'] = memory.compiled_bytes(
      one.lower(params, states[0], batch, keys[0]).compile()) / 2**20
  rows[1]['device_mb'] = memory.compiled_bytes(many.lower(*stacked).compile()) / 2**20
  if jax.device_count() > 1:
    rows.append(_sharded_sweep(apply_fn, tx, method, params, states, batch, keys, steps,
                               warmup))
  for row in rows[1:]:
    row['speedup'] = rows[0]['median_s'] / row['median_s']
  # XLA's memory estimate: what each member adds, hence the chunk that fits.
  estimate = sweep.member_memory(apply_fn, tx, method, params, states[0], batch)
  if estimate is not None:
    fixed, per_member = estimate
    budget = memory.available_memory()
    rows[1].update(fixed_mb=fixed / 2**20, per_member_mb=per_member / 2**20,
                   fits=int((budget - fixed) // per_member), budget_mb=budget / 2**20)
  return rows


def bench_torch(name: str, steps: int, warmup: int) -> dict | None:
  """The authors' recipe (:func:`benchmarks.torch_steps.rose_ensemble_step`) on the config's
  shapes."""
  try:
    import torch
    import transformers
  except ImportError:
    return None
  torch.manual_seed(0)
  layers, hidden, heads, inter, vocab, batch, length = CONFIGS[name]
  config = transformers.RobertaConfig(
      vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=inter, max_position_embeddings=length + 2, type_vocab_size=1,
      pad_token_id=1, num_labels=2)
  model = transformers.RobertaForSequenceClassification(config).train()
  data = make_batch(encoder_config(name)[0], batch, length)
  ids, mask = torch.tensor(data['input_ids']).long(), torch.tensor(data['attention_mask'])
  labels = torch.tensor(data['labels']).long()
  one_step = torch_steps.rose_ensemble_step(model)
  return {**timing(*time_calls(lambda: one_step(ids, mask, labels), steps, warmup)),
          'torch_version': torch.__version__, 'threads': torch.get_num_threads()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--config', choices=sorted(CONFIGS), default='small')
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--torch', action='store_true', help="also time the authors' PyTorch recipe")
  p.add_argument('--skip-masks', action='store_true')
  p.add_argument('--families', action='store_true',
                 help='also time each model family (RoBERTa, ModernBERT, DeBERTa-v3) at the '
                 'same size')
  p.add_argument('--sweep', type=int, default=4, metavar='K',
                 help='members of the sweep comparison (0: skip it)')
  p.add_argument('--profile', choices=[r[0] for r in ROWS], metavar='METHOD',
                 help='trace one step of METHOD (a row of the table) with jax.profiler and '
                      'sum its op time by kind; the trace is kept beside the results')
  p.add_argument('--rows', nargs='+', choices=[r[0] for r in ROWS], metavar='ROW',
                 help='time these rows of the step table (and vanilla) [all]')
  p.add_argument('--output', default='benchmarks/results')
  args = p.parse_args(argv)

  device = jax.devices()[0]
  meta = {'config': args.config, 'shape': dict(zip(
      ('layers', 'hidden', 'heads', 'intermediate', 'vocab', 'batch', 'length'),
      CONFIGS[args.config], strict=True)),
      **provenance.provenance('step_benchmark.py', argv),
      'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'devices': jax.device_count(), 'allocator': allocator(cpu_malloc.setting()),
      'steps': args.steps, 'matmul_gflops': matmul_gflops(args.config)}
  result = {'meta': meta, 'steps': bench_steps(args.config, args.steps, args.warmup, args.rows),
            'state': bench_state(args.config)}
  if args.sweep:
    result['sweep'] = bench_sweep(args.config, args.sweep, args.steps, args.warmup)
  if args.families:
    result['families'] = bench_families(args.config, args.steps, args.warmup)
  if not args.skip_masks:
    result['masks'] = bench_masks(args.config, args.steps, args.warmup)
  if args.torch:
    torch_row = bench_torch(args.config, args.steps, args.warmup)
    if torch_row is not None:
      jax_row = next(r for r in result['steps'] if r['method'] == 'rose-ensemble')
      torch_row['jax_over_torch'] = jax_row['median_s'] / torch_row['median_s']
      result['torch'] = torch_row
  out = Path(args.output)
  out.mkdir(parents=True, exist_ok=True)
  if args.profile:
    result['profile'] = profile_method(
        args.config, args.profile, out / f'profile-{args.config}-{meta["backend"]}', args.warmup)
  print(f'# rose_jax step benchmark: {args.config} on {meta["device_kind"]} '
        f'({meta["backend"]}), JAX {meta["jax"]}, {meta["allocator"]}\n')
  print(report(result))
  if args.torch and 'torch' not in result:
    print('\n(torch is not installed: no PyTorch comparison)')
  file = out / f'step-{args.config}-{meta["backend"]}.json'
  tmp = file.with_suffix('.tmp')
  tmp.write_text(json.dumps(result, indent=2))
  tmp.replace(file)
  print(f'\nwrote {file}')
  return 0


if __name__ == '__main__':
  run_as_process(main)
