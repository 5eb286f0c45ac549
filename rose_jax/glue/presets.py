"""The paper's hyperparameters (learning rate, upper threshold) per task.

From the authors' best settings (reference notes): ``PRESETS[preset][variant]
[task] = (learning_rate, upper)``. R-Drop + ROSE reuses the ROSE variant's
setting, as the paper's section 3.5 does. Vanilla and R-Drop have no
published setting, nor have the tasks outside the paper's (CoLA, MRPC,
STS-B, MNLI, WNLI, one's own); they default to 2e-5 and 0.6.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

PRESETS = {
    'paper-base': {
        'first': {'qnli': (2e-5, 0.70), 'qqp': (2e-5, 0.70), 'rte': (4e-5, 0.80),
                  'sst2': (2e-5, 0.60)},
        'second': {'qnli': (1e-5, 0.40), 'qqp': (1e-4, 0.60), 'rte': (4e-5, 0.60),
                   'sst2': (1e-4, 0.30)},
        'ensemble': {'qnli': (1e-5, 0.90), 'qqp': (5e-5, 0.75), 'rte': (4e-5, 0.80),
                     'sst2': (5e-5, 0.40)},
    },
    'paper-large': {
        'first': {'qnli': (3e-5, 0.50), 'qqp': (2e-5, 0.70), 'rte': (1e-5, 0.80),
                  'sst2': (4e-5, 0.70)},
        'second': {'qnli': (1e-5, 0.50), 'qqp': (1e-5, 0.60), 'rte': (2e-5, 0.50),
                   'sst2': (1e-5, 0.50)},
        'ensemble': {'qnli': (1e-5, 0.30), 'qqp': (1e-5, 0.80), 'rte': (1e-5, 0.85),
                     'sst2': (1e-5, 0.70)},
    },
}
DEFAULT_LEARNING_RATE = 2e-5
DEFAULT_UPPER = 0.6


def preset_values(preset: str | None, variant: str | None, task: str) -> tuple[float, float]:
  """``(learning_rate, upper)`` for a preset, or the defaults without one."""
  if preset is None or variant is None:
    return DEFAULT_LEARNING_RATE, DEFAULT_UPPER
  if preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.')
  table = PRESETS[preset][variant]
  if task not in table:
    log.info('Preset %r has no setting for %s (it covers %s): learning rate %g and upper %g '
             'unless --learning-rate and --upper say otherwise.', preset, task,
             ', '.join(sorted(table)), DEFAULT_LEARNING_RATE, DEFAULT_UPPER)
    return DEFAULT_LEARNING_RATE, DEFAULT_UPPER
  return table[task]
