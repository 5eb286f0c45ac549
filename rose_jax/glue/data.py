"""Reading a task's data: local files and the dataset hub, checked row by row.

Sources: the dataset hub (through ``datasets``), or local files: GLUE TSV as
released, CSV, JSON lines, parquet, and AdvGLUE's ``dev.json`` (an object
keyed by task). Every split is checked before any training starts: the
task's columns must be there, labels must belong to the task
(:mod:`rose_jax.glue.tasks`) and a split must not be empty.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rose_jax.glue.tasks import REGRESSION, DataError, EvalSet, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
  """Texts and labels of one split: class indices (int32) or targets
  (float32), and each row's group where the task has them (MSGS's condition)."""
  texts: list[tuple[str, ...]]
  labels: np.ndarray
  groups: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, n: int | None) -> Split:
    if n is None or n >= len(self):
      return self
    return self.rows(np.arange(n))

  def rows(self, index: np.ndarray) -> Split:
    """The rows ``index``, in that order."""
    return Split([self.texts[i] for i in index], self.labels[index],
                 None if self.groups is None else self.groups[index])

  @staticmethod
  def concatenate(first: Split, second: Split) -> Split:
    groups = None if first.groups is None else np.concatenate([first.groups, second.groups])
    return Split(first.texts + second.texts, np.concatenate([first.labels, second.labels]),
                 groups)


def _number(value, where: str, task: Task) -> float:
  if isinstance(value, str):
    try:
      return float(value.strip())
    except ValueError:
      raise DataError(f'{where}: label {value.strip()!r} is not a number; {task.name} is a '
                      'regression task.') from None
  if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
    raise DataError(f'{where}: label {value!r} is not a number; {task.name} is a regression '
                    'task.')
  return float(value)


def label_value(task: Task, value, where: str) -> int | float:
  """A row's label as the task's class index, or its target for regression;
  DataError naming the row otherwise."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    raise DataError(f'{where}: the label is missing.')
  if task.regression:
    number = _number(value, where, task)
    if not math.isfinite(number):
      raise DataError(f'{where}: label {value!r} is not a finite number.')
    return number
  names = task.label_names
  text = str(value).strip() if isinstance(value, str | int | np.integer) else None
  if text in names and not isinstance(value, bool):  # a name, also one written as a number
    return names.index(text)
  if task.strict_labels and (text is None or any(_is_integer(n) for n in names)
                             or not _is_integer(text)):
    float_hint = (' It is a float: write class indices as integers or give the names; for a '
                  f'numeric target pass --labels {REGRESSION}.' if _is_number(value) else '')
    raise DataError(f'{where}: label {value!r} is not among the task\'s labels {list(names)} '
                    '(from --labels, or read from the training file).' + float_hint)
  if isinstance(value, str):
    try:
      value = int(text) if _is_integer(text) else float(text)
    except ValueError:
      raise DataError(f'{where}: label {text!r} is not in the {task.name} label set '
                      f'{names} (or their indices).') from None
  if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
    raise DataError(f'{where}: label {value!r} is not a class index or name of {task.name}.')
  if not float(value).is_integer():
    raise DataError(f'{where}: label {value!r} is not a whole number; {task.name} labels are '
                    f'class indices 0..{task.num_labels - 1} (or the names {names}).')
  value = int(value)
  if not 0 <= value < task.num_labels:
    raise DataError(f'{where}: label {value} is outside the {task.name} label range '
                    f'0..{task.num_labels - 1}.')
  return value


def _is_integer(text: str) -> bool:
  return text.lstrip('+-').isdigit()


def _is_number(value) -> bool:
  if isinstance(value, bool):
    return False
  try:
    float(value)
  except (TypeError, ValueError):
    return False
  return True


