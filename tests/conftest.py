"""Test configuration: 8 virtual CPU devices for the data-parallel tests, and one
XLA compilation cache for the whole session (the tests compile the same tiny
steps many times over; pytest-xdist's workers and the commands the tests
start inherit the cache through the environment)."""

import atexit
import os
import shutil
import tempfile

# Must run before JAX initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  cache = tempfile.mkdtemp(prefix='rose_jax-test-xla-cache-')
  atexit.register(shutil.rmtree, cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
