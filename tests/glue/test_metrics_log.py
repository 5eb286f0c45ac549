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
@hypothesis.given(tensors=st.integers(1, 5), steps=st.integers(1, 12), data=st.data(),
                  parts=st.sampled_from([('mask',), metrics_log.MASK_PARTS]))
def test_mask_rows_survive_a_kill_and_a_resume(tmp_path_factory, tensors, steps, data, parts):
  directory = tmp_path_factory.mktemp('masks')
  names = [f'layer/{i}/kernel' for i in range(tensors)]
  rng = np.random.default_rng(steps)
  masks = {part: rng.random((steps, tensors)).astype(np.float32) for part in parts}
  row = lambda step: {part: m[step - 1][None] for part, m in masks.items()}
  log = MaskLog(directory, names, parts=parts)
  for step in range(1, steps + 1):
    log.write(np.asarray([step]), row(step))
  log.close()
  # A kill cuts the last row short; the resume starts from a checkpoint before it.
  path = directory / metrics_log.MASK_FILE
  cut = data.draw(st.integers(0, metrics_log.mask_dtype(tensors, parts).itemsize - 1))
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) - cut])
  # The rows up to a checkpoint are written before it, so only a later row is cut.
  start = data.draw(st.integers(0, steps - (cut > 0)))
  # Resumed by a version that would record every part: the file keeps its own.
  resumed = MaskLog(directory, names, parts=metrics_log.MASK_PARTS, start_step=start)
  assert resumed.parts == parts
  for step in range(start + 1, steps + 1):
    resumed.write(np.asarray([step]), {**row(step), 'first': None, 'second': None}
                  if parts == ('mask',) else row(step))
  resumed.close()
  assert metrics_log.mask_parts(directory) == parts
  for part, expected in masks.items():
    read_names, read_steps, read = read_masks(directory, part)
    assert read_names == names
    assert read_steps.tolist() == list(range(1, steps + 1))
    np.testing.assert_array_equal(read, expected)


def test_mask_file_layout_and_a_run_without_masks(tmp_path):
  log = MaskLog(tmp_path, ['a', 'b'])
  log.write(np.asarray([3, 4]), {'mask': np.asarray([[1.0, 0.5], [0.0, 1.0]], np.float32)})
  log.close()
  header = json.loads((tmp_path / metrics_log.MASK_HEADER).read_text())
  assert header['tensors'] == ['a', 'b'] and header['row']['mask'] == 'float32[2]'
  # Little-endian int64 step, then the float32 masks: 16 bytes a row.
  raw = (tmp_path / metrics_log.MASK_FILE).read_bytes()
  assert len(raw) == 32 and int.from_bytes(raw[:8], 'little') == 3
  assert np.frombuffer(raw[8:16], '<f4').tolist() == [1.0, 0.5]
  with pytest.raises(FileNotFoundError, match='only ROSE methods record masks'):
    read_masks(tmp_path / 'missing')
  with pytest.raises(KeyError, match="holds \\['mask'\\], not 'first': only ROSE-Ensemble"):
    read_masks(tmp_path, 'first')


def test_an_ensemble_row_holds_the_applied_mask_then_the_two_it_mixed(tmp_path):
  log = MaskLog(tmp_path, ['a'], parts=metrics_log.MASK_PARTS)
  log.write(np.asarray([7]), {'mask': np.asarray([[0.5]], np.float32),
                              'first': np.asarray([[1.0]], np.float32),
                              'second': np.asarray([[0.0]], np.float32)})
  log.close()
  raw = (tmp_path / metrics_log.MASK_FILE).read_bytes()
  assert len(raw) == 8 + 3 * 4 and np.frombuffer(raw[8:], '<f4').tolist() == [0.5, 1.0, 0.0]
  header = json.loads((tmp_path / metrics_log.MASK_HEADER).read_text())
  assert header['parts'] == ['mask', 'first', 'second']
  assert sorted(header['row']) == ['first', 'mask', 'second', 'step']


def test_progress_bar_shows_elapsed_and_remaining_time():
  bar = metrics_log.progress_bar(total=10, initial=4, enabled=True)
  try:
    text = str(bar)
  finally:
    bar.close()
  assert '4/10' in text and '<' in text.split('[')[1]  # [elapsed<remaining, rate]
