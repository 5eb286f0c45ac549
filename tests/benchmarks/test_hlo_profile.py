"""Op kinds read from compiled modules, and op time summed from a trace."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo_profile


def compiled_text(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


@pytest.mark.parametrize('shape', [(64, 32), (128, 256)])
def test_matmuls_are_matmuls_and_nothing_else_is(shape):
  a, b = jnp.ones(shape), jnp.ones(shape[::-1])
  kinds = hlo_profile.op_kinds(compiled_text(lambda a, b: a @ b, a, b))
  assert 'matmul' in kinds.values()
  elementwise = hlo_profile.op_kinds(compiled_text(lambda a: jnp.tanh(a) * 2 + 1, a))
  assert 'matmul' not in elementwise.values()


def test_random_bits_and_transposes_are_told_apart():
  key = jax.random.key(0)
  bits = hlo_profile.op_kinds(compiled_text(lambda k: jax.random.bits(k, (256, 256)), key))
  assert 'random bits' in bits.values()
  x = jnp.arange(512 * 256, dtype=jnp.float32).reshape(512, 256)
  transposed = hlo_profile.op_kinds(compiled_text(lambda x: jnp.sin(x).T + 1, x))
  assert 'layout copy' in transposed.values()
  assert 'random bits' not in transposed.values()


def test_time_by_kind_sums_only_the_module_s_instructions(tmp_path):
  events = [{'ph': 'X', 'name': 'dot.1', 'dur': 3000}, {'ph': 'X', 'name': 'dot.1', 'dur': 1000},
            {'ph': 'X', 'name': 'copy.2', 'dur': 500}, {'ph': 'X', 'name': 'Thunk', 'dur': 9e6},
            {'ph': 'i', 'name': 'dot.1'}]
  trace = tmp_path / 'plugins' / 'perfetto_trace.json.gz'
  trace.parent.mkdir()
  with gzip.open(trace, 'wt') as f:
    json.dump({'traceEvents': events}, f)
  assert hlo_profile.newest_trace(tmp_path) == trace
  seconds = hlo_profile.time_by_kind(trace, {'dot.1': 'matmul', 'copy.2': 'layout copy'})
  assert seconds == pytest.approx({'matmul': 0.004, 'layout copy': 0.0005})


def test_a_missing_trace_says_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match='create_perfetto_trace=True'):
    hlo_profile.newest_trace(tmp_path)
