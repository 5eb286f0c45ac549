"""The GLUE and AdvGLUE application: tasks and data files, the paper's
presets, the fine-tuning loop with its checkpoints, and the Table 1 report.

The reusable parts (losses, methods, the train step) are in
:mod:`rose_jax.training`, which knows nothing of GLUE.
"""

from rose_jax.glue.config import ConfigError, TrainConfig
from rose_jax.glue.data import TASKS, DataError, get_task
from rose_jax.glue.loop import preflight, run
from rose_jax.glue.optimizers import build_optimizer

__all__ = ['TASKS', 'ConfigError', 'DataError', 'TrainConfig', 'build_optimizer', 'get_task',
           'preflight', 'run']
