"""The end-to-end benchmark runs on a tiny checkpoint and tiny data, so it cannot rot.

No timing is asserted: benchmarks measure, tests check that they run and
that their tables follow from what they measured.
"""

import json

import numpy as np
import pytest

from benchmarks import e2e_benchmark
from tests import helpers


def test_every_method_and_padding_is_timed_and_the_ratios_follow(tmp_path, capsys):
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  # Mostly short sentences, as in SST-2, so buckets and grouping have padding to save.
  rng = np.random.default_rng(0)
  sizes = rng.choice([2, 3, 4, 20], size=96, p=[0.4, 0.3, 0.28, 0.02])
  rows = ['sentence\tlabel'] + [f'{" ".join(rng.choice(helpers.WORDS, size=n))}\t{n % 2}'
                                for n in sizes]
  (tmp_path / 'train.tsv').write_text('\n'.join(rows) + '\n')
  output = tmp_path / 'e2e.json'
  assert e2e_benchmark.main(['--train-file', str(tmp_path / 'train.tsv'), '--model', str(model),
                             '--steps', '3', '--batch-size', '8', '--max-length', '32',
                             '--torch', '--output', str(output)]) == 0
  result = json.loads(output.read_text())
  rows = {(r['method'], r['padding']): r for r in result['rows']}
  for method in ('vanilla', 'rose-ensemble'):
    mode = {m: rows[(method, m)] for m in e2e_benchmark.MODES}
    assert all(r['wall_s'] > 0 and r['steps'] == 3 for r in mode.values())
    assert mode['fixed']['widths'] == [32] and mode['fixed']['padding_efficiency'] < 0.5
    assert mode['buckets']['padding_efficiency'] > mode['fixed']['padding_efficiency']
    assert mode['grouped']['padding_efficiency'] >= mode['buckets']['padding_efficiency']
    # Packed rows of 32: 8 short sentences fill 2 rows (rounded to a multiple of 2).
    assert mode['packed']['widths'] == [32]
    assert all(rows_ % 2 == 0 for rows_, _ in mode['packed']['shapes'])
    assert mode['packed']['padding_efficiency'] > mode['grouped']['padding_efficiency']
    if method == 'rose-ensemble':
      # The cheaper first-order risks, packed: a refresh every 4 steps packs as
      # packed does; a quarter of each batch packed apart from the rest.
      cheap = {m: rows[(method, m)] for m in e2e_benchmark.CHEAP}
      assert cheap['packed, k=4']['first_order_every'] == 4
      assert cheap['packed, k=4']['shapes'] == mode['packed']['shapes']
      assert cheap['packed, f=0.25']['kl_fraction'] == 0.25
      assert cheap['packed, f=0.25']['widths'] == [32]
      assert all(rows_ % 2 == 0 for rows_, _ in cheap['packed, f=0.25']['shapes'])
    else:
      assert (method, 'packed, k=4') not in rows
    torch_row = rows[(method, 'torch (per-batch longest)')]
    # The same random batches, each padded to exactly its longest sentence.
    assert torch_row['wall_s'] > 0
    assert torch_row['padding_efficiency'] >= mode['buckets']['padding_efficiency']
  measured = {(r['method'], r['padding'], r['against']): r for r in result['ratios']}
  assert len(measured) == len(e2e_benchmark.TARGETS)
  for (method, mode, against), r in measured.items():
    if against == 'vanilla packed':
      base = rows[('vanilla', 'packed')]
    else:
      base = rows[(method, 'torch (per-batch longest)' if against == 'torch' else against)]
    assert r['ratio'] == pytest.approx(rows[(method, mode)]['wall_s'] / base['wall_s'])
  out = capsys.readouterr().out
  assert '| method | padding | s/step | padding efficiency |' in out
  assert '| rose-ensemble grouped / PyTorch recipe |' in out
  assert '| vanilla packed / PyTorch recipe |' in out
  assert '| rose-ensemble packed, k=4 / vanilla packed |' in out
  assert result['meta']['malloc']
