"""rose_jax.glue.writers and the mask file on their own: trimming after a kill,
the metric lines, the prediction files, the mask file's rows (written, cut
short, resumed and read), and one writer interface for all."""

import json

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from rose_jax.glue import masks as metrics_log
from rose_jax.glue.masks import read_masks
from rose_jax.glue.results import Epoch
from rose_jax.glue.writers import (
  EpochReport,
  MaskFile,
  MetricLines,
  PredictionFiles,
  Writer,
  Writers,
  trim_lines,
)


def _report(epoch: int, **predictions) -> EpochReport:
  timing = {'seconds': 1.0, 'tokens_per_second': 10.0, 'padding_efficiency': 0.5}
  return EpochReport(Epoch(epoch, 2 * epoch, timing, {'train_loss': 0.1}, {'dev_accuracy': 0.5}),
                     is_best=False,
                     predictions=predictions, model=lambda: None)


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


def test_metric_lines_are_appended_after_the_checkpoint(tmp_path):
  log = MetricLines(tmp_path)
  log.step({'step': 1, 'epoch': 1, 'loss': 0.5})
  log.epoch(_report(1))
  log.step({'step': 3, 'epoch': 2, 'loss': 0.4})  # after the checkpoint of step 2
  log.close()
  again = MetricLines(tmp_path, step=2, epoch=1)  # a resumed run drops it, then appends
  assert again.dropped == 1
  again.step({'step': 3, 'epoch': 2, 'loss': 0.25})
  again.close()
  assert _lines(tmp_path / 'metrics.jsonl') == [
      {'step': 1, 'epoch': 1, 'loss': 0.5},
      {'type': 'epoch', 'epoch': 1, 'step': 2, 'seconds': 1.0, 'tokens_per_second': 10.0,
       'padding_efficiency': 0.5, 'train_loss': 0.1, 'dev_accuracy': 0.5},
      {'step': 3, 'epoch': 2, 'loss': 0.25}]


def test_prediction_files_hold_every_column_and_a_resume_drops_later_epochs(tmp_path):
  files = PredictionFiles(tmp_path)
  files.epoch(_report(1, dev={'prediction': np.asarray([1, 0]), 'label': np.asarray([1, 1])}))
  files.epoch(_report(2, dev={'prediction': np.asarray([0.5], np.float32),
                              'label': np.asarray([0.25], np.float32),
                              'condition': np.asarray(['test'])}))
  assert _lines(tmp_path / 'predictions' / 'epoch1-dev.jsonl') == [
      {'idx': 0, 'prediction': 1, 'label': 1}, {'idx': 1, 'prediction': 0, 'label': 1}]
  assert _lines(tmp_path / 'predictions' / 'epoch2-dev.jsonl') == [
      {'idx': 0, 'prediction': 0.5, 'label': 0.25, 'condition': 'test'}]
  PredictionFiles(tmp_path, epoch=1)
  assert sorted(p.name for p in (tmp_path / 'predictions').iterdir()) == ['epoch1-dev.jsonl']


def test_a_new_logger_is_one_class(tmp_path):
  class Counting(Writer):
    def __init__(self):
      self.calls = []

    def step(self, record):
      self.calls.append(('step', record['step']))

    def epoch(self, report):
      self.calls.append(('epoch', report.epoch.epoch))

  counting = Counting()
  writers = Writers([counting, MetricLines(tmp_path)])
  writers.step({'step': 1, 'epoch': 1})
  writers.masks(np.asarray([1]), {})  # a writer that takes no masks ignores them
  writers.epoch(_report(1))
  writers.close()
  assert counting.calls == [('step', 1), ('epoch', 1)]
  assert len(_lines(tmp_path / 'metrics.jsonl')) == 2


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(tensors=st.integers(1, 5), steps=st.integers(1, 12), data=st.data(),
                  parts=st.sampled_from([('mask',), tuple(metrics_log.MASK_PARTS)]))
def test_mask_rows_survive_a_kill_and_a_resume(tmp_path_factory, tensors, steps, data, parts):
  directory = tmp_path_factory.mktemp('masks')
  names = [f'layer/{i}/kernel' for i in range(tensors)]
  rng = np.random.default_rng(steps)
  masks = {part: rng.random((steps, tensors)).astype(np.float32) for part in parts}
  row = lambda step: {part: m[step - 1][None] for part, m in masks.items()}
  log = MaskFile(directory, names, parts=parts)
  for step in range(1, steps + 1):
    log.masks(np.asarray([step]), row(step))
  log.close()
  # A kill cuts the last row short; the resume starts from a checkpoint before it.
  path = directory / metrics_log.MASK_FILE
  cut = data.draw(st.integers(0, metrics_log.mask_dtype(tensors, parts).itemsize - 1))
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) - cut])
  # The rows up to a checkpoint are written before it, so only a later row is cut.
  start = data.draw(st.integers(0, steps - (cut > 0)))
  # Resumed by a version that would record every part: the file keeps its own.
  resumed = MaskFile(directory, names, parts=tuple(metrics_log.MASK_PARTS), step=start)
  assert resumed.parts == parts
  for step in range(start + 1, steps + 1):
    resumed.masks(np.asarray([step]), {**row(step), 'first': None, 'second': None}
                  if parts == ('mask',) else row(step))
  resumed.close()
  assert metrics_log.mask_parts(directory) == parts
  for part, expected in masks.items():
    read_names, read_steps, read = read_masks(directory, part)
    assert read_names == names
    assert read_steps.tolist() == list(range(1, steps + 1))
    np.testing.assert_array_equal(read, expected)


def test_mask_file_layout_and_a_run_without_masks(tmp_path):
  log = MaskFile(tmp_path, ['a', 'b'])
  log.masks(np.asarray([3, 4]), {'mask': np.asarray([[1.0, 0.5], [0.0, 1.0]], np.float32)})
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
  log = MaskFile(tmp_path, ['a'], parts=tuple(metrics_log.MASK_PARTS))
  log.masks(np.asarray([7]), {'mask': np.asarray([[0.5]], np.float32),
                              'first': np.asarray([[1.0]], np.float32),
                              'second': np.asarray([[0.0]], np.float32)})
  log.close()
  raw = (tmp_path / metrics_log.MASK_FILE).read_bytes()
  assert len(raw) == 8 + 3 * 4 and np.frombuffer(raw[8:], '<f4').tolist() == [0.5, 1.0, 0.0]
  header = json.loads((tmp_path / metrics_log.MASK_HEADER).read_text())
  assert header['parts'] == ['mask', 'first', 'second']
  assert sorted(header['row']) == ['first', 'mask', 'second', 'step']
