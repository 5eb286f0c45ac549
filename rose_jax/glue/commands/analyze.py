"""Analyse fine-tuning runs: loss landscapes, interpolation, dropout
disagreement, mask maps and training curves (PNG and SVG, with the raw numbers).

  rose-analyze landscape runs/sst2-rose-ensemble-seed1
  rose-analyze interpolate runs/sst2-vanilla-seed1 runs/sst2-rose-ensemble-seed1
  rose-analyze disagreement runs/* --passes 2
  rose-analyze masks runs/sst2-rose-first-seed1 runs/sst2-rose-second-seed1
  rose-analyze curves runs/* --output-dir analysis/
  rose-analyze probing runs/msgs/ --output-dir analysis/

landscape and disagreement write into each run's analysis/ folder, whose
flatness numbers rose-report tabulates; the others write into --output-dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rose_jax.glue import analysis, figures, plots, report
from rose_jax.glue import options as config_lib
from rose_jax.glue.cli import one_line_errors, run_as_process


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  commands = p.add_subparsers(dest='command', required=True)

  def evaluation(sub):
    sub.add_argument('--examples', type=int, default=512,
                     help='the first N GLUE dev examples make the evaluation subset [512]')
    sub.add_argument('--chunk', type=int, help='points per vmapped call (default: as many as '
                     "fit 80%% of the free device memory, from XLA's estimate)")
    sub.add_argument('--no-progress', dest='progress', action='store_false')

  sub = commands.add_parser('landscape', help='2D loss contours around each run\'s best model')
  sub.add_argument('runs', nargs='+')
  sub.add_argument('--points', type=int, default=51, help='grid points per axis [51]')
  sub.add_argument('--low', type=float, default=-0.25)
  sub.add_argument('--high', type=float, default=0.25)
  sub.add_argument('--seed', type=int, default=0, help="the directions' seed [0]")
  sub.add_argument('--rise', type=float, default=0.1,
                   help='the flat area is where the loss is within RISE of the centre [0.1]')
  evaluation(sub)

  sub = commands.add_parser('interpolate', help='loss and accuracy between two runs')
  sub.add_argument('first')
  sub.add_argument('second')
  sub.add_argument('--points', type=int, default=51)
  sub.add_argument('--low', type=float, default=-0.5)
  sub.add_argument('--high', type=float, default=1.5)
  sub.add_argument('--output-dir', default='analysis')
  evaluation(sub)

  sub = commands.add_parser('disagreement', help='share of dev examples whose dropout passes '
                            'disagree, and the logged share over training')
  sub.add_argument('runs', nargs='+')
  sub.add_argument('--passes', type=int, default=2)
  sub.add_argument('--examples', type=int, default=512)
  sub.add_argument('--seed', type=int, default=0)
  sub.add_argument('--output-dir', default='analysis')

  sub = commands.add_parser('masks', help="heat maps of what ROSE kept, per layer and kind")
  sub.add_argument('runs', nargs='+')
  sub.add_argument('--output-dir', default='analysis')

  sub = commands.add_parser('probing', help='MSGS probing runs: the Matthews correlation on '
                            'disambiguating rows, a dot per run (the paper\'s Figure 3)')
  sub.add_argument('runs', nargs='+', help='run directories, or folders holding them')
  sub.add_argument('--output-dir', default='analysis')

  sub = commands.add_parser('curves', help='training curves of several runs')
  sub.add_argument('runs', nargs='+')
  sub.add_argument('--output-dir', default='analysis')
  args = p.parse_args(argv)
  for name in ('points', 'examples', 'chunk', 'passes'):
    if getattr(args, name, None) is not None:
      config_lib.at_least_one(name, getattr(args, name))
  if getattr(args, 'passes', 2) < 2:
    raise config_lib.ConfigError(f'--passes must be at least 2, got {args.passes}.')
  return args


@one_line_errors
def main(argv=None) -> int:
  args = parse_args(argv)
  if args.command == 'landscape':
    for run in args.runs:
      summary = analysis.landscape(run, points=args.points, low=args.low, high=args.high,
                                   examples=args.examples, seed=args.seed, chunk=args.chunk,
                                   rise=args.rise, progress=args.progress)
      print(f'{run}: flat area {summary["flat_area"]:.4f}; {summary["points"]} points in '
            f'{summary["seconds"]:.1f} s after {summary["compile_seconds"]:.1f} s compiling '
            f'({summary["points_per_second"]:.2f} points/s, {summary["chunk"]} per call, '
            f'{summary["gflops_per_second"]:.1f} GFLOP/s by XLA\'s count); wrote '
            f'{Path(run) / "analysis"}/landscape.*')
  elif args.command == 'interpolate':
    summary = analysis.interpolate(args.first, args.second, args.output_dir, points=args.points,
                                   low=args.low, high=args.high, examples=args.examples,
                                   chunk=args.chunk, progress=args.progress)
    sharpness = []
    for run, name, side in ((args.first, 'first_sharpness', '--low below 0'),
                            (args.second, 'second_sharpness', '--high above 1')):
      value = summary[name]
      sharpness.append(f'{value:.4f} at {run}' if value is not None else
                       f'none at {run} (the line has no point past it; give {side})')
    print(f'barrier {summary["barrier"]:.4f}; sharpness {", ".join(sharpness)}; wrote '
          f'{args.output_dir}/interpolation.*')
  elif args.command == 'disagreement':
    for run in args.runs:
      share = analysis.disagreement(run, passes=args.passes, examples=args.examples,
                                    seed=args.seed)
      print(f'{run}: {100 * share:.2f}% of examples disagree over {args.passes} passes')
    try:
      paths = figures.disagreement_over_steps(args.runs, Path(args.output_dir) /
                                               'disagreement')
      print(f'wrote {", ".join(map(str, paths))}')
    except ValueError as error:  # measured, but none logged it during training
      print(f'no plot over training: {error}')
  elif args.command == 'probing':
    points = report.probing_points(report.collect(args.runs))
    if not points:
      raise config_lib.ConfigError('None of these runs is an MSGS probing run (--task msgs).')
    paths = plots.dots(points, Path(args.output_dir) / 'probing',
                       ylabel='Matthews correlation on disambiguating rows',
                       title='Probing: 1 prefers the linguistic feature, -1 the surface one')
    print(f'wrote {", ".join(map(str, paths))}')
  else:
    draw = figures.mask_map if args.command == 'masks' else figures.training_curves
    paths = draw(args.runs, Path(args.output_dir) / args.command)
    print(f'wrote {", ".join(map(str, paths))}')
  return 0


def cli() -> None:
  """The ``rose-analyze`` console command."""
  run_as_process(main)


if __name__ == '__main__':
  cli()
