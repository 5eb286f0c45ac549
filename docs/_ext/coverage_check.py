"""Fails the build when a public name of the documented packages has no API entry.

A name is public when it is in its module's ``__all__``; it is documented
when autodoc documented that object (under any of its names: a function
that ``rose_jax`` and ``rose_jax.baselines`` both export is documented
once). Modules among the names (``rose_jax.selection``) are checked through
their own ``__all__`` when listed in ``coverage_check_modules``.
"""

from __future__ import annotations

import importlib
import inspect

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError


def _resolve(name: str):
  module_name, _, attribute = name.rpartition('.')
  while module_name:
    try:
      target = importlib.import_module(module_name)
    except ImportError:
      module_name, _, head = module_name.rpartition('.')
      attribute = f'{head}.{attribute}'
      continue
    for part in attribute.split('.'):
      target = getattr(target, part, None)
    return target
  return None


def check(app: Sphinx, env) -> None:
  documented = {id(obj) for name in env.domaindata['py']['objects']
                if (obj := _resolve(name)) is not None}
  missing = []
  for module_name in app.config.coverage_check_modules:
    module = importlib.import_module(module_name)
    for name in getattr(module, '__all__', ()):
      obj = getattr(module, name)
      if inspect.ismodule(obj):
        continue
      if id(obj) not in documented:
        missing.append(f'{module_name}.{name}')
  if missing:
    raise ExtensionError(
        'These public names have no entry in the API reference (docs/api/): '
        + ', '.join(missing) + '. Add each to its page, or drop it from __all__.')


def setup(app: Sphinx) -> dict:
  app.add_config_value('coverage_check_modules', [], 'env')
  app.connect('env-check-consistency', check)
  return {'parallel_read_safe': True}
