"""Loss landscapes: filter-normalised directions, 2D grids and 1D interpolation.

Li et al., "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018):
``f(a, b) = L(theta + a * delta + b * eta)`` with Gaussian directions whose
every filter is scaled to the norm of the parameter filter it perturbs, and
zero along biases and normalisation parameters (their ``--xignore biasbn``,
which the paper's figures use). ROSE's Figure 2 plots this around the
fine-tuned solution; its Figure 4 interpolates between two solutions,
``f(alpha) = L((1 - alpha) theta + alpha theta')``.

The loss of many points is one jitted, vmapped program over a chunk of
points, sized to fit memory (:func:`evaluate_points`), so 2,601 grid points
are a few dozen calls, not 2,601.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rose_jax._src import memory

Params = Any
# loss_fn(params) -> (loss, accuracy), both scalars.
LossFn = Callable[[Params], tuple[jax.Array, jax.Array]]


def filter_axes(path: tuple, leaf: jax.Array) -> tuple[int, ...] | None:
  """The axes one filter spans, or None for a tensor the directions skip.

  A filter is one output unit: a Flax ``kernel`` (``[..., in, out]``) has one
  per entry of its last axis; other tensors of two or more axes (embedding
  tables, ``[rows, features]``) one per row, as PyTorch's ``weight[i]`` in
  Li et al.'s code. One-axis tensors (biases, LayerNorm) are skipped.
  """
  if jnp.ndim(leaf) <= 1:
    return None
  name = str(getattr(path[-1], 'key', getattr(path[-1], 'name', path[-1]))) if path else ''
  if name == 'kernel':
    return tuple(range(jnp.ndim(leaf) - 1))
  return tuple(range(1, jnp.ndim(leaf)))


def _filter_norms(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axes, keepdims=True))


def filter_normalized_direction(key: jax.Array, params: Params) -> Params:
  """A Gaussian direction with each filter scaled to its parameter filter's norm.

  Args:
    key: the direction's random key.
    params: the parameters it perturbs.

  Returns:
    A tree like ``params``: ``d_f * ||theta_f|| / ||d_f||`` per filter ``f``,
    zero for biases and LayerNorm parameters (see :func:`filter_axes`).
  """
  leaves, treedef = jax.tree.flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for (path, leaf), leaf_key in zip(leaves, keys, strict=True):
    axes = filter_axes(path, leaf)
    if axes is None:
      out.append(jnp.zeros_like(leaf))
      continue
    direction = jax.random.normal(leaf_key, jnp.shape(leaf), jnp.float32)
    scale = _filter_norms(leaf, axes) / (_filter_norms(direction, axes) + 1e-10)
    out.append((direction * scale).astype(leaf.dtype))
  return jax.tree.unflatten(treedef, out)


def check_same_architecture(params: Params, other: Params, names: Sequence[str] = ('a', 'b'),
                            ) -> None:
  """Raises ValueError unless the trees have one structure, shapes and dtypes."""
  if jax.tree.structure(params) != jax.tree.structure(other):
    raise ValueError(f'{names[0]} and {names[1]} are different architectures (their parameter '
                     'trees differ); interpolate between checkpoints of one model.')
  for (path, x), y in zip(jax.tree.flatten_with_path(params)[0],
                          jax.tree.leaves(other), strict=True):
    if jnp.shape(x) != jnp.shape(y):
      raise ValueError(f'{names[0]} and {names[1]} are different architectures: '
                       f'{jax.tree_util.keystr(path)} is {jnp.shape(x)} in one and '
                       f'{jnp.shape(y)} in the other.')


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Loss and accuracy at each point, and what they cost.

  Attributes:
    loss: the loss at each point.
    accuracy: the accuracy at each point.
    seconds: the evaluation's time, after compiling.
    chunk: points per call.
    compile_seconds: the time to compile the chunk's program.
    flops_per_chunk: XLA's FLOP count of one call (None where not reported);
      XLA counts a loop's body once, so it is exact only for a ``loss_fn``
      without ``scan`` or ``while`` loops.
  """
  loss: np.ndarray
  accuracy: np.ndarray
  seconds: float
  chunk: int
  compile_seconds: float = 0.0
  flops_per_chunk: float | None = None

  @property
  def points_per_second(self) -> float:
    return self.loss.size / self.seconds

  @property
  def flops_per_second(self) -> float | None:
    """XLA's FLOPs of the calls made, per second (padding of the last chunk included)."""
    if self.flops_per_chunk is None:
      return None
    return self.flops_per_chunk * -(-self.loss.size // self.chunk) / self.seconds


def evaluate_points(loss_fn: LossFn, point_params: Callable[[jax.Array], Params],
                    coordinates: np.ndarray, *, chunk: int | None = None,
                    memory_budget: int | None = None,
                    progress: Callable[[int], Any] | None = None) -> Evaluation:
  """``loss_fn(point_params(c))`` for every row ``c`` of ``coordinates``.

  Chunks of points run as one jitted ``vmap`` (one compilation; the last
  chunk is padded to the chunk's size). Without ``chunk``, the chunk is as
  large as XLA's memory estimate allows within ``memory_budget`` bytes
  (default: 80% of the free device memory).

  Args:
    loss_fn: ``params -> (loss, accuracy)``.
    point_params: the parameters at one point, from its coordinates.
    coordinates: ``[points, dims]``.
    chunk: points per call.
    memory_budget: bytes for the automatic chunk.
    progress: called with the number of points done after each chunk.

  Returns:
    An :class:`Evaluation` with one loss and accuracy per point.
  """
  coordinates = np.asarray(coordinates, np.float32)
  evaluate = jax.jit(jax.vmap(lambda c: loss_fn(point_params(c))))
  if chunk is None:
    chunk = _automatic_chunk(evaluate, coordinates, memory_budget)
  chunk = max(1, min(chunk, len(coordinates)))
  began = time.perf_counter()
  compiled = evaluate.lower(jax.ShapeDtypeStruct((chunk, coordinates.shape[1]),
                                                 jnp.float32)).compile()
  compile_seconds = time.perf_counter() - began
  losses, accuracies = [], []
  began = time.perf_counter()
  for start in range(0, len(coordinates), chunk):
    part = coordinates[start:start + chunk]
    padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])
    loss, accuracy = jax.device_get(compiled(padded))
    losses.append(loss[:len(part)])
    accuracies.append(accuracy[:len(part)])
    if progress is not None:
      progress(len(part))
  seconds = time.perf_counter() - began
  return Evaluation(np.concatenate(losses), np.concatenate(accuracies), seconds, chunk,
                    compile_seconds, _flops(compiled))


