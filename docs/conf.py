"""Sphinx configuration of rose_jax's documentation (built by ``python docs/build.py``)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent / '_ext'))
# The doctests run on the CPU, with the 8 virtual devices the multi-device examples use.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import rose_jax  # noqa: E402

project = 'rose_jax'
author = 'The rose_jax authors'
copyright = '2026, The rose_jax authors'
release = version = rose_jax.__version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.doctest',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'myst_parser',
    'coverage_check',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
myst_enable_extensions = ['colon_fence', 'dollarmath']
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {'members': False, 'show-inheritance': False}
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
# Short names for the long unions behind optax's and our type aliases.
autodoc_type_aliases = {name: name for name in (
    'optax.ScalarOrSchedule', 'optax.Updates', 'optax.Params', 'optax.OptState',
    'Granularity', 'Variant', 'Momentum', 'Batch', 'EmbeddingShape', 'Cotangents', 'ApplyFn')}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Every cross-reference must resolve (``-n``), except to the libraries we
# build on, whose inventories need a network the build may not have.
nitpicky = True
nitpick_ignore_regex = [
    (r'py:.*', r'(jax|jnp|jaxlib|optax|chex|flax|nnx|numpy|np|transformers|torch)(\..*)?'),
    (r'py:.*', r'(typing|collections|collections\.abc|os|pathlib|enum|dataclasses)\..*'),
    (r'py:class', r'(Any|Callable|Mapping|Sequence|Iterable|Iterator|NamedTuple|Protocol|'
                  r'Literal|PyTree|ArrayTree|T|optional|TypeAliasForwardRef)'),
    (r'py:class', r'rose_jax\._src\..*'),
    (r'py:class', r'(Granularity|Variant|Momentum|Batch|EmbeddingShape|Cotangents|Updates|'
                  r'Params|Array|ScalarOrSchedule|Parallel)'),
]

doctest_global_setup = '''
import jax
import jax.numpy as jnp
import numpy as np
import optax
import rose_jax
'''

html_theme = 'sphinx_book_theme'
html_title = f'rose_jax {version}'
html_static_path = ['_static']
html_theme_options = {'show_toc_level': 2, 'navigation_with_keys': False}

# The public API that coverage_check holds the reference to: every name in
# these modules' __all__ must be documented.
coverage_check_modules = [
    'rose_jax',
    'rose_jax.selection',
    'rose_jax.baselines',
    'rose_jax.training',
    'rose_jax.models',
    'rose_jax.analysis',
]
