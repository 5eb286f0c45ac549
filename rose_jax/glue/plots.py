"""The figures: matplotlib, saved as PNG and SVG, one colour per method.

:data:`METHOD_COLORS` gives every method the same colour in every figure
(the report's bars, training curves, disagreement lines), in Table 1's order.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rose_jax._src import atomic
from rose_jax.training.methods import METHOD_NAMES

# Baselines in muted colours, ROSE's variants in strong ones (matplotlib's tab10 and one more).
METHOD_COLORS = {
    'vanilla': '#7f7f7f', 'rdrop': '#8c564b', 'child-tuning-d': '#bcbd22', 'smart': '#9467bd',
    'freelb': '#e377c2', 'rose-second': '#1f77b4', 'rose-first': '#2ca02c',
    'rose-ensemble': '#d62728', 'rdrop-rose-first': '#17becf', 'rdrop-rose-second': '#393b79',
    'rdrop-rose-ensemble': '#ff7f0e'}
assert set(METHOD_COLORS) == set(METHOD_NAMES), 'every method needs its colour'


def color(method: str) -> str:
  """A method's colour (a row label like ``"rose-ensemble (upper=0.4)"`` gets its method's)."""
  return METHOD_COLORS.get(method.split(' ')[0], 'black')


def styles(labels) -> dict[str, dict]:
  """Line styles: each label its method's colour, and runs of one method
  told apart by dash pattern."""
  dashes = ('-', '--', ':', '-.')
  seen: dict[str, int] = {}
  out = {}
  for label in labels:
    method = label.split(' ')[0]
    out[label] = {'color': color(label), 'linestyle': dashes[seen.get(method, 0) % len(dashes)]}
    seen[method] = seen.get(method, 0) + 1
  return out


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def save(fig, stem: Path, formats: Sequence[str] = ('png', 'svg')) -> list[Path]:
  """Writes ``fig`` as ``stem.png`` and ``stem.svg`` (atomically, creating
  their folder) and closes it."""
  plt = _pyplot()
  Path(stem).parent.mkdir(parents=True, exist_ok=True)
  paths = []
  for suffix in formats:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=suffix, dpi=150, bbox_inches='tight')
    path = Path(f'{stem}.{suffix}')
    atomic.write_bytes(path, buffer.getvalue())
    paths.append(path)
  plt.close(fig)
  return paths


def contour(alphas: np.ndarray, betas: np.ndarray, loss: np.ndarray, stem: Path, *,
            method: str, title: str) -> list[Path]:
  """Filled contours of a 2D loss landscape, with the solution marked."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.2, 4.4))
  levels = np.linspace(np.min(loss), np.min(loss) + min(np.ptp(loss), 5.0) + 1e-6, 21)
  filled = ax.contourf(alphas, betas, loss.T, levels=levels, cmap='viridis', extend='max')
  ax.contour(alphas, betas, loss.T, levels=levels[::4], colors='white', linewidths=0.5)
  ax.plot([0], [0], marker='*', markersize=12, color=color(method), markeredgecolor='white',
          label=f'{method} solution')
  fig.colorbar(filled, ax=ax, label='cross-entropy loss')
  ax.set_xlabel(r'$\alpha$ (direction $\delta$)')
  ax.set_ylabel(r'$\beta$ (direction $\eta$)')
  ax.set_title(title)
  ax.legend(loc='upper right', fontsize=8)
  return save(fig, stem)


