"""rose_jax.glue.labels: what reports and figures call runs, and that a figure
draws every run it is given, each under its own label."""

import json

import hypothesis
import numpy as np
from hypothesis import strategies as st

from rose_jax.glue import figures, labels, plots
from tests.helpers.runs import write_finished_run

SETTINGS = st.fixed_dictionaries({
    'method': st.sampled_from(['vanilla', 'rose-ensemble']),
    'seed': st.integers(1, 3),
    'first_order_every': st.sampled_from([None, 4]),
    'upper': st.sampled_from([0.4, 0.6]),
    'path': st.sampled_from(['a/sst2-run', 'b/sst2-run', 'c/sst2-run']),
})


@hypothesis.given(st.lists(SETTINGS, min_size=1, max_size=8))
# One run's copies in three output roots: the run folders' names are alike.
@hypothesis.example([{'method': 'vanilla', 'seed': 1, 'first_order_every': None, 'upper': 0.4,
                      'path': f'{root}/sst2-run'} for root in 'abc'])
def test_each_run_is_its_row_and_seed_and_no_two_runs_share_a_label(runs):
  runs = [{'config': {'task': 'sst2', **{k: v for k, v in r.items() if k != 'path'}},
           'path': r['path']} for r in runs]
  rows, own = labels.row_labels(runs), labels.run_labels(runs)
  distinct = {json.dumps(r, sort_keys=True) for r in runs}
  assert len(set(own)) == len(distinct)  # the same run twice alone shares a label
  for run, row, label in zip(runs, rows, own, strict=True):
    config = run['config']
    assert row.split(' ')[0] == config['method'] and f'seed {config["seed"]}' in label
    assert label.startswith(row.removesuffix(')'))
    # A setting is named where, and only where, runs of the method differ in it.
    for name in ('first_order_every', 'upper'):
      values = {r['config'][name] for r in runs if r['config']['method'] == config['method']}
      assert (f'{name}={config[name]}' in row) == (len(values) > 1)


def test_runs_with_other_settings_in_same_named_folders_are_all_drawn(tmp_path, monkeypatch):
  # The cheaper risks' comparison: one method, three settings, each in an
  # output root of its own with the same run folders.
  predictions = {'glue_dev': [[(1, 1), (0, 1)], [(1, 1), (1, 1)]]}
  dirs = []
  for root, options in (('exact', {}), ('k4', {'first_order_every': 4}),
                        ('f025', {'kl_fraction': 0.25})):
    for seed in (1, 2):
      out = tmp_path / root / f'sst2-rose-ensemble-seed{seed}'
      write_finished_run(out, predictions=predictions, method='rose-ensemble', task='sst2',
                         seed=seed, **options)
      dirs.append(out)
  series = figures.curve_series(dirs)
  assert len(series) == len(dirs)
  assert {data['legend'] for data in series.values()} == {
      'rose-ensemble (first_order_every=None, kl_fraction=None)',
      'rose-ensemble (first_order_every=4, kl_fraction=None)',
      'rose-ensemble (first_order_every=None, kl_fraction=0.25)'}
  assert 'rose-ensemble (first_order_every=4, kl_fraction=None; seed 2)' in series
  drawn = []
  monkeypatch.setattr(plots, 'save', lambda fig, stem: drawn.append(fig) or [stem])
  plots.curves(series, tmp_path / 'curves')
  panel = next(ax for ax in drawn[0].axes if ax.get_title().startswith('GLUE dev'))
  assert len(panel.lines) == len(dirs)
  # One legend entry and one line style per setting, shared by its seeds.
  entries = [text.get_text() for text in drawn[0].legends[0].get_texts()]
  assert sorted(entries) == sorted({data['legend'] for data in series.values()})
  styles = {(line.get_label(), line.get_linestyle()) for line in panel.lines}
  assert len(styles) == 3 and len({style for _, style in styles}) == 3
  np.testing.assert_allclose(sorted({y for line in panel.lines for y in line.get_ydata()}),
                             [50.0, 100.0])
