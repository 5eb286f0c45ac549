"""What attention costs on packed rows, and which implementation to run it with.

  python benchmarks/attention_benchmark.py

Times one self-attention block's forward and backward (scores, mask,
softmax, context; no projections) at MiniLM-L6's shapes (12 heads of 32)
for SST-2 batches of 32 sentences at ``--max-length 64``:

* ``unpacked``: 32 rows of 64 with a key mask (fixed padding);
* ``packed``: the same sentences packed into 8 rows of 64, with the
  block-diagonal mask of their segments;

each two ways: the encoder's own einsums (``rose_jax.models.encoder``) and
``jax.nn.dot_product_attention`` with the same boolean mask (XLA's
implementation; on GPU ``implementation="cudnn"`` takes the mask as well).
Beside them it prints what attention's FLOPs are of a layer's at these
lengths. Median of ``--repeats`` timed calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: the package is found from the repository root
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import provenance
from rose_jax._src import cpu_malloc
from rose_jax.glue.cli import run_as_process

HEADS, HEAD_SIZE, INTERMEDIATE = 12, 32, 1536


def einsum_attention(q, k, v, mask):
  """The encoder's attention: ``mask`` broadcasts to ``[rows, heads, q, k]``."""
  import jax
  import jax.numpy as jnp
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(q.shape[-1])
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v)


def library_attention(q, k, v, mask):
  import jax
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


def layouts(rng, rows: int, length: int):
  """Token counts of 32 SST-2-like sentences (mean about 13), unpacked and packed."""
  import numpy as np

  from rose_jax.glue import batching, packing
  from rose_jax.models import segments
  lengths = np.clip(rng.geometric(1 / 13.4, size=32), 3, length)
  key_mask = np.arange(length)[None, :] < lengths[:, None]
  # Only the layout matters here: token ids and labels are placeholders.
  data = batching.Encoded({'input_ids': np.zeros(lengths.sum(), np.int32)},
                          np.concatenate([[0], np.cumsum(lengths)]), np.zeros(32, np.int32), 0)
  count = max(rows, packing.common_row_count(data, [np.arange(32)], length, 1))
  packed = packing.pack(data, np.arange(32), length, rows=count)
  mask = np.asarray(segments.attention_mask(packed.arrays['segment_ids']))
  return {'unpacked': key_mask[:, None, None, :], 'packed': mask[:, None]}, lengths


def time_one(fn, mask, repeats: int) -> float:
  import jax
  import jax.numpy as jnp
  rows, length = mask.shape[0], mask.shape[-1]
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (rows, length, HEADS, HEAD_SIZE)) for key in keys)
  mask = jnp.asarray(mask)
  loss = lambda q, k, v: jnp.sum(fn(q, k, v, mask) ** 2)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  jax.block_until_ready(step(q, k, v))
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def report(result: dict) -> str:
  """The Markdown table of a result (what the script prints, and what the
  performance guide shows of its JSON)."""
  lines = ['| layout | rows | einsum (ms) | dot_product_attention (ms) | attention FLOPs / layer |',
           '|---|---|---|---|---|']
  for row in result['rows']:
    lines.append(f'| {row["layout"]} | {row["rows"]} | {row["einsum_ms"]:.2f} | '
                 f'{row["library_ms"]:.2f} | {row["attention_share"]:.1%} |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--rows', type=int, default=8, help='packed rows (at least those needed)')
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--output', help='JSON file [benchmarks/results/attention-TIME.json]')
  args = parser.parse_args(argv)
  import jax
  import numpy as np

  from rose_jax._src import atomic
  masks, lengths = layouts(np.random.default_rng(0), args.rows, args.length)
  hidden = HEADS * HEAD_SIZE
  layer_per_token = 2 * (4 * hidden * hidden + 2 * hidden * INTERMEDIATE)
  meta = {**provenance.provenance('attention_benchmark.py', argv),
          'device_kind': jax.devices()[0].device_kind, 'malloc': cpu_malloc.setting(),
          'heads': HEADS, 'head_size': HEAD_SIZE, 'length': args.length,
          'mean_tokens': float(lengths.mean()), 'repeats': args.repeats}
  rows = []
  for name, mask in masks.items():
    count = mask.shape[0]
    attention = 4 * count * args.length * args.length * hidden
    layer = count * args.length * layer_per_token + attention
    rows.append({'layout': name, 'rows': count,
                 'einsum_ms': time_one(einsum_attention, mask, args.repeats) * 1e3,
                 'library_ms': time_one(library_attention, mask, args.repeats) * 1e3,
                 'attention_share': attention / layer})
  result = {'meta': meta, 'rows': rows}
  print(f'# attention forward + backward, {HEADS} heads of {HEAD_SIZE}, 32 sentences of mean '
        f'{lengths.mean():.1f} tokens, length {args.length}; {meta["device_kind"]}, '
        f'{meta["cpu_count"]} CPUs, malloc: {meta["malloc"]}\n')
  print(report(result))
  output = Path(args.output or Path(__file__).resolve().parent / 'results' /
                f'attention-{time.strftime("%Y%m%d-%H%M%S")}.json')
  output.parent.mkdir(parents=True, exist_ok=True)
  atomic.write_text(output, json.dumps(result, indent=2))
  print(f'\nwrote {output}')
  return 0


if __name__ == '__main__':
  run_as_process(main)
