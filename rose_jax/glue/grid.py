"""A sweep's grid: ``--sweep learning_rate=1e-5,2e-5 upper=0.4,0.6 seed=1,2,3``
parsed (:func:`parse_grid`), expanded into one config per member, each in
its own run directory (:func:`member_configs`), and the settings a sweep may
vary (:data:`SWEEPABLE`: the seed and the optimizer's numbers; the others
change the compiled program)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rose_jax.glue.config import TrainConfig
from rose_jax.glue.optimizers import SWEPT_NUMBERS
from rose_jax.glue.options import ConfigError, flag
from rose_jax.training.methods import Method

SWEEPABLE = ('seed', *SWEPT_NUMBERS)
_SHAPES = 'it sets the shapes of the compiled step'
_PROGRAM = 'it chooses the compiled program'
_REFUSED = {'batch_size': _SHAPES, 'max_length': _SHAPES, 'buckets': _SHAPES,
            'method': _PROGRAM, 'granularity': _PROGRAM, 'dtype': _PROGRAM,
            'cotangents': _PROGRAM, 'parallel': _PROGRAM,
            'first_order_every': 'the members take the KL passes on the same steps',
            'kl_fraction': _SHAPES}


@dataclasses.dataclass(frozen=True)
class Grid:
  """The values of each swept setting, as typed and as numbers."""
  names: tuple[str, ...]
  texts: tuple[tuple[str, ...], ...]
  values: tuple[tuple[Any, ...], ...]

  def members(self) -> list[dict[str, tuple[str, Any]]]:
    """Every combination, the first setting varying slowest."""
    columns = [list(zip(t, v, strict=True)) for t, v in zip(self.texts, self.values,
                                                             strict=True)]
    return [dict(zip(self.names, combination, strict=True))
            for combination in itertools.product(*columns)]


def parse_grid(specs: Sequence[str]) -> Grid:
  """``["learning_rate=1e-5,2e-5", "seed=1,2"]`` as a :class:`Grid`.

  Raises:
    ConfigError: a malformed item, a setting a sweep cannot vary, a value of
      the wrong kind, or a setting or value given twice.
  """
  names, texts, values = [], [], []
  settings = {f.name for f in dataclasses.fields(TrainConfig)}
  for spec in specs:
    name, sep, listed = spec.partition('=')
    name = name.strip().lstrip('-').replace('-', '_')
    if not sep or not name or not listed.strip(','):
      raise ConfigError(f'--sweep {spec!r} is not NAME=V1,V2,...; for example --sweep '
                        'learning_rate=1e-5,2e-5 upper=0.4,0.6 seed=1,2,3.')
    if name not in SWEEPABLE:
      if name in settings:
        reason = _REFUSED.get(name, 'it is fixed within the compiled step')
        raise ConfigError(f'--sweep cannot vary {name}: {reason}. A sweep varies '
                          f'{", ".join(SWEEPABLE)}; run one sweep per value of {flag(name)}.')
      raise ConfigError(f'--sweep: there is no setting {name!r}; a sweep varies '
                        f'{", ".join(SWEEPABLE)}.')
    if name in names:
      raise ConfigError(f'--sweep names {name} twice; give all its values once, as '
                        f'{name}=A,B.')
    kind, kind_name = (int, 'an integer') if name == 'seed' else (float, 'a number')
    typed, parsed = [], []
    for text in (t.strip() for t in listed.split(',')):
      try:
        parsed.append(kind(text))
      except ValueError:
        raise ConfigError(f'--sweep {name}: {text!r} is not {kind_name}.') from None
      typed.append(text)
    repeated = sorted({t for t, v in zip(typed, parsed, strict=True) if parsed.count(v) > 1})
    if repeated:
      raise ConfigError(f'--sweep {name} lists {repeated} more than once; each value is one '
                        'set of runs.')
    names.append(name)
    texts.append(tuple(typed))
    values.append(tuple(parsed))
  if not names:
    raise ConfigError('--sweep needs at least one NAME=V1,V2,... item.')
  return Grid(tuple(names), tuple(texts), tuple(values))


def run_name(config: TrainConfig, member: dict[str, tuple[str, Any]]) -> str:
  """``TASK-METHOD[-NAMEvalue...]-seedN``: a run's directory name; without swept
  numbers it is a plain run's."""
  numbers = ''.join(f'-{name}{text}' for name, (text, _) in member.items() if name != 'seed')
  return f'{config.task_name or config.task}-{config.method}{numbers}-seed{config.seed}'


def _unused_by(method: Method, name: str) -> str | None:
  """Why ``method`` ignores the setting ``name``, or None if it uses it."""
  if name in ('upper', 'lower') and not method.uses_rose:
    return 'only the ROSE methods rank parameters by a threshold'
  if name == 'gamma' and method.rose_variant != 'ensemble':
    return 'only ROSE-Ensemble mixes two masks'
  return None


def member_configs(base: TrainConfig, grid: Grid, output_root: str | Path) -> list[TrainConfig]:
  """One config per combination of ``grid``'s values, each in its own run
  directory under ``output_root``; ``base`` gives every other setting (its
  seed too, unless the grid varies it).

  Raises:
    ConfigError: for a setting that ``base``'s method does not use: its
      runs would train the same model under different names.
  """
  method = base.build_method()
  for name in grid.names:
    reason = _unused_by(method, name)
    if reason:
      raise ConfigError(f'--sweep {name}: --method {base.method} does not use {flag(name)} '
                        f'({reason}), so its runs would all be the same; leave {name} out '
                        'of the sweep.')
  configs = []
  for member in grid.members():
    values = {name: value for name, (_, value) in member.items()}
    config = dataclasses.replace(base, **values)
    configs.append(dataclasses.replace(
        config, output_dir=str(Path(output_root) / run_name(config, member))))
  return configs


def swept_names(configs: Sequence[TrainConfig]) -> tuple[str, ...]:
  """The settings in which ``configs`` differ; ConfigError if a sweep cannot vary one."""
  first = dataclasses.asdict(configs[0])
  differing = sorted({name for config in configs[1:]
                      for name, value in dataclasses.asdict(config).items()
                      if name != 'output_dir' and value != first[name]})
  fixed = [name for name in differing if name not in SWEEPABLE]
  if fixed:
    raise ConfigError(f'The runs of a sweep differ in {fixed}; a sweep varies only '
                      f'{", ".join(SWEEPABLE)}.')
  return tuple(differing)
