"""Tables as the report writes them: Markdown (with bold cells) and CSV."""

from __future__ import annotations

import csv
import io


def markdown(header: list[str], body: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in body]
  return '\n'.join(lines) + '\n'


def to_csv(header: list[str], body: list[list[str]]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(header)
  writer.writerows(body)
  return buffer.getvalue()


def with_marks(header: list[str], body: list[list[str]],
               marks: set[tuple[str, str]]) -> list[list[str]]:
  """``body`` with each marked ``(row, column)`` cell in bold, as the paper marks them."""
  return [[f'**{cell}**' if (row[0], column) in marks else cell
           for column, cell in zip(header, row, strict=True)] for row in body]
