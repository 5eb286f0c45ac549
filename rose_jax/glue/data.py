"""GLUE and AdvGLUE data: loading, validation, tokenisation and batching.

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
from collections.abc import Iterator, Sequence
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
  if isinstance(value, str):
    text = value.strip()
    if text in task.label_names:
      return task.label_names.index(text)
    try:
      value = int(text)
    except ValueError:
      raise DataError(f'{where}: label {value!r} is not in the {task.name} label set '
                      f'{task.label_names} (or their indices).') from None
  value = int(value)
  if not 0 <= value < task.num_labels:
    raise DataError(f'{where}: label {value} is outside the {task.name} label range '
                    f'0..{task.num_labels - 1}.')
  return value


def from_records(task: Task, records: Sequence[dict], where: str) -> Split:
  """A validated :class:`Split` from dict rows."""
  if not records:
    raise DataError(f'{where} is empty: a split needs at least one example.')
  aliases = dict(task.tsv_aliases)
  columns = {aliases.get(k, k) for k in records[0]}
  missing = [c for c in (*task.text_columns, 'label') if c not in columns]
  if missing:
    raise DataError(f'{where} lacks the column(s) {missing} that {task.name} needs '
                    f'(it has {sorted(columns)}).')
  texts, labels = [], []
  for i, row in enumerate(records):
    row = {aliases.get(k, k): v for k, v in row.items()}
    texts.append(tuple(str(row[c]) for c in task.text_columns))
    labels.append(_label_to_int(task, row['label'], f'{where}, row {i}'))
  return Split(texts, np.asarray(labels, np.int32))


def read_table(path: str | Path) -> list[dict]:
  """Rows of a TSV, CSV, JSON lines or parquet file."""
  path = Path(path)
  if not path.exists():
    raise DataError(f'{path} does not exist.')
  suffix = path.suffix.lower()
  if suffix in ('.tsv', '.csv'):
    with path.open(newline='', encoding='utf-8') as f:
      # GLUE's TSVs contain unbalanced quotes: read them verbatim.
      reader = csv.DictReader(f, delimiter='\t' if suffix == '.tsv' else ',',
                              quoting=csv.QUOTE_NONE if suffix == '.tsv' else csv.QUOTE_MINIMAL)
      return list(reader)
  if suffix in ('.jsonl', '.json'):
    with path.open(encoding='utf-8') as f:
      return [json.loads(line) for line in f if line.strip()]
  if suffix == '.parquet':
    import datasets
    return datasets.Dataset.from_parquet(str(path)).to_list()
  raise DataError(f'{path}: unknown file type {suffix!r}; use .tsv, .csv, .jsonl or .parquet.')


def load_local(task: Task, path: str | Path) -> Split:
  return from_records(task, read_table(path), str(path))


def load_adv_glue_file(task: Task, path: str | Path) -> Split:
  """The task's records from AdvGLUE's ``dev.json``."""
  path = Path(path)
  if not path.exists():
    raise DataError(f'{path} does not exist.')
  data = json.loads(path.read_text(encoding='utf-8'))
  if not isinstance(data, dict) or task.adv_key not in data:
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise DataError(f'{path} has no {task.adv_key!r} entry (found {keys}); AdvGLUE\'s '
                    'dev.json is an object keyed by task.')
  return from_records(task, data[task.adv_key], f'{path}[{task.adv_key!r}]')


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


def tokenize(tokenizer, split: Split, max_length: int) -> dict[str, np.ndarray]:
  """Fixed-length arrays (one compiled step for all batches)."""
  columns = list(zip(*split.texts, strict=True))
  encoded = tokenizer(*columns, truncation=True, max_length=max_length,
                      padding='max_length', return_tensors='np')
  arrays = {'input_ids': encoded['input_ids'].astype(np.int32),
            'attention_mask': encoded['attention_mask'].astype(np.int32),
            'labels': split.labels}
  if 'token_type_ids' in encoded:
    arrays['token_type_ids'] = encoded['token_type_ids'].astype(np.int32)
  return arrays


def epoch_order(num_examples: int, data_seed: int, epoch: int) -> np.ndarray:
  """The shuffled order of an epoch: a function of (data seed, epoch) alone,
  so a resumed run sees the same batches as an uninterrupted one.
  ``data_seed`` is the run's ``data`` stream (:mod:`rose_jax.glue.seeds`)."""
  return np.random.default_rng([data_seed, epoch]).permutation(num_examples)


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches in an epoch (the last partial batch is dropped)."""
  return num_examples // batch_size


def process_rows(rows: np.ndarray, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's contiguous share of a global batch's row indices."""
  if len(rows) % process_count:
    raise ValueError(f'The batch of {len(rows)} does not divide over {process_count} '
                     'processes; use a batch size that is a multiple of the process count.')
  share = len(rows) // process_count
  return rows[process_index * share:(process_index + 1) * share]


def train_batches(arrays: dict[str, np.ndarray], batch_size: int, data_seed: int, epoch: int,
                  *, start: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled full batches from batch ``start`` of the epoch on.

  Each process gathers only its own rows of every global batch.
  """
  order = epoch_order(len(arrays['labels']), data_seed, epoch)
  for index in range(start, batches_per_epoch(len(order), batch_size)):
    rows = process_rows(order[index * batch_size:(index + 1) * batch_size], process_index,
                        process_count)
    yield {k: v[rows] for k, v in arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, *, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """In-order global batches padded to ``batch_size`` (this process's share of
  each), with the count of real rows in the global batch."""
  n = len(arrays['labels'])
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    real = int(np.sum(rows < n))
    rows = process_rows(np.minimum(rows, n - 1), process_index, process_count)
    yield {k: v[rows] for k, v in arrays.items()}, real
