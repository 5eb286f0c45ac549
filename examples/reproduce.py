"""Reproduce a table of the paper in one command.

The command is ``rose-reproduce``, which installing rose-jax[examples] puts on the
PATH (see ``rose-reproduce --help``); this file runs it from a checkout.
"""

from rose_jax.glue.cli import run_as_process
from rose_jax.glue.commands.reproduce import main, parse_args  # noqa: F401

if __name__ == '__main__':
  run_as_process(main)
