"""analyze.py over run directories: the numbers against direct evaluation, every
figure written, and bad input refused in one line."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax.glue import analysis, figures, loop, plots
from rose_jax.glue import data as data_lib
from rose_jax.glue.commands import analyze
from rose_jax.glue.commands import report as report_cli
from rose_jax.glue.masks import read_masks
from rose_jax.glue.tasks import get_task
from rose_jax.models import as_apply_fn, load_pretrained, load_tokenizer
from tests import helpers
from tests.helpers import fails

EXAMPLES = 12


@pytest.fixture(scope='module')
def runs(files, finished_run, tmp_path_factory):
  """The session's finished ROSE-Ensemble run (copied: the analyses write into
  it), a second seed of it and a vanilla run with its settings."""
  root = tmp_path_factory.mktemp('analysis')
  shutil.copytree(finished_run, root / 'a')
  out = {'a': root / 'a'}
  for name, method, seed in (('b', 'rose-ensemble', 2), ('vanilla', 'vanilla', 1)):
    loop.run(loop.TrainConfig(**helpers.run_settings(
        files, root / name, method=method, seed=seed, epochs=2, max_train_samples=16,
        learning_rate=3e-3, log_every=1)))
    out[name] = root / name
  return out


def _subset_loss(model_dir, run_dir) -> float:
  """Mean cross-entropy of the model in ``model_dir`` over the run's first dev
  examples, one unpadded example at a time."""
  config = json.loads((run_dir / 'results.json').read_text())['config']
  model = load_pretrained(model_dir, num_labels=2)
  tokenizer = load_tokenizer(str(model_dir), model.config)
  apply_fn, params = as_apply_fn(model)
  dev = data_lib.load_local(get_task('sst2'), config['dev_file']).take(EXAMPLES)
  losses = []
  for (text,), label in zip(dev.texts, dev.labels, strict=True):
    ids = tokenizer(text, truncation=True, max_length=config['max_length'])
    batch = {k: jnp.asarray([v]) for k, v in ids.items()}
    logits = np.asarray(apply_fn(params, batch, dropout_key=None), np.float64)[0]
    losses.append(np.log(np.sum(np.exp(logits))) - logits[label])
  return float(np.mean(losses))


def _figure(stem) -> None:
  png, svg = stem.with_suffix('.png'), stem.with_suffix('.svg')
  assert png.read_bytes()[:4] == b'\x89PNG' and png.stat().st_size > 5000
  assert b'<svg' in svg.read_bytes()[:500] and svg.stat().st_size > 5000


def test_the_landscape_centre_is_the_evaluation_loss(runs):
  assert analyze.main(['landscape', str(runs['a']), '--points', '5', '--examples',
                       str(EXAMPLES), '--no-progress']) == 0
  saved = np.load(runs['a'] / 'analysis' / 'landscape.npz')
  assert saved['loss'].shape == (5, 5) and saved['alphas'].tolist() == [-0.25, -0.125, 0, 0.125,
                                                                          0.25]
  np.testing.assert_allclose(saved['loss'][2, 2], _subset_loss(runs['a'] / 'best_model',
                                                               runs['a']), rtol=1e-5)
  _figure(runs['a'] / 'analysis' / 'landscape')
  assert 0 < analysis.flatness(runs['a'])['flat_area'] <= 0.25


def test_a_grid_beyond_the_memory_budget_is_chunked(runs):
  whole = analysis.landscape(runs['b'], points=4, examples=EXAMPLES, progress=False)
  small = analysis.landscape(runs['b'], points=4, examples=EXAMPLES, progress=False,
                             memory_budget=1)
  assert small['chunk'] == 1 < whole['chunk']
  assert small['flat_area'] == whole['flat_area']


def test_interpolation_ends_at_each_runs_loss(runs, tmp_path):
  assert analyze.main(['interpolate', str(runs['a']), str(runs['b']), '--points', '5',
                       '--examples', str(EXAMPLES), '--output-dir', str(tmp_path),
                       '--no-progress']) == 0
  saved = np.load(tmp_path / 'interpolation.npz')
  assert saved['alphas'].tolist() == [-0.5, 0, 0.5, 1, 1.5]
  np.testing.assert_allclose(saved['loss'][1], _subset_loss(runs['a'] / 'best_model', runs['a']),
                             rtol=1e-5)
  np.testing.assert_allclose(saved['loss'][3], _subset_loss(runs['b'] / 'best_model', runs['a']),
                             rtol=1e-5)
  _figure(tmp_path / 'interpolation')
  summary = json.loads((tmp_path / 'interpolation.json').read_text())
  assert analysis.flatness(runs['b'])['interpolation_sharpness'] == summary['second_sharpness']


def test_a_line_from_end_to_end_is_drawn_without_the_curvature_it_cannot_have(runs, tmp_path,
                                                                              capsys):
  before = analysis.flatness(runs['a']).get('interpolation_sharpness')
  assert analyze.main(['interpolate', str(runs['a']), str(runs['b']), '--points', '3',
                       '--low', '0', '--high', '1', '--examples', str(EXAMPLES),
                       '--output-dir', str(tmp_path), '--no-progress']) == 0
  _figure(tmp_path / 'interpolation')
  summary = json.loads((tmp_path / 'interpolation.json').read_text())
  assert summary['first_sharpness'] is None and summary['second_sharpness'] is None
  assert np.isfinite(summary['barrier'])
  out = capsys.readouterr().out
  assert 'none at' in out and 'give --low below 0' in out and 'give --high above 1' in out
  assert analysis.flatness(runs['a']).get('interpolation_sharpness') == before


def test_disagreement_is_zero_without_dropout_and_plotted_over_training(runs, tmp_path):
  assert analysis.disagreement(runs['a'], examples=EXAMPLES, dropout=False) == 0
  assert analyze.main(['disagreement', str(runs['a']), str(runs['b']), '--examples',
                       str(EXAMPLES), '--output-dir', str(tmp_path)]) == 0
  assert 0 <= analysis.flatness(runs['a'])['disagreement'] <= 1
  _figure(tmp_path / 'disagreement')
  with pytest.raises(ValueError, match='two dropout passes'):
    figures.disagreement_over_steps([runs['vanilla']], tmp_path / 'none')


def test_mask_maps_and_curves_are_drawn(runs, tmp_path, monkeypatch):
  drawn = []
  real = plots.mask_maps
  monkeypatch.setattr(plots, 'mask_maps', lambda panels, stem: drawn.append(panels) or
                      real(panels, stem))
  assert analyze.main(['masks', str(runs['a']), str(runs['b']), '--output-dir',
                       str(tmp_path)]) == 0
  _figure(tmp_path / 'masks')
  # Each ensemble run: its first- and second-order masks and the one it applied.
  assert [label.split(': ')[1] for label in drawn[0]] == [
      'ROSE-First mask', 'ROSE-Second mask', 'ensemble (applied)'] * 2
  names, steps, masks = read_masks(runs['a'])
  first, second = read_masks(runs['a'], 'first')[2], read_masks(runs['a'], 'second')[2]
  gamma = json.loads((runs['a'] / 'results.json').read_text())['config']['gamma']
  np.testing.assert_allclose(gamma * first + (1 - gamma) * second, masks, atol=1e-6)
  assert not np.array_equal(first, second)
  rows, _, values = figures.mask_rows(names, masks)
  assert 'L0 query' in rows and values.shape == (len(rows), len(steps))
  # The mask file reproduces the kept fraction that metrics.jsonl logs (every 2 steps).
  logged = [json.loads(x) for x in (runs['a'] / 'metrics.jsonl').read_text().splitlines()]
  windows = [x for x in logged if 'type' not in x]
  assert windows and steps.tolist() == list(range(1, len(steps) + 1))
  every = json.loads((runs['a'] / 'results.json').read_text())['config']['log_every']
  for line in windows:
    kept = masks[(steps > line['step'] - every) & (steps <= line['step'])].mean()
    np.testing.assert_allclose(kept, line['kept_fraction'], rtol=1e-6)
  # Vanilla computes no KL and masks nothing: alone, it gets no such panels.
  panels = lambda run_dirs: [p[0] for p in plots.curve_panels(figures.curve_series(run_dirs))]
  assert panels([runs['vanilla']]) == ['loss', 'ce', 'glue_dev_accuracy', 'adv_dev_accuracy']
  assert panels([runs['a'], runs['vanilla']]) == [
      *(p[0] for p in plots.STEP_PANELS), 'glue_dev_accuracy', 'adv_dev_accuracy']
  # An output folder that does not exist yet is made.
  assert analyze.main(['curves', str(runs['a']), str(runs['vanilla']), '--output-dir',
                       str(tmp_path / 'new' / 'folder')]) == 0
  _figure(tmp_path / 'new' / 'folder' / 'curves')


def test_the_report_adds_curves_and_flatness(runs, tmp_path):
  analysis.landscape(runs['a'], points=3, examples=EXAMPLES, progress=False)
  assert report_cli.main([str(runs['a']), str(runs['b']), str(runs['vanilla']),
                          '--output-dir', str(tmp_path)]) == 0
  _figure(tmp_path / 'curves')
  _figure(tmp_path / 'accuracy')
  flatness = (tmp_path / 'flatness.csv').read_text().splitlines()
  assert flatness[0].startswith('Method,Flat area (landscape)')
  rows = {line.split(',')[0]: line.split(',')[1:] for line in flatness[1:]}
  assert rows['rose-ensemble'][0] != '-' and rows['vanilla'][0] == '-'
  assert rows['rose-ensemble'][3] != '-', 'the logged training disagreement is missing'


def test_bad_input_is_refused_in_one_line(runs, tmp_path, capsys):
  fails(analyze.main, ['masks', str(runs['vanilla']), '--output-dir', str(tmp_path)], capsys,
         'has no masks.bin')
  other = tmp_path / 'other'
  shutil.copytree(runs['b'], other)
  shutil.rmtree(other / 'best_model')
  helpers.tiny_checkpoint(other / 'best_model', layers=2)
  fails(analyze.main, ['interpolate', str(runs['a']), str(other), '--points', '3',
                        '--output-dir', str(tmp_path), '--no-progress'], capsys,
         'different architectures')
  fails(analyze.main, ['landscape', str(tmp_path)], capsys, 'not a run directory')
  fails(analyze.main, ['landscape', str(runs['a']), '--rise', '-1'], capsys,
        '--rise must be 0 or more')
  fails(analyze.main, ['landscape', str(runs['a']), '--points', '0'], capsys,
         '--points must be at least 1')
  fails(analyze.main, ['disagreement', str(runs['a']), '--passes', '1'], capsys,
         '--passes must be at least 2')
