"""Accuracy on a dev set, sharded over every device of every process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src.apply_fn import ApplyFn
from rose_jax.glue import batching, packing
from rose_jax.training import step as step_lib


class Evaluator:
  """Predicts labels for whole splits.

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
  """

  def __init__(self, apply_fn: ApplyFn, batch_size: int, *, sharded: bool = False,
               buckets: Sequence[int] | None = None, row_length: int | None = None):
    self.buckets = buckets
    self._predict = jax.jit(
        lambda params, batch: jnp.argmax(apply_fn(params, batch, dropout_key=None), -1))
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

  def __call__(self, params, data: batching.Encoded) -> tuple[np.ndarray, float]:
    """Predictions for every example of ``data`` and their accuracy; ``params``
    from :meth:`place_params`."""
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
    predictions = np.concatenate(predictions)
    return predictions, float(np.mean(predictions == data.labels))
