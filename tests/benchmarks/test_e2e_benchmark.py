"""The end-to-end benchmark runs on a tiny checkpoint and tiny data, so it cannot rot.

No timing is asserted: benchmarks measure, tests check that they run and
that their tables follow from what they measured.
"""

import json

import numpy as np

from benchmarks import e2e_benchmark
from tests import helpers


def test_each_padding_is_timed_and_the_ratios_follow(tmp_path, capsys):
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  # Short sentences, as most of SST-2's, so buckets and grouping have padding to
  # save; none long, so each mode meets one shape and compiles its step once.
  rng = np.random.default_rng(0)
  sizes = rng.choice([2, 3, 4], size=96, p=[0.4, 0.3, 0.3])
  rows = ['sentence\tlabel'] + [f'{" ".join(rng.choice(helpers.WORDS, size=n))}\t{n % 2}'
                                for n in sizes]
  (tmp_path / 'train.tsv').write_text('\n'.join(rows) + '\n')
  output = tmp_path / 'e2e.json'
  # ROSE-Ensemble alone: vanilla runs the same code in fewer modes (below).
  method = 'rose-ensemble'
  assert e2e_benchmark.main(['--train-file', str(tmp_path / 'train.tsv'), '--model', str(model),
                             '--steps', '3', '--batch-size', '8', '--max-length', '32',
                             '--methods', method, '--torch', '--output', str(output)]) == 0
  result = json.loads(output.read_text())
  rows = {(r['method'], r['padding']): r for r in result['rows']}
  assert set(rows) == {(method, m) for m in (*e2e_benchmark.modes_of(method),
                                             'torch (per-batch longest)')}
  mode = {m: rows[(method, m)] for m in e2e_benchmark.MODES}
  assert all(r['wall_s'] > 0 and r['steps'] == 3 for r in mode.values())
  assert mode['fixed']['widths'] == [32] and mode['fixed']['padding_efficiency'] < 0.5
  assert mode['buckets']['padding_efficiency'] > mode['fixed']['padding_efficiency']
  assert mode['grouped']['padding_efficiency'] >= mode['buckets']['padding_efficiency']
  # Packed rows of 32: 8 sentences of two to four words fill 2 rows.
  assert mode['packed']['shapes'] == [[2, 32]]
  assert mode['packed']['padding_efficiency'] > mode['grouped']['padding_efficiency']
  # The cheaper first-order risks, packed: a refresh every 4 steps packs as
  # packed does; a quarter of each batch packed apart from the rest.
  cheap = {m: rows[(method, m)] for m in e2e_benchmark.CHEAP}
  assert cheap['packed, k=4']['first_order_every'] == 4
  assert cheap['packed, k=4']['shapes'] == mode['packed']['shapes']
  assert cheap['packed, f=0.25']['kl_fraction'] == 0.25
  assert cheap['packed, f=0.25']['widths'] == [32]
  assert all(rows_ % 2 == 0 for rows_, _ in cheap['packed, f=0.25']['shapes'])
  torch_row = rows[(method, 'torch (per-batch longest)')]
  # The same random batches, each padded to exactly its longest sentence.
  assert torch_row['wall_s'] > 0
  assert torch_row['padding_efficiency'] >= mode['buckets']['padding_efficiency']
  # Every target of this method with its baseline in the run (not those
  # against vanilla's rows).
  assert {(r['padding'], r['against']) for r in result['ratios']} == {
      (m, against) for name, m, against, _ in e2e_benchmark.TARGETS
      if name == method and not against.startswith('vanilla')}
  assert result['ratios'] == e2e_benchmark.ratios(result['rows'])
  out = capsys.readouterr().out
  assert '| method | padding | s/step | padding efficiency |' in out
  assert '| rose-ensemble grouped / PyTorch recipe |' in out
  assert result['meta']['malloc']


def test_vanilla_is_timed_without_the_cheaper_risks():
  assert e2e_benchmark.modes_of('vanilla') == e2e_benchmark.MODES
  assert e2e_benchmark.modes_of('rose-second') == e2e_benchmark.MODES
  assert e2e_benchmark.modes_of('rose-first') == (*e2e_benchmark.MODES, *e2e_benchmark.CHEAP)


def test_each_target_is_its_rows_ratio():
  rows = [{'method': m, 'padding': mode, 'wall_s': float(2 + i)}
          for i, (m, mode) in enumerate((m, mode) for m in ('vanilla', 'rose-ensemble')
                                        for mode in e2e_benchmark.modes_of(m))]
  rows += [{'method': m, 'padding': 'torch (per-batch longest)', 'wall_s': w}
           for m, w in (('vanilla', 40.0), ('rose-ensemble', 50.0))]
  wall = {(r['method'], r['padding']): r['wall_s'] for r in rows}
  measured = {(r['method'], r['padding'], r['against']): r for r in e2e_benchmark.ratios(rows)}
  assert len(measured) == len(e2e_benchmark.TARGETS)
  # Against its own method's row, another method's row, and the PyTorch recipe.
  assert measured['vanilla', 'buckets', 'fixed']['ratio'] == \
      wall['vanilla', 'buckets'] / wall['vanilla', 'fixed']
  assert measured['rose-ensemble', 'packed, k=4', 'vanilla packed']['ratio'] == \
      wall['rose-ensemble', 'packed, k=4'] / wall['vanilla', 'packed']
  assert measured['rose-ensemble', 'grouped', 'torch']['ratio'] == \
      wall['rose-ensemble', 'grouped'] / 50.0
  assert measured['vanilla', 'packed', 'torch']['ratio'] == wall['vanilla', 'packed'] / 40.0
  assert all(r['target'] == target for (m, mode, against, target) in e2e_benchmark.TARGETS
             for r in [measured[m, mode, against]])
  table = e2e_benchmark.markdown([], list(measured.values()))
  assert '| rose-ensemble packed, k=4 / vanilla packed |' in table
  assert '| vanilla packed / PyTorch recipe |' in table
