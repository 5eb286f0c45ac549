"""End to end: the loop once per distinct code path, its files, bad input, on
tiny data. Each method's gradients are tested in tests/training; the
baselines' runs in test_resume.py; the report in test_report.py."""

import json
from pathlib import Path

import pytest

from rose_jax.glue import data as data_lib
from rose_jax.glue import loop, trainers
from rose_jax.glue.commands import evaluate as evaluate_cli
from rose_jax.glue.commands import finetune
from rose_jax.glue.tasks import get_task
from rose_jax.models import CheckpointError
from tests import helpers
from tests.helpers import write
from tests.helpers.runs import check_finished_run


def _config(files, out, **overrides):
  return loop.TrainConfig(**helpers.run_settings(files, out, **overrides))


# The loop's paths: no KL and no mask, a KL without a mask, a mask without a
# KL, both (the Fisher pass, SMART and FreeLB: test_resume.py).
@pytest.mark.parametrize('method', ['vanilla', 'rdrop', 'rose-second', 'rose-ensemble'])
def test_each_path_trains_and_writes_a_run(files, tmp_path, method):
  results = loop.run(_config(files, tmp_path / method, method=method, max_train_samples=16))
  assert results['finished'] and results['best_epoch'] == 1
  check_finished_run(tmp_path / method, method, epochs=1)
  lines = [json.loads(x) for x in (tmp_path / method / 'metrics.jsonl').read_text().splitlines()]
  assert [x['step'] for x in lines if 'type' not in x] == [2]


def test_a_selective_optimizer_logs_its_kept_fraction_and_masks(files, tmp_path, monkeypatch):
  import optax

  import rose_jax
  from rose_jax import selection
  from rose_jax.glue.masks import read_masks
  monkeypatch.setattr(trainers, 'build_optimizer', lambda *a, **k: rose_jax.selective(
      optax.adamw(1e-3), upper=0.5, selectable=selection.authors_selectable))
  out = tmp_path / 'run'
  loop.run(_config(files, out, max_train_samples=16, log_every=1))
  _, steps, masks = read_masks(out)
  assert steps.tolist() == [1, 2]
  lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
  logged = [x['kept_fraction'] for x in lines if 'type' not in x]
  assert logged == pytest.approx(masks.mean(1).tolist()) and min(logged) < 1


def test_best_model_is_saved_and_evaluates_to_the_same_accuracy(files, finished_run, tmp_path):
  check_finished_run(finished_run, 'rose-ensemble', epochs=2)
  results = json.loads((finished_run / 'results.json').read_text())
  best = finished_run / 'best_model'
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
    finetune.parse_args(['--task', 'boolq'])
  assert finetune.main([*base, '--upper', '60', '--seeds', '1', '2']) == 2
  assert 'write 0.6' in capsys.readouterr().err
  assert not any(tmp_path.iterdir())
  with pytest.raises(ValueError, match=r"--task must be one of .* got 'boolq'"):
    loop.TrainConfig(task='boolq').resolved()
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
    with pytest.raises(data_lib.DataError, match=f'--train-file: .*{match}'):
      loop.run(_config(files, tmp_path / f'run-{name}', train_file=bad))
    assert not (tmp_path / f'run-{name}').exists()
  adv = write(tmp_path / 'adv.json', json.dumps({'qqp': []}))
  with pytest.raises(data_lib.DataError, match=r"--adv-file \(adv_dev\): .*no 'sst2' entry"):
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
    data_lib.load_hub(get_task('sst2'), get_task('sst2').hub_train)


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


def test_tensorboard_has_the_metrics_of_metrics_jsonl(finished_run):
  out = finished_run
  scalars = _tensorboard_scalars(out / 'tensorboard')
  lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
  steps = [x for x in lines if 'type' not in x]
  epochs = [x for x in lines if x.get('type') == 'epoch']
  assert len(steps) == 4 and len(epochs) == 2
  for name in ('loss', 'kl', 'kept_fraction'):
    assert scalars[f'train/{name}'] == pytest.approx({x['step']: x[name] for x in steps})
  assert scalars['epoch/glue_dev_accuracy'] == pytest.approx(
      {x['step']: x['glue_dev_accuracy'] for x in epochs})
