"""MSGS probing (the paper's section 4.2): Matthews correlation per condition
on hand-made rows with known answers, a probing run end to end with each
condition's score and each row's condition in its files, inoculation, and
MSGS files that cannot work."""

import json

import numpy as np
import pytest

from rose_jax.glue import data as data_lib
from rose_jax.glue import evaluation, tasks
from rose_jax.glue.commands import finetune
from tests.helpers import WORDS, fails

TASK = tasks.msgs_task(name='control_raising_length', eval_sets=['msgs'])


def _row(sentence, condition, linguistic, surface):
  return {'sentence': sentence, 'condition': condition, 'linguistic_feature_label': linguistic,
          'surface_feature_label': surface, 'UID': 'control_raising_length'}


def test_each_condition_is_scored_apart_with_known_answers():
  # A model that predicts the surface label: training rows agree (MCC 1), the
  # disambiguating test rows disagree with the linguistic label (MCC -1).
  rows = [_row('a', 'training', 1, 1), _row('b', 'training', 0, 0),
          _row('c', 'test', 1, 0), _row('d', 'test', 0, 1),
          _row('e', 'control', 1, 1), _row('f', 'control', 0, 1)]
  split = data_lib.from_records(TASK, rows, 'test.jsonl')
  assert split.labels.tolist() == [1, 0, 1, 0, 1, 0]
  assert split.groups.tolist() == ['training', 'training', 'test', 'test', 'control', 'control']
  surface = np.asarray([r['surface_feature_label'] for r in rows])
  scores = evaluation.score(TASK, 'msgs', surface, split.labels, split.groups)
  assert scores == {'msgs_test': {'mcc': -1.0}, 'msgs_training': {'mcc': 1.0},
                    'msgs_control': {'mcc': 0.0}}  # control: one predicted class
  linguistic = split.labels
  assert evaluation.score(TASK, 'msgs', linguistic, split.labels, split.groups)[
      'msgs_test'] == {'mcc': 1.0}
  assert TASK.best_key == 'msgs_training_mcc'
  assert TASK.result_keys() == ['msgs_test_mcc', 'msgs_training_mcc', 'msgs_control_mcc']


