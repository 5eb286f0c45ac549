"""One fine-tuning run's settings, their checks, and the command line built from them.

Every field of :class:`TrainConfig` is one command-line option
(``learning_rate`` is ``--learning-rate``; a boolean that defaults to true is
``--no-...``): :func:`add_arguments` reads the fields, their types and their
metadata, so the options and the config cannot drift apart. Each field's
check runs in :meth:`TrainConfig.resolved` and names the option it checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from rose_jax.baselines import adversarial
from rose_jax.glue import batching
from rose_jax.glue import data as data_lib
from rose_jax.glue.presets import PRESETS, preset_values
from rose_jax.training.methods import METHOD_NAMES, Method, get_method


class ConfigError(ValueError):
  """A setting that cannot be used, named by its command-line option."""


def flag(name: str) -> str:
  return '--' + name.replace('_', '-')


def _check(predicate: Callable[[Any], bool], requirement: str):
  def check(name: str, value) -> None:
    if value is None:
      return
    if (isinstance(value, float) and not math.isfinite(value)) or not predicate(value):
      raise ConfigError(f'{flag(name)} must be {requirement}, got {value!r}.')
  return check


positive = _check(lambda v: v > 0, 'positive')
at_least_one = _check(lambda v: v >= 1, 'at least 1')
non_negative = _check(lambda v: v >= 0, '0 or more')
fraction = _check(lambda v: 0 <= v <= 1, 'a fraction in [0, 1] (write 0.6, not 60)')
below_one = _check(lambda v: 0 <= v < 1, 'in [0, 1)')
kept_share = _check(lambda v: 0 < v <= 1, 'a fraction in (0, 1]')


def option(default, help: str, *, check=None, choices: Iterable[str] | None = None,
           resume: bool = True, cli: bool = True, absent=None):
  """A :class:`TrainConfig` field.

  Args:
    default: the default value.
    help: the option's help text.
    check: ``check(name, value)`` raising :class:`ConfigError`.
    choices: the allowed values, for the parser.
    resume: whether a resumed run must keep this value (it shapes training).
    cli: whether the command line sets it.
    absent: for a setting added after runs were saved without it, what those
      runs did (a resume compares it with the value now).
  """
  metadata = {'help': help, 'check': check, 'choices': choices and tuple(choices),
              'resume': resume, 'cli': cli, 'absent': absent}
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
  """One fine-tuning run. Defaults follow the paper (section 3.3)."""
  task: str = option('sst2', 'GLUE task', choices=sorted(data_lib.TASKS))
  method: str = option('rose-ensemble', 'fine-tuning method', choices=METHOD_NAMES)
  model: str = option('roberta-base', 'hub name or local checkpoint directory '
                      '(config.json, model.safetensors, tokenizer files)')
  output_dir: str = option('runs/sst2-rose-ensemble-seed1', 'the run directory',
                           cli=False)
  seed: int = option(1, 'seed of every random stream (head, dropout, data, noise)',
                     check=non_negative, cli=False)
  # Data: None reads the dataset hub.
  train_file: str | None = option(None, 'GLUE TSV, CSV, JSON lines or parquet (default: hub)')
  dev_file: str | None = option(None, 'GLUE dev set file (default: hub)')
  adv_file: str | None = option(None, "AdvGLUE dev.json (default: hub 'adv_glue')")
  no_adv: bool = option(False, 'skip AdvGLUE evaluation')
  max_train_samples: int | None = option(None, 'use the first N training examples',
                                         check=at_least_one)
  max_eval_samples: int | None = option(None, 'use the first N examples of each dev set',
                                        check=at_least_one)
  max_length: int = option(128, 'tokens per example, longer ones are truncated',
                           check=_check(lambda v: v >= 2, 'at least 2'))
  buckets: tuple[int, ...] | None = option(
      None, 'with --no-packing, pad each batch to the smallest of these lengths that holds '
      'its longest example (default: multiples of 16 up to --max-length; --buckets '
      'MAX_LENGTH pads every batch to --max-length)')
  group_by_length: bool = option(False, 'draw batches from length-sorted chunks of 50 '
                                 'batches and shuffle their order (less padding; batches '
                                 'hold examples of similar length)')
  packing: bool = option(True, 'pack each batch\'s examples into rows of --max-length '
                         '(several examples to a row, attention within each), so that steps '
                         'compute real tokens; --no-packing pads each batch to its bucket')
  # Optimisation.
  preset: str | None = option('paper-base', "per-task learning rate and upper threshold "
                              "('none': 2e-5 and 0.6)", choices=[*sorted(PRESETS), 'none'])
  learning_rate: float | None = option(None, 'peak learning rate (default: the preset)',
                                       check=positive)
  upper: float | None = option(None, 'upper quantile threshold, a fraction (default: the '
                               'preset)', check=fraction)
  lower: float = option(0.0, 'lower quantile threshold, a fraction', check=fraction)
  gamma: float = option(0.5, "the ensemble's weight of the first-order mask", check=fraction)
  granularity: str = option('tensor', "ROSE's risk unit: one per tensor (the authors' "
                            'code) or per scalar (the paper)', choices=('tensor', 'element'))
  epochs: int = option(10, 'training epochs', check=at_least_one)
  batch_size: int | None = option(None, 'global batch size (default: 32, 16 for RTE)',
                                  check=at_least_one)
  warmup_ratio: float = option(0.0, 'share of steps with a rising learning rate (and no '
                               'masking)', check=below_one)
  weight_decay: float = option(0.01, 'decoupled weight decay', check=non_negative)
  b1: float = option(0.9, "Adam's beta1", check=below_one)
  b2: float = option(0.98, "Adam's beta2", check=below_one)
  eps: float = option(1e-8, "Adam's eps (added outside the root, as Hugging Face does)",
                      check=positive)
  max_grad_norm: float = option(1.0, 'clip the update gradient to this global norm (0: no '
                                'clipping)', check=non_negative)
  dropout: float = option(0.1, 'hidden and attention dropout', check=below_one)
  rdrop_alpha: float = option(
      1.0, "R-Drop's alpha, weighing R-Drop's KL ((KL(p||q) + KL(q||p)) / 2, twice ROSE's "
      "first-order loss); R-Drop's GLUE grid is {0.1, 0.5, 1.0}", check=non_negative)
  # CHILD-TUNING_D (official code: PKUnlp-icler/ChildTuning).
  reserve_p: float = option(0.3, "CHILD-TUNING_D's kept fraction of encoder weights (run.sh: "
                            '0.3)', check=kept_share)
  # SMART (official code: namisan/mt-dnn, train.py defaults).
  smart_alpha: float = option(1.0, "SMART's regulariser weight lambda_s (mt-dnn adv_alpha; "
                              'paper grid {1, 3, 5})', check=non_negative)
  smart_steps: int = option(1, "SMART's ascent steps (mt-dnn adv_k)", check=non_negative)
  smart_step_size: float = option(1e-5, "SMART's ascent step (mt-dnn adv_step_size)",
                                  check=non_negative)
  smart_noise_var: float = option(1e-5, "SMART's initial noise scale (mt-dnn adv_noise_var)",
                                  check=non_negative)
  smart_bregman_mu: float = option(
      0.0, "weight of SMART's Bregman proximal term against a momentum teacher (the paper: 1, "
      'beta 0.99 for the first 10%% of steps then 0.999; mt-dnn has no such term: 0)',
      check=non_negative)
  # FreeLB (official code: zhuchen03/FreeLB, fairseq RoBERTa SST-2 script).
  freelb_steps: int = option(3, "FreeLB's passes K per batch (fairseq --adv-steps m is K = "
                             'm + 1; SST-2: m = 2)', check=at_least_one)
  freelb_step_size: float = option(0.1, "FreeLB's ascent step (adv-lr)", check=non_negative)
  freelb_init_mag: float = option(1.0, "FreeLB's initial perturbation size (adv-init-mag)",
                                  check=non_negative)
  freelb_max_norm: float = option(0.6, "FreeLB's bound on the perturbation (adv-max-norm; 0: "
                                  'none)', check=non_negative)
  freelb_norm: str = option('l2', "FreeLB's norm (fairseq's default l2)",
                            choices=('l2', 'linf'))
  dtype: str = option('float32', 'computation dtype (parameters stay float32)',
                      choices=('float32', 'bfloat16'))
  parallel: str | None = option(None, 'data parallelism (default: shard_map on several '
                                'devices)', choices=('none', 'shard_map', 'pmap'))
  devices_per_member: int = option(
      1, "a sweep's devices per member: each member's batch is split over this many devices "
      '(members x data, each member trained as a --parallel shard_map run over them); 1: '
      'each device trains whole members', check=at_least_one, absent=1)
  cotangents: str = option('sequential', "how ROSE's two gradients are taken: one backward "
                           'each, or one vmapped backward', choices=('sequential', 'vmap'))
  log_every: int = option(50, 'steps between metric lines', check=at_least_one,
                          resume=False)
  save_every: int = option(1000, 'steps between checkpoints within an epoch (0: at epoch '
                           'ends only; one is always written at each epoch end)',
                           check=non_negative, resume=False)
  eval_batch_size: int = option(64, 'evaluation batch size', check=at_least_one,
                                resume=False)
  tensorboard: bool = option(False, 'also write the metrics as TensorBoard events '
                             '(OUTPUT_DIR/tensorboard)', resume=False)
  progress: bool = option(True, 'show a progress bar', resume=False)
  record_masks: bool = option(True, "record ROSE's kept mask of every ranked tensor at every "
                              'step (OUTPUT_DIR/masks.bin, about 0.8 KB a step for '
                              'RoBERTa-base)', resume=False)
  resume: bool = option(False, 'continue a killed run from its last checkpoint',
                        resume=False)
  overwrite: bool = option(False, 'replace an existing run (moved aside until the new '
                           'one has started)', resume=False)

  def resolved(self, device_count: int = 1) -> TrainConfig:
    """Checks every field and fills in the defaults that depend on others.

    ``device_count`` is the number of devices the step runs over (local
    devices under ``pmap``); it picks the default parallelism and must
    divide the batch.
    """
    import rose_jax
    for field in dataclasses.fields(self):
      if field.metadata['check'] is not None:
        field.metadata['check'](field.name, getattr(self, field.name))
      choices = field.metadata['choices']
      value = getattr(self, field.name)
      if choices and value is not None and value not in choices:
        raise ConfigError(f'{flag(field.name)} must be one of {list(choices)}, got {value!r}.')
    if self.resume and self.overwrite:
      raise ConfigError('--resume and --overwrite contradict each other: --resume continues '
                        'the run in the directory, --overwrite replaces it. Pass one.')
    task = data_lib.get_task(self.task)
    method = self.build_method()
    preset = None if self.preset == 'none' else self.preset
    lr, upper = preset_values(preset, method.rose_variant, task.name)
    parallel = self.parallel or ('shard_map' if device_count > 1 else 'none')
    out = dataclasses.replace(
        self, task=task.name,
        learning_rate=lr if self.learning_rate is None else self.learning_rate,
        upper=upper if self.upper is None else self.upper,
        batch_size=self.batch_size or (16 if task.name == 'rte' else 32), parallel=parallel)
    if out.packing and out.buckets is not None:
      raise ConfigError(
          f'--buckets {" ".join(map(str, out.buckets))} pads unpacked batches, but batches are '
          'packed into rows of --max-length (the default): add --no-packing to use --buckets, '
          'or leave --buckets out.')
    if not out.packing:
      try:
        buckets = batching.check_buckets(
            out.buckets or batching.default_buckets(out.max_length), out.max_length)
      except ValueError as error:
        raise ConfigError(str(error)) from None
      out = dataclasses.replace(out, buckets=buckets)
    if out.lower > out.upper:
      raise ConfigError(f'--lower ({out.lower}) must not exceed --upper ({out.upper}).')
    devices = device_count if parallel != 'none' else out.devices_per_member
    if out.batch_size % devices:
      raise ConfigError(f'--batch-size {out.batch_size} does not divide over {devices} '
                        f'devices; use a multiple of {devices}.')
    if out.max_train_samples is not None and out.max_train_samples < out.batch_size:
      raise ConfigError(f'--max-train-samples {out.max_train_samples} makes no batch of '
                        f'{out.batch_size}; raise it to at least --batch-size.')
    if method.uses_rose:  # builds the optimizer once to check its settings early
      rose_jax.rose(out.learning_rate, variant=method.rose_variant, upper=out.upper,
                    lower=out.lower, gamma=out.gamma, granularity=out.granularity)
    return out

  def build_method(self) -> Method:
    """The method, with its baseline's settings; bad settings raise ConfigError."""
    try:
      return get_method(
          self.method, rdrop_alpha=self.rdrop_alpha,
          smart=adversarial.Smart(alpha=self.smart_alpha, steps=self.smart_steps,
                                  step_size=self.smart_step_size,
                                  noise_var=self.smart_noise_var,
                                  bregman_mu=self.smart_bregman_mu),
          freelb=adversarial.FreeLB(steps=self.freelb_steps, step_size=self.freelb_step_size,
                                    init_mag=self.freelb_init_mag,
                                    max_norm=self.freelb_max_norm, norm=self.freelb_norm))
    except ValueError as error:
      raise ConfigError(str(error)) from None

  def differences(self, other: dict) -> list[str]:
    """The settings that shape training and differ from ``other`` (a saved config)."""
    found = []
    for field in dataclasses.fields(self):
      if not field.metadata['resume'] or field.name == 'output_dir':
        continue
      saved = other.get(field.name, field.metadata['absent'])
      now = getattr(self, field.name)
      if isinstance(now, tuple):  # as JSON stores it
        now = list(now)
      if saved != now:
        found.append(f'{flag(field.name)}: {saved!r} when started, {now!r} now')
    return found


def _base_type(annotation) -> type:
  """``int`` for ``int | None`` and the like."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    return args[0]
  return annotation


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig) -> None:
  """One option per command-line field of ``cls``, with its default and help."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    meta = field.metadata
    if not meta['cli']:
      continue
    kind = _base_type(hints[field.name])
    if kind is bool:
      name = f'--no-{flag(field.name)[2:]}' if field.default and \
          not field.name.startswith('no_') else flag(field.name)
      parser.add_argument(name, dest=field.name, help=meta['help'], default=field.default,
                          action='store_false' if field.default else 'store_true')
      continue
    default = field.default
    shown = '' if default is None else f' [{default}]'
    many = typing.get_origin(kind) is tuple
    parser.add_argument(flag(field.name), dest=field.name,
                        type=typing.get_args(kind)[0] if many else kind, default=default,
                        nargs='+' if many else None, choices=meta['choices'],
                        help=meta['help'] + shown,
                        metavar=None if meta['choices'] else field.name.upper())


def from_arguments(args: argparse.Namespace, **fixed) -> TrainConfig:
  """A :class:`TrainConfig` from parsed options, with ``fixed`` fields set."""
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.metadata['cli']}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return TrainConfig(**values, **fixed)
