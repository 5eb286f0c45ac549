"""How a run's settings name its task: a GLUE task, or one of one's own
(``--task custom``) with its columns, labels, metrics and evaluation sets.

:func:`resolve` checks these settings and fills in what a custom task reads
from its training file (its labels), so that a run records them;
:func:`build_task` makes the :class:`rose_jax.glue.tasks.Task`, and
:func:`eval_sources` says where each evaluation set's data comes from.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING

from rose_jax.glue import data as data_lib
from rose_jax.glue import tasks as tasks_lib
from rose_jax.glue.options import ConfigError, flag
from rose_jax.glue.tasks import CUSTOM, MSGS, REGRESSION, EvalSet, Task

if TYPE_CHECKING:
  from rose_jax.glue.config import TrainConfig

log = logging.getLogger(__name__)

_SET_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_\-]*$')
_CUSTOM_ONLY = ('text_columns', 'label_column', 'labels')
_OWN_FILES = (CUSTOM, MSGS)  # tasks with no copy on the hub


def resolve(config: TrainConfig, *, training: bool = True) -> TrainConfig:
  """``config`` with the task's name in its one spelling and, for a custom
  task, its label column and labels filled in (read from the training file
  where not given); ConfigError for settings that do not fit the task.
  ``training=False`` (an evaluation) asks no training file of a custom task
  that names its labels."""
  if config.inoculation and config.task != MSGS:
    raise ConfigError(f'--inoculation mixes MSGS\'s disambiguating rows into training; it is '
                      f'for --task {MSGS}. Leave it out.')
  if config.task != CUSTOM:
    own = config.task if config.task == MSGS else tasks_lib.get_task(config.task).name
    for name in _CUSTOM_ONLY + (('task_name',) if own != MSGS else ()):
      if getattr(config, name) is not None:
        raise ConfigError(f'{flag(name)} describes a custom task (--task {CUSTOM}); '
                          f'{own} has its own. Leave it out.')
    out = dataclasses.replace(config, task=own)
    if own == MSGS:
      if not config.train_file:
        raise ConfigError(f'--task {MSGS} needs --train-file: an MSGS task folder\'s '
                          'train.jsonl, and --eval-file NAME=FILE its test.jsonl.')
      if config.adv_file or config.dev_file:
        raise ConfigError(f'--task {MSGS} takes its evaluation sets as --eval-file NAME=FILE '
                          '(test.jsonl), not --dev-file or --adv-file.')
      if config.task_name is None:
        out = dataclasses.replace(out, task_name=_msgs_name(config.train_file))
  else:
    needed = ('text_columns', 'train_file') if training or config.labels is None else \
        ('text_columns',)
    missing = [flag(n) for n in needed if getattr(config, n) is None]
    if missing:
      raise ConfigError(f'--task {CUSTOM} needs {" and ".join(missing)}: the column(s) that '
                        'hold the text, and the training file (its labels, unless --labels '
                        'names them).')
    if config.adv_file:
      raise ConfigError('--adv-file reads AdvGLUE, whose sets belong to GLUE tasks; give a '
                        "custom task's evaluation sets with --eval-file NAME=FILE.")
    out = dataclasses.replace(config, label_column=config.label_column or 'label')
    if out.labels is None:
      values = data_lib.label_values(out.train_file, out.label_column)
      out = dataclasses.replace(out, labels=tasks_lib.infer_labels(values))
      log.info('Labels read from %s: %s.', out.train_file, ', '.join(out.labels))
    if out.labels != (REGRESSION,) and len(out.labels) < 2:
      raise ConfigError(f'--labels {",".join(out.labels)}: a classification task needs at '
                        f'least two classes; for a numeric target give --labels {REGRESSION}.')
    if len(set(out.labels)) < len(out.labels):
      raise ConfigError(f'--labels {",".join(out.labels)} names a class twice.')
  eval_sources(out)  # the names and files of the evaluation sets
  build_task(out)  # the metrics
  return out


def _msgs_name(train_file: str) -> str:
  """An MSGS task's name: its rows' ``UID`` (``control_raising_length``)."""
  rows, _ = data_lib.read_table(train_file)
  uid = rows[0].get('UID') if rows and isinstance(rows[0], dict) else None
  return str(uid) if uid else MSGS


def build_task(config: TrainConfig) -> Task:
  """The task, with ``config``'s metrics and evaluation sets; ConfigError for a
  metric that does not exist or does not fit."""
  sources = eval_sources(config)
  try:
    if config.task == CUSTOM:
      task = tasks_lib.custom_task(
          text_columns=config.text_columns, label_column=config.label_column or 'label',
          labels=config.labels, metrics=config.metrics, eval_sets=list(sources))
      return dataclasses.replace(task, name=config.task_name or CUSTOM)
    if config.task == MSGS:
      return tasks_lib.msgs_task(name=config.task_name or MSGS,
                                 eval_sets=list(sources)).with_metrics(config.metrics)
    task = tasks_lib.get_task(config.task)
    own = {s.name for s in task.eval_sets}
    extra = tuple(EvalSet(name) for name in sources if name not in own)
    return dataclasses.replace(task, eval_sets=(*task.eval_sets, *extra)).with_metrics(
        config.metrics)
  except ValueError as error:
    raise ConfigError(f'--metrics {",".join(config.metrics or ())}: {error}'
                      if config.metrics else str(error)) from None


def _given(config: TrainConfig) -> dict[str, str]:
  """The ``--eval-file`` items (and a custom task's ``--dev-file``, its set
  ``dev``) by name; ConfigError for a malformed item or a name given twice."""
  items = [f'dev={config.dev_file}'] if config.task in _OWN_FILES and config.dev_file else []
  given: dict[str, str] = {}
  for item in (*items, *config.eval_files):
    name, sep, path = item.partition('=')
    name, path = name.strip(), path.strip()
    if not sep or not _SET_NAME.match(name) or not path:
      raise ConfigError(f'--eval-file {item!r} is not NAME=FILE (a name of letters, digits, _ '
                        'and -, then the file); for example --eval-file dev=dev.csv.')
    if name in given:
      raise ConfigError(f'The evaluation set {name!r} is given twice (--eval-file, or '
                        '--dev-file for the set "dev" of a custom task); give each set once.')
    given[name] = path
  return given


def eval_sources(config: TrainConfig) -> dict[str, str | None]:
  """Each evaluation set's file by name, None where the hub provides it, in
  order: a GLUE task's own sets (AdvGLUE's left out with ``no_adv`` unless
  given a file), then the other ``--eval-file`` sets. ``--dev-file`` is
  GLUE's ``glue_dev``, ``--adv-file`` every AdvGLUE set of the task."""
  given = _given(config)
  if config.task in _OWN_FILES:
    if not given:
      raise ConfigError(f'--task {config.task} needs an evaluation set: --eval-file NAME=FILE '
                        '(or --dev-file FILE for the set "dev").')
    return given
  sources: dict[str, str | None] = {}
  for eval_set in tasks_lib.get_task(config.task).eval_sets:
    name = eval_set.name
    if name == 'glue_dev' and config.dev_file:
      if name in given:
        raise ConfigError('The evaluation set glue_dev is given twice (--dev-file and '
                          '--eval-file glue_dev=...); give it once.')
      sources[name] = config.dev_file
    elif name in given:
      sources[name] = given[name]
    elif eval_set.adversarial:
      if not config.no_adv:
        sources[name] = config.adv_file
    else:
      sources[name] = None
  return {**sources, **{n: p for n, p in given.items() if n not in sources}}
