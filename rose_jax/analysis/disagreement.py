"""How often dropout passes disagree (ROSE, appendix A.2).

Two forward passes through the same parameters with different dropout masks
may predict different labels; the share of examples where they do measures
how much dropout moves the model's decisions. Training with R-Drop's or
ROSE's KL term should lower it.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src.apply_fn import ApplyFn


def pass_predictions(apply_fn: ApplyFn, params, batch: dict, key: jax.Array | None,
                     passes: int) -> jax.Array:
  """``[passes, examples]`` predicted labels, one draw of dropout per pass
  (``key`` None: dropout off, every pass the same)."""
  if key is None:
    predicted = jnp.argmax(apply_fn(params, batch, dropout_key=None), -1)
    return jnp.broadcast_to(predicted, (passes, *predicted.shape))
  keys = jax.random.split(key, passes)
  return jax.vmap(lambda k: jnp.argmax(apply_fn(params, batch, dropout_key=k), -1))(keys)


def dropout_disagreement(apply_fn: ApplyFn, params,
                         batches: Iterable[tuple[dict, int | np.ndarray]],
                         key: jax.Array | None, *, passes: int = 2) -> float:
  """The share of examples whose ``passes`` dropout passes do not all predict
  the same label (for two passes: predict different labels).

  Args:
    apply_fn: ``apply_fn(params, batch, *, dropout_key) -> logits``, dropout off for a None key.
    params: the parameters.
    batches: ``(batch, real)`` pairs: ``real`` counts the batch's first
      examples that are real (the rest are filler), or is a boolean mask
      over its examples (packed batches put filler anywhere).
    key: dropout's key (folded with each batch's index); None: dropout off,
      and the share is 0.
    passes: forward passes per example, at least 2.

  Returns:
    The share, in [0, 1].
  """
  if passes < 2:
    raise ValueError(f'Disagreement needs at least 2 passes, got {passes}.')
  predict = jax.jit(lambda p, b, k: pass_predictions(apply_fn, p, b, k, passes))
  disagreeing = total = 0
  for index, (batch, real) in enumerate(batches):
    batch_key = None if key is None else jax.random.fold_in(key, index)
    predictions = np.asarray(predict(params, batch, batch_key))
    keep = np.arange(predictions.shape[1]) < real if np.ndim(real) == 0 else np.asarray(real)
    predictions = predictions[:, keep]
    disagreeing += int(np.sum(np.any(predictions != predictions[:1], axis=0)))
    total += int(keep.sum())
  if not total:
    raise ValueError('No examples to measure disagreement on.')
  return disagreeing / total
