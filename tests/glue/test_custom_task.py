"""A task of one's own from the command line: a three-label CSV trained end to
end with two evaluation sets and their metrics, the saved model's label names
in transformers' pipeline, labels read from the training file and kept on
resume, the report's columns, and each mistake refused in one line before
anything is written."""

import csv
import json

import numpy as np
import pytest

from rose_jax.glue.commands import finetune
from rose_jax.glue.commands import report as report_cli
from rose_jax.glue.tasks import REGRESSION
from tests.helpers import WORDS, fails, snapshot

LABELS = ('bad', 'good', 'mixed')


def _csv(path, rows, columns=('review', 'sentiment')):
  with path.open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)
  return str(path)


def _rows(seed, n, labels=LABELS):
  rng = np.random.default_rng(seed)
  return [(' '.join(rng.choice(WORDS, 5)), labels[i % len(labels)]) for i in range(n)]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('custom')
  return {'train': _csv(root / 'train.csv', _rows(0, 24)),
          'dev': _csv(root / 'dev.csv', _rows(1, 9)),
          'other': _csv(root / 'other.csv', _rows(2, 6)), 'root': root}


def _args(files, data, root, *extra, labels='bad,good,mixed'):
  return ['--task', 'custom', '--text-columns', 'review', '--label-column', 'sentiment',
          *(['--labels', labels] if labels else []), '--train-file', data['train'],
          '--eval-file', f'dev={data["dev"]}', '--eval-file', f'shifted={data["other"]}',
          '--model', files['model'], '--output-root', str(root), '--epochs', '1',
          '--batch-size', '8', '--max-length', '12', '--parallel', 'none', '--no-progress',
          '--method', 'rose-ensemble', *extra]


def test_a_three_label_csv_trains_end_to_end(files, data, tmp_path, capsys):
  assert finetune.main([*_args(files, data, tmp_path), '--metrics', 'accuracy,f1']) == 0
  out = tmp_path / 'custom-rose-ensemble-seed1'
  printed = capsys.readouterr().out
  assert 'dev accuracy' in printed and 'shifted f1' in printed
  results = json.loads((out / 'results.json').read_text())
  assert results['config']['labels'] == list(LABELS) and results['finished']
  epoch = results['epochs'][0]
  for name, path in (('dev', data['dev']), ('shifted', data['other'])):
    lines = [json.loads(x) for x in
             (out / 'predictions' / f'epoch1-{name}.jsonl').read_text().splitlines()]
    with open(path) as f:
      want = [LABELS.index(row['sentiment']) for row in csv.DictReader(f)]
    assert [x['label'] for x in lines] == want
    predictions = np.asarray([x['prediction'] for x in lines])
    assert epoch[f'{name}_accuracy'] == pytest.approx(np.mean(predictions == want))
    assert f'{name}_f1' in epoch
  assert results['dev_accuracy'] == epoch['dev_accuracy']  # the best epoch's
  # transformers' pipeline shows the user's label names.
  transformers = pytest.importorskip('transformers')
  classify = transformers.pipeline('text-classification', model=str(out / 'best_model'),
                                   device='cpu')
  assert classify('good film')[0]['label'] in LABELS
  config = json.loads((out / 'best_model' / 'config.json').read_text())
  assert config['id2label'] == {'0': 'bad', '1': 'good', '2': 'mixed'}
  assert config['label2id'] == {'bad': 0, 'good': 1, 'mixed': 2}
  # The report's columns follow the task's sets and metrics.
  assert report_cli.main([str(tmp_path), '--output-dir', str(tmp_path / 'report')]) == 0
  header = (tmp_path / 'report' / 'table.csv').read_text().splitlines()[0].split(',')
  assert header[2:4] == ['CUSTOM dev (accuracy/f1)', 'CUSTOM shifted (accuracy/f1)']


def test_labels_read_from_the_training_file_are_recorded_and_kept_on_resume(files, data,
                                                                            tmp_path, capsys):
  args = _args(files, data, tmp_path, '--save-every', '1', labels=None)
  assert finetune.main(args) == 0
  results = json.loads((tmp_path / 'custom-rose-ensemble-seed1' / 'results.json').read_text())
  assert results['config']['labels'] == sorted(LABELS)  # read from train.csv
  assert results['config']['metrics'] is None and 'dev_accuracy' in results
  # A resume reads the same labels again; other labels are another run.
  fails(finetune.main, [*args, '--resume'], capsys, 'already holds a finished run')
  out = tmp_path / 'custom-rose-ensemble-seed1'
  results['finished'] = False
  (out / 'results.json').write_text(json.dumps(results))
  fails(finetune.main, [*args[:4], '--labels', 'good,bad,mixed', *args[4:], '--resume'], capsys,
        "--labels: ['bad', 'good', 'mixed'] when started, ['good', 'bad', 'mixed'] now")


