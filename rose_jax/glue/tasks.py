"""Tasks as data: the nine GLUE tasks, AdvGLUE's sets, and tasks of one's own.

A :class:`Task` says which columns hold the text, what the labels are (class
names, or a number for regression), which metrics score it (the first picks
the best epoch, on the first evaluation set) and which evaluation sets it
has, each by name. A run's results are keyed ``{set}_{metric}``:
``glue_dev_accuracy``, ``adv_dev_accuracy``, ``glue_dev_mcc``, ``dev_f1``.

Labels in a file may be a class's name or its index; GLUE's release files
write some as whole floats (``1.0``), which GLUE tasks accept. A task of
one's own (:func:`custom_task`) takes the class names it is given, or reads
them from its training file (:func:`infer_labels`), and refuses any other
label, floats among them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rose_jax.glue import metrics as metrics_lib

REGRESSION = 'regression'  # the --labels value of a task with a numeric target


class DataError(ValueError):
  """Data that cannot be used for the task, with what to do about it."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation set of a task.

  Attributes:
    name: its name in the results (``glue_dev``, ``adv_dev``, ``dev``...).
    hub: ``(dataset, config, split)`` on the dataset hub, or None when only a
      file (``--eval-file NAME=PATH``) provides it.
    adv_key: its entry in AdvGLUE's ``dev.json`` (``--adv-file``), for the
      AdvGLUE sets.
  """
  name: str
  hub: tuple[str, str, str] | None = None
  adv_key: str | None = None

  @property
  def adversarial(self) -> bool:
    return self.adv_key is not None


@dataclasses.dataclass(frozen=True)
class Task:
  """A text classification or regression task.

  Attributes:
    name: the task's name (``--task``).
    text_columns: the one or two columns that hold the text.
    label_names: the classes in index order, or None for regression.
    metrics: the metrics, each from :data:`rose_jax.glue.metrics.METRICS`;
      the first picks the best epoch.
    eval_sets: the evaluation sets; the first picks the best epoch.
    label_column: the column that holds the label.
    aliases: other names of columns in the task's release files.
    headerless: a release TSV without a header row (CoLA's) has these columns.
    hub_train: ``(dataset, config, split)`` of the training set on the hub.
    strict_labels: a label must be one of ``label_names`` or, where no name is
      a number, an integer index; GLUE's files may also write an index as a
      whole float (``1.0``), which a strict task refuses.
    group_column: a column that splits each evaluation set into groups
      scored apart (MSGS's ``condition``); its rows are then scored per group
      only, as the sets ``{set}_{group}``.
    groups: the groups scored, in order (the first must be in every set).
    select_group: the group whose first metric picks the best epoch.
  """
  name: str
  text_columns: tuple[str, ...]
  label_names: tuple[str, ...] | None
  metrics: tuple[str, ...]
  eval_sets: tuple[EvalSet, ...]
  label_column: str = 'label'
  aliases: tuple[tuple[str, str], ...] = ()
  headerless: tuple[str, ...] | None = None
  hub_train: tuple[str, str, str] | None = None
  strict_labels: bool = False
  group_column: str | None = None
  groups: tuple[str, ...] = ()
  select_group: str | None = None

  def __post_init__(self):
    metrics_lib.check(self.metrics, regression=self.regression)
    names = [s.name for s in self.eval_sets]
    if len(set(names)) < len(names):
      raise ValueError(f'{self.name}: evaluation sets named twice in {names}.')
    if not 1 <= len(self.text_columns) <= 2:
      raise ValueError(f'{self.name}: one or two text columns, got {list(self.text_columns)}.')

  @property
  def regression(self) -> bool:
    return self.label_names is None

  @property
  def num_labels(self) -> int:
    """The model's outputs: one per class, or one number."""
    return 1 if self.regression else len(self.label_names)

  @property
  def objective(self) -> str:
    """The train step's objective (:mod:`rose_jax.training`)."""
    return 'regression' if self.regression else 'classification'

  @property
  def best_key(self) -> str:
    """The result that picks the best epoch: the first metric on the first set
    (on its ``select_group``, for a grouped task)."""
    first = self.eval_sets[0].name
    return f'{first}_{self.select_group}_{self.metrics[0]}' if self.select_group else \
        f'{first}_{self.metrics[0]}'

  def scored_sets(self, eval_set: str) -> list[str]:
    """The names an evaluation set's scores go under: the set, or for a
    grouped task each of its groups (``msgs_test``)."""
    return [f'{eval_set}_{g}' for g in self.groups] if self.group_column else [eval_set]

  def result_keys(self, sets: Sequence[str] | None = None) -> list[str]:
    """``{scored set}_{metric}`` for each metric of each set (default: every set)."""
    sets = [s.name for s in self.eval_sets] if sets is None else sets
    return [f'{scored}_{m}' for s in sets for scored in self.scored_sets(s)
            for m in self.metrics]

  def eval_set(self, name: str) -> EvalSet:
    for candidate in self.eval_sets:
      if candidate.name == name:
        return candidate
    raise KeyError(name)

  def with_metrics(self, names: Sequence[str] | None) -> Task:
    return self if not names else dataclasses.replace(self, metrics=tuple(names))


def _glue(name, text_columns, label_names, metrics, *, adv=(), validation='validation',
          mismatched=False, **fields) -> Task:
  sets = [EvalSet('glue_dev', ('glue', name, validation))]
  if mismatched:
    sets.append(EvalSet('glue_dev_mismatched', ('glue', name, 'validation_mismatched')))
  for set_name, key, config in adv:
    sets.append(EvalSet(set_name, ('adv_glue', config, 'validation'), adv_key=key))
  return Task(name, text_columns, label_names, metrics, tuple(sets),
              hub_train=('glue', name, 'train'), **fields)


_PAIR = ('sentence1', 'sentence2')
_NLI = ('entailment', 'not_entailment')

TASKS = {task.name: task for task in (
    _glue('cola', ('sentence',), ('unacceptable', 'acceptable'), ('mcc',),
          headerless=('source', 'label', 'author_label', 'sentence')),
    _glue('sst2', ('sentence',), ('negative', 'positive'), ('accuracy',),
          adv=[('adv_dev', 'sst2', 'adv_sst2')]),
    _glue('mrpc', _PAIR, ('not_equivalent', 'equivalent'), ('accuracy', 'f1'),
          aliases=(('Quality', 'label'), ('#1 String', 'sentence1'),
                   ('#2 String', 'sentence2'))),
    _glue('stsb', _PAIR, None, ('pearson', 'spearman'), aliases=(('score', 'label'),)),
    _glue('qqp', ('question1', 'question2'), ('not_duplicate', 'duplicate'), ('accuracy', 'f1'),
          adv=[('adv_dev', 'qqp', 'adv_qqp')], aliases=(('is_duplicate', 'label'),)),
    _glue('mnli', ('premise', 'hypothesis'), ('entailment', 'neutral', 'contradiction'),
          ('accuracy',), validation='validation_matched', mismatched=True,
          adv=[('adv_dev', 'mnli', 'adv_mnli'),
               ('adv_dev_mismatched', 'mnli-mm', 'adv_mnli_mismatched')],
          aliases=(('sentence1', 'premise'), ('sentence2', 'hypothesis'),
                   ('gold_label', 'label'))),
    _glue('qnli', ('question', 'sentence'), _NLI, ('accuracy',),
          adv=[('adv_dev', 'qnli', 'adv_qnli')]),
    _glue('rte', _PAIR, _NLI, ('accuracy',), adv=[('adv_dev', 'rte', 'adv_rte')]),
    _glue('wnli', _PAIR, ('not_entailment', 'entailment'), ('accuracy',)),
)}
GLUE_ORDER = tuple(TASKS)
CUSTOM = 'custom'
MSGS = 'msgs'
# MSGS's conditions: disambiguating rows (where the linguistic and the surface
# feature disagree), rows like the training rows, and control rows.
MSGS_CONDITIONS = ('test', 'training', 'control')


def get_task(name: str) -> Task:
  """A GLUE task by name (``SST-2`` and ``sst2`` alike)."""
  key = name.lower().replace('-', '')
  if key not in TASKS:
    raise DataError(f'Unknown task {name!r}; choose one of {sorted(TASKS)}, or '
                    f'{CUSTOM!r} with your own files.')
  return TASKS[key]


def custom_task(*, text_columns: Sequence[str], label_column: str,
                labels: Sequence[str] | None, metrics: Sequence[str] | None,
                eval_sets: Sequence[str]) -> Task:
  """A task of one's own: ``labels`` are the class names in index order, or
  ``("regression",)``; ``metrics`` default to accuracy (classes) or Pearson
  and Spearman (regression); each evaluation set comes from a file."""
  regression = tuple(labels or ()) == (REGRESSION,)
  label_names = None if regression else tuple(labels or ())
  default = ('pearson', 'spearman') if regression else ('accuracy',)
  return Task(CUSTOM, tuple(text_columns), label_names, tuple(metrics or default),
              tuple(EvalSet(name) for name in eval_sets), label_column=label_column,
              strict_labels=True)


def msgs_task(*, name: str, eval_sets: Sequence[str]) -> Task:
  """A probing task of MSGS (Warstadt et al., 2020): train on the ambiguous
  rows' linguistic label (``linguistic_feature_label``), score each
  evaluation set's conditions apart by Matthews correlation, and pick the
  best epoch by the ``training`` condition, which holds no disambiguating
  row: the ``test`` condition's score says which feature the model learnt
  (1: the linguistic one, -1: the surface one)."""
  return Task(name, ('sentence',), ('0', '1'), ('mcc',),
              tuple(EvalSet(n) for n in eval_sets), label_column='linguistic_feature_label',
              group_column='condition', groups=MSGS_CONDITIONS, select_group='training')


def infer_labels(values: Sequence) -> tuple[str, ...]:
  """The labels of a training file's label column: ``("regression",)`` when
  every value is a number and one is not a whole number written as one
  (``0.5``, ``1.0``), else the distinct values as class names, numbers in
  numeric order and names in alphabetical order (as Hugging Face's
  ``run_classification.py`` sorts them)."""
  texts = [str(v).strip() for v in values if v is not None and str(v).strip()]
  if not texts:
    raise DataError('The label column holds no labels.')

  def number(text: str) -> float | None:
    try:
      return float(text)
    except ValueError:
      return None

  numbers = [number(t) for t in texts]
  if all(n is not None for n in numbers):
    whole = all(t.lstrip('+-').isdigit() for t in texts)
    if not whole:
      return (REGRESSION,)
    return tuple(sorted(set(texts), key=int))
  return tuple(sorted(set(texts)))
