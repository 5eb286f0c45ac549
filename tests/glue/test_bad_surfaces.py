"""Ordinary mistakes on the newer surfaces, each one `error:` line naming the
file or option and the fix, before anything is written, and nothing already
written lost: checkpoints and tokenizers on disk, tokenisation limits, sweeps
over devices, run directories read by the analysis and report commands."""

import json
import shutil
from pathlib import Path

import pytest

from rose_jax.glue.commands import analyze, evaluate, finetune
from rose_jax.glue.commands import report as report_cli
from tests.helpers import cli_args, fails, snapshot, write

# -- Checkpoints and tokenizers on disk ------------------------------------------

CHECKPOINTS = {
    'config list': ('config.json', '[1, 2]', 'config.json holds a JSON list, not an object'),
    'config cut': ('config.json', None, 'config.json is not valid JSON'),
    'config incomplete': ('config.json', '{"model_type": "bert"}',
                          'config.json is not a complete bert configuration'),
    'weights garbage': ('model.safetensors', 'not a safetensors file',
                        'model.safetensors is not a readable safetensors file'),
    'weights empty': ('model.safetensors', '', 'model.safetensors is not a readable'),
    'tokenizer config cut': ('tokenizer_config.json', '{"do_lower_case": ',
                             'tokenizer_config.json is not valid JSON'),
    'tokenizer list': ('tokenizer_config.json', '[]', 'tokenizer_config.json holds a JSON list'),
}


@pytest.fixture(scope='module')
def finished(finished_run, tmp_path_factory):
  root = tmp_path_factory.mktemp('bad-surfaces') / 'runs'
  shutil.copytree(finished_run, root / finished_run.name)
  return root


@pytest.mark.parametrize('case', sorted(CHECKPOINTS))
def test_a_damaged_checkpoint_is_named_and_an_overwritten_run_survives(files, finished, tmp_path,
                                                                        capsys, case):
  name, content, match = CHECKPOINTS[case]
  model = tmp_path / 'model'
  shutil.copytree(files['model'], model)
  file = model / name
  file.write_text(file.read_text()[:40] if content is None else content)
  before = snapshot(finished)
  line = fails(finetune.main, [*cli_args(files, finished, model=model), '--overwrite'], capsys,
               match)
  assert str(file) in line
  assert snapshot(finished) == before


def test_a_sharded_checkpoint_without_its_shards_is_named(files, tmp_path, capsys):
  model = tmp_path / 'model'
  shutil.copytree(files['model'], model)
  (model / 'model.safetensors').rename(model / 'part-1.safetensors')
  write(model / 'model.safetensors.index.json', json.dumps(
      {'weight_map': {'bert.embeddings.word_embeddings.weight': 'part-2.safetensors'}}))
  fails(finetune.main, cli_args(files, tmp_path / 'runs', model=model), capsys,
        'part-2.safetensors is missing')
  write(model / 'model.safetensors.index.json', '{"metadata": {}}')
  fails(finetune.main, cli_args(files, tmp_path / 'runs', model=model), capsys,
        'has no "weight_map"')
  assert not (tmp_path / 'runs').exists()


# -- Tokenisation limits and empty text -------------------------------------------

def test_a_max_length_without_room_for_text_is_refused(files, tmp_path, capsys):
  fails(finetune.main, cli_args(files, tmp_path / 'runs', max_length='2'), capsys,
        '--max-length 2 leaves no room for text: the tokenizer adds 2 special tokens to each '
        'example of 1 text(s). Use at least 3')
  fails(evaluate.main, [files['model'], '--task', 'sst2', '--dev-file', files['dev_file'],
                        '--no-adv', '--max-length', '2'], capsys, 'leaves no room for text')
  assert not (tmp_path / 'runs').exists()


def test_a_training_file_without_text_is_refused(files, tmp_path, capsys):
  empty = write(tmp_path / 'empty.tsv', 'sentence\tlabel\n' + ' \t1\n\t0\n' * 12)
  fails(finetune.main, cli_args(files, tmp_path / 'runs', train_file=empty), capsys,
        "empty.tsv: every example's text is empty (columns ['sentence'])")
  assert not (tmp_path / 'runs').exists()


def test_evaluate_checks_the_length_and_a_custom_tasks_labels(files, capsys):
  fails(evaluate.main, [files['model'], '--task', 'sst2', '--dev-file', files['dev_file'],
                        '--no-adv', '--max-length', '1000'], capsys,
        "--max-length 1000 exceeds what")
  fails(evaluate.main, [files['model'], '--task', 'custom', '--text-columns', 'sentence',
                        '--dev-file', files['dev_file'], '--max-length', '12'], capsys,
        '--task custom needs --labels')


# -- Sweeps over devices and the baselines' loops ------------------------------------

