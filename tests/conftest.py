"""Test configuration, set before JAX initialises its backends, and the
fixtures that many modules share.

* 8 virtual CPU devices for the data-parallel tests.
* XLA:CPU's backend (LLVM) optimisation off and its older (non-MLIR)
  fusion emitters: the suite's time is mostly compiling tiny programs,
  which the two cut to about a third, while running them is instant
  either way. The first changes only the machine code; the second also
  moves a few fusions, so XLA's FLOP count and float rounding differ from
  users' in the last digits (the tests' tolerances hold either way). Set
  ``ROSE_JAX_TEST_FULL_OPT=1`` to test with users' compiler settings.
  Also LLVM's expensive passes off and each program's code generated in
  one piece, not split for threads that the two busy cores do not have
  (machine code only; 10-15% less CPU per compilation of a tiny step).
* One XLA compilation cache for the whole session: the tests compile the
  same tiny steps many times over, and pytest-xdist's workers and the
  commands the tests start share it through the environment.
* Python's cyclic garbage collector seldom, and not over what the
  collection imported: a worker holds about half a million objects (JAX,
  transformers, torch), every full collection scans them all (0.15 s each
  here), and tracing makes enough objects to run one every few seconds,
  some 4% of the suite's time. Frozen and with higher thresholds, the
  collector still frees cycles, later.
"""

import atexit
import gc
import os
import shutil
import tempfile

import pytest

_FLAGS = ['--xla_force_host_platform_device_count=8']
if not os.environ.get('ROSE_JAX_TEST_FULL_OPT'):
  _FLAGS += ['--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false',
             '--xla_llvm_disable_expensive_passes=true',
             '--xla_cpu_parallel_codegen_split_count=1']
os.environ.setdefault('XLA_FLAGS', ' '.join(_FLAGS))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  cache = tempfile.mkdtemp(prefix='rose_jax-test-xla-cache-')
  atexit.register(shutil.rmtree, cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
gc.set_threshold(50_000, 20, 100)


def pytest_collection_finish(session):
  gc.collect()
  gc.freeze()


@pytest.fixture(scope='session')
def files(tmp_path_factory) -> dict:
  """A tiny checkpoint and SST-2-shaped files (see ``tests.helpers.run_files``),
  made once a session. Read them; write anything else under ``tmp_path``."""
  from tests import helpers
  return helpers.run_files(tmp_path_factory.mktemp('files'))


@pytest.fixture(scope='session')
def finished_run(files, tmp_path_factory):
  """A finished ROSE-Ensemble run directory (seed 1, 2 epochs of 2 steps, a
  metric line per step, TensorBoard events), trained once a session. Read
  it, or copy it (``shutil.copytree``) before changing anything in it."""
  from rose_jax.glue import loop
  from tests import helpers
  out = tmp_path_factory.mktemp('finished') / 'sst2-rose-ensemble-seed1'
  loop.run(loop.TrainConfig(**helpers.run_settings(
      files, out, epochs=2, max_train_samples=16, learning_rate=3e-3, log_every=1,
      tensorboard=True)))
  return out
