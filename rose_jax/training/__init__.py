"""Losses, methods and the train step: what any JAX fine-tuning code reuses."""

from rose_jax.training.losses import accuracy, cross_entropy, symmetric_kl
from rose_jax.training.methods import METHOD_NAMES, Method, get_method
from rose_jax.training.step import (
    apply_model,
    data_mesh,
    find_rose_state,
    make_eval_step,
    make_train_step,
    replicate,
    shard_batch,
    split_for_pmap,
    split_model,
    unreplicate,
)

__all__ = [
    'METHOD_NAMES',
    'Method',
    'accuracy',
    'apply_model',
    'cross_entropy',
    'data_mesh',
    'find_rose_state',
    'get_method',
    'make_eval_step',
    'make_train_step',
    'replicate',
    'shard_batch',
    'split_for_pmap',
    'split_model',
    'symmetric_kl',
    'unreplicate',
]
