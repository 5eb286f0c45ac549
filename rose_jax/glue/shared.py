"""What the runs of a group share: the task, the method, the tokenizer, the
tokenised data, the model's graph and the schedule's length; and the one
pass over the data that CHILD-TUNING_D makes before training."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src import seeds
from rose_jax.baselines import child_tuning
from rose_jax.baselines import fisher as fisher_lib
from rose_jax.glue import batching, packing
from rose_jax.glue import data as data_lib
from rose_jax.glue.cli import progress_bar
from rose_jax.glue.config import TrainConfig
from rose_jax.glue.options import ConfigError
from rose_jax.glue.tasks import DataError, Task
from rose_jax.models import ModuleApply, Pretrained, as_apply_fn, load_tokenizer, read_pretrained

log = logging.getLogger(__name__)


def load_eval_set(config: TrainConfig, task: Task, name: str,
                  source: str | None) -> data_lib.Split:
  """The evaluation set ``name`` from ``source`` (a file, or None for the hub)."""
  eval_set = task.eval_set(name)
  if source is None:
    if eval_set.hub is None:
      raise DataError(f'The evaluation set {name!r} has no copy on the hub; give its file: '
                      f'--eval-file {name}=FILE.')
    return data_lib.load_hub(task, eval_set.hub)
  try:
    if eval_set.adversarial and source == config.adv_file:
      return data_lib.load_adv_glue_file(task, source, eval_set)
    return data_lib.load_local(task, source)
  except DataError as error:
    option = (f'--adv-file ({name})' if source == config.adv_file else
              f'--dev-file ({name})' if source == config.dev_file else f'--eval-file {name}')
    raise DataError(f'{option}: {error}') from None


def check_groups(task: Task, splits: dict[str, data_lib.Split]) -> None:
  """Each evaluation set of a grouped task holds its first group (MSGS's
  disambiguating ``test`` rows), and the first set the group that picks the
  best epoch; DataError naming the set otherwise."""
  for index, (name, split) in enumerate(splits.items()):
    found = sorted(set(split.groups.tolist()))
    needed = [task.groups[0]] + ([task.select_group] if index == 0 and task.select_group
                                 else [])
    missing = [g for g in dict.fromkeys(needed) if g not in found]
    if missing:
      raise DataError(f'--eval-file {name}: no rows whose {task.group_column} is '
                      f'{" or ".join(map(repr, missing))} (it has {found}); an MSGS task\'s '
                      'test.jsonl holds its disambiguating "test" rows and "training" rows.')


def inoculate(train: data_lib.Split, evaluation: data_lib.Split, fraction: float, task: Task,
              name: str) -> tuple[data_lib.Split, data_lib.Split]:
  """MSGS's inoculation: ``fraction`` of the training set's size in
  disambiguating rows (the first group's), drawn from ``evaluation`` the same
  way for every seed, moved into training; the rows left are evaluated."""
  candidates = np.flatnonzero(evaluation.groups == task.groups[0])
  count = max(1, round(fraction * len(train)))
  if count > len(candidates):
    raise DataError(f'--inoculation {fraction} asks for {count} of the {len(candidates)} '
                    f'{task.groups[0]!r} rows of --eval-file {name}; lower it.')
  moved = np.sort(np.random.default_rng(0).choice(candidates, count, replace=False))
  kept = np.setdiff1d(np.arange(len(evaluation)), moved)
  log.info('Inoculation: %d %r rows of %s train, %d rows stay to evaluate.', count,
           task.groups[0], name, len(kept))
  return (data_lib.Split.concatenate(train, evaluation.rows(moved)), evaluation.rows(kept))


class Data:
  """A run's tokenised training set and evaluation sets (by name, in the
  order of the task's)."""

  def __init__(self, config: TrainConfig, task: Task, tokenizer):
    if config.train_file:
      try:
        train = data_lib.load_local(task, config.train_file)
      except DataError as error:
        raise DataError(f'--train-file: {error}') from None
    else:
      train = data_lib.load_hub(task, task.hub_train)
    splits = {name: load_eval_set(config, task, name, source)
              for name, source in config.eval_sources().items()}
    if task.group_column:
      check_groups(task, splits)
    train = train.take(config.max_train_samples)
    if config.inoculation:
      first = next(iter(splits))
      train, splits[first] = inoculate(train, splits[first], config.inoculation, task, first)
    if len(train) < config.batch_size:
      raise data_lib.DataError(f'{len(train)} training examples make no batch of '
                               f'{config.batch_size}; lower --batch-size.')
    self.train = self._tokenize(tokenizer, train, 'train', config.max_length)
    self.eval = {name: self._tokenize(tokenizer, split.take(config.max_eval_samples), name,
                                      config.max_length)
                 for name, split in splits.items()}
    self.steps_per_epoch = len(train) // config.batch_size

  @staticmethod
  def _tokenize(tokenizer, split: data_lib.Split, name: str,
                max_length: int) -> batching.Encoded:
    encoded = batching.tokenize(tokenizer, split, max_length)
    if encoded.truncated:
      log.warning('%d of %d %s examples (%.1f%%) are longer than --max-length %d and were '
                  'truncated.', encoded.truncated, len(encoded), name,
                  100 * encoded.truncated / len(encoded), max_length)
    return encoded


def check_room_for_text(tokenizer, task: Task, max_length: int) -> None:
  """ConfigError where ``--max-length`` leaves no token of text beside the
  tokenizer's special tokens ([CLS] and [SEP], say)."""
  texts = len(task.text_columns)
  special = tokenizer.num_special_tokens_to_add(pair=texts == 2)
  if max_length < special + texts:
    raise ConfigError(f'--max-length {max_length} leaves no room for text: the tokenizer adds '
                      f'{special} special tokens to each example of {texts} text(s). Use at '
                      f'least {special + texts}, and more to keep the sentences (128 in the '
                      'paper).')


class Shared:
  """What the runs of one group share: the method, the tokenizer, the data,
  the checkpoint (read once; each seed builds only its own head), the model's
  graph and the schedule's length. Checks ``--max-length`` against the
  model's position table.

  Args:
    config: any run of the group (they differ only in what a sweep varies).
    runs: how many runs will ask for their :meth:`params`; the checkpoint's
      tensors are then let go (asked once more, it is read again).
  """

  def __init__(self, config: TrainConfig, *, runs: int = 1):
    self.task = config.build_task()
    self.method = config.build_method()
    self._pretrained: Pretrained | None = _read_checkpoint(config, self.task)
    self._runs_left = runs
    model = _build_model(self._pretrained, config)
    if config.max_length > model.config.max_sequence_length:
      raise ConfigError(f'--max-length {config.max_length} exceeds what {config.model}\'s '
                        f'position table holds ({model.config.max_sequence_length}).')
    self.tokenizer = load_tokenizer(config.model, model.config)
    check_room_for_text(self.tokenizer, self.task, config.max_length)
    self.data = Data(config, self.task, self.tokenizer)
    self.total_steps = self.data.steps_per_epoch * config.epochs
    self.apply_fn, params = as_apply_fn(model)
    self.param_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    self._loaded = {config.seed: params}

  def params(self, config: TrainConfig):
    """The pre-trained params with ``config``'s newly initialised head."""
    self._runs_left -= 1
    if config.seed in self._loaded:
      params = self._loaded.pop(config.seed)
    else:
      pretrained = self._pretrained or _read_checkpoint(config, self.task)
      params = as_apply_fn(_build_model(pretrained, config))[1]
    if self._runs_left <= 0:
      self._pretrained = None  # every run has its params: free the host copy
    return params


def _read_checkpoint(config: TrainConfig, task: Task) -> Pretrained:
  return read_pretrained(config.model, num_labels=task.num_labels,
                         hidden_dropout=config.dropout, attention_dropout=config.dropout,
                         ignore_mismatched_head=True)


def _build_model(pretrained: Pretrained, config: TrainConfig):
  # The head's stream: a seed's head is the same whether it trains alone or in a sweep.
  return pretrained.model(dtype=jnp.dtype(config.dtype),
                          seed=seeds.stream_seed(config.seed, 'head'))


def batch_layout(config: TrainConfig) -> batching.Layout | None:
  """Packed rows over the step's devices (``--packing``), or None for buckets.

  A sweep member (``parallel="none"``) is split over its
  ``devices_per_member``; a run alone over every device or none."""
  if not config.packing:
    return None
  devices = config.devices_per_member if config.parallel == 'none' else jax.device_count()
  return packing.layout(packing.Packing(config.max_length, devices,
                                        kl_fraction=config.kl_fraction))


def fisher_pass(config: TrainConfig, task: Task, data: Data, apply_fn: ModuleApply, params):
  """CHILD-TUNING_D's fixed mask from one shuffled pass over the training data
  (every process reads all of it, so all derive the same mask)."""
  included = child_tuning.included_tensors(params)
  batches = batching.train_batches(
      data.train, config.batch_size, seeds.stream_seed(config.seed, 'noise'), 0,
      buckets=config.buckets, group_by_length=config.group_by_length,
      layout=batch_layout(config))
  bar = progress_bar(data.steps_per_epoch, 0, config.progress)
  bar.set_description('fisher')
  try:
    estimate = fisher_lib.fisher_information(
        apply_fn, params, (b.arrays for b in batches), seeds.stream_key(config.seed, 'noise'),
        included=included, max_grad_norm=config.max_grad_norm, progress=bar.update,
        objective=task.objective)
  finally:
    bar.close()
  return child_tuning.fisher_mask(estimate, reserve_p=config.reserve_p, included=included)
