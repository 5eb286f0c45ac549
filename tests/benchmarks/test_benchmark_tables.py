"""docs/benchmark_tables.py: a result's block in the performance guide is its
command, its provenance and the tables its benchmark prints, and the build's
check fails on a stale page."""

import importlib.util
import json
from pathlib import Path

from benchmarks import attention_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _module():
  spec = importlib.util.spec_from_file_location('benchmark_tables',
                                                ROOT / 'docs' / 'benchmark_tables.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_block_is_rendered_from_its_result_and_a_stale_page_fails_the_check(
    tmp_path, monkeypatch, capsys):
  tables = _module()
  result = {'meta': {'command': 'python benchmarks/attention_benchmark.py --repeats 3',
                     'date': '2026-12-06 17:00 UTC', 'cpu_model': 'Some CPU', 'cpu_count': 2,
                     'jax': '0.10.2', 'malloc': 'glibc malloc kept'},
            'rows': [{'layout': 'packed', 'rows': 8, 'einsum_ms': 5.25, 'library_ms': 5.5,
                      'attention_share': 0.027}]}
  (tmp_path / 'attention.json').write_text(json.dumps(result))
  page = tmp_path / 'performance.md'
  page.write_text('Intro.\n\n<!-- benchmark: attention.json -->\nold numbers\n'
                  '<!-- end benchmark -->\n\nOutro.\n')
  monkeypatch.setattr(tables, 'RESULTS', tmp_path)
  monkeypatch.setattr(tables, 'PAGE', page)
  monkeypatch.setattr(tables, 'ROOT', tmp_path)
  assert tables.main(['--check']) == 1  # 'old numbers' are not the result's
  assert 'not what its results render' in capsys.readouterr().err
  assert tables.main([]) == 0
  text = page.read_text()
  assert text.startswith('Intro.\n\n<!-- benchmark: attention.json -->\n')
  assert text.endswith('<!-- end benchmark -->\n\nOutro.\n')
  assert ('`python benchmarks/attention_benchmark.py --repeats 3`: 2026-12-06 17:00 UTC, '
          'Some CPU (2 cores), jax 0.10.2, glibc malloc kept.') in text
  assert attention_benchmark.report(result) in text
  assert '| packed | 8 | 5.25 | 5.50 | 2.7% |' in text
  assert tables.main(['--check']) == 0
