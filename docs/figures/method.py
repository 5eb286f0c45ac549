"""Draws the method in one figure (docs/_static/figures/method.svg and .png).

  python docs/figures/method.py
"""

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / '_static' / 'figures'
W, H = 0.2, 0.17
GREEN, BLUE, YELLOW, RED, GREY = '#dff0d8', '#d9edf7', '#fcf8e3', '#f2dede', '#eeeeee'
# name: (left, bottom, text, colour)
BOXES = {
    'passes': (0.0, 0.50, 'two dropout passes\nover the batch', GREY),
    'kl': (0.26, 0.72, 'gradient of the passes\'\nsymmetric KL', GREEN),
    'ce': (0.26, 0.28, 'CE gradient g,\nAdam momentum m', BLUE),
    'first': (0.52, 0.72, 'first-order risk\n||KL gradient||', GREEN),
    'second': (0.52, 0.28, 'second-order risk\n|(1-b1)||g||/||m|| - 1|', BLUE),
    'mask1': (0.78, 0.72, 'mask M1: keep\nrisk <= quantile(upper)', YELLOW),
    'mask2': (0.78, 0.28, 'mask M2: keep\nrisk <= quantile(upper)', YELLOW),
    'ensemble': (0.78, -0.12, 'M = gamma M1\n+ (1 - gamma) M2', RED),
    'update': (0.40, -0.12, "masked AdamW: g' = M g + (1-M) m,\nthe step and decay times M", GREY),
}
ARROWS = [('passes', 'kl'), ('passes', 'ce'), ('kl', 'first'), ('ce', 'second'),
          ('first', 'mask1'), ('second', 'mask2'), ('mask2', 'ensemble'), ('ensemble', 'update')]


def _anchor(box, towards):
  """Where an arrow leaves ``box`` for the point ``towards``: the middle of
  the nearer side."""
  x, y = box[0], box[1]
  cx, cy = x + W / 2, y + H / 2
  dx, dy = towards[0] - cx, towards[1] - cy
  if abs(dx) * H >= abs(dy) * W:
    return (x + W if dx > 0 else x, cy)
  return (cx, y + H if dy > 0 else y)


def main() -> None:
  fig, ax = plt.subplots(figsize=(11, 4.6))
  ax.set_axis_off()
  for name, (x, y, text, colour) in BOXES.items():
    width = W * 1.6 if name == 'update' else W
    ax.add_patch(FancyBboxPatch((x, y), width, H, boxstyle='round,pad=0.01', facecolor=colour,
                                edgecolor='#555555'))
    ax.text(x + width / 2, y + H / 2, text, ha='center', va='center', fontsize=9)
  for start, end in ARROWS:
    a, b = BOXES[start], BOXES[end]
    b_centre = (b[0] + W / 2, b[1] + H / 2)
    a_centre = (a[0] + W / 2, a[1] + H / 2)
    begin = _anchor(a, b_centre)
    finish = (b[0] + W * 1.6, b[1] + H / 2) if end == 'update' else _anchor(b, a_centre)
    ax.add_patch(FancyArrowPatch(begin, finish, arrowstyle='-|>', mutation_scale=14,
                                 color='#333333'))
  # The mask M1 joins M2 in the ensemble: an arrow down the right edge.
  m1, ensemble = BOXES['mask1'], BOXES['ensemble']
  ax.add_patch(FancyArrowPatch((m1[0] + W, m1[1] + H / 2), (ensemble[0] + W, ensemble[1] + H / 2),
                               connectionstyle='arc3,rad=-0.35', arrowstyle='-|>',
                               mutation_scale=14, color='#333333'))
  ax.set_xlim(-0.02, 1.05)
  ax.set_ylim(-0.15, 0.92)
  ax.set_title('ROSE: two risks rank the tensors; the update moves the robust ones', fontsize=11)
  OUT.mkdir(parents=True, exist_ok=True)
  for suffix in ('svg', 'png'):
    fig.savefig(OUT / f'method.{suffix}', dpi=150, bbox_inches='tight')


if __name__ == '__main__':
  main()
