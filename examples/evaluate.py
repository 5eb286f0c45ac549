"""Evaluate a fine-tuned checkpoint on a task's evaluation sets.

The command is ``rose-evaluate``, which installing rose-jax[examples] puts on the
PATH (see ``rose-evaluate --help``); this file runs it from a checkout.
"""

from rose_jax.glue.cli import run_as_process
from rose_jax.glue.commands.evaluate import main, parse_args  # noqa: F401

if __name__ == '__main__':
  run_as_process(main)
