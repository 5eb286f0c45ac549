"""GLUE and AdvGLUE data: tasks, loading and validation.

Sources: the dataset hub (``glue`` / ``adv_glue`` through ``datasets``), or
local files: GLUE TSV as released, CSV, JSON lines, parquet, and AdvGLUE's
``dev.json`` (an object keyed by task). Every split is checked before any
training starts: the task's columns must be there, labels must belong to the
task's label set and a split must not be empty.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
  """A GLUE classification task."""
  name: str
  text_columns: tuple[str, ...]
  label_names: tuple[str, ...]
  hub_validation_split: str = 'validation'
  adv_key: str | None = None  # key in AdvGLUE's dev.json and the hub config suffix
  # Other names for columns in the GLUE release TSVs.
  tsv_aliases: tuple[tuple[str, str], ...] = ()

  @property
  def num_labels(self) -> int:
    return len(self.label_names)


TASKS = {
    'sst2': Task('sst2', ('sentence',), ('negative', 'positive'), adv_key='sst2'),
    'rte': Task('rte', ('sentence1', 'sentence2'), ('entailment', 'not_entailment'),
                adv_key='rte'),
    'qnli': Task('qnli', ('question', 'sentence'), ('entailment', 'not_entailment'),
                 adv_key='qnli'),
    'qqp': Task('qqp', ('question1', 'question2'), ('not_duplicate', 'duplicate'),
                adv_key='qqp', tsv_aliases=(('is_duplicate', 'label'),)),
    'mnli': Task('mnli', ('premise', 'hypothesis'), ('entailment', 'neutral', 'contradiction'),
                 hub_validation_split='validation_matched', adv_key='mnli',
                 tsv_aliases=(('sentence1', 'premise'), ('sentence2', 'hypothesis'),
                              ('gold_label', 'label'))),
}


class DataError(ValueError):
  """Data that cannot be used for the task, with what to do about it."""


def get_task(name: str) -> Task:
  key = name.lower().replace('-', '')
  if key not in TASKS:
    raise DataError(f'Unknown task {name!r}; choose one of {sorted(TASKS)}.')
  return TASKS[key]


@dataclasses.dataclass
class Split:
  """Texts and integer labels of one split."""
  texts: list[tuple[str, ...]]
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, n: int | None) -> Split:
    if n is None or n >= len(self):
      return self
    return Split(self.texts[:n], self.labels[:n])


def _label_to_int(task: Task, value, where: str) -> int:
  if value is None:
    raise DataError(f'{where}: the label is missing.')
  if isinstance(value, str):
    text = value.strip()
    if text in task.label_names:
      return task.label_names.index(text)
    try:
      value = float(text)
    except ValueError:
      raise DataError(f'{where}: label {text!r} is not in the {task.name} label set '
                      f'{task.label_names} (or their indices).') from None
  if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
    raise DataError(f'{where}: label {value!r} is not a class index or name of {task.name}.')
  if not float(value).is_integer():
    raise DataError(f'{where}: label {value!r} is not a whole number; {task.name} labels are '
                    f'class indices 0..{task.num_labels - 1} (or the names {task.label_names}).')
  value = int(value)
  if not 0 <= value < task.num_labels:
    raise DataError(f'{where}: label {value} is outside the {task.name} label range '
                    f'0..{task.num_labels - 1}.')
  return value


def from_records(task: Task, records: Sequence[dict], where: str,
                 locations: Sequence[str] | None = None) -> Split:
  """A validated :class:`Split` from dict rows.

  ``locations`` names each row in messages (a file's line numbers, say);
  by default ``row i``, counting from 1.
  """
  if not records:
    raise DataError(f'{where} is empty: a split needs at least one example.')
  locations = locations or [f'row {i + 1}' for i in range(len(records))]
  aliases = dict(task.tsv_aliases)
  if not isinstance(records[0], dict):
    raise DataError(f'{where}, {locations[0]}: expected a record with named fields, got '
                    f'{type(records[0]).__name__}.')
  columns = {aliases.get(k, k) for k in records[0]}
  missing = [c for c in (*task.text_columns, 'label') if c not in columns]
  if missing:
    raise DataError(f'{where} lacks the column(s) {missing} that {task.name} needs '
                    f'(it has {sorted(columns)}).')
  texts, labels = [], []
  for row, location in zip(records, locations, strict=True):
    at = f'{where}, {location}'
    if not isinstance(row, dict):
      raise DataError(f'{at}: expected a record with named fields, got {type(row).__name__}.')
    row = {aliases.get(k, k): v for k, v in row.items()}
    absent = [c for c in task.text_columns if row.get(c) is None]
    if absent:
      raise DataError(f'{at}: the field(s) {absent} are missing.')
    texts.append(tuple(str(row[c]) for c in task.text_columns))
    labels.append(_label_to_int(task, row.get('label'), at))
  return Split(texts, np.asarray(labels, np.int32))


def _read_delimited(path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
  # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part
  # of the first column's name.
  with path.open(newline='', encoding='utf-8-sig') as f:
    # GLUE's TSVs contain unbalanced quotes: read them verbatim.
    reader = csv.reader(f, delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if delimiter == '\t' else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if header is None:
      return [], []
    rows, locations = [], []
    for fields in reader:
      if not fields:
        continue  # a blank line
      if len(fields) != len(header):
        raise DataError(
            f'{path}, line {reader.line_num}: {len(fields)} fields, but the header has '
            f'{len(header)} ({", ".join(header)}); check for a stray or missing '
            f'{"tab" if delimiter == chr(9) else "comma"}.')
      rows.append(dict(zip(header, fields, strict=True)))
      locations.append(f'line {reader.line_num}')
  return rows, locations


def _read_json_lines(path: Path) -> tuple[list[dict], list[str]]:
  rows, locations = [], []
  with path.open(encoding='utf-8-sig') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as error:
        raise DataError(f'{path}, line {number}: not JSON ({error.msg}); a JSON lines file '
                        'holds one JSON object per line.') from None
      locations.append(f'line {number}')
  return rows, locations


def read_table(path: str | Path) -> tuple[list[dict], list[str]]:
  """Rows of a TSV, CSV, JSON lines or parquet file, and where each row is."""
  path = Path(path)
  if not path.exists():
    raise DataError(f'{path} does not exist.')
  if not path.is_file():
    raise DataError(f'{path} is not a file.')
  suffix = path.suffix.lower()
  try:
    if suffix in ('.tsv', '.csv'):
      return _read_delimited(path, '\t' if suffix == '.tsv' else ',')
    if suffix in ('.jsonl', '.json'):
      return _read_json_lines(path)
    if suffix == '.parquet':
      import pyarrow.parquet  # datasets' own reader, without its error logging
      try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
      except Exception as error:  # pyarrow raises several kinds for a bad file
        raise DataError(f'{path} is not a readable parquet file ({type(error).__name__}: '
                        f'{str(error)[:200]}).') from None
      return rows, [f'row {i + 1}' for i in range(len(rows))]
  except UnicodeDecodeError as error:
    raise DataError(f'{path} is not UTF-8 text (byte {error.start}); is it the right '
                    'file?') from None
  except csv.Error as error:
    raise DataError(f'{path}: {error}.') from None
  raise DataError(f'{path}: unknown file type {suffix!r}; use .tsv, .csv, .jsonl or .parquet.')


def load_local(task: Task, path: str | Path) -> Split:
  rows, locations = read_table(path)
  return from_records(task, rows, str(path), locations)


def load_adv_glue_file(task: Task, path: str | Path) -> Split:
  """The task's records from AdvGLUE's ``dev.json``."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{path} does not exist or is not a file.')
  try:
    data = json.loads(path.read_text(encoding='utf-8-sig'))
  except UnicodeDecodeError as error:
    raise DataError(f'{path} is not UTF-8 text (byte {error.start}).') from None
  except json.JSONDecodeError as error:
    raise DataError(f'{path}, line {error.lineno}: not JSON ({error.msg}); AdvGLUE\'s '
                    'dev.json is one JSON object keyed by task.') from None
  if not isinstance(data, dict) or task.adv_key not in data:
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise DataError(f'{path} has no {task.adv_key!r} entry (found {keys}); AdvGLUE\'s '
                    'dev.json is an object keyed by task.')
  records = data[task.adv_key]
  if not isinstance(records, list):
    raise DataError(f'{path}[{task.adv_key!r}] is a {type(records).__name__}; expected a '
                    'list of records.')
  return from_records(task, records, f'{path}[{task.adv_key!r}]',
                      [f'record {i + 1}' for i in range(len(records))])


def load_hub(task: Task, split: str, adversarial: bool = False) -> Split:
  """A split from the dataset hub (``glue`` or ``adv_glue``)."""
  import datasets
  name, config = ('adv_glue', f'adv_{task.adv_key}') if adversarial else ('glue', task.name)
  try:
    dataset = datasets.load_dataset(name, config, split=split)
  except Exception as error:
    raise DataError(
        f'Could not load {name}/{config} ({split}) from the dataset hub '
        f'({type(error).__name__}: {error}). Without network, give local files: '
        '--train-file and --dev-file (GLUE TSV, CSV, JSON lines or parquet) and '
        '--adv-file (AdvGLUE dev.json).') from None
  return from_records(task, dataset.to_list(), f'{name}/{config} {split}')
