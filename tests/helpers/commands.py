"""The commands' main(argv) as the tests call it: argument lists, the one-line
failure they must give, and snapshots that show nothing was changed."""

from __future__ import annotations

import socket
from pathlib import Path


def cli_args(files: dict, root, **options) -> list[str]:
  """``finetune.py`` arguments for a fast run on ``files`` under the output
  root ``root``; an option set to None is left out."""
  settings = {'model': files['model'], 'train_file': files['train_file'],
              'dev_file': files['dev_file'], 'adv_file': files['adv_file'],
              'output_root': str(root), 'epochs': '1', 'batch_size': '8', 'max_length': '12',
              'parallel': 'none', 'max_train_samples': '16', **options}
  args = ['--no-progress']
  for name, value in settings.items():
    if value is not None:
      args += [f'--{name.replace("_", "-")}', str(value)]
  return args


def snapshot(root: Path) -> dict:
  """Every path under ``root`` with its bytes (None for a directory)."""
  return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
          for p in sorted(root.rglob('*'))}


def fails(main, argv, capsys, match: str) -> str:
  """Asserts that ``main(argv)`` exits 2 with one ``error:`` line containing
  ``match``; returns the line."""
  capsys.readouterr()
  assert main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  assert match in err[0], err[0]
  return err[0]


def write(path: Path, text: str | bytes) -> str:
  """Writes ``text`` to ``path`` (creating its folder); returns the path as a string."""
  path.parent.mkdir(parents=True, exist_ok=True)
  (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
  return str(path)


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]
