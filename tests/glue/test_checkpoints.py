"""rose_jax.glue.checkpoints on its own: exact round trips, the newest two
kept, damage skipped for the step before, and runs restored together."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rose_jax.glue.checkpoints import CheckpointError, Checkpoints, restore_together


def _state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {'params': {'kernel': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     'bias': jnp.asarray(rng.normal(size=4), jnp.bfloat16)},
          'position': {'step': np.asarray(seed, np.int64)},
          'key': np.asarray(jax.random.key_data(jax.random.key(seed)))}


def _damage(directory, step: int) -> None:
  for file in (directory / str(step)).rglob('*'):
    if file.is_file() and file.stat().st_size > 100:
      file.write_bytes(file.read_bytes()[:50])


@pytest.fixture
def checkpoints(tmp_path):
  saved = Checkpoints(tmp_path / 'checkpoints')
  yield saved
  saved.close()


def test_a_state_comes_back_bit_for_bit_and_the_newest_two_are_kept(checkpoints):
  for step in (2, 4, 6):
    checkpoints.save(step, _state(step))
  assert checkpoints.steps() == [4, 6]
  restored = checkpoints.restore(6, _state(0))
  chex.assert_trees_all_equal(restored, _state(6))
  assert restored['params']['bias'].dtype == jnp.bfloat16
  checkpoints.discard_after(4)
  assert checkpoints.steps() == [4]
  with pytest.raises(CheckpointError, match=str(checkpoints.directory / '6')):
    checkpoints.restore(6, _state(0))


def test_runs_resume_from_the_newest_step_they_all_have(tmp_path):
  runs = [Checkpoints(tmp_path / name) for name in 'abc']
  for step in (4, 6):
    for index, run in enumerate(runs):
      run.save(step, _state(10 * index + step))
  runs[1].save(8, _state(18))  # killed before the others saved step 8
  step, states = restore_together([(run, _state(0)) for run in runs])
  assert step == 6 and runs[1].steps() == [6]  # its step 8 is written again
  for index, state in enumerate(states):
    chex.assert_trees_all_equal(state, _state(10 * index + 6))
  for run in runs:
    run.close()


def test_a_damaged_checkpoint_falls_back_and_none_restorable_is_an_error(tmp_path, caplog):
  run = Checkpoints(tmp_path / 'a')
  for step in (4, 6):
    run.save(step, _state(step))
  _damage(tmp_path / 'a', 6)
  step, (state,) = restore_together([(run, _state(0))])
  assert step == 4 and 'cannot be restored' in caplog.text
  chex.assert_trees_all_equal(state, _state(4))
  _damage(tmp_path / 'a', 4)
  with pytest.raises(CheckpointError, match=r'No checkpoint can be restored.*--overwrite'):
    restore_together([(run, _state(0))])
  run.close()


def test_runs_without_a_common_step_start_over(tmp_path):
  first, second = Checkpoints(tmp_path / 'a'), Checkpoints(tmp_path / 'b')
  first.save(2, _state(2))
  assert restore_together([(first, _state(0)), (second, _state(0))]) is None
  assert first.steps() == [] and second.steps() == []
  assert restore_together([(first, _state(0))]) is None  # nothing saved yet
  first.close()
  second.close()
