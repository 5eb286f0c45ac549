"""A run's checkpointed state keeps the layout every version has written, so
that runs started by an older version resume."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rose_jax.glue import records

# The checkpoint layout: what orbax has saved since resume existed.
LAYOUT = {'params', 'opt_state', 'position', 'dropout_key', 'epoch_sums', 'window_sums'}


@settings(max_examples=20, deadline=None)
@given(step=st.integers(0, 2**40), epoch=st.integers(0, 1000), batch=st.integers(0, 10**6),
       sums=st.lists(st.floats(-1e6, 1e6), min_size=9, max_size=9))
def test_a_state_round_trips_through_the_checkpoint_layout(step, epoch, batch, sums):
  names = sorted(records.zero_sums())
  state = records.RunState(
      {'w': jnp.arange(3.0)}, ({'mu': jnp.ones(3)},), step=step, epoch=epoch, batch=batch,
      dropout_key=np.asarray(jax.random.key_data(jax.random.key(step % 7))),
      epoch_sums={n: np.float64(v) for n, v in zip(names, sums, strict=True)},
      window_sums=records.zero_sums())
  tree = state.tree()
  assert set(tree) == LAYOUT
  assert set(tree['position']) == {'step', 'epoch', 'batch'}
  assert all(v.dtype == np.int64 and v.shape == () for v in tree['position'].values())
  assert (int(tree['position']['step']), int(tree['position']['epoch']),
          int(tree['position']['batch'])) == (step, epoch, batch)
  back = records.RunState.from_tree(tree)
  assert (back.step, back.epoch, back.batch) == (step, epoch, batch)
  np.testing.assert_array_equal(back.dropout_key, state.dropout_key)
  assert back.epoch_sums == state.epoch_sums
  assert jax.tree.structure(back.params) == jax.tree.structure(state.params)


def test_the_sums_cover_every_metric_a_step_may_return_and_the_token_counts():
  from rose_jax.training.gradients import METRIC_NAMES
  sums = records.zero_sums()
  assert set(sums) == {*METRIC_NAMES, 'count', 'real_tokens', 'padded_tokens'}
  assert all(v.dtype == np.float64 and float(v) == 0.0 for v in sums.values())