@pytest.mark.parametrize('option, value, match', [
    ('--devices-per-member', '0', '--devices-per-member must be at least 1, got 0'),
    ('--devices-per-member', '3', '--devices-per-member 3 does not divide the 8 devices'),
    ('--sweep-chunk', '0', '--sweep-chunk must be at least 1, got 0'),
])
def test_a_sweep_over_devices_refuses_impossible_layouts(files, tmp_path, capsys, option, value,
                                                         match):
  argv = [*cli_args(files, tmp_path / 'runs', parallel=None), '--sweep', 'seed=1,2', option,
          value]
  fails(finetune.main, argv, capsys, match)
  assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('option, match', [
    (['--method', 'smart', '--smart-steps', '1000000000'], '--smart-steps 1000000000 is more '
     'than 32: each ascent step is unrolled'),
    (['--method', 'freelb', '--freelb-steps', '100'], '--freelb-steps 100 is more than 32'),
])
def test_loops_unrolled_into_the_step_are_bounded(files, tmp_path, capsys, option, match):
  fails(finetune.main, [*cli_args(files, tmp_path / 'runs'), *option], capsys, match)


# -- Run directories read by the analysis and report commands ----------------------

def _damaged(finished, tmp_path, damage) -> Path:
  root = tmp_path / 'runs'
  shutil.copytree(finished, root)
  run = next(root.iterdir())
  damage(run)
  return run


def _cut(name):
  return lambda run: (run / name).write_text((run / name).read_text()[:50])


RUN_FILES = {
    'masks.json cut': (_cut('masks.json'), 'masks', 'masks.json is not valid JSON'),
    'masks.json list': (lambda run: (run / 'masks.json').write_text('[]'), 'masks',
                        'masks.json holds a JSON list'),
    'results.json cut': (_cut('results.json'), 'curves', 'results.json is not valid JSON'),
    'results.json cut (report)': (_cut('results.json'), 'report',
                                  'results.json is not valid JSON'),
    'config not settings': (lambda run: (run / 'results.json').write_text(
        '{"config": 3, "finished": true}'), 'report', 'its "config" is no run\'s settings'),
    'unknown task': (lambda run: (run / 'results.json').write_text(
        (run / 'results.json').read_text().replace('"task": "sst2"', '"task": "boolq"')),
        'report', "results.json: Unknown task 'boolq'"),
    'flatness cut': (lambda run: write(run / 'analysis' / 'flatness.json', '{"flat'), 'report',
                     'flatness.json is not valid JSON'),
}


@pytest.mark.parametrize('case', sorted(RUN_FILES))
def test_a_damaged_run_directory_is_named(finished, tmp_path, capsys, case):
  damage, command, match = RUN_FILES[case]
  run = _damaged(finished, tmp_path, damage)
  before = snapshot(run)
  if command == 'report':
    fails(report_cli.main, [str(run.parent), '--output-dir', str(tmp_path / 'out')], capsys,
          match)
  else:
    fails(analyze.main, [command, str(run), '--output-dir', str(tmp_path / 'out')], capsys,
          match)
  assert snapshot(run) == before


def test_a_metric_line_cut_short_is_left_out_of_the_curves(finished, tmp_path):
  run = _damaged(finished, tmp_path, lambda run: (run / 'metrics.jsonl').write_text(
      (run / 'metrics.jsonl').read_text() + '{"step": 9, "lo'))
  assert analyze.main(['curves', str(run), '--output-dir', str(tmp_path / 'out')]) == 0
  assert (tmp_path / 'out' / 'curves.png').stat().st_size > 5000


# -- Cheaper first-order risks ---------------------------------------------------

@pytest.mark.parametrize(('options', 'match'), [
    (['--first-order-every', '0'], '--first-order-every must be at least 1, got 0'),
    (['--kl-fraction', '0'], '--kl-fraction must be a fraction in (0, 1], got 0.0'),
    (['--kl-fraction', '1.5'], '--kl-fraction must be a fraction in (0, 1], got 1.5'),
    (['--kl-fraction', '0.1'], '--kl-fraction: kl_fraction=0.1 of 8 examples (per device) '
                               'leaves none'),
    (['--method', 'vanilla', '--first-order-every', '4'],
     "--first-order-every makes ROSE's first-order risk cheaper, and --method vanilla has none"),
    (['--method', 'rose-second', '--kl-fraction', '0.5'],
     "--kl-fraction makes ROSE's first-order risk cheaper, and --method rose-second has none"),
    (['--sweep', 'first_order_every=2,4'],
     '--sweep cannot vary first_order_every: the members take the KL passes on the same steps'),
    (['--sweep', 'kl_fraction=0.25,0.5'],
     '--sweep cannot vary kl_fraction: it sets the shapes of the compiled step'),
])
def test_cheaper_first_order_risks_name_a_bad_setting(files, tmp_path, capsys, options, match):
  fails(finetune.main, [*cli_args(files, tmp_path / 'runs'), *options], capsys, match)
  assert not (tmp_path / 'runs').exists()
