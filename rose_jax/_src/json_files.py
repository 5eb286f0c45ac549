"""Reading a JSON file that this package or a checkpoint wrote, with a
failure that names the file and what it should hold."""

from __future__ import annotations

import json
from pathlib import Path


def read_object(file: str | Path, what: str, error: type[Exception] = ValueError) -> dict:
  """``file``'s JSON object; ``error`` naming the file and ``what`` it should
  hold where it is not UTF-8, not JSON (cut short, damaged) or not an object."""
  file = Path(file)
  try:
    data = json.loads(file.read_text(encoding='utf-8'))
  except UnicodeDecodeError as cause:
    raise error(f'{file} is not UTF-8 text (byte {cause.start}); it should hold {what}.'
                ) from None
  except json.JSONDecodeError as cause:
    raise error(f'{file} is not valid JSON ({cause.msg}, line {cause.lineno}): cut short or '
                f'damaged? It should hold {what}.') from None
  if not isinstance(data, dict):
    raise error(f'{file} holds a JSON {type(data).__name__}, not an object; it should hold '
                f'{what}.')
  return data
