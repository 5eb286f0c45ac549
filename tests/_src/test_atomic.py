"""Atomic writes: a failure leaves the old file or directory, and no debris."""

import errno
import os

import pytest

from rose_jax._src import atomic


def _disk_full(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device')


def test_write_replaces_the_file_whole(tmp_path):
  target = tmp_path / 'results.json'
  atomic.write_json(target, {'a': 1})
  atomic.write_json(target, {'a': 2})
  assert target.read_text() == '{\n  "a": 2\n}'
  assert os.listdir(tmp_path) == ['results.json']


@pytest.mark.parametrize('fail_in', ['fsync', 'replace'])
def test_disk_full_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, fail_in):
  target = tmp_path / 'results.json'
  target.write_text('old')
  monkeypatch.setattr(os, fail_in, _disk_full)
  with pytest.raises(OSError, match='No space'):
    atomic.write_text(target, 'new and longer')
  monkeypatch.undo()
  assert target.read_text() == 'old'
  assert os.listdir(tmp_path) == ['results.json']


def test_permission_error_leaves_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / 'results.json'
  target.write_text('old')
  real_open = open

  def refusing_open(path, *args, **kwargs):
    if str(path).endswith('.tmp'):
      raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr('builtins.open', refusing_open)
  with pytest.raises(PermissionError):
    atomic.write_bytes(target, b'new')
  monkeypatch.undo()
  assert target.read_text() == 'old' and os.listdir(tmp_path) == ['results.json']


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
  model = tmp_path / 'best_model'
  model.mkdir()
  (model / 'config.json').write_text('old config')
  (model / 'model.safetensors').write_text('old weights')

  def fails_half_way(directory):
    (directory / 'config.json').write_text('new config')
    _disk_full()

  with pytest.raises(OSError):
    atomic.write_directory(model, fails_half_way)
  assert sorted(os.listdir(tmp_path)) == ['best_model']
  assert (model / 'config.json').read_text() == 'old config'
  assert (model / 'model.safetensors').read_text() == 'old weights'

  atomic.write_directory(model, lambda d: (d / 'config.json').write_text('new config'))
  assert sorted(os.listdir(model)) == ['config.json']
  assert sorted(os.listdir(tmp_path)) == ['best_model']
