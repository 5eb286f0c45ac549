"""End to end: every method, resume, bad input and the report, on tiny data."""

import json
from pathlib import Path

import numpy as np
import pytest

from examples import evaluate as evaluate_cli
from examples import finetune
from examples import report as report_cli
from rose_jax.glue import data as data_lib
from rose_jax.glue import loop, report
from rose_jax.models import CheckpointError
from rose_jax.training.methods import METHOD_NAMES
from tests import helpers
from tests.helpers import write


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  return helpers.run_files(tmp_path_factory.mktemp('e2e'))


def _config(files, out, **overrides):
  return loop.TrainConfig(**helpers.run_settings(files, out, **overrides))


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_each_method_trains_and_writes_a_run(files, tmp_path, method):
  results = loop.run(_config(files, tmp_path / method, method=method,
                             max_train_samples=24))
  assert results['finished'] and results['best_epoch'] == 1
  written = json.loads((tmp_path / method / 'results.json').read_text())
  assert written['finished'] and written['config']['method'] == method
  lines = [json.loads(x) for x in (tmp_path / method / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in lines if 'type' not in x] == [2]
  epoch = next(x for x in lines if x.get('type') == 'epoch')
  assert np.isfinite(epoch['train_loss'])
  if 'rose' in method:
    assert epoch['train_kept_fraction'] < 1.0
  else:
    assert epoch['train_kept_fraction'] == 1.0
  # The KL column: a dropout-pass KL, or SMART's regulariser; none for the others.
  assert (epoch['train_kl'] > 0) == (method not in ('vanilla', 'rose-second', 'child-tuning-d',
                                                    'freelb'))


def test_report_follows_from_the_predictions(files, tmp_path):
  for method in ('vanilla', 'rose-second'):
    for seed in (1, 2):
      loop.run(_config(files, tmp_path / 'runs' / f'{method}-{seed}', method=method, seed=seed,
                       epochs=2, max_train_samples=16))
  assert report_cli.main([str(tmp_path / 'runs'), '--output-dir', str(tmp_path / 'out')]) == 0
  table = (tmp_path / 'out' / 'table.csv').read_text().splitlines()
  header, rows = table[0].split(','), [r.split(',') for r in table[1:]]
  assert header == ['Method', 'SST2 GLUE', 'SST2 AdvGLUE', 'Avg GLUE+AdvGLUE', 'Avg Δ↓']
  assert [r[0] for r in rows] == ['vanilla', 'rose-second']
  assert (tmp_path / 'out' / 'accuracy.png').stat().st_size > 1000
  for row, method in zip(rows, ('vanilla', 'rose-second'), strict=True):
    accuracies = {'glue_dev': [], 'adv_dev': []}
    for seed in (1, 2):
      run_dir = tmp_path / 'runs' / f'{method}-{seed}'
      best = json.loads((run_dir / 'results.json').read_text())['best_epoch']
      for split in accuracies:
        lines = (run_dir / 'predictions' / f'epoch{best}-{split}.jsonl').read_text().splitlines()
        records = [json.loads(x) for x in lines]
        accuracies[split].append(100 * np.mean([r['prediction'] == r['label'] for r in records]))
    glue, adv = accuracies['glue_dev'], accuracies['adv_dev']
    assert row[1] == f'{np.mean(glue):.2f} ± {np.std(glue):.2f}'
    assert row[2] == f'{np.mean(adv):.2f} ± {np.std(adv):.2f}'
    assert row[3] == f'{np.mean([np.mean(glue), np.mean(adv)]):.2f}'
    assert row[4] == f'{np.mean(glue) - np.mean(adv):.2f}'
  assert '| Method |' in (tmp_path / 'out' / 'table.md').read_text()


def test_best_model_is_saved_and_evaluates_to_the_same_accuracy(files, tmp_path, capsys):
  results = loop.run(_config(files, tmp_path / 'run', epochs=2, max_train_samples=16))
  best = tmp_path / 'run' / 'best_model'
  assert (best / 'model.safetensors').exists() and (best / 'tokenizer_config.json').exists()
  output = tmp_path / 'eval.json'
  assert evaluate_cli.main([str(best), '--task', 'sst2', '--dev-file', files['dev_file'],
                            '--adv-file', files['adv_file'], '--max-length', '12',
                            '--output', str(output)]) == 0
  measured = json.loads(output.read_text())
  assert measured['glue_dev_accuracy'] == results['glue_dev_accuracy']
  assert measured['adv_dev_accuracy'] == results['adv_dev_accuracy']


def test_bad_input_fails_before_training(files, tmp_path, capsys):
  base = ['--model', files['model'], '--train-file', files['train_file'], '--dev-file',
          files['dev_file'], '--adv-file', files['adv_file'], '--output-root', str(tmp_path),
          '--epochs', '1', '--batch-size', '8', '--max-length', '12', '--no-progress']
  with pytest.raises(SystemExit):
    finetune.parse_args(['--task', 'cola'])
  assert finetune.main([*base, '--upper', '60', '--seeds', '1', '2']) == 2
  assert 'write 0.6' in capsys.readouterr().err
  assert not any(tmp_path.iterdir())
  with pytest.raises(ValueError, match=r"--task must be one of .* got 'cola'"):
    loop.TrainConfig(task='cola').resolved()
  with pytest.raises(ValueError, match=r"--method must be one of .* got 'rose-third'"):
    loop.TrainConfig(method='rose-third').resolved()
  with pytest.raises(ValueError, match=r'--upper must be a fraction in \[0, 1\]'):
    loop.TrainConfig(upper=60).resolved()
  cases = {
      'columns': ('text\tlabel\nfine film\t1\n', 'lacks the column'),
      'labels': ('sentence\tlabel\ngood\t1\nbad\t7\n', 'outside the sst2 label range'),
      'names': ('sentence\tlabel\ngood\tmaybe\n', "label 'maybe' is not in"),
      'empty': ('sentence\tlabel\n', 'is empty'),
  }
  for name, (text, match) in cases.items():
    bad = write(tmp_path / f'{name}.tsv', text)
    with pytest.raises(data_lib.DataError, match=match):
      loop.run(_config(files, tmp_path / f'run-{name}', train_file=bad))
    assert not (tmp_path / f'run-{name}').exists()
  adv = write(tmp_path / 'adv.json', json.dumps({'qqp': []}))
  with pytest.raises(data_lib.DataError, match="no 'sst2' entry"):
    loop.run(_config(files, tmp_path / 'run-adv', adv_file=adv))
  assert not (tmp_path / 'run-adv').exists()


def test_tokenizer_must_match_the_model(files, tmp_path):
  other = helpers.tiny_checkpoint(tmp_path / 'other')
  big_vocab = [*helpers.SPECIAL, *helpers.WORDS, *(f'extra{i}' for i in range(100))]
  (other / 'vocab.txt').write_text('\n'.join(big_vocab) + '\n')
  from transformers import BertTokenizer
  BertTokenizer(vocab={w: i for i, w in enumerate(big_vocab)}).save_pretrained(str(other))
  with pytest.raises(CheckpointError, match='do not belong together'):
    loop.run(_config(files, tmp_path / 'run', model=str(other)))


def test_hub_data_without_network_names_the_local_options(monkeypatch):
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(data_lib.DataError, match='--train-file'):
    data_lib.load_hub(data_lib.get_task('sst2'), 'train')


def test_report_needs_finished_runs(tmp_path):
  with pytest.raises(ValueError, match='No finished run'):
    report.collect([tmp_path])


def _tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
  """Scalars of every event file under ``directory`` (TFRecord framing read by hand)."""
  import struct

  from tensorboardX.proto import event_pb2
  scalars: dict = {}
  for file in sorted(directory.glob('events.out.tfevents.*')):
    data = file.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_tensorboard_has_the_metrics_of_metrics_jsonl(files, tmp_path):
  out = tmp_path / 'run'
  loop.run(_config(files, out, epochs=2, max_train_samples=16, log_every=1, tensorboard=True))
  scalars = _tensorboard_scalars(out / 'tensorboard')
  lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
  steps = [x for x in lines if 'type' not in x]
  epochs = [x for x in lines if x.get('type') == 'epoch']
  assert len(steps) == 4 and len(epochs) == 2
  for name in ('loss', 'kl', 'kept_fraction'):
    assert scalars[f'train/{name}'] == pytest.approx({x['step']: x[name] for x in steps})
  assert scalars['epoch/glue_dev_accuracy'] == pytest.approx(
      {x['step']: x['glue_dev_accuracy'] for x in epochs})


def test_progress_bar_shows_elapsed_and_remaining_time():
  bar = loop._progress(total=10, initial=4, enabled=True)
  try:
    text = str(bar)
  finally:
    bar.close()
  assert '4/10' in text and '<' in text.split('[')[1]  # [elapsed<remaining, rate]
