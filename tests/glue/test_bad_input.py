"""Bad input through the commands' main(argv): exit 2, one 'error:' line,
and nothing that already existed is changed."""

import json
import shutil
from pathlib import Path

import pytest

from rose_jax.glue.commands import evaluate as evaluate_cli
from rose_jax.glue.commands import finetune
from rose_jax.glue.commands import report as report_cli
from rose_jax.training import step as step_lib
from tests import helpers
from tests.helpers import cli_args, fails, snapshot, write


@pytest.fixture(scope='module')
def finished(finished_run, tmp_path_factory):
  """A finished run to be left alone, under an output root of its own."""
  root = tmp_path_factory.mktemp('bad-input') / 'runs'
  shutil.copytree(finished_run, root / finished_run.name)
  return root


# -- Nothing is lost ---------------------------------------------------------


def test_overwrite_with_a_typo_leaves_the_finished_run(files, finished, tmp_path, capsys):
  before = snapshot(finished)
  fails(finetune.main, [*cli_args(files, finished, train_file='trian.tsv'), '--overwrite'],
         capsys, 'trian.tsv does not exist')
  empty = write(tmp_path / 'empty.tsv', 'sentence\tlabel\n')
  fails(finetune.main, [*cli_args(files, finished, train_file=empty), '--overwrite'], capsys,
         'is empty')
  assert snapshot(finished) == before


def test_overwrite_that_fails_at_its_first_step_puts_the_old_run_back(files, finished, capsys,
                                                                      monkeypatch):
  before = snapshot(finished)

  def broken(*args, **kwargs):
    def step(*a):
      raise ValueError('the first step failed')
    return step

  monkeypatch.setattr(step_lib, 'make_train_step', broken)
  fails(finetune.main, [*cli_args(files, finished), '--overwrite'], capsys, 'first step failed')
  assert snapshot(finished) == before
  assert sorted(p.name for p in finished.iterdir()) == ['sst2-rose-ensemble-seed1']


def test_overwrite_replaces_a_run_once_the_new_one_has_started(files, tmp_path):
  root = tmp_path / 'runs'
  assert finetune.main(cli_args(files, root, learning_rate='1e-3')) == 0
  assert finetune.main([*cli_args(files, root, learning_rate='2e-3'), '--overwrite']) == 0
  results = json.loads((root / 'sst2-rose-ensemble-seed1' / 'results.json').read_text())
  assert results['config']['learning_rate'] == 2e-3 and results['finished']
  assert sorted(p.name for p in root.iterdir()) == ['sst2-rose-ensemble-seed1']


def test_a_directory_of_other_files_is_not_taken_over(files, tmp_path, capsys):
  root = tmp_path / 'runs'
  write(root / 'sst2-rose-ensemble-seed1' / 'notes.txt', 'mine')
  before = snapshot(root)
  fails(finetune.main, cli_args(files, root), capsys, 'holds files but no rose_jax run')
  assert snapshot(root) == before


# -- Never trains on garbage ---------------------------------------------------


def test_a_model_without_tokenizer_files_is_refused(files, tmp_path, capsys):
  model = tmp_path / 'model'
  model.mkdir()
  for name in ('config.json', 'model.safetensors'):
    shutil.copy(Path(files['model']) / name, model / name)
  fails(finetune.main, cli_args(files, tmp_path / 'runs', model=model), capsys,
         'has no tokenizer files')
  assert not (tmp_path / 'runs').exists()


def test_a_tokenizer_that_covers_little_of_the_vocabulary_is_refused(files, tmp_path, capsys):
  from transformers import BertTokenizer
  model = tmp_path / 'model'
  shutil.copytree(files['model'], model)
  for file in model.glob('*'):
    if file.name not in ('config.json', 'model.safetensors'):
      file.unlink()
  BertTokenizer(vocab={w: i for i, w in enumerate(helpers.SPECIAL)}).save_pretrained(str(model))
  fails(finetune.main, cli_args(files, tmp_path / 'runs', model=model), capsys,
         'most words would become unknown tokens')


