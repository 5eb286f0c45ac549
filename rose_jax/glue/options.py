"""The command line built from a dataclass of settings, and each setting's check.

Every field of such a dataclass (:class:`rose_jax.glue.config.TrainConfig`)
made with :func:`option` is one command-line option (``learning_rate`` is
``--learning-rate``; a boolean that defaults to true is ``--no-...``):
:func:`add_arguments` reads the fields, their types and their metadata, so
the options and the settings cannot drift apart. A field's check names the
option it checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


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
at_least_two = _check(lambda v: v >= 2, 'at least 2')


def comma_list(text: str) -> tuple[str, ...]:
  """``"a,b, c"`` as ``("a", "b", "c")``, for options that take a list in one word."""
  items = tuple(item.strip() for item in text.split(','))
  if not all(items):
    raise argparse.ArgumentTypeError(f'{text!r} has an empty item; write A,B,C.')
  return items


def option(default, help: str, *, check=None, choices: Iterable[str] | None = None,
           resume: bool = True, cli: bool = True, absent=None, parse=None,
           repeated: bool = False, name: str | None = None, metavar: str | None = None):
  """A field of a settings dataclass.

  Args:
    default: the default value.
    help: the option's help text.
    check: ``check(name, value)`` raising :class:`ConfigError`.
    choices: the allowed values, for the parser.
    resume: whether a resumed run must keep this value (it shapes training).
    cli: whether the command line sets it.
    absent: for a setting added after runs were saved without it, what those
      runs did (a resume compares it with the value now).
    parse: the parser's type for one word (default: the field's type).
    repeated: the option may be given several times, each adding an item.
    name: the option's name, where it is not the field's (``--eval-file`` for
      ``eval_files``).
    metavar: how the help shows the option's value.
  """
  metadata = {'help': help, 'check': check, 'choices': choices and tuple(choices),
              'resume': resume, 'cli': cli, 'absent': absent, 'parse': parse,
              'repeated': repeated, 'name': name, 'metavar': metavar}
  return dataclasses.field(default=default, metadata=metadata)


def option_name(field: dataclasses.Field) -> str:
  return field.metadata['name'] or flag(field.name)


def _base_type(annotation) -> type:
  """``int`` for ``int | None`` and the like."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    return args[0]
  return annotation


def add_arguments(parser: argparse.ArgumentParser, cls,
                  only: Iterable[str] | None = None) -> None:
  """One option per command-line field of ``cls`` (or of those named ``only``),
  with its default and help."""
  hints = typing.get_type_hints(cls)
  only = None if only is None else set(only)
  for field in dataclasses.fields(cls):
    meta = field.metadata
    if not meta['cli'] or (only is not None and field.name not in only):
      continue
    kind = _base_type(hints[field.name])
    name = option_name(field)
    if kind is bool:
      name = f'--no-{name[2:]}' if field.default and not field.name.startswith('no_') else name
      parser.add_argument(name, dest=field.name, help=meta['help'], default=field.default,
                          action='store_false' if field.default else 'store_true')
      continue
    default = field.default
    shown = '' if default in (None, ()) else f' [{default}]'
    many = typing.get_origin(kind) is tuple
    word = meta['parse'] or (typing.get_args(kind)[0] if many else kind)
    if meta['repeated']:
      parser.add_argument(name, dest=field.name, type=word, action='append',
                          help=meta['help'] + ' (may be given several times)',
                          metavar=meta['metavar'] or field.name.upper())
      continue
    parser.add_argument(name, dest=field.name, type=word, default=default,
                        nargs='+' if many and meta['parse'] is None else None,
                        choices=meta['choices'], help=meta['help'] + shown,
                        metavar=None if meta['choices'] else meta['metavar']
                        or field.name.upper())


def from_arguments(args: argparse.Namespace, cls, **fixed):
  """A ``cls`` from parsed options (those ``args`` has), with ``fixed`` fields set."""
  values = {}
  for field in dataclasses.fields(cls):
    if not field.metadata['cli'] or not hasattr(args, field.name) or field.name in fixed:
      continue
    value = getattr(args, field.name)
    if field.metadata['repeated']:
      value = tuple(value or field.default)
    elif isinstance(value, list):
      value = tuple(value)
    values[field.name] = value
  return cls(**values, **fixed)


def check_fields(settings) -> None:
  """Each field's check and choices; ConfigError naming the option."""
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if field.metadata['check'] is not None:
      field.metadata['check'](field.name, value)
    choices = field.metadata['choices']
    if choices and value is not None and value not in choices:
      raise ConfigError(f'{option_name(field)} must be one of {list(choices)}, got {value!r}.')
