"""Summarise fine-tuning runs in the paper's Table 1 layout.

  rose-report runs/ --output-dir report/

Writes table.md and .csv (Table 1, with the significance marks and
significance.csv), flatness.md and .csv (the numbers that rose-analyze
measured), accuracy.png/.svg and curves.png/.svg (training curves), and where
the runs hold them gamma.md/.csv (Table 3), disagreement.md/.csv (Table 4)
and probing.png/.svg (Figure 3); prints the Markdown tables.
"""

from __future__ import annotations

import argparse

from rose_jax.glue import report
from rose_jax.glue.cli import one_line_errors, run_as_process


@one_line_errors
def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('runs', nargs='+', help='run directories, or folders holding them')
  p.add_argument('--output-dir', default='report')
  p.add_argument('--disagreement-steps', type=int, nargs='+', metavar='STEP',
                 help="Table 4's steps (the paper's: 200 600 2000 4000)")
  args = p.parse_args(argv)
  files = report.write_report(args.runs, args.output_dir,
                              disagreement_steps=args.disagreement_steps)
  print(files['markdown'].read_text(), end='')
  for name in ('gamma', 'disagreement', 'flatness'):
    if name in files:
      print('\n' + files[name].read_text(), end='')
  print(f'\nwrote {", ".join(str(f) for f in files.values())}')
  return 0


def cli() -> None:
  """The ``rose-report`` console command."""
  run_as_process(main)


if __name__ == '__main__':
  cli()
