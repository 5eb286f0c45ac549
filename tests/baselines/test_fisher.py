"""The Fisher pass of CHILD-TUNING_D against the official calculate_fisher, written out."""

import jax
import numpy as np
import pytest

from rose_jax.baselines import child_tuning, fisher
from rose_jax.models import as_apply_fn
from tests.helpers import definitions, tiny_batch, tiny_model


@pytest.mark.parametrize('max_grad_norm', [2e-3, 0.0])  # 0: no clipping
def test_fisher_is_the_mean_of_per_tensor_clipped_squared_batch_gradients(max_grad_norm):
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.1))
  included = child_tuning.included_tensors(params)
  batches = [tiny_batch(i, size=4) for i in range(3)]
  key = jax.random.key(5)
  calls = []
  got = fisher.fisher_information(apply_fn, params, batches, key, included=included,
                                  max_grad_norm=max_grad_norm, progress=calls.append)
  assert calls == [1, 1, 1]
  total = jax.tree.map(np.zeros_like, params)
  clipped_somewhere = False
  # Compiled once for the three batches (op by op, the reference took 20 s).
  gradient = jax.jit(jax.grad(lambda p, x, labels, k: definitions.cross_entropy(
      apply_fn(p, x, dropout_key=k), labels)))
  for i, batch in enumerate(batches):
    inputs = {k: batch[k] for k in ('input_ids', 'attention_mask')}
    grads = gradient(params, inputs, batch['labels'], jax.random.fold_in(key, i))
    for path_total, g, inc in zip(jax.tree.leaves(total), jax.tree.leaves(grads),
                                  jax.tree.leaves(included), strict=True):
      if not inc:
        continue
      g = np.asarray(g, np.float64)
      norm = np.sqrt(np.sum(g * g))
      # torch.nn.utils.clip_grad_norm_
      coefficient = max_grad_norm / (norm + 1e-6) if max_grad_norm else np.inf
      clipped_somewhere |= coefficient < 1
      path_total += (g * min(coefficient, 1.0)) ** 2 / len(batches)
  assert clipped_somewhere == (max_grad_norm > 0)
  for a, b, inc in zip(jax.tree.leaves(got), jax.tree.leaves(total), jax.tree.leaves(included),
                       strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-12)
    assert inc or not np.any(a)


def test_a_fisher_pass_over_no_data_fails():
  apply_fn, params = as_apply_fn(tiny_model())
  with pytest.raises(ValueError, match='needs training data'):
    fisher.fisher_information(apply_fn, params, [], jax.random.key(0),
                              included=child_tuning.included_tensors(params))
