"""rose_jax.glue.data on its own: label rules, column aliases, every file kind
read to the same rows, and AdvGLUE's dev.json."""

import json

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.glue import data as data_lib
from rose_jax.glue.data import Split, from_records
from rose_jax.glue.tasks import DataError, get_task

SST2, MNLI, QQP = (get_task(name) for name in ('sst2', 'mnli', 'qqp'))


@hypothesis.given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(['index', 'name', 'float',
                                                                         'string'])),
                           min_size=1, max_size=20))
def test_labels_as_indices_names_or_whole_numbers_give_the_same_class(rows):
  def written(label, kind):
    return {'index': label, 'name': MNLI.label_names[label], 'float': float(label),
            'string': f' {label}.0 '}[kind]

  records = [{'premise': 'p', 'hypothesis': 'h', 'label': written(y, kind)} for y, kind in rows]
  split = from_records(MNLI, records, 'rows')
  np.testing.assert_array_equal(split.labels, [y for y, _ in rows])
  assert split.labels.dtype == np.int32 and split.texts == [('p', 'h')] * len(rows)


@pytest.mark.parametrize('label, match', [
    (2, 'outside the sst2 label range 0..1'), (-1, 'outside the sst2 label range'),
    (0.5, 'not a whole number'), ('maybe', "label 'maybe' is not in the sst2 label set"),
    (True, 'not a class index'), (None, 'the label is missing'), ([1], 'not a class index'),
])
def test_a_bad_label_names_its_row(label, match):
  records = [{'sentence': 'fine', 'label': 1}, {'sentence': 'bad', 'label': label}]
  with pytest.raises(DataError, match=match) as error:
    from_records(SST2, records, 'train.jsonl', ['line 2', 'line 3'])
  assert str(error.value).startswith('train.jsonl, line 3:')


def test_columns_missing_empty_splits_and_aliases():
  with pytest.raises(DataError, match=r"lacks the column\(s\) \['label'\]"):
    from_records(SST2, [{'sentence': 'a'}], 'x')
  with pytest.raises(DataError, match='x is empty'):
    from_records(SST2, [], 'x')
  with pytest.raises(DataError, match=r"row 2: the field\(s\) \['sentence'\] are missing"):
    from_records(SST2, [{'sentence': 'a', 'label': 0}, {'sentence': None, 'label': 0}], 'x')
  # GLUE's MNLI and QQP releases name their columns otherwise.
  mnli = from_records(MNLI, [{'sentence1': 'p', 'sentence2': 'h', 'gold_label': 'neutral'}], 'x')
  assert mnli.texts == [('p', 'h')] and mnli.labels.tolist() == [1]
  qqp = from_records(QQP, [{'question1': 'a', 'question2': 'b', 'is_duplicate': '1'}], 'x')
  assert qqp.labels.tolist() == [1]


def test_every_file_kind_reads_to_the_same_split(tmp_path):
  rows = [{'sentence': 'a "quoted, odd" film', 'label': 1}, {'sentence': "it's bad", 'label': 0}]
  (tmp_path / 'a.tsv').write_text('sentence\tlabel\n'
                                  + ''.join(f'{r["sentence"]}\t{r["label"]}\n' for r in rows))
  with (tmp_path / 'a.csv').open('w', newline='') as f:
    import csv
    writer = csv.DictWriter(f, ['sentence', 'label'])
    writer.writeheader()
    writer.writerows(rows)
  (tmp_path / 'a.jsonl').write_text(''.join(json.dumps(r) + '\n\n' for r in rows))
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / 'a.parquet')
  for suffix in ('tsv', 'csv', 'jsonl', 'parquet'):
    split = data_lib.load_local(SST2, tmp_path / f'a.{suffix}')
    assert split.texts == [(r['sentence'],) for r in rows], suffix
    assert split.labels.tolist() == [1, 0], suffix


def test_file_errors_name_the_file_and_the_line(tmp_path):
  (tmp_path / 'ragged.tsv').write_text('sentence\tlabel\na\t1\n\nb\t0\tx\n')
  with pytest.raises(DataError, match=r'ragged.tsv, line 4: 3 fields, but the header has 2'):
    data_lib.read_table(tmp_path / 'ragged.tsv')
  with pytest.raises(DataError, match='does not exist'):
    data_lib.read_table(tmp_path / 'none.tsv')
  with pytest.raises(DataError, match='is not a file'):
    data_lib.read_table(tmp_path)
  (tmp_path / 'empty.tsv').write_text('')
  assert data_lib.read_table(tmp_path / 'empty.tsv') == ([], [])


def test_adv_glue_records_by_task(tmp_path):
  path = tmp_path / 'dev.json'
  path.write_text(json.dumps({'sst2': [{'idx': 0, 'sentence': 'a', 'label': 1}],
                              'mnli': [{'premise': 'p', 'hypothesis': 'h', 'label': 2}]}))
  assert data_lib.load_adv_glue_file(MNLI, path).labels.tolist() == [2]
  with pytest.raises(DataError, match=r"no 'qqp' entry \(found \['mnli', 'sst2'\]\)"):
    data_lib.load_adv_glue_file(QQP, path)
  path.write_text(json.dumps({'sst2': [{'idx': 0, 'sentence': 'a', 'label': 5}]}))
  with pytest.raises(DataError, match=r"dev.json\['sst2'\], record 1: label 5 is outside"):
    data_lib.load_adv_glue_file(SST2, path)


def test_tasks_and_take():
  assert get_task('SST-2') is SST2 and MNLI.num_labels == 3
  with pytest.raises(DataError, match=r"Unknown task 'boolq'; choose one of .*or 'custom'"):
    get_task('boolq')
  split = Split([('a',), ('b',), ('c',)], np.array([0, 1, 0], np.int32))
  assert split.take(None) is split and split.take(5) is split
  taken = split.take(2)
  assert taken.texts == [('a',), ('b',)] and taken.labels.tolist() == [0, 1] and len(taken) == 2
