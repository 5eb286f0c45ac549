"""Summarise fine-tuning runs in the paper's tables.

The command is ``rose-report``, which installing rose-jax[examples] puts on the
PATH (see ``rose-report --help``); this file runs it from a checkout.
"""

from rose_jax.glue.cli import run_as_process
from rose_jax.glue.commands.report import main

if __name__ == '__main__':
  run_as_process(main)
