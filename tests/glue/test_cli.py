"""The commands' shared conventions: a user error is one ``error:`` line, and
process-wide settings are made by the process entry alone, so calling a
command's ``main(argv)`` from Python (as the tests do) leaves the caller's
process as it was."""

import errno
import importlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import e2e_benchmark, step_benchmark
from rose_jax._src import cpu_malloc
from rose_jax.glue import cli
from rose_jax.glue.commands import analyze, evaluate, finetune, report, reproduce

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {'examples/finetune.py': finetune, 'examples/evaluate.py': evaluate,
            'examples/analyze.py': analyze, 'examples/report.py': report,
            'examples/reproduce.py': reproduce,
            'rose_jax/glue/commands/finetune.py': finetune,
            'benchmarks/step_benchmark.py': step_benchmark,
            'benchmarks/e2e_benchmark.py': e2e_benchmark}
CONSOLE = ('rose-finetune', 'rose-evaluate', 'rose-analyze', 'rose-report', 'rose-reproduce')


@pytest.mark.parametrize('path', sorted(COMMANDS))
def test_main_leaves_malloc_and_logging_as_they_are(path, monkeypatch, capsys):
  changed = []
  monkeypatch.setattr(cpu_malloc, 'keep_freed_memory', lambda: changed.append('malloc'))
  monkeypatch.setattr(logging, 'basicConfig', lambda **_: changed.append('logging'))
  level = logging.getLogger('rose_jax').level
  with pytest.raises(SystemExit) as done:
    COMMANDS[path].main(['--help'])
  assert done.value.code == 0 and 'usage:' in capsys.readouterr().out
  assert changed == [] and logging.getLogger('rose_jax').level == level


# Runs each command as a script with --help, keep_freed_memory replaced by a marker.
ENTRY = '''
import runpy, sys
from rose_jax._src import cpu_malloc
cpu_malloc.keep_freed_memory = lambda: print('MALLOC SET', flush=True)
for path in sys.argv[1:]:
  sys.argv = [path, '--help']
  try:
    runpy.run_path(path, run_name='__main__')
  except SystemExit as done:
    print(path, 'exited', done.code, flush=True)
'''


def test_the_script_entry_sets_malloc_before_main():
  paths = sorted(COMMANDS)
  out = subprocess.run([sys.executable, '-c', ENTRY, *paths], cwd=ROOT, capture_output=True,
                       text=True, check=True, env={**os.environ, 'PYTHONPATH': str(ROOT)}).stdout
  # Each script: the marker, then its help, then its exit.
  for path in paths:
    marker, usage, exit_line = (out.find(s) for s in ('MALLOC SET', 'usage:', f'{path} exited 0'))
    assert 0 <= marker < usage < exit_line, (path, out)
    out = out[exit_line:].split('\n', 1)[1]


def test_the_console_commands_are_installed_and_run():
  entry_points = {e.name: e for e in importlib.metadata.entry_points(group='console_scripts')
                  if e.name.startswith('rose-')}
  assert sorted(entry_points) == sorted(CONSOLE)
  for name, entry in entry_points.items():
    module = importlib.import_module(entry.module)
    assert entry.attr == 'cli' and module.__name__.endswith(name[len('rose-'):])
  script = shutil.which('rose-report', path=str(Path(sys.executable).parent))
  assert script, 'rose-report is not beside this Python: install the package'
  done = subprocess.run([script, '--help'], capture_output=True, text=True)
  assert done.returncode == 0 and done.stdout.startswith('usage: rose-report')


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
  @cli.one_line_errors
  def main(error):
    raise error

  assert main(ValueError('bad\n  value')) == 2
  assert capsys.readouterr().err == 'error: bad value\n'
  assert main(FileNotFoundError(errno.ENOENT, 'No such file or directory', 'x/y.json')) == 2
  assert capsys.readouterr().err == 'error: [Errno 2] No such file or directory: \'x/y.json\'\n'
  with pytest.raises(KeyError):
    main(KeyError('a bug'))


def test_progress_bar_shows_elapsed_and_remaining_time():
  bar = cli.progress_bar(total=10, initial=4, enabled=True)
  try:
    text = str(bar)
  finally:
    bar.close()
  assert '4/10' in text and '<' in text.split('[')[1]  # [elapsed<remaining, rate]
