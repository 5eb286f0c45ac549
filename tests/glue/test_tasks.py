"""The tasks: every GLUE task read from its release layout and trained one
epoch to its official metric in results.json, the prediction files and the
report; labels read from a custom task's training file; what a task refuses."""

import json

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from rose_jax.glue import data as data_lib
from rose_jax.glue import loop, tasks
from rose_jax.glue.commands import report as report_cli
from rose_jax.glue.tasks import REGRESSION, DataError, get_task, infer_labels
from tests.helpers.files import write_glue_task

# What GLUE's official scorer reports per task.
OFFICIAL = {'cola': {'mcc': sklearn.metrics.matthews_corrcoef},
            'sst2': {'accuracy': sklearn.metrics.accuracy_score},
            'mrpc': {'accuracy': sklearn.metrics.accuracy_score, 'f1': sklearn.metrics.f1_score},
            'stsb': {'pearson': lambda y, p: scipy.stats.pearsonr(p, y)[0],
                     'spearman': lambda y, p: scipy.stats.spearmanr(p, y)[0]},
            'qqp': {'accuracy': sklearn.metrics.accuracy_score, 'f1': sklearn.metrics.f1_score},
            'mnli': {'accuracy': sklearn.metrics.accuracy_score},
            'qnli': {'accuracy': sklearn.metrics.accuracy_score},
            'rte': {'accuracy': sklearn.metrics.accuracy_score},
            'wnli': {'accuracy': sklearn.metrics.accuracy_score}}


# The label order of GLUE on the dataset hub (and of its release files' indices).
HUB_LABELS = {'cola': ('unacceptable', 'acceptable'), 'sst2': ('negative', 'positive'),
              'mrpc': ('not_equivalent', 'equivalent'), 'stsb': None,
              'qqp': ('not_duplicate', 'duplicate'),
              'mnli': ('entailment', 'neutral', 'contradiction'),
              'qnli': ('entailment', 'not_entailment'), 'rte': ('entailment', 'not_entailment'),
              'wnli': ('not_entailment', 'entailment')}


def test_every_glue_task_reads_its_release_layout(tmp_path):
  assert set(OFFICIAL) == set(tasks.TASKS)
  assert {name: task.label_names for name, task in tasks.TASKS.items()} == HUB_LABELS
  for name, task in tasks.TASKS.items():
    written = write_glue_task(tmp_path / name, name)
    split = data_lib.load_local(task, written['train_file'])
    np.testing.assert_allclose(split.labels, written['labels']['train'], rtol=1e-6)
    assert split.labels.dtype == (np.float32 if task.regression else np.int32)
    assert len(split.texts[0]) == len(task.text_columns) and all(split.texts[0])
    assert tuple(task.metrics) == tuple(OFFICIAL[name]), name


def test_the_evaluation_sets_of_mnli_and_the_advglue_sets():
  mnli = get_task('mnli')
  assert [s.name for s in mnli.eval_sets] == ['glue_dev', 'glue_dev_mismatched', 'adv_dev',
                                              'adv_dev_mismatched']
  assert mnli.eval_set('adv_dev_mismatched').adv_key == 'mnli-mm'
  assert mnli.eval_set('glue_dev_mismatched').hub == ('glue', 'mnli', 'validation_mismatched')
  advglue = {s.adv_key for t in tasks.TASKS.values() for s in t.eval_sets if s.adversarial}
  assert advglue == {'sst2', 'qqp', 'qnli', 'rte', 'mnli', 'mnli-mm'}  # AdvGLUE's six
  assert get_task('stsb').best_key == 'glue_dev_pearson' and get_task('stsb').num_labels == 1


@pytest.fixture(scope='module')
def glue_runs(files, tmp_path_factory):
  """One epoch of each GLUE task on tiny files in its release layout."""
  root = tmp_path_factory.mktemp('glue')
  runs = {}
  for name in tasks.TASKS:
    written = write_glue_task(root / 'data' / name, name)
    extra = {'eval_files': (f'glue_dev_mismatched={written["dev_file"]}',)} \
        if name == 'mnli' else {}
    config = loop.TrainConfig(
        task=name, method='vanilla', model=files['model'], train_file=written['train_file'],
        dev_file=written['dev_file'], no_adv=True, output_dir=str(root / 'runs' / name),
        epochs=1, batch_size=8, max_length=12, progress=False, parallel='none',
        learning_rate=1e-3, **extra)
    runs[name] = loop.run(config), written
  return root, runs


