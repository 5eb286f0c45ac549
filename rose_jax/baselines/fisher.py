"""The Fisher pass of CHILD-TUNING_D, as the official ``calculate_fisher`` runs it.

One pass over the training data before the first update, on the pre-trained
weights with a fresh head, in train mode (dropout on). For each batch the
mean cross-entropy's gradient (the mean squared error's, for regression) is
taken; each included tensor's gradient is clipped on its own to L2 norm
``max_grad_norm`` (``clip_grad_norm_`` per parameter, 1.0 in the official
code), squared and added, divided by the number of batches. So F is the
mean of squared *mini-batch* gradients, not the paper's per-example squared
gradients of ``log p(y|x)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp

from rose_jax._src import apply_fn as apply_fn_lib
from rose_jax._src.apply_fn import ApplyFn
from rose_jax._src.objectives import CLASSIFICATION, Objective, get_objective


def _clip_like_torch(grad: jax.Array, max_norm: float) -> jax.Array:
  """``torch.nn.utils.clip_grad_norm_`` on one tensor (its 1e-6 included)."""
  coefficient = max_norm / (jnp.sqrt(jnp.sum(jnp.square(grad))) + 1e-6)
  return jnp.where(coefficient < 1.0, grad * coefficient, grad)


def fisher_information(apply: ApplyFn, params, batches: Iterable[Mapping[str, jax.Array]],
                       key: jax.Array, *, included, max_grad_norm: float | None = 1.0,
                       progress=None, objective: Objective | str = CLASSIFICATION):
  """CHILD-TUNING_D's Fisher estimate over ``batches``.

  Args:
    apply: the model, ``apply_fn(params, batch, *, dropout_key) -> logits``.
    params: the parameters, pre-trained encoder and fresh head.
    batches: one pass over the training data (dicts with ``labels`` and the
      model's inputs), shuffled as training batches are.
    key: dropout randomness; batch ``i`` uses ``fold_in(key, i)``.
    included: a tree of bools: the tensors to estimate (others get zeros).
    max_grad_norm: the per-tensor clip of each batch gradient; 0 or None: no
      clipping (as ``--max-grad-norm 0`` means for the update).
    progress: an optional callable, called once per batch (a progress bar's
      ``update``).
    objective: whose task loss the gradients are of (the cross-entropy, or
      for regression the mean squared error: the pass works on either).

  Returns:
    A float32 tree like ``params``.

  Raises:
    ValueError: if ``batches`` is empty.
  """
  task_loss = get_objective(objective).task_loss

  def batch_gradient(p, batch, batch_key):
    def loss(p):
      return task_loss(apply_fn_lib.call(apply, p, batch, batch_key), batch['labels'])
    return jax.grad(loss)(p)

  clip = (lambda g: _clip_like_torch(g, max_grad_norm)) if max_grad_norm else (lambda g: g)

  @jax.jit
  def accumulate(total, p, batch, batch_key):
    grads = batch_gradient(p, batch, batch_key)
    return jax.tree.map(lambda t, g, i: t + jnp.square(clip(g)) if i else t,
                        total, grads, included)

  total = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  count = 0
  for batch in batches:
    total = accumulate(total, params, batch, jax.random.fold_in(key, count))
    count += 1
    if progress is not None:
      progress(1)
  if count == 0:
    raise ValueError('The Fisher pass of CHILD-TUNING_D needs training data, but there were no '
                     'batches: check the training file and the batch size.')
  return jax.tree.map(lambda t: t / count, total)
