"""The mask-agreement benchmark runs on a tiny checkpoint and tiny data, so it
cannot rot; the options that are the exact recipe agree with it everywhere."""

import json

import numpy as np
import pytest

from benchmarks import mask_agreement
from tests import helpers


def test_the_exact_options_agree_everywhere_and_the_summary_follows(tmp_path, capsys):
  model = helpers.tiny_checkpoint(tmp_path / 'model')
  rng = np.random.default_rng(0)
  rows = ['sentence\tlabel'] + [f'{" ".join(rng.choice(helpers.WORDS, size=n))}\t{n % 2}'
                                for n in rng.integers(2, 9, size=48)]
  (tmp_path / 'train.tsv').write_text('\n'.join(rows) + '\n')
  assert mask_agreement.main(['--train-file', str(tmp_path / 'train.tsv'), '--model', str(model),
                              '--batch-size', '8', '--max-length', '32', '--epochs', '2',
                              '--max-steps', '9', '--every', '1', '3', '--fractions', '1', '0.5',
                              '--learning-rate', '1e-3', '--output', str(tmp_path / 'out')]) == 0
  result = json.loads((tmp_path / 'out' / 'mask_agreement.json').read_text())
  steps = result['steps']
  assert [r['step'] for r in steps] == list(range(9))  # 6 steps an epoch, cut at 9
  for record in steps:
    # Risks refreshed every step, and a sub-batch of the whole batch, are the
    # exact recipe: the same masks, the same ranking.
    for option in ('k=1', 'f=1'):
      assert record[option] == {'first_agreement': 1.0, 'ensemble_agreement': 1.0,
                                'spearman': pytest.approx(1.0)}, (option, record)
    if record['step'] % 3 == 0:  # a refresh: the kept risks are this step's
      assert record['k=3']['first_agreement'] == 1.0
    assert 0 < record['kept_fraction'] < 1
    for option in ('k=3', 'f=0.5', mask_agreement.EXACT_AGAIN):
      assert 0 <= record[option]['first_agreement'] <= 1
      assert -1 <= record[option]['spearman'] <= 1
  summary = {(r['option'], r['epoch']): r for r in result['summary']}
  for option in ('k=3', 'f=0.5', mask_agreement.EXACT_AGAIN):
    assert summary[option, 1]['steps'] == 6 and summary[option, 2]['steps'] == 3
    assert summary[option, 'all']['first_agreement'] == pytest.approx(
        np.mean([r[option]['first_agreement'] for r in steps]))
    assert summary[option, 'all']['min_first_agreement'] == min(
        r[option]['first_agreement'] for r in steps)
  assert (tmp_path / 'out' / 'mask_agreement.png').read_bytes()[:4] == b'\x89PNG'
  assert '| f=0.5 | all | 9 |' in capsys.readouterr().out
