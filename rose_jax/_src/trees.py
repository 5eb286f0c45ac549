"""Finding a transformation's state inside an optimizer state."""

from __future__ import annotations

import jax


def find_state(opt_state, *types: type):
  """The first state of one of ``types`` in ``opt_state`` (a chain, an
  ``inject_hyperparams`` state, ...), in the order of ``jax.tree.leaves``:
  the outermost one; None if there is none."""
  wanted = lambda x: isinstance(x, types)
  return next((s for s in jax.tree.leaves(opt_state, is_leaf=wanted) if wanted(s)), None)