def test_each_glue_task_trains_to_its_official_metric(glue_runs):
  root, runs = glue_runs
  for name, (results, written) in runs.items():
    sets = ['glue_dev', 'glue_dev_mismatched'] if name == 'mnli' else ['glue_dev']
    for set_name in sets:
      lines = [json.loads(x) for x in
               (root / 'runs' / name / 'predictions' / f'epoch1-{set_name}.jsonl')
               .read_text().splitlines()]
      predictions = np.asarray([x['prediction'] for x in lines])
      labels = np.asarray([x['label'] for x in lines])
      np.testing.assert_allclose(labels, written['labels']['dev'], rtol=1e-6)
      for metric, official in OFFICIAL[name].items():
        want = official(labels, predictions)
        got = results[f'{set_name}_{metric}']
        assert (got is None and np.isnan(want)) or got == pytest.approx(want), (name, metric)
    assert results['best_epoch'] == 1 and results['finished']


def test_the_report_has_each_tasks_metrics(glue_runs, tmp_path):
  root, runs = glue_runs
  assert report_cli.main([str(root / 'runs'), '--output-dir', str(tmp_path)]) == 0
  header, row = [line.split(',') for line in (tmp_path / 'table.csv').read_text().splitlines()]
  assert header[2:-2] == [
      'SST2 GLUE', 'RTE GLUE', 'QNLI GLUE', 'QQP GLUE (accuracy/f1)', 'MNLI GLUE', 'MNLI GLUE-mm',
      'COLA GLUE', 'MRPC GLUE (accuracy/f1)', 'STSB GLUE (pearson/spearman)', 'WNLI GLUE']
  cells = dict(zip(header, row, strict=True))
  qqp = runs['qqp'][0]
  score = 100 * (qqp['glue_dev_accuracy'] + qqp['glue_dev_f1']) / 2
  assert cells['QQP GLUE (accuracy/f1)'] == (f'{score:.2f} ({100 * qqp["glue_dev_accuracy"]:.2f}'
                                             f'/{100 * qqp["glue_dev_f1"]:.2f})')
  assert cells['COLA GLUE'] == f'{100 * runs["cola"][0]["glue_dev_mcc"]:.2f}'


@pytest.mark.parametrize('values, labels', [
    (['spam', 'ham', 'spam'], ('ham', 'spam')),
    ([2, 10, 1, '2'], ('1', '2', '10')),  # numbers in numeric order
    (['0.5', '1.25', 3], (REGRESSION,)),
    (['0.0', '1.0'], (REGRESSION,)),  # floats are numbers: --labels makes them classes
])
def test_a_custom_task_reads_its_labels_from_the_training_file(values, labels):
  assert infer_labels(values) == labels


def test_a_custom_tasks_labels_are_its_names_or_refused():
  task = tasks.custom_task(text_columns=['text'], label_column='y', labels=['bad', 'good'],
                           metrics=None, eval_sets=['dev'])
  rows = [{'text': 'a', 'y': 'good'}, {'text': 'b', 'y': 0}, {'text': 'c', 'y': '1'}]
  assert data_lib.from_records(task, rows, 'f').labels.tolist() == [1, 0, 1]
  with pytest.raises(DataError, match=r"f, row 1: label 'mixed' is not among the task's labels "
                                      r"\['bad', 'good'\]"):
    data_lib.from_records(task, [{'text': 'a', 'y': 'mixed'}], 'f')
  with pytest.raises(DataError, match=r'label 1.0 is not among .* It is a float: write class '
                                      r'indices as integers .* --labels regression'):
    data_lib.from_records(task, [{'text': 'a', 'y': 1.0}], 'f')
  numbered = tasks.custom_task(text_columns=['text'], label_column='y', labels=['1', '2', '3'],
                               metrics=None, eval_sets=['dev'])
  assert data_lib.from_records(numbered, [{'text': 'a', 'y': 1}], 'f').labels.tolist() == [0]
  with pytest.raises(DataError, match=r"label 0 is not among the task's labels \['1', '2'"):
    data_lib.from_records(numbered, [{'text': 'a', 'y': 0}], 'f')
  regression = tasks.custom_task(text_columns=['text'], label_column='y', labels=[REGRESSION],
                                 metrics=None, eval_sets=['dev'])
  assert regression.metrics == ('pearson', 'spearman') and regression.num_labels == 1
  with pytest.raises(DataError, match="label 'high' is not a number"):
    data_lib.from_records(regression, [{'text': 'a', 'y': 'high'}], 'f')
