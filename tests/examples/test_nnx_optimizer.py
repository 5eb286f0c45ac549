"""The NNX example: nnx.Optimizer hands kl_grads to rose, whose first-order
mask is then the one the KL gradient ranks (not the CE gradient's), and the
authors' rule ranks the NNX model's layers; the example learns its task."""

import chex
import jax
import numpy as np
from flax import nnx

import rose_jax
from examples import nnx_optimizer as example


def _pure(tree):
  return nnx.as_pure(nnx.state(tree, nnx.Param)) if isinstance(tree, nnx.Module) else \
      nnx.as_pure(tree)


def test_the_optimizer_masks_by_the_kl_gradient_it_is_handed():
  tokens, labels = example.toy_task(1)
  model = example.Classifier(nnx.Rngs(1))
  optimizer = example.make_optimizer(model)
  ranked = jax.tree.leaves(rose_jax.selection.authors_selectable(_pure(model)))
  assert sum(ranked) == 6  # the layers' kernels; embeddings, biases and head always move
  told_apart = []
  for step in range(4):
    rows = slice(32 * step, 32 * (step + 1))
    key = jax.random.key(step)
    ce_grads, kl_grads = example.gradients(model, tokens[rows], labels[rows], key)
    before = jax.tree.map(np.asarray, nnx.as_pure(optimizer.opt_state))
    masks = {name: rose_jax.rose_masks(_pure(ce_grads), before, kl_grads=_pure(grads),
                                       upper=0.6)
             for name, grads in (('kl', kl_grads), ('ce', ce_grads))}
    example.train_step(model, optimizer, tokens[rows], labels[rows], key)
    chex.assert_trees_all_close(nnx.as_pure(optimizer.opt_state).mask, masks['kl']['ensemble'])
    told_apart.append(not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(masks['kl']['first']), jax.tree.leaves(masks['ce']['first']),
        strict=True)))
  # Had the CE gradient been ranked in the KL gradient's place, some step's
  # first-order mask would differ: the check above can fail.
  assert any(told_apart)


def test_the_example_learns_its_task():
  assert example.main() > 0.9
