"""The reproduction command on a tiny model: the plan and its estimate, a
kill in the middle, a second invocation that finishes, and the report equal
to an uninterrupted reproduction's; runs with other settings refused."""

import functools

import pytest

from rose_jax.glue.commands import reproduce
from rose_jax.training import sweep as sweep_lib
from tests.helpers import fails, write_sst2
from tests.helpers.runs import run_copied_at


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  write_sst2(root / 'sst2', train=16, dev=8)
  return root


def _args(files, data, root, *extra):
  return ['--tasks', 'sst2', '--methods', 'vanilla', 'rose-ensemble', '--seeds', '1', '2',
          '--data-dir', str(data), '--model', files['model'], '--epochs', '2', '--batch-size',
          '8', '--max-length', '12', '--no-progress', '--learning-rate', '1e-3',
          '--output-root', str(root), *extra]


def test_a_killed_reproduction_finishes_on_a_second_invocation(files, data, tmp_path,
                                                               monkeypatch, capsys):
  root = tmp_path / 'runs'
  assert reproduce.main(_args(files, data, root, '--dry-run', '--measured-steps', '1')) == 0
  plan = capsys.readouterr().out
  assert '| sst2 | vanilla | 1 2 | 2 new | 4 |' in plan
  assert '| sst2 | rose-ensemble | 1 2 | 2 new | 4 |' in plan
  assert '4 runs, 4 to train; about' in plan and 'an estimate' in plan
  assert not root.exists()  # a plan writes nothing
  # An uninterrupted reproduction, and its directory as a kill at the third step
  # of the first sweep (after its first epoch's checkpoint) leaves it.
  whole = tmp_path / 'whole'
  assert run_copied_at(monkeypatch, 3, functools.partial(reproduce.main, _args(files, data, whole)),
                       {whole: root}, sweep_lib, 'make_sweep_step') == 0
  capsys.readouterr()
  # The plan alone, without measuring: what was started and what is new.
  assert reproduce.main(_args(files, data, root, '--dry-run', '--measured-steps', '0')) == 0
  plan = capsys.readouterr().out
  assert '| sst2 | vanilla | 1 2 | 2 started | 4 | - |' in plan
  assert '| sst2 | rose-ensemble | 1 2 | 2 new | 4 | - |' in plan
  assert '4 runs, 4 to train.' in plan and 'estimate' not in plan
  assert reproduce.main(_args(files, data, root)) == 0
  tables = [(r / 'report' / 'table.csv').read_text() for r in (root, whole)]
  assert tables[0] == tables[1] and 'rose-ensemble,2,' in tables[0]
  # A third invocation finds everything finished and only writes the report again.
  capsys.readouterr()
  assert reproduce.main(_args(files, data, root)) == 0
  assert '4 runs, 0 to train' in capsys.readouterr().out


def test_runs_with_other_settings_are_refused_with_how_to_keep_both(files, data, tmp_path,
                                                                    capsys):
  root = tmp_path / 'runs'
  assert reproduce.main([*_args(files, data, root), '--methods', 'vanilla']) == 0
  fails(reproduce.main, [*_args(files, data, root), '--methods', 'vanilla', '--epochs', '1'],
        capsys, '--epochs: 2 when started, 1 now')
  fails(reproduce.main, [*_args(files, data, root), '--methods', 'vanilla', '--epochs', '1'],
        capsys, 'To keep both, give this plan another --output-root.')
  fails(reproduce.main, [*_args(files, data, root), '--tasks', 'boolq'], capsys,
        '--tasks boolq: not a GLUE task')
  fails(reproduce.main, [*_args(files, data, root), '--dry-run', '--measured-steps', '-1'],
        capsys, '--measured-steps must be 0 (no estimate) or more, got -1.')
