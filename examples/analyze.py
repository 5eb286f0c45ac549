"""Analyse fine-tuning runs (landscapes, interpolation, disagreement, masks, curves, probing).

The command is ``rose-analyze``, which installing rose-jax[examples] puts on the
PATH (see ``rose-analyze --help``); this file runs it from a checkout.
"""

from rose_jax.glue.cli import run_as_process
from rose_jax.glue.commands.analyze import main, parse_args  # noqa: F401

if __name__ == '__main__':
  run_as_process(main)