def test_float_targets_make_a_regression_task(files, tmp_path):
  rng = np.random.default_rng(3)
  rows = [(' '.join(rng.choice(WORDS, 4)), f'{x:.2f}') for x in rng.uniform(0, 5, 24)]
  train = _csv(tmp_path / 'train.csv', rows, ('text', 'score'))
  assert finetune.main(['--task', 'custom', '--text-columns', 'text', '--label-column', 'score',
                        '--train-file', train, '--dev-file', train, '--model', files['model'],
                        '--output-root', str(tmp_path / 'runs'), '--epochs', '1',
                        '--batch-size', '8', '--max-length', '12', '--parallel', 'none',
                        '--no-progress', '--method', 'rdrop']) == 0
  results = json.loads((tmp_path / 'runs' / 'custom-rdrop-seed1' / 'results.json').read_text())
  assert results['config']['labels'] == [REGRESSION]
  assert {'dev_pearson', 'dev_spearman'} <= set(results['epochs'][0])
  assert 'train_accuracy' not in results['epochs'][0]  # a number has no accuracy


BAD = {
    'an unknown metric': (['--metrics', 'accuracy,bleu'], "--metrics accuracy,bleu: There is "
                          "no metric 'bleu'"),
    'a metric that does not fit': (['--labels', 'regression', '--metrics', 'f1'],
                                   "'f1' scores classes, but this is a regression task"),
    'SMART on regression': (['--labels', 'regression', '--method', 'smart'],
                            '--method smart cannot train custom: smart regularises with a KL'),
    'a set named twice': (['--eval-file', 'dev=x.csv'], "The evaluation set 'dev' is given twice"),
    'a malformed set': (['--eval-file', 'dev'], "--eval-file 'dev' is not NAME=FILE"),
    'one class': (['--labels', 'good'], 'a classification task needs at least two classes'),
    'a class named twice': (['--labels', 'good,good'], '--labels good,good names a class twice'),
    'GLUE with custom columns': (['--task', 'sst2'], '--text-columns describes a custom task'),
    'AdvGLUE for a custom task': (['--adv-file', 'x.json'], '--adv-file reads AdvGLUE'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_settings_that_cannot_work_are_one_line_before_anything_is_written(files, data, tmp_path,
                                                                        capsys, case):
  extra, match = BAD[case]
  fails(finetune.main, [*_args(files, data, tmp_path), *extra], capsys, match)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('case', ['unknown dev label', 'no label column', 'float classes',
                                  'no text column', 'missing file'])
def test_data_that_cannot_work_is_one_line_before_anything_is_written(files, data, tmp_path,
                                                                     capsys, case):
  root = data['root']
  bad = {'unknown dev label': ([('fine', 'neutral')], ('review', 'sentiment'),
                               "label 'neutral' is not among the task's labels ['bad', 'good', "
                               "'mixed']"),
         'no label column': ([('fine', 'good')], ('review', 'stars'),
                             "lacks the column(s) ['sentiment']"),
         'float classes': ([('fine', '1.0')], ('review', 'sentiment'),
                           'It is a float: write class indices as integers'),
         'no text column': ([('fine', 'good')], ('text', 'sentiment'),
                            'Name them with --text-columns and --label-column'),
         'missing file': (None, None, 'does not exist')}
  rows, columns, match = bad[case]
  dev = _csv(tmp_path / 'd.csv', rows, columns) if rows else str(tmp_path / 'none.csv')
  prefix = f'--eval-file dev={dev}' if rows is None else '--eval-file dev: '
  args = _args(files, {**data, 'dev': dev}, tmp_path / 'runs')
  before = snapshot(root)
  line = fails(finetune.main, args, capsys, match)
  assert prefix in line
  assert not (tmp_path / 'runs').exists() and snapshot(root) == before


def test_labels_are_read_from_the_label_column_that_is_named(files, data, tmp_path, capsys):
  args = _args(files, data, tmp_path, labels=None)
  args[args.index('sentiment')] = 'stars'
  fails(finetune.main, args, capsys, "has no label column 'stars' (its columns: ['review', "
                                     "'sentiment']); name it with --label-column")
  fails(finetune.main, ['--task', 'custom', '--model', files['model']], capsys,
        '--task custom needs --text-columns and --train-file')
