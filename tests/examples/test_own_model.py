"""examples/own_model.py and the README's "ROSE in your own training loop"
run as printed and learn the task they make."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[2]


def _accuracies(output: str) -> list[float]:
  return [float(a) for a in re.findall(r'held-out accuracy ([0-9.]+)', output)]


def test_the_example_fine_tunes_both_models_on_one_device_and_on_all(capsys):
  spec = importlib.util.spec_from_file_location('own_model', ROOT / 'examples' / 'own_model.py')
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  assert example.main(['--steps', '80']) == 0
  output = capsys.readouterr().out
  for model in ('linen', 'function'):
    assert f'{model} model, parallel=none (1 device)' in output
    assert f'{model} model, parallel=shard_map ({jax.device_count()} devices)' in output
  accuracies = _accuracies(output)
  assert len(accuracies) == 4 and min(accuracies) > 0.9, output


def _first_python_block(text: str, after: str) -> str:
  return text.split(after, 1)[1].split('```python\n', 1)[1].split('```', 1)[0]


def _readme_code() -> str:
  code = _first_python_block((ROOT / 'README.md').read_text(), '## ROSE in your own training loop')
  assert len(code.splitlines()) <= 40, 'the README promises about 40 lines'
  return code


def test_the_guide_shows_the_readme_loop():
  guide = (ROOT / 'docs' / 'guides' / 'own_loop.md').read_text()
  assert _first_python_block(guide, '# ROSE in your own training loop') == _readme_code()


def test_the_readme_loop_runs_as_printed(tmp_path):
  # On one device, and learning the task it makes. The docs build runs the
  # same block on 8 devices (the README's and the own-loop guide's copy of it),
  # and data parallelism's equality with one device is tests/training's.
  script = tmp_path / 'own_loop.py'
  script.write_text(_readme_code())
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ' '.join(flags)}
  out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert min(_accuracies(out.stdout)) > 0.9, out.stdout
