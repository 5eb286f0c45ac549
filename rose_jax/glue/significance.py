"""The paper's significance marks: one-tailed Welch t-tests over seeds.

Table 1 of the paper bolds a ROSE result where a one-tailed t-test over the
seeds gives p < 0.05 against the baselines. Here each ROSE row (a ROSE
variant, or R-Drop + ROSE) is tested against each baseline row (vanilla,
R-Drop, CHILD-TUNING_D, SMART, FreeLB) in each column, with Welch's test
(``scipy.stats.ttest_ind(..., equal_var=False, alternative='greater')``:
the seeds' spreads need not be equal); a cell is marked where it beats every
baseline of its column. A test needs two seeds on each side; a cell without
them is left unmarked, and the report says why.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from rose_jax.glue import tables

BASELINES = ('vanilla', 'rdrop', 'child-tuning-d', 'smart', 'freelb')
ALPHA = 0.05


def method_of(row: str) -> str:
  """A row label's method (``"rose-ensemble (upper=0.4)"`` -> ``rose-ensemble``)."""
  return row.split(' ')[0]


def is_rose(row: str) -> bool:
  return 'rose' in method_of(row)


@dataclasses.dataclass(frozen=True)
class Test:
  """One ROSE row against one baseline row in one column.

  Attributes:
    column: the column's header.
    row: the ROSE row.
    baseline: the baseline row.
    seeds: the ROSE row's seeds there.
    baseline_seeds: the baseline's.
    statistic: Welch's t (NaN where untested).
    p: the one-tailed p-value that the ROSE row is higher (NaN where untested).
  """
  column: str
  row: str
  baseline: str
  seeds: int
  baseline_seeds: int
  statistic: float
  p: float

  @property
  def tested(self) -> bool:
    return self.seeds >= 2 and self.baseline_seeds >= 2


def welch(higher: list[float], lower: list[float]) -> tuple[float, float]:
  """``(t, p)`` of the one-tailed Welch t-test that ``higher``'s mean is the
  higher; NaN for fewer than two values on a side or no spread on both."""
  if len(higher) < 2 or len(lower) < 2:
    return math.nan, math.nan
  import scipy.stats
  with warnings.catch_warnings():  # no spread on either side: NaN, left unmarked
    warnings.simplefilter('ignore', RuntimeWarning)
    result = scipy.stats.ttest_ind(np.asarray(higher, np.float64), np.asarray(lower, np.float64),
                                   equal_var=False, alternative='greater')
  return float(result.statistic), float(result.pvalue)


def tests(columns: dict[str, dict[str, list[float]]]) -> list[Test]:
  """Every ROSE row against every baseline row, per column;
  ``columns[header][row]`` are a cell's scores over seeds."""
  out = []
  for header, cells in columns.items():
    baselines = [row for row in cells if method_of(row) in BASELINES and cells[row]]
    for row in (r for r in cells if is_rose(r) and cells[r]):
      for baseline in baselines:
        t, p = welch(cells[row], cells[baseline])
        out.append(Test(header, row, baseline, len(cells[row]), len(cells[baseline]), t, p))
  return out


def marked(found: list[Test]) -> set[tuple[str, str]]:
  """``(row, column)`` of each ROSE cell whose every test against the
  column's baselines was made and gives p < :data:`ALPHA`."""
  by_cell: dict[tuple[str, str], list[Test]] = {}
  for test in found:
    by_cell.setdefault((test.row, test.column), []).append(test)
  return {cell for cell, cell_tests in by_cell.items()
          if all(t.tested and t.p < ALPHA for t in cell_tests)}


def untested(found: list[Test]) -> list[str]:
  """The cells left unmarked for want of seeds, as ``row (column)``."""
  cells = {(t.row, t.column): None for t in found if not t.tested}
  return [f'{row} ({column})' for row, column in cells]


def notes(found: list[Test]) -> str:
  """What the marks mean, and which cells were not tested and why."""
  if not found:
    return ''
  text = (f'\nBold: a ROSE row above every baseline of its column at p < {ALPHA} '
          '(one-tailed Welch t-tests over seeds; the p-values are in significance.csv).\n')
  missing = untested(found)
  if missing:
    text += ('Not tested (fewer than two seeds on a side): ' + ', '.join(missing) + '.\n')
  return text


def csv_text(found: list[Test]) -> str:
  header = ['column', 'row', 'baseline', 'seeds', 'baseline_seeds', 't', 'p_one_tailed']
  return tables.to_csv(header, [[t.column, t.row, t.baseline, t.seeds, t.baseline_seeds,
                          f'{t.statistic:.6g}', f'{t.p:.6g}'] for t in found])
