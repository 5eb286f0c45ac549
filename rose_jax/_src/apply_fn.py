"""The contract between a model and the train step (:class:`ApplyFn`), and
the helpers the step calls it through."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]
EmbeddingShape = Callable[[Batch], tuple[int, ...]]


class EmbeddingPerturbation(NamedTuple):
  """Additive perturbations of the embeddings, each ``embedding_shape(batch)``
  (``[batch, length, hidden]`` for a text encoder) or None. Adversarial
  training differentiates the loss with respect to them.

  Attributes:
    word: added to the word-embedding lookup, before the position and type
      embeddings and the LayerNorm (FreeLB's ``delta``).
    output: added to the embedding layer's output, after its LayerNorm and
      dropout, where the encoder reads it (SMART's noise).
  """
  word: jax.Array | None = None
  output: jax.Array | None = None


class ApplyFn(Protocol):
  """What the train step asks of a model: ``apply_fn(params, batch, *,
  dropout_key) -> logits``.

  Any model reaches the step as a function

  .. code-block:: python

    apply_fn(params, batch, *, dropout_key) -> logits

  * ``params``: the pytree that the optimizer trains;
  * ``batch``: the step's batch as given (a mapping of arrays, labels in
    ``batch['labels']``, shape ``[examples]``); for the two dropout passes the
    step concatenates every entry with itself along the first axis;
  * ``dropout_key``: a ``jax.random`` key for dropout, or None for no dropout;
  * ``logits``: ``[examples, classes]``, floating point.

  SMART and FreeLB perturb the embeddings, so for them the function also
  takes ``perturbation=``, an :class:`EmbeddingPerturbation` whose arrays are
  ``embedding_shape(batch)``, and adds them where the class says. The shape is
  declared to the step (``embedding_shape=``, or an ``embedding_shape`` method
  of the apply function, as :func:`rose_jax.models.as_apply_fn` gives);
  FreeLB reads the real tokens from ``batch['attention_mask']`` when present.

  A batch may pack several examples into a row (:func:`rose_jax.training.segment_starts`):
  ``batch['segment_ids']`` then says which tokens belong to which example, and
  FreeLB bounds its perturbation per example, not per row.
  """

  def __call__(self, params: Any, batch: Batch, *, dropout_key: jax.Array | None) -> jax.Array:
    ...


def call(apply_fn: ApplyFn, params, batch: Batch, dropout_key: jax.Array | None,
         perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
  """``apply_fn``'s logits; ``perturbation=`` is passed only when given, so a
  model without the embedding hook serves every other method."""
  if perturbation is None:
    return apply_fn(params, batch, dropout_key=dropout_key)
  return apply_fn(params, batch, dropout_key=dropout_key, perturbation=perturbation)


def resolve_embedding_shape(apply_fn: ApplyFn,
                            embedding_shape: EmbeddingShape | None) -> EmbeddingShape | None:
  """The declared embedding shape: the argument, else the function's own
  ``embedding_shape`` method, else None."""
  if embedding_shape is not None:
    return embedding_shape
  return getattr(apply_fn, 'embedding_shape', None)


def labels_of(batch: Batch) -> jax.Array:
  """``batch['labels']``, shape ``[examples]``; ValueError naming the batch's
  keys otherwise."""
  if 'labels' not in batch:
    raise ValueError(
        f'The batch has no "labels" (its keys: {sorted(batch)}); the step needs one label '
        'per example in batch["labels"], shape [examples] (integer classes, or float '
        'targets for regression).')
  labels = batch['labels']
  if jnp.ndim(labels) != 1:
    raise ValueError(f'batch["labels"] must have shape [examples], got {jnp.shape(labels)}.')
  return labels


def check_logits(logits: Any, examples: int) -> jax.Array:
  """``logits`` when they are floating ``[examples, classes]``; at trace time,
  a ValueError naming the shapes otherwise."""
  shape, dtype = jnp.shape(logits), getattr(logits, 'dtype', None)
  if len(shape) == 2 and shape[0] != examples and dtype is not None and \
      jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f'apply_fn returned outputs for {shape[0]} examples, but this call needs {examples}: '
        'one per label in batch["labels"] (for two dropout passes, per pass). Give one label '
        'per example (with packed rows, one per segment, in row order).')
  if (len(shape) != 2 or dtype is None or not jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(
        f'apply_fn must return floating logits of shape [examples, classes] = '
        f'[{examples}, classes] for this call (the examples of the batch it was given), '
        f'got shape {shape} and dtype {dtype}.')
  return logits
