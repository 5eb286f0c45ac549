"""What the step benchmark times with: the model sizes (:data:`CONFIGS`), each
family's model and a synthetic batch at a size, the methods' optimizers, the
compiled step, and the timing of repeated calls (seconds and page faults)."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rose_jax
from rose_jax import selection
from rose_jax._src import memory
from rose_jax.models import (
  DebertaV2Config,
  DebertaV2ForSequenceClassification,
  EncoderConfig,
  EncoderForSequenceClassification,
  ModernBertConfig,
  ModernBertForSequenceClassification,
  as_apply_fn,
)
from rose_jax.training import methods
from rose_jax.training import step as step_lib

CONFIGS = {
    # name: (layers, hidden, heads, intermediate, vocab, batch, length)
    'tiny': (1, 32, 2, 64, 1000, 4, 16),
    'small': (4, 256, 4, 1024, 8000, 8, 64),
    'base': (12, 768, 12, 3072, 50265, 8, 128),
    'base-32': (12, 768, 12, 3072, 50265, 32, 128),  # at the paper's batch of 32
}


def encoder_config(name: str) -> tuple[EncoderConfig, int, int]:
  layers, hidden, heads, inter, vocab, batch, length = CONFIGS[name]
  config = EncoderConfig(model_type='roberta', vocab_size=vocab, hidden_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=inter, max_position_embeddings=length + 2,
                         type_vocab_size=1, pad_token_id=1)
  return config, batch, length


def make_batch(config: EncoderConfig, batch: int, length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {'input_ids': rng.integers(3, config.vocab_size, (batch, length)).astype(np.int32),
          'attention_mask': np.ones((batch, length), np.int32),
          'labels': rng.integers(0, 2, batch).astype(np.int32)}


def optimizer(method: methods.Method, granularity: str, first_order_every: int | None = None):
  """The method's optimizer, as the fine-tuning command builds it (without
  the schedule and clipping): Hugging Face's AdamW, masked by ROSE or by
  CHILD-TUNING_D's fixed mask (all ones here: the cost is the same)."""
  adam = dict(b2=0.98, weight_decay=0.01, weight_decay_mask=selection.authors_decay_mask)
  if method.uses_rose:
    return rose_jax.rose(1e-5, variant=method.rose_variant, upper=0.6,
                         granularity=granularity, selectable=selection.authors_selectable,
                         first_order_every=first_order_every, **adam)
  if method.fisher_mask:
    return rose_jax.child_tuning_d(1e-5, **adam)
  return rose_jax.hf_adamw(1e-5, **adam)


def time_calls(fn, steps: int, warmup: int) -> tuple[list[float], list[int]]:
  """Seconds and minor page faults of each call after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times, faults = [], []
  for _ in range(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  return times, faults


def matmul_gflops(name: str, repeats: int = 5) -> float:
  """This machine's float32 matmul rate in GFLOP/s, at the feed-forward
  block's shape of config ``name`` (tokens x hidden by hidden x
  intermediate), the median of ``repeats`` timed calls: the rate to hold
  a step's matmuls against."""
  _, hidden, _, inter, _, batch, length = CONFIGS[name]
  a = jnp.ones((batch * length, hidden), jnp.float32)
  b = jnp.ones((hidden, inter), jnp.float32)
  times, _ = time_calls(lambda: jnp.dot(a, b), repeats, warmup=2)
  return 2 * batch * length * hidden * inter / statistics.median(times) / 1e9


def timing(times: list[float], faults: list[int]) -> dict:
  """The result fields of repeated calls: median and every call's time and faults."""
  return {'median_s': statistics.median(times), 'times_s': times,
          'page_faults': statistics.median(faults), 'page_faults_per_step': faults}


def allocator(malloc_setting: str = '') -> str:
  """The malloc that XLA:CPU's buffers come from: a preloaded one, or libc's
  with what :func:`cpu_malloc.keep_freed_memory` did to it."""
  preloaded = [Path(p).name for p in os.environ.get('LD_PRELOAD', '').replace(':', ' ').split()
               if 'malloc' in Path(p).name]
  if preloaded:
    return ', '.join(preloaded)
  libc, version = platform.libc_ver()
  settings = '' if malloc_setting.startswith('left') or not malloc_setting else \
      f' ({malloc_setting})'
  return (f'{libc} {version} malloc'.strip() if libc else 'system malloc') + settings


