"""What the tests share: tiny checkpoints and data files (``files``), a tiny
encoder and batches (``models``), optimizers that record or count
(``optimizers``), steps over batches (``steps``), the commands' calling
conventions (``commands``) and killed and compared runs (``runs``); the
losses and the authors' optimizer written out independently of rose_jax
(``definitions``, ``reference``); one process of a multi-host run
(``multihost_worker``).

Test modules import from here, never from each other.
"""

from tests.helpers.commands import cli_args, fails, free_port, snapshot, write
from tests.helpers.compiler import assert_same_results
from tests.helpers.files import SPECIAL, WORDS, run_files, run_settings, tiny_checkpoint, write_sst2
from tests.helpers.models import (
  pack_by_hand,
  packed_and_unpacked,
  random_examples,
  rows_in_order,
  tiny_batch,
  tiny_model,
)
from tests.helpers.optimizers import CountingOptimizer, Recorded, recording_optimizer, rose_chain
from tests.helpers.steps import runner

__all__ = [
    'SPECIAL',
    'WORDS',
    'CountingOptimizer',
    'Recorded',
    'assert_same_results',
    'cli_args',
    'fails',
    'free_port',
    'pack_by_hand',
    'packed_and_unpacked',
    'random_examples',
    'recording_optimizer',
    'rose_chain',
    'rows_in_order',
    'run_files',
    'run_settings',
    'runner',
    'snapshot',
    'tiny_batch',
    'tiny_checkpoint',
    'tiny_model',
    'write',
    'write_sst2',
]