def _flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost['flops'])
  except Exception:  # not every backend reports it
    return None


def _automatic_chunk(evaluate, coordinates: np.ndarray, budget: int | None) -> int:
  def at(points: int) -> int | None:
    shape = jax.ShapeDtypeStruct((points, coordinates.shape[1]), jnp.float32)
    return memory.compiled_bytes(evaluate.lower(shape).compile())

  one, two = at(1), at(2)
  if one is None or two is None:
    return 64
  per_point = max(two - one, 1)
  budget = memory.available_memory() if budget is None else budget
  return memory.chunk_size(len(coordinates), max(one - per_point, 0), per_point, budget)


def plane(params: Params, delta: Params, eta: Params) -> Callable[[jax.Array], Params]:
  """``(a, b) -> params + a * delta + b * eta``."""
  def at(c):
    return jax.tree.map(lambda p, d, e: p + (c[0] * d + c[1] * e).astype(p.dtype),
                        params, delta, eta)
  return at


def line(start: Params, end: Params) -> Callable[[jax.Array], Params]:
  """``(alpha,) -> (1 - alpha) * start + alpha * end``."""
  def at(c):
    return jax.tree.map(lambda p, q: ((1 - c[0]) * p + c[0] * q).astype(p.dtype), start, end)
  return at