def lower_method(apply_fn, params, batch, method_name: str, granularity: str = 'tensor',
                 cotangents: str = 'sequential', first_order_every: int | None = None,
                 kl_fraction: float | None = None):
  """One method's step lowered (traced, not compiled) for these shapes, and
  fresh carry for it: the parameters and the optimizer state."""
  method = methods.get_method(method_name)
  tx = optimizer(method, granularity, first_order_every)
  step = step_lib.make_train_step(apply_fn, tx, method, cotangents=cotangents,
                                  kl_fraction=kl_fraction)
  params = jax.tree.map(jnp.array, params)  # the step donates its inputs
  carry = [params, tx.init(params)]
  return step.lower(carry[0], carry[1], batch, jax.random.key(0)), carry


def compile_method(apply_fn, params, batch, method_name: str, granularity: str,
                   cotangents: str, first_order_every: int | None = None,
                   kl_fraction: float | None = None):
  """One method's compiled step, and a function that runs it once on fresh carry."""
  lowered, carry = lower_method(apply_fn, params, batch, method_name, granularity, cotangents,
                                first_order_every, kl_fraction)
  compiled = lowered.compile()
  key = jax.random.key(0)

  def run():
    carry[0], carry[1], metrics = compiled(carry[0], carry[1], batch, key)
    return metrics

  return compiled, run


def time_method(apply_fn, params, batch, method_name: str, granularity: str, steps: int,
                warmup: int, cotangents: str, first_order_every: int | None = None,
                kl_fraction: float | None = None) -> dict:
  """One method's compiled step: median time, page faults, memory, XLA's FLOPs.

  With ``first_order_every=k`` the steps differ (one in k runs the KL
  passes): whole cycles of k steps are timed and the step time is their
  mean; XLA counts both branches of the step's ``cond``, so no FLOPs."""
  compiled, run = compile_method(apply_fn, params, batch, method_name, granularity, cotangents,
                                 first_order_every, kl_fraction)
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, list) else cost or {}).get('flops')
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  every = first_order_every or 1
  # Whole cycles, the first beginning at a refresh (warm-up in cycles too).
  times, faults = time_calls(run, every * max(-(-steps // every), 1), every * max(warmup, 0))
  timed = timing(times, faults)
  if every > 1:
    timed['median_s'] = statistics.fmean(times)
    flops = None
  return {**timed, 'compiled_bytes': memory.compiled_bytes(compiled), 'xla_flops': flops,
          'peak_bytes': (stats or {}).get('peak_bytes_in_use')}


def modernbert_config(name: str) -> ModernBertConfig:
  """ModernBERT at the config's size (layers, widths, heads; every third layer
  global, a local window of 128), with dropout for ROSE's two passes."""
  layers, hidden, heads, inter, vocab, _, length = CONFIGS[name]
  return ModernBertConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          max_position_embeddings=max(length, 128),
                          layer_types=tuple('sliding_attention' if i % 3 else 'full_attention'
                                            for i in range(layers)),
                          pad_token_id=1, attention_dropout=0.1, embedding_dropout=0.1,
                          mlp_dropout=0.1)


def deberta_config(name: str) -> DebertaV2Config:
  """DeBERTa-v3 at the config's size (256 position buckets, shared projections)."""
  layers, hidden, heads, inter, vocab, _, length = CONFIGS[name]
  return DebertaV2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=inter,
                         max_position_embeddings=max(length, 512), pad_token_id=1)


def model_and_batch(name: str, family: str = 'roberta'):
  """The config's freshly initialised model, split, and its synthetic batch."""
  config, batch_size, length = encoder_config(name)
  if family == 'modernbert':
    model = ModernBertForSequenceClassification(modernbert_config(name), rngs=nnx.Rngs(0))
  elif family == 'deberta-v2':
    model = DebertaV2ForSequenceClassification(deberta_config(name), rngs=nnx.Rngs(0))
  else:
    model = EncoderForSequenceClassification(config, rngs=nnx.Rngs(0))
  apply_fn, params = as_apply_fn(model)
  return apply_fn, params, make_batch(config, batch_size, length)


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
  lines = ['| ' + ' | '.join(c[1] for c in columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    cells = []
    for key, _, fmt in columns:
      value = row.get(key)
      cells.append('-' if value is None else format(value, fmt))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
