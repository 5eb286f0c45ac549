"""Fine-tune on a GLUE task or your own data.

The command is ``rose-finetune``, which installing rose-jax[examples] puts on the
PATH (see ``rose-finetune --help``); this file runs it from a checkout.
"""

from rose_jax.glue.cli import run_as_process
from rose_jax.glue.commands.finetune import configs, main, parse_args, summary  # noqa: F401

if __name__ == '__main__':
  run_as_process(main)
