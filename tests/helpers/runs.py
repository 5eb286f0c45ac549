"""Run directories: runs killed at a given step (or copied as a kill there
leaves them), what the resume and sweep tests compare, what every finished
run must hold, and finished runs written by hand (for the report's tests)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rose_jax.glue import loop
from rose_jax.training import step as step_lib

# What differs between two runs of the same settings: wall time.
TIMING = ('seconds', 'tokens_per_second')


class Killed(Exception):
  """Stands for SIGKILL: nothing after the raise runs."""


def killing(build, kill_at: int, kill):
  """``build`` (a step builder such as ``make_train_step``) whose steps call
  ``kill()`` instead of running step ``kill_at`` (1-based, counted per built
  step)."""

  def make(*args, **kwargs):
    step, calls = build(*args, **kwargs), [0]

    def counted(*a):
      calls[0] += 1
      if calls[0] == kill_at:
        kill()
      return step(*a)
    if hasattr(step, 'lower'):  # XLA's memory estimate compiles without running it
      counted.lower = step.lower
    return counted

  return make


def copy_once(copies: dict) -> Callable[[], None]:
  """An action (for :func:`killing`) that copies each directory of ``copies``
  to its value the first time it is called, and does nothing after: a
  command may build several steps, each reaching the step number."""
  copied = []

  def copy():
    if not copied:
      copied.append(True)
      for source, target in copies.items():
        shutil.copytree(source, target)

  return copy


def _call_at_step(monkeypatch, at: int, action, module, name: str):
  """Makes the steps that ``module.name`` builds call ``action()`` when called
  for step ``at`` (see :func:`killing`); returns a function that puts the
  real builder back."""
  real = getattr(module, name)
  monkeypatch.setattr(module, name, killing(real, at, action))
  return lambda: monkeypatch.setattr(module, name, real)


def kill_at_step(monkeypatch, kill_at: int, module=step_lib, name: str = 'make_train_step'):
  """Makes the steps that ``module.name`` builds raise Killed when called for
  step ``kill_at`` (1-based, counted per built step); returns a function that
  puts the real builder back."""

  def kill():
    raise Killed(f'killed at step {kill_at}')

  return _call_at_step(monkeypatch, kill_at, kill, module, name)


def run_killed_at(monkeypatch, kill_at: int, config: loop.TrainConfig) -> None:
  """Runs ``config`` until the train step is called for step ``kill_at``."""
  restore = kill_at_step(monkeypatch, kill_at)
  with pytest.raises(Killed):
    loop.run(config)
  restore()


def run_copied_at(monkeypatch, copy_at: int, run: Callable[[], Any],
                  copies: dict[Path, Path], module=step_lib, name: str = 'make_train_step'):
  """``run()`` to its end, where, as a step that ``module.name`` builds is
  first called for step ``copy_at``, each directory of ``copies`` is copied
  to its value: what a process killed there (SIGKILL) would leave, without
  training its first steps a second time. Returns what ``run()`` returns."""
  restore = _call_at_step(monkeypatch, copy_at, copy_once(copies), module, name)
  try:
    return run()
  finally:
    restore()


def without_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in TIMING}


def read_run(out: Path) -> dict:
  """A run directory's metric lines, predictions and results, without wall
  times or the settings a resume or a copy may change."""
  metrics = [without_timing(json.loads(x))
             for x in (out / 'metrics.jsonl').read_text().splitlines()]
  predictions = {p.name: p.read_text() for p in sorted((out / 'predictions').iterdir())}
  results = json.loads((out / 'results.json').read_text())
  results['epochs'] = [without_timing(e) for e in results['epochs']]
  for name in ('output_dir', 'resume'):
    results['config'].pop(name, None)
  return {'metrics': metrics, 'predictions': predictions, 'results': results}


def write_finished_run(out: Path, *, predictions: dict[str, list[list[tuple[int, int]]]],
                       **settings) -> dict:
  """A finished run directory written by hand, as the loop would leave it:
  ``results.json`` with ``settings`` as its configuration, per-epoch
  accuracies counted from ``predictions`` (``{split: [epoch 1's (prediction,
  label) pairs, epoch 2's, ...]}``), the prediction files and metric lines.
  Returns the results."""
  config = dataclasses.asdict(loop.TrainConfig(output_dir=str(out), **settings))
  (out / 'predictions').mkdir(parents=True)
  epochs = []
  lines = []
  for epoch in range(len(predictions['glue_dev'])):
    record = {'epoch': epoch + 1, 'step': 2 * (epoch + 1), 'train_loss': 0.5 / (epoch + 1)}
    for split, by_epoch in predictions.items():
      pairs = by_epoch[epoch]
      record[f'{split}_accuracy'] = sum(p == y for p, y in pairs) / len(pairs)
      (out / 'predictions' / f'epoch{epoch + 1}-{split}.jsonl').write_text(''.join(
          json.dumps({'idx': i, 'prediction': p, 'label': y}) + '\n'
          for i, (p, y) in enumerate(pairs)))
    epochs.append(record)
    lines += [{'step': record['step'], 'epoch': epoch + 1, 'loss': record['train_loss']},
              {'type': 'epoch', **record}]
  best = max(epochs, key=lambda r: (r['glue_dev_accuracy'], -r['epoch']))
  results = {'config': config, 'epochs': epochs, 'finished': True,
             'data_digests': {'train_file': 'digest of the training file'},
             'best_epoch': best['epoch'],
             **{k: v for k, v in best.items() if k.endswith('_accuracy')}}
  (out / 'results.json').write_text(json.dumps(results))
  (out / 'metrics.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
  return results


def check_finished_run(out: Path, method: str, *, epochs: int) -> None:
  """What every finished run directory holds, whatever its method: results
  whose accuracies are those of its prediction files, an epoch line per
  epoch, the KL column for the methods that have a KL, and kept fractions
  under 1 for ROSE alone."""
  results = json.loads((out / 'results.json').read_text())
  assert results['finished'] and results['config']['method'] == method
  assert [e['epoch'] for e in results['epochs']] == list(range(1, epochs + 1))
  for record in results['epochs']:
    for split in ('glue_dev', 'adv_dev'):
      lines = (out / 'predictions' / f'epoch{record["epoch"]}-{split}.jsonl').read_text()
      pairs = [json.loads(x) for x in lines.splitlines()]
      assert record[f'{split}_accuracy'] == sum(
          p['prediction'] == p['label'] for p in pairs) / len(pairs)
  best = results['epochs'][results['best_epoch'] - 1]
  assert results['glue_dev_accuracy'] == best['glue_dev_accuracy']
  lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
  assert [x['epoch'] for x in lines if x.get('type') == 'epoch'] == list(range(1, epochs + 1))
  for epoch in (x for x in lines if x.get('type') == 'epoch'):
    assert epoch['train_loss'] > 0 and 0 < epoch['padding_efficiency'] <= 1
    if 'rose' in method:
      assert epoch['train_kept_fraction'] < 1.0
    else:
      assert epoch['train_kept_fraction'] == 1.0
    # The KL column: a dropout-pass KL, or SMART's regulariser; none for the others.
    has_kl = method not in ('vanilla', 'rose-second', 'child-tuning-d', 'freelb')
    assert (epoch['train_kl'] > 0) == has_kl, (method, epoch['train_kl'])
  assert (out / 'masks.bin').exists() == ('rose' in method)
