"""Where a compiled step spends its time: a jax.profiler trace, by kind of op.

XLA:CPU names each trace event after the HLO instruction that ran
(``ynn_fusion.247``, ``copy_bitcast_fusion.63``, ``dot.336``). Reading the
compiled module's text tells what each instruction computes, so the trace
sums into a few kinds: matmuls, layout copies, random bits, and so on.
Other backends name their events after kernels, which this does not
attribute; there the trace itself (``perfetto_trace.json.gz``, for Perfetto
or xprof) is the place to look.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

KINDS = ('matmul', 'layout copy', 'random bits', 'gather/scatter', 'reduction',
         'elementwise', 'other')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*?\s([a-z][\w-]*)\(')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition)=%([\w.-]+)')
_ELEMENTWISE = {'add', 'subtract', 'multiply', 'divide', 'select', 'compare', 'exponential',
                'tanh', 'maximum', 'minimum', 'convert', 'negate', 'sqrt', 'rsqrt', 'log'}


def _kind(opcode: str, body: str) -> str:
  # First match wins: a fusion that transposes a dropout mask is a layout copy.
  if opcode in ('dot', 'convolution') or ' dot(' in body or ' convolution(' in body:
    return 'matmul'
  if opcode in ('copy', 'transpose', 'slice', 'concatenate', 'dynamic-slice',
                'dynamic-update-slice') or re.search(
                    r' (transpose|copy|concatenate|dynamic-update-slice)\(', body):
    return 'layout copy'
  if ' xor(' in body and 'shift-' in body:
    return 'random bits'
  if re.search(r' (gather|scatter)\(', body) or opcode in ('gather', 'scatter'):
    return 'gather/scatter'
  if ' reduce(' in body or opcode in ('reduce', 'reduce-window'):
    return 'reduction'
  if opcode in ('fusion', 'broadcast', 'custom-call') or opcode in _ELEMENTWISE:
    return 'elementwise'
  return 'other'


def op_kinds(hlo_text: str) -> dict[str, str]:
  """Maps each instruction of a compiled module's text to one of ``KINDS``."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    if (m := _COMPUTATION.match(line)):
      current = bodies.setdefault(m.group(1), [])
    elif line.startswith('}'):
      current = None
    elif current is not None:
      current.append(line)

  def flattened(name: str, seen: set[str]) -> str:
    if name in seen or name not in bodies:
      return ''
    seen.add(name)
    text = '\n'.join(bodies[name])
    return text + ''.join(flattened(c, seen) for c in _CALLS.findall(text))

  kinds = {}
  for lines in bodies.values():
    for line in lines:
      if (m := _INSTRUCTION.match(line)):
        called = ''.join(flattened(c, set()) for c in _CALLS.findall(line))
        kinds[m.group(1)] = _kind(m.group(2), called)
  return kinds


def newest_trace(log_dir: str | Path) -> Path:
  """The ``perfetto_trace.json.gz`` that the latest trace into ``log_dir`` wrote."""
  traces = sorted(Path(log_dir).rglob('perfetto_trace.json.gz'), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f'No perfetto_trace.json.gz under {log_dir}: was the trace started '
                            'with jax.profiler.trace(..., create_perfetto_trace=True)?')
  return traces[-1]


def time_by_kind(trace_file: str | Path, kinds: dict[str, str]) -> dict[str, float]:
  """Seconds of op time per kind (events of the module's instructions only).

  Ops that run concurrently each count in full, so the total can exceed the
  wall time of the step; the shares are what to read.
  """
  with gzip.open(trace_file, 'rt') as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals: collections.Counter[str] = collections.Counter()
  for event in events:
    if event.get('ph') == 'X' and event.get('name') in kinds:
      totals[kinds[event['name']]] += event.get('dur', 0) / 1e6
  return dict(totals)
