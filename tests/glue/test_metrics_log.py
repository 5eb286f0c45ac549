"""rose_jax.glue.metrics_log on its own: trimming after a kill, the metric
lines, and the mask file's rows, written, cut short, resumed and read."""

import json

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.glue import metrics_log
from rose_jax.glue.metrics_log import MaskLog, MetricsLog, read_masks, trim_lines


def _lines(path):
  return [json.loads(x) for x in path.read_text().splitlines()]


def test_trim_keeps_steps_and_epochs_up_to_the_checkpoint(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 2, 'epoch': 1}, {'step': 4, 'epoch': 1}, {'type': 'epoch', 'epoch': 1},
             {'step': 6, 'epoch': 2}, {'step': 8, 'epoch': 2}, {'type': 'epoch', 'epoch': 2}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + '{"step": 10, "ep')
  assert trim_lines(path, last_step=6, last_epoch=1) == 3  # step 8, epoch 2, the cut line
  assert _lines(path) == records[:4]
  before = path.read_bytes()
  assert trim_lines(path, last_step=6, last_epoch=1) == 0
  assert path.read_bytes() == before
  assert trim_lines(tmp_path / 'none.jsonl', last_step=0, last_epoch=0) == 0


def test_metric_lines_are_appended_and_a_disabled_log_writes_nothing(tmp_path):
  log = MetricsLog(tmp_path)
  log.write({'step': 1, 'loss': 0.5}, step=1)
  log.write({'type': 'epoch', 'epoch': 1}, step=1, prefix='epoch')
  log.close()
  again = MetricsLog(tmp_path)  # a resumed run appends
  again.write({'step': 2, 'loss': 0.25}, step=2)
  again.close()
  assert _lines(tmp_path / 'metrics.jsonl') == [{'step': 1, 'loss': 0.5},
                                                {'type': 'epoch', 'epoch': 1},
                                                {'step': 2, 'loss': 0.25}]
  other = tmp_path / 'other'
  other.mkdir()
  silent = MetricsLog(other, enabled=False, tensorboard=True)
  silent.write({'step': 1}, step=1)
  silent.close()
  assert list(other.iterdir()) == []


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(tensors=st.integers(1, 5), steps=st.integers(1, 12), data=st.data())
def test_mask_rows_survive_a_kill_and_a_resume(tmp_path_factory, tensors, steps, data):
  directory = tmp_path_factory.mktemp('masks')
  names = [f'layer/{i}/kernel' for i in range(tensors)]
  rng = np.random.default_rng(steps)
  masks = rng.random((steps, tensors)).astype(np.float32)
  log = MaskLog(directory, names)
  for step in range(1, steps + 1):
    log.write(np.asarray([step]), masks[step - 1][None])
  log.close()
  # A kill cuts the last row short; the resume starts from a checkpoint before it.
  path = directory / metrics_log.MASK_FILE
  cut = data.draw(st.integers(0, metrics_log.mask_dtype(tensors).itemsize - 1))
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) - cut])
  # The rows up to a checkpoint are written before it, so only a later row is cut.
  start = data.draw(st.integers(0, steps - (cut > 0)))
  resumed = MaskLog(directory, names, start_step=start)
  for step in range(start + 1, steps + 1):
    resumed.write(np.asarray([step]), masks[step - 1][None])
  resumed.close()
  read_names, read_steps, read = read_masks(directory)
  assert read_names == names
  assert read_steps.tolist() == list(range(1, steps + 1))
  np.testing.assert_array_equal(read, masks)


def test_mask_file_layout_and_a_run_without_masks(tmp_path):
  log = MaskLog(tmp_path, ['a', 'b'])
  log.write(np.asarray([3, 4]), np.asarray([[1.0, 0.5], [0.0, 1.0]], np.float32))
  log.close()
  header = json.loads((tmp_path / metrics_log.MASK_HEADER).read_text())
  assert header['tensors'] == ['a', 'b'] and header['row']['mask'] == 'float32[2]'
  # Little-endian int64 step, then the float32 masks: 16 bytes a row.
  raw = (tmp_path / metrics_log.MASK_FILE).read_bytes()
  assert len(raw) == 32 and int.from_bytes(raw[:8], 'little') == 3
  assert np.frombuffer(raw[8:16], '<f4').tolist() == [1.0, 0.5]
  with pytest.raises(FileNotFoundError, match='only ROSE methods record masks'):
    read_masks(tmp_path / 'missing')


def test_progress_bar_shows_elapsed_and_remaining_time():
  bar = metrics_log.progress_bar(total=10, initial=4, enabled=True)
  try:
    text = str(bar)
  finally:
    bar.close()
  assert '4/10' in text and '<' in text.split('[')[1]  # [elapsed<remaining, rate]
