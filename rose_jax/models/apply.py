"""An NNX model as the train step's ``apply_fn``.

:func:`as_apply_fn` splits a model into its ``nnx.Param`` leaves, which the
optimizer trains, and a function of them
(:class:`rose_jax.training.ApplyFn`). Everything else the model holds (RNG
streams, batch statistics, other variables) is fixed: it enters every call
as it was when the model was split, so Adam never sees it, and a
``BatchNorm``'s running statistics are not updated by the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from rose_jax._src.apply_fn import Batch, EmbeddingPerturbation
from rose_jax.models.deberta import DebertaV2ForSequenceClassification
from rose_jax.models.encoder import EncoderForSequenceClassification
from rose_jax.models.modernbert import ModernBertForSequenceClassification

# Our classification models, which call_encoder calls.
OUR_MODELS = (EncoderForSequenceClassification, ModernBertForSequenceClassification,
              DebertaV2ForSequenceClassification)

# call(module, batch, *, rngs, perturbation) -> logits
Call = Callable[..., jax.Array]
INPUT_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def call_encoder(module, batch: Batch, *, rngs: nnx.Rngs | None,
                 perturbation: EmbeddingPerturbation | None) -> jax.Array:
  """How our models (:class:`rose_jax.models.EncoderForSequenceClassification`,
  :class:`rose_jax.models.ModernBertForSequenceClassification`) are called:
  ``input_ids``, ``attention_mask`` and ``token_type_ids`` from the batch
  (the last two optional). A packed batch has ``segment_ids`` instead of
  ``attention_mask``, and its ``labels`` say how many examples it holds."""
  inputs = [batch.get(k) for k in INPUT_KEYS]
  packed = {}
  if 'segment_ids' in batch:
    packed = {'segment_ids': batch['segment_ids'], 'examples': jax.numpy.shape(batch['labels'])[0]}
  if perturbation is None:
    return module(*inputs, rngs=rngs, **packed)
  return module(*inputs, rngs=rngs, perturbation=perturbation, **packed)


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleApply:
  """``apply_fn(params, batch, *, dropout_key=None, perturbation=None)`` for an
  NNX module (see :func:`as_apply_fn`).

  Attributes:
    graphdef: the module's graph.
    fixed: its state other than ``nnx.Param``, held fixed.
    call: ``call(module, batch, *, rngs, perturbation) -> logits``.
    embedding_width: the width of the embeddings that ``perturbation``
      perturbs, or None for a module without the hook.
    streams: the RNG streams the module keeps (their tags), reseeded from
      the dropout key at every call.
  """
  graphdef: nnx.GraphDef
  fixed: nnx.State
  call: Call = call_encoder
  embedding_width: int | None = None
  streams: tuple[str, ...] = ()

  def merge(self, params) -> nnx.Module:
    """The module with ``params`` as its parameters."""
    return nnx.merge(self.graphdef, params, self.fixed, copy=True)

  def __call__(self, params, batch: Batch, *, dropout_key: jax.Array | None = None,
               perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    module = self.merge(params)
    rngs = None
    if dropout_key is None:
      module.eval()
    else:
      module.train()
      rngs = nnx.Rngs(dropout=dropout_key)
      if self.streams:
        nnx.reseed(module, **dict.fromkeys(self.streams, dropout_key))
    return self.call(module, batch, rngs=rngs, perturbation=perturbation)

  @property
  def embedding_shape(self) -> Callable[[Batch], tuple[int, ...]] | None:
    """``batch -> (*batch['input_ids'].shape, embedding_width)``, or None."""
    if self.embedding_width is None:
      return None
    return lambda batch: (*jax.numpy.shape(batch['input_ids']), self.embedding_width)


def as_apply_fn(model: nnx.Module, *, call: Call | None = None,
                embedding_width: int | None = None) -> tuple[ModuleApply, dict[str, Any]]:
  """``(apply_fn, params)`` for the train step: the model's ``nnx.Param``
  leaves as a plain nested dict, and a function of them.

  .. code-block:: python

    apply_fn, params = as_apply_fn(model)
    step = rose_jax.training.make_train_step(apply_fn, tx, method)

  Dropout is on iff ``dropout_key`` is given: the module is put in
  ``train()`` mode, ``call`` gets ``rngs=nnx.Rngs(dropout=key)`` and any RNG
  stream held in the module (whatever its tag: ``nnx.Dropout`` falls back
  on ``default``) is reseeded from the same key; without a key it
  is in ``eval()`` mode and ``rngs`` is None.

  Args:
    model: an NNX module.
    call: ``call(module, batch, *, rngs, perturbation) -> logits``; by default
      our encoder's (:func:`call_encoder`).
    embedding_width: for SMART and FreeLB, the width of the embeddings the
      module adds ``perturbation`` to; by default ``model.config.hidden_size``
      for our models, None otherwise.

  Returns:
    The apply function (:class:`ModuleApply`) and the parameters.
  """
  if call is None:
    if not isinstance(model, OUR_MODELS):
      raise TypeError(
          f'as_apply_fn needs call=, how to call a {type(model).__name__} on a batch: '
          'call(module, batch, *, rngs, perturbation) -> logits; only our models '
          f'({", ".join(m.__name__ for m in OUR_MODELS)}) have a default.')
    call = call_encoder
    if embedding_width is None:
      embedding_width = model.config.hidden_size
  graphdef, params, fixed = nnx.split(model, nnx.Param, ...)
  keys = jax.tree.leaves(nnx.state(model, nnx.RngKey),
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
  streams = tuple(sorted({key.tag for key in keys}))
  return (ModuleApply(graphdef, fixed, call, embedding_width, streams),
          nnx.to_pure_dict(params))