def _write(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


@pytest.fixture(scope='module')
def msgs(tmp_path_factory):
  """An MSGS-shaped task folder in the tiny checkpoint's words: the linguistic
  label is whether 'good' is in the sentence, the surface one its length."""
  root = tmp_path_factory.mktemp('msgs')
  rng = np.random.default_rng(0)

  def row(condition, linguistic, surface):
    words = list(rng.choice([w for w in WORDS if w != 'good'], 4 + 4 * surface))
    if linguistic:
      words[0] = 'good'
    return _row(' '.join(words), condition, linguistic, surface)

  train = [row('training', y, y) for y in [0, 1] * 12]
  test = [row(c, y, s) for c, y, s in [('training', 1, 1), ('training', 0, 0), ('test', 1, 0),
                                       ('test', 0, 1), ('control', 1, 1), ('control', 0, 0)] * 4]
  return {'train': _write(root / 'train.jsonl', train), 'test': _write(root / 'test.jsonl', test),
          'rows': test, 'root': root}


def _args(files, msgs, root, *extra):
  return ['--task', 'msgs', '--train-file', msgs['train'], '--eval-file', f'msgs={msgs["test"]}',
          '--model', files['model'], '--output-root', str(root), '--epochs', '2',
          '--batch-size', '8', '--max-length', '16', '--parallel', 'none', '--no-progress',
          '--method', 'rose-ensemble', '--learning-rate', '1e-3', *extra]


def test_a_probing_run_scores_each_condition_and_writes_each_rows(files, msgs, tmp_path):
  assert finetune.main(_args(files, msgs, tmp_path)) == 0
  out = tmp_path / 'msgs-rose-ensemble-seed1'
  results = json.loads((out / 'results.json').read_text())
  assert results['config']['task_name'] == 'control_raising_length'  # the rows' UID
  for epoch in results['epochs']:
    assert {'msgs_test_mcc', 'msgs_training_mcc', 'msgs_control_mcc'} <= set(epoch)
  best = max(results['epochs'], key=lambda e: (e['msgs_training_mcc'], -e['epoch']))
  assert results['best_epoch'] == best['epoch']  # picked without the test rows
  lines = [json.loads(x) for x in (out / 'predictions' / 'epoch2-msgs.jsonl').read_text()
           .splitlines()]
  assert [x['condition'] for x in lines] == [r['condition'] for r in msgs['rows']]
  for condition in ('test', 'training'):
    rows = [x for x in lines if x['condition'] == condition]
    import sklearn.metrics
    want = sklearn.metrics.matthews_corrcoef([x['label'] for x in rows],
                                             [x['prediction'] for x in rows])
    assert results['epochs'][1][f'msgs_{condition}_mcc'] == pytest.approx(want)


def test_inoculation_moves_test_rows_into_training(files, msgs, tmp_path):
  assert finetune.main(_args(files, msgs, tmp_path, '--inoculation', '0.25', '--epochs',
                             '1')) == 0
  out = tmp_path / 'msgs-rose-ensemble-seed1'
  lines = (out / 'predictions' / 'epoch1-msgs.jsonl').read_text().splitlines()
  # 24 training rows x 0.25 = 6 of the 8 test rows trained on, 2 left to evaluate.
  conditions = [json.loads(x)['condition'] for x in lines]
  assert conditions.count('test') == 2 and len(lines) == len(msgs['rows']) - 6


@pytest.mark.parametrize('case, match', [
    ('no condition', "lacks the column(s) ['condition']"),
    ('no label', "lacks the column(s) ['linguistic_feature_label']"),
    ('no test rows', "--eval-file msgs: no rows whose condition is 'test'"),
    ('inoculation 1', '--inoculation must be in [0, 1), got 1.0'),
    ('inoculation too much', '--inoculation 0.9 asks for 22 of the 8'),
    ('inoculation elsewhere', '--inoculation mixes MSGS'),
])
def test_msgs_files_and_settings_that_cannot_work(files, msgs, tmp_path, capsys, case, match):
  root = tmp_path / 'bad'
  root.mkdir()
  rows, extra = msgs['rows'], []
  if case == 'no condition':
    rows = [{k: v for k, v in r.items() if k != 'condition'} for r in rows]
  elif case == 'no label':
    rows = [{k: v for k, v in r.items() if k != 'linguistic_feature_label'} for r in rows]
  elif case == 'no test rows':
    rows = [r for r in rows if r['condition'] != 'test']
  elif case == 'inoculation 1':
    extra = ['--inoculation', '1']
  elif case == 'inoculation too much':
    extra = ['--inoculation', '0.9']
  data = {**msgs, 'test': _write(root / 'test.jsonl', rows)}
  args = _args(files, data, tmp_path / 'runs', *extra)
  if case == 'inoculation elsewhere':
    args = ['--task', 'sst2', '--model', files['model'], '--train-file', files['train_file'],
            '--dev-file', files['dev_file'], '--no-adv', '--inoculation', '0.1',
            '--output-root', str(tmp_path / 'runs')]
  fails(finetune.main, args, capsys, match)
  assert not (tmp_path / 'runs').exists()


def test_the_probing_figure_draws_each_run(files, msgs, tmp_path, capsys):
  from rose_jax.glue.commands import analyze
  for seed in ('1', '2'):
    assert finetune.main(_args(files, msgs, tmp_path / 'runs', '--epochs', '1', '--seeds',
                               seed)) == 0
  assert analyze.main(['probing', str(tmp_path / 'runs'), '--output-dir',
                       str(tmp_path / 'out')]) == 0
  assert (tmp_path / 'out' / 'probing.png').stat().st_size > 5000
  # Beside a GLUE run, the table's averages are the GLUE and AdvGLUE sets' alone;
  # probing alone has none.
  from rose_jax.glue import report
  from tests.helpers.runs import write_finished_run
  glue = write_finished_run(tmp_path / 'glue' / 'sst2-rose-ensemble-seed1', method='rose-ensemble',
                            task='sst2', predictions={'glue_dev': [[(1, 1), (0, 1)]],
                                                      'adv_dev': [[(0, 1), (0, 1), (1, 1)]]})
  for paths, averages in (([tmp_path / 'runs'], None),
                          ([tmp_path / 'runs', tmp_path / 'glue'],
                           100 * (glue['glue_dev_accuracy'] + glue['adv_dev_accuracy']) / 2)):
    runs = report.collect(paths)
    header, (row,) = report.rows(report.summarise(runs), runs)
    assert any(h.startswith('CONTROL_RAISING_LENGTH msgs_test') for h in header)
    assert ('Avg GLUE+AdvGLUE' in header) == (averages is not None)
    if averages is not None:
      assert row[header.index('Avg GLUE+AdvGLUE')] == f'{averages:.2f}'
  fails(analyze.main, ['probing', str(tmp_path / 'runs' / 'msgs-rose-ensemble-seed1' /
                                       'predictions')], capsys, 'No finished run')