def grid(low: float = -0.25, high: float = 0.25, points: int = 51) -> np.ndarray:
  """``points`` evenly spaced values from ``low`` to ``high`` (the paper's and
  Li et al.'s default axis: [-0.25, 0.25], 51 points)."""
  if points < 2 or not high > low:
    raise ValueError(f'A grid needs at least 2 points and high > low, got {points} points '
                     f'from {low} to {high}.')
  return np.linspace(low, high, points, dtype=np.float64)


def loss_surface(loss_fn: LossFn, params: Params, delta: Params, eta: Params,
                 alphas: np.ndarray, betas: np.ndarray, **kwargs) -> Evaluation:
  """``f(a, b) = L(params + a * delta + b * eta)`` on the grid ``alphas x betas``;
  the evaluation's arrays are ``[len(alphas), len(betas)]``. ``kwargs`` go to
  :func:`evaluate_points`."""
  a, b = np.meshgrid(alphas, betas, indexing='ij')
  result = evaluate_points(loss_fn, plane(params, delta, eta),
                           np.stack([a.ravel(), b.ravel()], 1), **kwargs)
  shape = (len(alphas), len(betas))
  return dataclasses.replace(result, loss=result.loss.reshape(shape),
                             accuracy=result.accuracy.reshape(shape))


def interpolation(loss_fn: LossFn, start: Params, end: Params, alphas: np.ndarray,
                  **kwargs) -> Evaluation:
  """``f(alpha) = L((1 - alpha) start + alpha end)`` at each of ``alphas``;
  ValueError if the two are different architectures."""
  check_same_architecture(start, end, ('the first checkpoint', 'the second checkpoint'))
  return evaluate_points(loss_fn, line(start, end), np.asarray(alphas)[:, None], **kwargs)


# -- Flatness numbers ----------------------------------------------------------


def flat_area(surface: np.ndarray, alphas: np.ndarray, betas: np.ndarray, *,
              rise: float = 0.1) -> float:
  """The area of the plane (in units of ``a`` x ``b``) where the loss is within
  ``rise`` of the loss at the centre (the grid point nearest (0, 0)): the
  share of grid points times the plane's area; larger is flatter."""
  if not rise >= 0:
    raise ValueError(f'The flat area\'s rise must be 0 or more (a loss within RISE of the '
                     f'centre), got {rise}.')
  centre = surface[np.argmin(np.abs(alphas)), np.argmin(np.abs(betas))]
  plane_area = (alphas[-1] - alphas[0]) * (betas[-1] - betas[0])
  return float(np.mean(surface <= centre + rise) * plane_area)


def interpolation_barrier(losses: np.ndarray, alphas: np.ndarray) -> float:
  """The loss barrier on the segment: ``max f(alpha)`` over ``alpha`` in
  [0, 1] minus the larger of ``f(0)`` and ``f(1)`` (0: no barrier)."""
  inside = (alphas >= 0) & (alphas <= 1)
  ends = losses[np.argmin(np.abs(alphas))], losses[np.argmin(np.abs(alphas - 1))]
  return float(np.max(losses[inside]) - max(ends))


def endpoint_sharpness(losses: np.ndarray, alphas: np.ndarray, at: float = 1.0) -> float:
  """The second difference ``(f(at + h) - 2 f(at) + f(at - h)) / h**2`` along
  the line at its grid point nearest ``at``: the curvature of the loss along
  the interpolation at a solution (smaller is flatter)."""
  i = int(np.argmin(np.abs(alphas - at)))
  if not 0 < i < len(alphas) - 1:
    raise ValueError(f'alpha {at} needs a grid point on each side.')
  h = alphas[i + 1] - alphas[i]
  return float((losses[i + 1] - 2 * losses[i] + losses[i - 1]) / h**2)
