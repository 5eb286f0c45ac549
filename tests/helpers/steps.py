"""Train steps run from given params, in any parallel mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax.training import step as step_lib


def runner(parallel: str, tx, apply_fn, method):
  """A function that runs steps over batches from given params; the step is
  compiled once for all its calls."""
  step = step_lib.make_train_step(apply_fn, tx, method, parallel=parallel)
  mesh = step_lib.data_mesh()

  def run(params, batches, seed=0):
    params = jax.tree.map(jnp.array, params)  # the step donates its inputs
    opt_state = tx.init(params)
    if parallel == 'pmap':
      params, opt_state = step_lib.replicate(params), step_lib.replicate(opt_state)
    elif parallel == 'shard_map':
      params, opt_state = step_lib.replicate_on_mesh((params, opt_state), mesh)
    history = []
    for i, batch in enumerate(batches):
      if parallel == 'pmap':
        batch = step_lib.split_for_pmap(batch)
      elif parallel == 'shard_map':
        batch = step_lib.shard_batch(batch, mesh)
      params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(seed + i))
      history.append(jax.tree.map(lambda m: float(np.asarray(m).reshape(-1)[0]), metrics))
    if parallel == 'pmap':
      params = step_lib.unreplicate(params)
    return jax.tree.map(np.asarray, params), history

  return run
