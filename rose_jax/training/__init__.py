"""Losses, methods, gradients and the train step: what any JAX fine-tuning code
reuses, for any model given as ``apply_fn(params, batch, *, dropout_key)``
(:class:`ApplyFn`). Needs jax and optax, not flax."""

from rose_jax._src.apply_fn import ApplyFn, Batch, EmbeddingPerturbation, EmbeddingShape
from rose_jax._src.losses import (
    accuracy,
    cross_entropy,
    rdrop_kl,
    squared_difference,
    symmetric_kl,
)
from rose_jax._src.objectives import CLASSIFICATION, REGRESSION, Objective, get_objective
from rose_jax._src.segments import example_ids, first_token_mask, segment_starts
from rose_jax.training.gradients import Gradients, compute_gradients, metric_names
from rose_jax.training.methods import METHOD_NAMES, Method, get_method
from rose_jax.training.step import (
    ExtraMetrics,
    NoDropoutWarning,
    data_mesh,
    find_rose_state,
    make_eval_step,
    make_train_step,
    replicate,
    replicate_on_mesh,
    shard_batch,
    split_for_pmap,
    unreplicate,
)
from rose_jax.training.sub_batch import SubBatch, split_batch

__all__ = [
    'CLASSIFICATION',
    'METHOD_NAMES',
    'REGRESSION',
    'ApplyFn',
    'Batch',
    'EmbeddingPerturbation',
    'EmbeddingShape',
    'ExtraMetrics',
    'Gradients',
    'Method',
    'NoDropoutWarning',
    'Objective',
    'SubBatch',
    'accuracy',
    'compute_gradients',
    'cross_entropy',
    'data_mesh',
    'example_ids',
    'find_rose_state',
    'first_token_mask',
    'get_method',
    'get_objective',
    'make_eval_step',
    'make_train_step',
    'metric_names',
    'replicate',
    'rdrop_kl',
    'replicate_on_mesh',
    'segment_starts',
    'shard_batch',
    'split_batch',
    'split_for_pmap',
    'squared_difference',
    'symmetric_kl',
    'unreplicate',
]