def interpolation(alphas: np.ndarray, loss: np.ndarray, accuracy: np.ndarray, stem: Path, *,
                  labels: tuple[str, str]) -> list[Path]:
  """Loss (left axis) and accuracy (right axis) along the line between two solutions."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(alphas, loss, color='black', label='loss')
  ax.set_xlabel(r'$\alpha$: $(1-\alpha)\,\theta_{1} + \alpha\,\theta_{2}$')
  ax.set_ylabel('cross-entropy loss (solid)')
  right = ax.twinx()
  right.plot(alphas, 100 * accuracy, color='#555555', linestyle='--', label='accuracy')
  right.set_ylabel('accuracy (%, dashed)')
  for x, label in ((0, labels[0]), (1, labels[1])):
    ax.axvline(x, color=color(label), linewidth=1, alpha=0.6)
    ax.annotate(label, (x, 0.02), xycoords=('data', 'axes fraction'), fontsize=7, rotation=90,
                va='bottom', ha='right', color=color(label))
  ax.set_title(r'Linear interpolation: $\theta_{1}$ = ' + labels[0] + r', $\theta_{2}$ = '
               + labels[1], fontsize=9)
  lines = ax.get_legend_handles_labels()
  more = right.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], loc='best', fontsize=8)
  return save(fig, stem)


def lines_over_steps(series: dict[str, tuple[np.ndarray, np.ndarray]], stem: Path, *,
                     ylabel: str, title: str) -> list[Path]:
  """One line per run: ``{label: (steps, values)}``, coloured by method."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  style = styles(series)
  for label, (steps, values) in series.items():
    ax.plot(steps, values, label=label, marker='.' if len(steps) < 30 else None,
            **style[label])
  ax.set_xlabel('training step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
  return save(fig, stem)


STEP_PANELS = (('loss', 'loss', 'steps'), ('ce', 'task loss (CE or MSE)', 'steps'),
               ('kl', 'KL (or consistency, regulariser)', 'steps'),
               ('kept_fraction', 'kept fraction', 'steps'))
# Evaluation sets' names as panel titles.
_SET_TITLES = {'glue_dev': 'GLUE dev', 'adv_dev': 'AdvGLUE dev'}


def _epoch_title(key: str) -> str:
  """``glue_dev_accuracy`` as ``GLUE dev accuracy (x100)``."""
  name, _, metric = key.rpartition('_')
  return f'{_SET_TITLES.get(name, name)} {metric} (x100)'


def curve_panels(runs: dict[str, dict]) -> list[tuple[str, str, str]]:
  """The panels of :func:`curves` that some run has data for: the step
  metrics, then each evaluation result (``{set}_{metric}``) in first-seen order."""
  steps = [panel for panel in STEP_PANELS
           if any(panel[0] in data['steps'] for data in runs.values())]
  keys = dict.fromkeys(key for data in runs.values() for key in data['epochs'])
  return steps + [(key, _epoch_title(key), 'epochs') for key in keys]


def curves(runs: dict[str, dict], stem: Path) -> list[Path]:
  """Training curves of several runs: per-step loss, task loss, KL and kept
  fraction, and each evaluation set's metrics per epoch (x100), each panel
  only where some run logged it. ``runs`` maps a label to ``{"steps": {metric: (steps,
  values)}, "epochs": {metric: (epochs, values)}}``, and optionally ``"legend"``: the
  legend entry and line style it shares with others (a row's seeds)."""
  plt = _pyplot()
  panels = curve_panels(runs) or list(STEP_PANELS[:1])
  from matplotlib.ticker import MaxNLocator
  legends = {label: data.get('legend', label) for label, data in runs.items()}
  style = styles(dict.fromkeys(legends.values()))
  columns = min(3, len(panels))
  fig, axes = plt.subplots(-(-len(panels) // columns), columns, squeeze=False,
                           figsize=(14 * columns / 3, 3.75 * -(-len(panels) // columns)))
  for ax in axes.ravel()[len(panels):]:
    ax.set_visible(False)
  for ax, (metric, name, kind) in zip(axes.ravel(), panels, strict=False):
    for label, data in runs.items():
      if metric not in data[kind]:
        continue
      x, y = data[kind][metric]
      scale = 100 if kind == 'epochs' else 1
      ax.plot(x, scale * np.asarray(y), label=legends[label],
              marker='o' if kind == 'epochs' else None, **style[legends[label]])
    ax.set_xlabel('epoch' if kind == 'epochs' else 'training step')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(name)
    ax.set_title(name)
  # One legend for all panels, from every panel (a run may log no steps at all).
  entries = {}
  for ax in axes.ravel():
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
      entries.setdefault(label, handle)
  if entries:
    fig.legend(list(entries.values()), list(entries), loc='lower center',
               ncol=min(len(entries), 4), fontsize=8)
  fig.suptitle('Training curves')
  fig.tight_layout(rect=(0, 0.06, 1, 0.97))
  return save(fig, stem)


def mask_maps(panels: dict[str, tuple[list[str], np.ndarray, np.ndarray]],
              stem: Path) -> list[Path]:
  """One heat map per run: rows are (layer, tensor kind), columns training
  steps, colour the kept mask. ``panels`` maps a label to ``(row names,
  steps, [rows, steps] values)``."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(2.5 + 4 * len(panels), 6), squeeze=False,
                           sharey=True)
  image = None
  for ax, (label, (rows, steps, values)) in zip(axes[0], panels.items(), strict=True):
    image = ax.imshow(values, aspect='auto', interpolation='nearest', cmap='magma', vmin=0,
                      vmax=1, extent=(steps[0] - 0.5, steps[-1] + 0.5, len(rows) - 0.5, -0.5))
    ax.set_yticks(range(len(rows)), rows, fontsize=max(4, min(8, 400 // max(len(rows), 1))))
    ax.set_xlabel('training step')
    ax.set_title(label, color=color(label), fontsize=8)
  axes[0, 0].set_ylabel('layer / tensor kind')
  fig.colorbar(image, ax=axes[0].tolist(), label='kept (mask value)')
  fig.suptitle('What ROSE kept: mask per layer and tensor kind over training')
  return save(fig, stem)


def bars(labels: list[str], groups: dict[str, list[float]], stem: Path, *, ylabel: str,
         title: str) -> list[Path]:
  """Grouped bars: one group per label, one bar per key of ``groups``."""
  plt = _pyplot()
  x = np.arange(len(labels))
  width = 0.8 / max(len(groups), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
  for i, (name, values) in enumerate(groups.items()):
    ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width, label=name,
           color=[color(label) for label in labels], alpha=1.0 if i == 0 else 0.5,
           edgecolor='black', linewidth=0.5)
  # A sweep's row labels carry settings: one line for the method, one for them.
  ax.set_xticks(x, [label.replace(' (', '\n(') for label in labels], rotation=20, ha='right',
                fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  return save(fig, stem)


def dots(panels: dict[str, dict[str, list[float]]], stem: Path, *, ylabel: str,
         title: str) -> list[Path]:
  """One panel per key of ``panels``, its rows side by side: a dot per run
  (jittered sideways) in the row's method colour, and the row's mean as a
  bar; the paper's Figure 3."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(max(4, 1.1 * max(len(r) for r in panels.values()) + 1)
                                    * len(panels), 4), sharey=True)
  rng = np.random.default_rng(0)
  for ax, (panel, rows) in zip(axes[0], panels.items(), strict=True):
    for x, (label, values) in enumerate(rows.items()):
      ax.scatter(x + rng.uniform(-0.15, 0.15, len(values)), values, color=color(label), s=18,
                 zorder=3)
      ax.hlines(np.mean(values), x - 0.3, x + 0.3, color='black', linewidth=1.5, zorder=4)
    ax.axhline(0.0, color='#bbbbbb', linewidth=0.8)
    ax.set_xticks(range(len(rows)), [label.replace(' (', '\n(') for label in rows],
                  rotation=20, ha='right', fontsize=8)
    ax.set_title(panel)
  axes[0, 0].set_ylabel(ylabel)
  fig.suptitle(title)
  fig.tight_layout()
  return save(fig, stem)
