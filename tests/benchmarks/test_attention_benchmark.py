"""The attention benchmark runs, and its two implementations compute the same
attention on unpacked and on packed masks (timings are not asserted)."""

import json

import jax
import numpy as np

from benchmarks import attention_benchmark


def test_both_implementations_agree_on_both_layouts():
  masks, _ = attention_benchmark.layouts(np.random.default_rng(1), rows=4, length=16)
  for mask in masks.values():
    rows = mask.shape[0]
    q, k, v = (jax.random.normal(key, (rows, 16, 2, 4))
               for key in jax.random.split(jax.random.key(0), 3))
    ours = attention_benchmark.einsum_attention(q, k, v, mask)
    theirs = attention_benchmark.library_attention(q, k, v, mask)
    real = mask.any(axis=-1)[:, 0, :, None, None] if mask.shape[2] > 1 else True
    np.testing.assert_allclose(np.where(real, ours, 0), np.where(real, theirs, 0), atol=1e-5)


def test_the_table_has_both_layouts_and_is_its_json(tmp_path, capsys):
  output = tmp_path / 'attention.json'
  assert attention_benchmark.main(['--length', '16', '--rows', '4', '--repeats', '1',
                                   '--output', str(output)]) == 0
  out = capsys.readouterr().out
  assert '| unpacked | 32 |' in out and '| packed |' in out
  result = json.loads(output.read_text())
  assert attention_benchmark.report(result) in out
  # The command that made it, less where its result went.
  assert result['meta']['command'] == ('python benchmarks/attention_benchmark.py --length 16 '
                                       '--rows 4 --repeats 1')
