"""What the suite's compiler settings (``tests/conftest.py``) change in a test."""

import os

import chex

# What conftest.py set, unless ROSE_JAX_TEST_FULL_OPT=1 or one's own
# XLA_FLAGS kept users' fusion emitters.
OLDER_EMITTERS = '--xla_cpu_use_fusion_emitters=false' in os.environ.get('XLA_FLAGS', '').split()


def assert_same_results(actual, expected) -> None:
  """Two different programs of the same arithmetic: their results bit for
  bit under users' fusion emitters; under the suite's older ones, which fuse
  the two programs differently, to float32 rounding (a few units in the last
  place), far below what another mask or a step too many would move."""
  if OLDER_EMITTERS:
    chex.assert_trees_all_close(actual, expected, rtol=1e-6, atol=1e-8)
  else:
    chex.assert_trees_all_equal(actual, expected)
