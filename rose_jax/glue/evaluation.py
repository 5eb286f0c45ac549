"""Predictions for whole evaluation sets, sharded over every device of every
process, and the task's metrics on them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from rose_jax._src.apply_fn import ApplyFn
from rose_jax._src.objectives import CLASSIFICATION, Objective, get_objective
from rose_jax.glue import batching, packing
from rose_jax.glue import metrics as metrics_lib
from rose_jax.glue.tasks import Task
from rose_jax.training import step as step_lib


class Evaluator:
  """Predicts labels (or, for regression, numbers) for whole splits.

  With ``sharded=True`` each global evaluation batch is split over the data
  mesh of all devices (each process feeds its own rows) and the parameters
  are replicated on it; otherwise one device evaluates.

  Args:
    apply_fn: the model (:func:`rose_jax.models.as_apply_fn`).
    batch_size: examples per global batch; rounded up to a multiple of the
      device count when sharded.
    sharded: split batches over all devices.
    buckets: pad each batch to the smallest of these lengths that holds it;
      by default to its longest example.
    row_length: pack each batch into rows of this many tokens
      (:mod:`rose_jax.glue.packing`) instead of padding it.
    objective: what the outputs stand for (:mod:`rose_jax.training`): the
      argmax class, or the one number.
  """

  def __init__(self, apply_fn: ApplyFn, batch_size: int, *, sharded: bool = False,
               buckets: Sequence[int] | None = None, row_length: int | None = None,
               objective: Objective | str = CLASSIFICATION):
    self.buckets = buckets
    predict = get_objective(objective).predict
    self._predict = jax.jit(
        lambda params, batch: predict(apply_fn(params, batch, dropout_key=None)))
    self.mesh = step_lib.data_mesh() if sharded else None
    devices = jax.device_count() if sharded else 1
    self.batch_size = -(-batch_size // devices) * devices
    self.packing = None if row_length is None else packing.Packing(row_length, devices)

  def place_params(self, params) -> Any:
    """``params`` where the evaluation step wants them (replicated over the mesh)."""
    if self.mesh is None:
      return jax.device_put(params)  # a sweep member's arrive on the host
    return step_lib.replicate_on_mesh(params, self.mesh)

  def _gather(self, predictions: jax.Array) -> np.ndarray:
    if self.mesh is not None and jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(predictions, tiled=True))
    return np.asarray(predictions)

  def _packed_batches(self, data: batching.Encoded, process_index: int, process_count: int):
    """In-order global batches, as :func:`batching.eval_batches` cuts them, packed;
    the labels stay in, for the packed encoder counts examples by them."""
    for rows, real in batching.eval_rows(len(data), self.batch_size):
      yield (packing.packed_batch(data, rows, self.packing, process_index=process_index,
                                  process_count=process_count), real)

  def __call__(self, params, data: batching.Encoded) -> np.ndarray:
    """Predictions for every example of ``data``; ``params`` from
    :meth:`place_params`."""
    buckets = self.buckets or (int(data.lengths.max()),)
    process = (jax.process_index(), jax.process_count()) if self.mesh is not None else (0, 1)
    place: Callable = (lambda b: b) if self.mesh is None else \
        (lambda b: step_lib.shard_batch(b, self.mesh))
    predictions = []
    if self.packing is not None:
      for batch, real in self._packed_batches(data, *process):
        packed = self._gather(self._predict(params, place(batch.arrays)))
        in_order = np.empty_like(packed)
        in_order[batch.order] = packed
        predictions.append(in_order[:real])
    else:
      for batch, real in batching.eval_batches(data, self.batch_size, buckets=buckets,
                                               process_index=process[0],
                                               process_count=process[1]):
        inputs = place({k: v for k, v in batch.items() if k != 'labels'})
        predictions.append(self._gather(self._predict(params, inputs))[:real])
    return np.concatenate(predictions)


@dataclasses.dataclass(frozen=True)
class Evaluated:
  """One evaluation set's predictions and labels, and the task's metrics on
  them by scored set: the set's name, or for a grouped task each group's
  (``msgs_test``)."""
  predictions: np.ndarray
  labels: np.ndarray
  metrics: dict[str, dict[str, float]]
  groups: np.ndarray | None = None
  group_column: str | None = None

  def columns(self) -> dict[str, np.ndarray]:
    """One row per example, as the prediction files hold them."""
    columns = {'prediction': self.predictions, 'label': self.labels}
    if self.groups is not None:
      columns[self.group_column] = self.groups
    return columns


def score(task: Task, name: str, predictions: np.ndarray, labels: np.ndarray,
          groups: np.ndarray | None = None) -> dict[str, dict[str, float]]:
  """The task's metrics on a set's predictions: ``{name: metrics}``, or for
  a grouped task ``{f'{name}_{group}': metrics}`` for each group it holds."""
  if not task.group_column:
    return {name: metrics_lib.compute(task.metrics, predictions, labels, task.num_labels)}
  return {f'{name}_{group}': metrics_lib.compute(task.metrics, predictions[groups == group],
                                                 labels[groups == group], task.num_labels)
          for group in task.groups if np.any(groups == group)}


def evaluate(evaluator: Evaluator, params, task: Task,
             sets: dict[str, batching.Encoded]) -> dict[str, Evaluated]:
  """Each set's predictions and the task's metrics on them, by set name;
  ``params`` from :meth:`Evaluator.place_params`."""
  out = {}
  for name, data in sets.items():
    predictions = evaluator(params, data)
    out[name] = Evaluated(predictions, data.labels,
                          score(task, name, predictions, data.labels, data.groups),
                          data.groups, task.group_column)
  return out