def from_records(task: Task, records: Sequence[dict], where: str,
                 locations: Sequence[str] | None = None) -> Split:
  """A validated :class:`Split` from dict rows.

  ``locations`` names each row in messages (a file's line numbers, say);
  by default ``row i``, counting from 1.
  """
  if not records:
    raise DataError(f'{where} is empty: a split needs at least one example.')
  locations = locations or [f'row {i + 1}' for i in range(len(records))]
  aliases = dict(task.aliases)
  if not isinstance(records[0], dict):
    raise DataError(f'{where}, {locations[0]}: expected a record with named fields, got '
                    f'{type(records[0]).__name__}.')
  columns = {aliases.get(k, k) for k in records[0]}
  needed = (*task.text_columns, task.label_column, *filter(None, [task.group_column]))
  missing = [c for c in needed if c not in columns]
  if missing:
    hint = (' Name them with --text-columns and --label-column.' if task.strict_labels
            else '')
    raise DataError(f'{where} lacks the column(s) {missing} that {task.name} needs '
                    f'(it has {sorted(columns)}).{hint}')
  texts, labels, groups = [], [], []
  for row, location in zip(records, locations, strict=True):
    at = f'{where}, {location}'
    if not isinstance(row, dict):
      raise DataError(f'{at}: expected a record with named fields, got {type(row).__name__}.')
    row = {aliases.get(k, k): v for k, v in row.items()}
    absent = [c for c in task.text_columns if row.get(c) is None]
    if absent:
      raise DataError(f'{at}: the field(s) {absent} are missing.')
    texts.append(tuple(str(row[c]) for c in task.text_columns))
    labels.append(label_value(task, row.get(task.label_column), at))
    if task.group_column:
      group = row.get(task.group_column)
      if group is None:
        raise DataError(f'{at}: the field {task.group_column!r} is missing.')
      groups.append(str(group))
  empty = sum(not any(t.strip() for t in text) for text in texts)
  if empty == len(texts):
    raise DataError(f'{where}: every example\'s text is empty (columns '
                    f'{list(task.text_columns)}); is it the right file, or are the text columns '
                    'others?')
  if empty:
    log.warning('%s: %d of %d examples have no text; they train on their special tokens '
                'alone.', where, empty, len(texts))
  dtype = np.float32 if task.regression else np.int32
  return Split(texts, np.asarray(labels, dtype),
               np.asarray(groups, object) if task.group_column else None)


def _read_delimited(path: Path, delimiter: str,
                    headerless: Sequence[str] | None) -> tuple[list[dict], list[str]]:
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
    if headerless is not None and len(header) == len(headerless) and \
        not set(header) & set(headerless):  # a data row: CoLA's release has no header
      rows.append(dict(zip(headerless, header, strict=True)))
      locations.append(f'line {reader.line_num}')
      header = list(headerless)
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


def read_table(path: str | Path,
               headerless: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
  """Rows of a TSV, CSV, JSON lines or parquet file, and where each row is.

  ``headerless`` names the columns of a TSV or CSV whose first line is a row
  of data (none of its fields is one of these names), as CoLA's release."""
  path = Path(path)
  if not path.exists():
    raise DataError(f'{path} does not exist.')
  if not path.is_file():
    raise DataError(f'{path} is not a file.')
  suffix = path.suffix.lower()
  try:
    if suffix in ('.tsv', '.csv'):
      return _read_delimited(path, '\t' if suffix == '.tsv' else ',', headerless)
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
  rows, locations = read_table(path, task.headerless)
  return from_records(task, rows, str(path), locations)


def load_adv_glue_file(task: Task, path: str | Path, eval_set: EvalSet | None = None) -> Split:
  """An AdvGLUE set's records from ``dev.json`` (by default the task's first)."""
  eval_set = eval_set or next(s for s in task.eval_sets if s.adversarial)
  key = eval_set.adv_key
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
  if not isinstance(data, dict) or key not in data:
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise DataError(f'{path} has no {key!r} entry (found {keys}); AdvGLUE\'s '
                    'dev.json is an object keyed by task.')
  records = data[key]
  if not isinstance(records, list):
    raise DataError(f'{path}[{key!r}] is a {type(records).__name__}; expected a '
                    'list of records.')
  return from_records(task, records, f'{path}[{key!r}]',
                      [f'record {i + 1}' for i in range(len(records))])


def load_hub(task: Task, source: tuple[str, str, str]) -> Split:
  """A split from the dataset hub: ``(dataset, config, split)``."""
  import datasets
  name, config, split = source
  try:
    dataset = datasets.load_dataset(name, config, split=split)
  except Exception as error:
    raise DataError(
        f'Could not load {name}/{config} ({split}) from the dataset hub '
        f'({type(error).__name__}: {error}). Without network, give local files: '
        '--train-file, --dev-file or --eval-file NAME=FILE (TSV, CSV, JSON lines or parquet) '
        'and --adv-file (AdvGLUE dev.json).') from None
  return from_records(task, dataset.to_list(), f'{name}/{config} {split}')


def label_values(path: str | Path, column: str, headerless: Sequence[str] | None = None
                 ) -> list:
  """The values of ``column`` in a file, in row order (for a task that reads
  its labels from its training file); DataError if there is no such column."""
  rows, _ = read_table(path, headerless)
  if not rows:
    raise DataError(f'{path} is empty: a split needs at least one example.')
  if not isinstance(rows[0], dict) or column not in rows[0]:
    found = sorted(rows[0]) if isinstance(rows[0], dict) else type(rows[0]).__name__
    raise DataError(f'{path} has no label column {column!r} (its columns: {found}); name it '
                    'with --label-column.')
  return [row.get(column) for row in rows]
