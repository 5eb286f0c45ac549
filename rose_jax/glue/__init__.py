"""The fine-tuning application: tasks (GLUE's nine, AdvGLUE's sets, one's
own) and their metrics, the paper's presets, the fine-tuning loop with its
checkpoints and writers, and the Table 1 report.

The reusable parts (losses, methods, the train step) are in
:mod:`rose_jax.training`, which knows nothing of tasks.
"""

from rose_jax.glue.config import TrainConfig
from rose_jax.glue.loop import preflight, run, train
from rose_jax.glue.optimizers import build_optimizer
from rose_jax.glue.options import ConfigError
from rose_jax.glue.tasks import TASKS, DataError, Task, custom_task, get_task

__all__ = ['TASKS', 'ConfigError', 'DataError', 'Task', 'TrainConfig', 'build_optimizer',
           'custom_task', 'get_task', 'preflight', 'run', 'train']
