"""A run's results as typed values, and ``results.json``'s layout.

:class:`Epoch` is one epoch's numbers: timing, the means of the training
metrics, and each evaluation set's metrics keyed ``{set}_{metric}``.
:class:`Results` is the run: its settings, data digests, epochs, whether it
finished or diverged, and its best epoch by the task's first metric on its
first evaluation set. Both are immutable; a run's records replace them.

``results.json`` holds ``config``, ``epochs`` (flat records), ``finished``,
``data_digests``, ``diverged`` where it did, then ``best_epoch`` and the best
epoch's evaluation numbers: the layout every version has written, so that a
run of any version is read alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rose_jax.glue import metrics as metrics_lib

_TIMING = ('seconds', 'tokens_per_second', 'padding_efficiency')


def _json_number(value: float | None) -> float | None:
  """A metric as JSON keeps it: an undefined one (NaN) is ``null``."""
  return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclasses.dataclass(frozen=True)
class Epoch:
  """One epoch's numbers.

  Attributes:
    epoch: the epoch, counting from 1.
    step: the global step at its end.
    timing: ``seconds`` (its training time on this process),
      ``tokens_per_second`` (real tokens trained per second) and
      ``padding_efficiency`` (real tokens over the tokens computed).
    train: the training metrics' means, ``{"train_loss": ...}`` (none for a
      run that diverged).
    evaluation: ``{"{set}_{metric}": value}`` (None where undefined).
  """
  epoch: int
  step: int
  timing: dict[str, float] = dataclasses.field(default_factory=dict)
  train: dict[str, float] = dataclasses.field(default_factory=dict)
  evaluation: dict[str, float | None] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {'epoch': self.epoch, 'step': self.step, **self.timing,
            **{k: _json_number(v) for k, v in {**self.train, **self.evaluation}.items()}}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> Epoch:
    rest = {k: v for k, v in record.items() if k not in ('epoch', 'step', 'type')}
    return cls(record['epoch'], record.get('step', 0),
               timing={k: v for k, v in rest.items() if k in _TIMING},
               train={k: v for k, v in rest.items() if k.startswith('train_')},
               evaluation={k: v for k, v in rest.items()
                           if k not in _TIMING and not k.startswith('train_')})


@dataclasses.dataclass(frozen=True)
class Results:
  """A run's results.

  Attributes:
    config: its settings, as saved (``dataclasses.asdict`` of the config).
    best_key: the evaluation result that picks the best epoch
      (:attr:`rose_jax.glue.tasks.Task.best_key`).
    data_digests: the SHA-256 of each local data file, by option.
    epochs: the epochs completed.
    finished: it trained every epoch.
    diverged: why training stopped, for a sweep member whose loss became
      NaN or infinite.
  """
  config: dict[str, Any]
  best_key: str
  data_digests: dict[str, str] = dataclasses.field(default_factory=dict)
  epochs: tuple[Epoch, ...] = ()
  finished: bool = False
  diverged: str | None = None

  def best(self) -> Epoch | None:
    """The epoch with the highest ``best_key`` (the first of ties; an epoch
    whose value is undefined only when all are)."""
    if not self.epochs:
      return None
    return max(self.epochs, key=lambda e: (metrics_lib.higher(e.evaluation.get(self.best_key)),
                                           -e.epoch))

  def with_epoch(self, epoch: Epoch) -> Results:
    return dataclasses.replace(self, epochs=(*self.epochs, epoch))

  def trimmed(self, completed: int) -> Results:
    """The results of the first ``completed`` epochs (a resume's checkpoint)."""
    return dataclasses.replace(self, epochs=self.epochs[:completed])

  def to_json(self) -> dict[str, Any]:
    out = {'config': self.config, 'epochs': [e.to_json() for e in self.epochs],
           'finished': self.finished, 'data_digests': self.data_digests}
    if self.diverged:
      out['diverged'] = self.diverged
    best = self.best()
    if best is not None:
      out['best_epoch'] = best.epoch
      out.update({k: _json_number(v) for k, v in best.evaluation.items()})
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any], best_key: str) -> Results:
    return cls(config=data.get('config', {}), best_key=best_key,
               data_digests=data.get('data_digests', {}),
               epochs=tuple(Epoch.from_json(e) for e in data.get('epochs', [])),
               finished=bool(data.get('finished')), diverged=data.get('diverged'))

  def summary(self) -> dict[str, float | None]:
    """The best epoch's evaluation numbers (empty before the first epoch)."""
    best = self.best()
    return {} if best is None else dict(best.evaluation)
