"""What the suite's compiler settings (``tests/conftest.py``) change in a test."""

import os

import chex

# Set by ROSE_JAX_TEST_FULL_OPT=1: the tests compile as users' programs do.
FULL_OPT = bool(os.environ.get('ROSE_JAX_TEST_FULL_OPT'))


def assert_same_results(actual, expected) -> None:
  """Two different programs of the same arithmetic: their results bit for
  bit under users' compiler settings; under the suite's, whose older fusion
  emitters fuse the two programs differently, to float32 rounding (a few
  units in the last place), far below what another mask or a step too many
  would move."""
  if FULL_OPT:
    chex.assert_trees_all_equal(actual, expected)
  else:
    chex.assert_trees_all_close(actual, expected, rtol=1e-6, atol=1e-8)
