"""One fine-tuning run's settings and their checks.

Every field of :class:`TrainConfig` is one command-line option
(:mod:`rose_jax.glue.options` builds them). Each field's check runs in
:meth:`TrainConfig.resolved`, which also fills in the defaults that depend
on other settings (the task's labels, the preset's learning rate...) and
names the option at fault.
"""

from __future__ import annotations

import argparse
import dataclasses

from rose_jax.baselines import adversarial
from rose_jax.glue import batching, options, task_settings
from rose_jax.glue import metrics as metrics_lib
from rose_jax.glue import tasks as tasks_lib
from rose_jax.glue.options import (
  ConfigError,
  at_least_one,
  below_one,
  comma_list,
  fraction,
  kept_share,
  non_negative,
  option,
  positive,
)
from rose_jax.glue.presets import PRESETS, preset_values
from rose_jax.glue.tasks import CUSTOM, MSGS, Task
from rose_jax.training.gradients import check_method_fits
from rose_jax.training.methods import METHOD_NAMES, Method, get_method
from rose_jax.training.sub_batch import kl_examples


@dataclasses.dataclass
class TrainConfig:
  """One fine-tuning run. Defaults follow the paper (section 3.3)."""
  task: str = option('sst2', "a GLUE task, 'custom' for your own files (--text-columns, "
                     "--labels...), or 'msgs' for an MSGS probing task",
                     choices=[*tasks_lib.GLUE_ORDER, CUSTOM, MSGS])
  method: str = option('rose-ensemble', 'fine-tuning method', choices=METHOD_NAMES)
  model: str = option('roberta-base', 'hub name or local checkpoint directory '
                      '(config.json, model.safetensors, tokenizer files)')
  output_dir: str = option('runs/sst2-rose-ensemble-seed1', 'the run directory',
                           cli=False)
  seed: int = option(1, 'seed of every random stream (head, dropout, data, noise)',
                     check=non_negative, cli=False)
  # Data: None reads the dataset hub.
  train_file: str | None = option(None, 'training data: TSV, CSV, JSON lines or parquet '
                                  '(default: the hub, for GLUE tasks)')
  dev_file: str | None = option(None, "the dev set's file: GLUE's glue_dev, or a custom "
                                "task's set 'dev' (default: hub)")
  eval_files: tuple[str, ...] = option(
      (), 'an evaluation set and its file, NAME=FILE: a GLUE task\'s own set (glue_dev, '
      'glue_dev_mismatched...) or any other name, scored with the task\'s metrics',
      repeated=True, name='--eval-file', metavar='NAME=FILE', absent=())
  adv_file: str | None = option(None, "AdvGLUE dev.json (default: hub 'adv_glue')")
  no_adv: bool = option(False, 'skip AdvGLUE evaluation')
  # A task of one's own (--task custom).
  text_columns: tuple[str, ...] | None = option(
      None, 'custom task: the column, or two comma-separated columns, that hold the text',
      parse=comma_list, metavar='A[,B]', absent=None)
  label_column: str | None = option(None, "custom task: the column that holds the label "
                                    "[label]", absent=None)
  labels: tuple[str, ...] | None = option(
      None, "custom task: the class names in index order, comma-separated, or 'regression' "
      '(default: read from --train-file: the distinct values, or regression for fractional '
      'numbers)', parse=comma_list, metavar='A,B,...', absent=None)
  task_name: str | None = option(
      None, "a custom or MSGS task's name, in the report (default: 'custom'; for MSGS the "
      "training rows' UID, as control_raising_length)", absent=None)
  inoculation: float = option(
      0.0, "MSGS: move this share of the training set's size from the first evaluation set's "
      'disambiguating (test) rows into training (MSGS\'s inoculation)', check=below_one,
      absent=0.0)
  metrics: tuple[str, ...] | None = option(
      None, f'the metrics, comma-separated, of {", ".join(metrics_lib.METRICS)}; the first '
      "picks the best epoch (default: the task's own, GLUE's for GLUE tasks; accuracy, or "
      'pearson,spearman for regression)', parse=comma_list, metavar='M,...', absent=None)
  max_train_samples: int | None = option(None, 'use the first N training examples',
                                         check=at_least_one)
  max_eval_samples: int | None = option(None, 'use the first N examples of each dev set',
                                        check=at_least_one)
  max_length: int = option(128, 'tokens per example, longer ones are truncated',
                           check=options.at_least_two)
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
  first_order_every: int | None = option(
      None, "refresh ROSE's first-order risk (the KL passes and their backward) on one step "
      'in K and rank by the last risks in between (default: every step, the authors\' '
      'recipe)', check=at_least_one, metavar='K', absent=None)
  kl_fraction: float | None = option(
      None, "run the KL passes of ROSE's first-order risk on this share of each batch (of "
      "each device's share; the task loss covers every example) (default: all of it, the "
      "authors' recipe)", check=kept_share, metavar='F', absent=None)
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
                              'step (OUTPUT_DIR/masks.bin; rose_jax.glue.masks.read_masks '
                              'reads it)', resume=False)
  resume: bool = option(False, 'continue a killed run from its last checkpoint',
                        resume=False)
  overwrite: bool = option(False, 'replace an existing run (moved aside until the new '
                           'one has started)', resume=False)

  def resolved(self, device_count: int = 1) -> TrainConfig:
    """Checks every field and fills in the defaults that depend on others.

    ``device_count`` is the number of devices the step runs over (local
    devices under ``pmap``); it picks the default parallelism and must
    divide the batch. A custom task without ``labels`` reads them from its
    training file here, so that the run records them.
    """
    import rose_jax
    options.check_fields(self)
    if self.resume and self.overwrite:
      raise ConfigError('--resume and --overwrite contradict each other: --resume continues '
                        'the run in the directory, --overwrite replaces it. Pass one.')
    out = task_settings.resolve(self)
    task = out.build_task()
    method = out.build_method()
    try:
      check_method_fits(method, task.objective)
    except ValueError as error:
      raise ConfigError(f'--method {out.method} cannot train {task.name}: {error}') from None
    preset = None if out.preset == 'none' else out.preset
    lr, upper = preset_values(preset, method.rose_variant, task.name)
    parallel = out.parallel or ('shard_map' if device_count > 1 else 'none')
    out = dataclasses.replace(
        out, learning_rate=lr if out.learning_rate is None else out.learning_rate,
        upper=upper if out.upper is None else out.upper,
        batch_size=out.batch_size or (16 if task.name == 'rte' else 32), parallel=parallel)
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
    for name in ('first_order_every', 'kl_fraction'):
      if getattr(out, name) is not None and not method.kl_grads:
        raise ConfigError(f'{options.flag(name)} makes ROSE\'s first-order risk cheaper, and '
                          f'--method {out.method} has none: leave it out, or use rose-first, '
                          'rose-ensemble or rdrop-rose-first/-ensemble.')
    devices = device_count if parallel != 'none' else out.devices_per_member
    if out.batch_size % devices:
      raise ConfigError(f'--batch-size {out.batch_size} does not divide over {devices} '
                        f'devices; use a multiple of {devices}.')
    if out.kl_fraction is not None:
      try:
        kl_examples(out.batch_size // devices, out.kl_fraction)
      except ValueError as error:
        raise ConfigError(f'--kl-fraction: {error}') from None
    if out.max_train_samples is not None and out.max_train_samples < out.batch_size:
      raise ConfigError(f'--max-train-samples {out.max_train_samples} makes no batch of '
                        f'{out.batch_size}; raise it to at least --batch-size.')
    if method.uses_rose:  # builds the optimizer once to check its settings early
      rose_jax.rose(out.learning_rate, variant=method.rose_variant, upper=out.upper,
                    lower=out.lower, gamma=out.gamma, granularity=out.granularity,
                    first_order_every=out.first_order_every)
    return out

  @classmethod
  def from_saved(cls, saved: dict) -> TrainConfig:
    """The config a run saved in ``results.json`` (settings added since it was
    saved take their defaults; JSON's lists are tuples again)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: tuple(value) if isinstance(value, list) else value
                  for name, value in saved.items() if name in names})

  def build_task(self) -> Task:
    """The task, with this run's metrics and evaluation sets
    (:func:`rose_jax.glue.task_settings.build_task`)."""
    return task_settings.build_task(self)

  def eval_sources(self) -> dict[str, str | None]:
    """Each evaluation set's file by name, None for the hub
    (:func:`rose_jax.glue.task_settings.eval_sources`)."""
    return task_settings.eval_sources(self)

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
      message = str(error)
      for name in ('smart_alpha', 'smart_steps', 'smart_step_size', 'smart_noise_var',
                   'smart_bregman_mu', 'freelb_steps', 'freelb_step_size', 'freelb_init_mag',
                   'freelb_max_norm'):
        method, _, setting = name.partition('_')
        message = message.replace(f'{"SMART" if method == "smart" else "FreeLB"} {setting}',
                                  options.flag(name))
      raise ConfigError(message) from None

  def differences(self, other: dict) -> list[str]:
    """The settings that shape training and differ from ``other`` (a saved config)."""
    found = []
    as_json = lambda v: list(v) if isinstance(v, tuple) else v
    for field in dataclasses.fields(self):
      if not field.metadata['resume'] or field.name == 'output_dir':
        continue
      saved = as_json(other.get(field.name, field.metadata['absent']))
      now = as_json(getattr(self, field.name))
      if saved != now:
        found.append(f'{options.option_name(field)}: {saved!r} when started, {now!r} now')
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """One option per command-line field of :class:`TrainConfig`."""
  options.add_arguments(parser, TrainConfig)


def from_arguments(args: argparse.Namespace, **fixed) -> TrainConfig:
  """A :class:`TrainConfig` from parsed options, with ``fixed`` fields set."""
  return options.from_arguments(args, TrainConfig, **fixed)