@pytest.mark.parametrize(('label', 'match'), [
    (1.9, "label 1.9 is not a whole number"),
    (0.6, "label 0.6 is not a whole number"),
    (True, 'is not a class index'),
    (None, 'the label is missing'),
])
def test_labels_are_never_truncated(files, tmp_path, capsys, label, match):
  rows = [{'sentence': 'good film', 'label': 1}] * 3 + [{'sentence': 'bad', 'label': label}]
  train = write(tmp_path / 'train.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
  message = fails(finetune.main, cli_args(files, tmp_path / 'runs', train_file=train,
                                        max_train_samples=None, batch_size=2), capsys, match)
  assert 'line 4' in message
  assert not (tmp_path / 'runs').exists()


def test_whole_float_labels_are_class_indices(files, tmp_path):
  # 16 rows, 2 steps: the program of the other runs here, compiled once.
  rows = [{'sentence': 'good film', 'label': 1.0}, {'sentence': 'bad', 'label': '0.0'}] * 8
  train = write(tmp_path / 'train.jsonl', ''.join(json.dumps(r) + '\n' for r in rows))
  assert finetune.main(cli_args(files, tmp_path / 'runs', train_file=train,
                             max_train_samples=None)) == 0


def test_divergence_stops_with_a_message(files, tmp_path, capsys):
  fails(finetune.main, cli_args(files, tmp_path / 'runs', learning_rate='1e38', method='vanilla',
                              max_grad_norm='0', log_every='1'), capsys,
         'Training diverged at step')


# -- A message, not a traceback --------------------------------------------------


BAD_FILES = {
    'ragged.tsv': ('sentence\tlabel\ngood\t1\nbad\tfilm\t0\n',
                   'line 3: 3 fields, but the header has 2'),
    'short.tsv': ('sentence\tlabel\ngood\t1\nbad\n', 'line 3: 1 fields, but the header has 2'),
    'labels.tsv': ('sentence\tlabel\ngood\t1\nbad\t7\n', 'line 3: label 7 is outside'),
    'names.tsv': ('sentence\tlabel\ngood\tmaybe\n', "line 2: label 'maybe' is not in"),
    'columns.tsv': ('text\tlabel\nfine film\t1\n', 'lacks the column'),
    'binary.tsv': (b'\x89PNG\r\n\x1a\n\x00\xff\xfe', 'is not UTF-8 text'),
    'broken.jsonl': ('{"sentence": "good", "label": 1}\n{"sentence": \n',
                     'line 2: not JSON'),
    'list.jsonl': ('["good", 1]\n', 'expected a record with named fields'),
    'text.parquet': ('not parquet', 'is not a readable parquet file'),
    'data.xlsx': ('x', "unknown file type '.xlsx'"),
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_bad_training_files_name_file_and_line(files, tmp_path, capsys, finished, name):
  content, match = BAD_FILES[name]
  train = write(tmp_path / name, content)
  before = snapshot(finished)
  message = fails(finetune.main, cli_args(files, tmp_path / 'runs', train_file=train), capsys,
                   match)
  assert str(train) in message
  assert not (tmp_path / 'runs').exists() and snapshot(finished) == before


@pytest.mark.parametrize(('content', 'match'), [
    ('{"sst2": [', 'line 1: not JSON'),
    ('[1, 2]', "has no 'sst2' entry"),
    ('{"sst2": {"sentence": "a"}}', 'expected a list of records'),
    ('{"sst2": [{"sentence": "a"}]}', "lacks the column(s) ['label']"),
])
def test_bad_adv_files(files, tmp_path, capsys, content, match):
  adv = write(tmp_path / 'dev.json', content)
  fails(finetune.main, cli_args(files, tmp_path / 'runs', adv_file=adv), capsys, match)
  assert not (tmp_path / 'runs').exists()


def test_a_csv_with_a_byte_order_mark_reads(files, tmp_path):
  rows = ''.join(f'{s},{y}\n' for s, y in [('good film', 1), ('bad plot', 0)] * 8)
  train = write(tmp_path / 'train.csv', '\ufeffsentence,label\n' + rows)
  assert finetune.main(cli_args(files, tmp_path / 'runs', train_file=train,
                             max_train_samples=None)) == 0


@pytest.mark.parametrize(('options', 'match'), [
    ({'model': 'runs/nothing/best_model'}, 'runs/nothing/best_model does not exist'),
    ({'max_length': '100000'}, '--max-length 100000 exceeds'),
    ({'max_eval_samples': '0'}, '--max-eval-samples must be at least 1'),
    ({'max_train_samples': '0'}, '--max-train-samples must be at least 1'),
    ({'log_every': '0'}, '--log-every must be at least 1'),
    ({'epochs': '0'}, '--epochs must be at least 1'),
    ({'batch_size': '-4'}, '--batch-size must be at least 1'),
    ({'learning_rate': '0'}, '--learning-rate must be positive'),
    ({'seeds': '1 1'}, '--seeds lists [1] more than once'),
    ({'dev_file': '.'}, 'is a directory'),
])
def test_bad_options_fail_before_anything_is_written(files, tmp_path, capsys, options, match):
  seeds = options.pop('seeds', None)
  argv = cli_args(files, tmp_path / 'runs', **options)
  if seeds:
    argv += ['--seeds', *seeds.split()]
  fails(finetune.main, argv, capsys, match)
  assert not (tmp_path / 'runs').exists()


def test_an_output_root_that_is_a_file(files, tmp_path, capsys):
  root = write(tmp_path / 'runs', 'a file')
  fails(finetune.main, cli_args(files, root), capsys, 'is a file. Choose another --output-root')
  assert Path(root).read_text() == 'a file'


def test_an_unfinished_run_without_checkpoints_can_be_started_over(files, tmp_path, capsys,
                                                                   monkeypatch):
  """A run that failed before saving anything leaves nothing to resume."""
  real = step_lib.make_train_step

  def broken(*args, **kwargs):
    def step(*a):
      raise ValueError('the first step failed')
    return step

  monkeypatch.setattr(step_lib, 'make_train_step', broken)
  fails(finetune.main, cli_args(files, tmp_path / 'runs'), capsys, 'first step failed')
  monkeypatch.setattr(step_lib, 'make_train_step', real)
  assert finetune.main(cli_args(files, tmp_path / 'runs')) == 0


def test_the_evaluate_and_report_commands_fail_in_one_line(files, tmp_path, capsys):
  fails(evaluate_cli.main, [str(tmp_path / 'missing' / 'model'), '--task', 'sst2',
                             '--dev-file', files['dev_file'], '--no-adv'], capsys,
         'does not exist')
  fails(evaluate_cli.main, [files['model'], '--task', 'sst2', '--dev-file', files['dev_file'],
                             '--no-adv', '--batch-size', '0'], capsys,
         '--batch-size must be at least 1')
  bad = write(tmp_path / 'r' / 'results.json', '{not json')
  fails(report_cli.main, [str(Path(bad).parent), '--output-dir', str(tmp_path / 'out')],
         capsys, 'results.json is not valid JSON')
  fails(report_cli.main, [str(tmp_path / 'nowhere')], capsys, 'does not exist')


def test_preflight_checks_every_seed_before_any_trains(files, tmp_path, capsys):
  root = tmp_path / 'runs'
  write(root / 'sst2-rose-ensemble-seed2' / 'notes.txt', 'mine')
  fails(finetune.main, [*cli_args(files, root), '--seeds', '1', '2'], capsys,
         'holds files but no rose_jax run')
  assert not (root / 'sst2-rose-ensemble-seed1').exists()
