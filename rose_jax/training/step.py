"""One train step for every method, on one device or data-parallel.

The step runs the model once or twice (two dropout passes over the batch,
concatenated into one forward), takes the gradients the method asks for from
a single ``jax.vjp`` (one backward per gradient, or ``vmap`` over the
cotangents),
averages them over devices and hands them to the optimizer:
data -> step -> optimizer.

Data parallelism (``parallel=``):

* ``"none"``: ``jit`` on one device.
* ``"shard_map"``: ``jit(shard_map(...))`` over a mesh axis; the batch is a
  global array sharded along that axis (see :func:`shard_batch`, which also
  serves multi-host runs under ``jax.distributed.initialize()``).
* ``"pmap"``: ``jax.pmap`` over the local devices; params and optimizer state
  carry a leading device axis (:func:`replicate`), the batch is split by
  :func:`split_for_pmap`.

Every device draws its own dropout randomness (the step key folded with the
device index). The KL loss is a sum over the batch, so each device's KL is
scaled by the device count before averaging: the averaged gradients are
those of the global batch's loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rose_jax.masking import kept_fraction
from rose_jax.params_ema import find_params_ema
from rose_jax.selective import SelectiveState
from rose_jax.training import adversarial, losses
from rose_jax.training.methods import Method
from rose_jax.transform import ScaleByRoseState

Batch = Mapping[str, jax.Array]
Parallel = Literal['none', 'pmap', 'shard_map']
Cotangents = Literal['sequential', 'vmap']
INPUT_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
  """The model's static graph and its parameters as a plain nested dict."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def apply_model(graphdef: nnx.GraphDef, params, batch: Batch, dropout_key=None,
                perturbation=None) -> jax.Array:
  """Logits for ``batch``; dropout is on iff ``dropout_key`` is given.

  ``perturbation`` is passed to the model as is (an
  :class:`rose_jax.models.EmbeddingPerturbation` for our encoder); the step
  does not look inside it.
  """
  model = nnx.merge(graphdef, params)
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  if perturbation is None:
    return model(*(batch.get(k) for k in INPUT_KEYS), rngs=rngs)
  return model(*(batch.get(k) for k in INPUT_KEYS), rngs=rngs, perturbation=perturbation)


def find_rose_state(opt_state) -> ScaleByRoseState | SelectiveState | None:
  """The state that keeps ROSE's mask inside an optimizer state (a chain,
  ``inject_hyperparams``...): :func:`rose_jax.rose`'s and
  :func:`rose_jax.scale_by_rose`'s, or :func:`rose_jax.selective`'s. Both
  have ``mask``, one value per ranked tensor; the outermost is returned."""
  is_rose = lambda x: isinstance(x, (ScaleByRoseState, SelectiveState))
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_rose) if is_rose(s)]
  return found[0] if found else None


def metric_names(method: Method) -> tuple[str, ...]:
  """The metrics that the method's step returns: ``disagreement`` (the share of
  examples whose two dropout passes predict different labels) only for
  methods with two dropout passes."""
  names = ('loss', 'ce', 'kl', 'accuracy', 'kept_fraction')
  return (*names, 'disagreement') if method.passes == 2 and method.adversary is None else names


def gradient_rows(method: Method) -> list[tuple[str, tuple[float, float]]]:
  """The gradients a step of ``method`` takes from its one forward, each as
  its name and the (CE, KL) cotangent weights that give it: one backward each."""
  rows = [('update', (1.0, method.rose_kl_weight))]
  if method.kl_grads:
    rows.append(('kl_grads', (0.0, 1.0)))
  if method.ce_grads and method.kl_weight:
    rows.append(('ce_grads', (1.0, 0.0)))
  return rows


def _varying_axes(x: jax.Array) -> tuple[str, ...]:
  """Mesh axes over which ``x`` differs between devices, as ``shard_map``
  tracks them (always empty under ``pmap``, which does not)."""
  aval = jax.typeof(x)
  varying = getattr(getattr(aval, 'manual_axis_type', None), 'varying', None)
  if varying is None:  # jax < 0.9 keeps the varying axes as ``aval.vma``
    varying = getattr(aval, 'vma', ())
  return tuple(sorted(varying))


def _typed_like(output: jax.Array, value: jax.Array) -> jax.Array:
  """``value`` as a cotangent for ``output``: under ``shard_map`` a loss that
  varies over devices needs a cotangent marked as varying over the same axes."""
  axes = _varying_axes(output)
  if not axes:
    return value
  if hasattr(jax.lax, 'pcast'):
    return jax.lax.pcast(value, axes, to='varying')
  return jax.lax.pvary(value, axes)  # jax < 0.8.1


def _mean_over_devices(grad: jax.Array, axis_name: str, devices, shard_mapped: bool):
  """The mean of the devices' gradients.

  Under ``shard_map`` (which tracks what varies over devices) the gradient of
  a replicated parameter comes out of the vjp already summed over devices, the
  transpose of its implicit broadcast, and no longer varies: dividing gives
  the mean. Under ``pmap`` each device holds its own gradient: ``pmean``.
  """
  if shard_mapped and axis_name not in _varying_axes(grad):
    return grad / devices
  return jax.lax.pmean(grad, axis_name)


def local_step(params, opt_state, batch: Batch, key: jax.Array, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, method: Method, axis_name: str | None,
               shard_mapped: bool = False, cotangents: Cotangents = 'sequential'):
  """The per-device step.

  ``axis_name`` names the data-parallel axis, if any; ``shard_mapped`` says
  the step runs under ``shard_map`` rather than ``pmap``; ``cotangents`` is
  how several gradients leave the one forward (see :func:`make_train_step`).
  """
  devices = 1
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    devices = jax.lax.psum(1, axis_name)
  labels = batch['labels']
  inputs = {k: batch[k] for k in INPUT_KEYS if k in batch}
  if method.adversary is not None:
    grads, (ce, kl, logits) = _adversarial_gradients(graphdef, params, opt_state, inputs,
                                                     labels, key, method.adversary)
    loss = ce + getattr(method.adversary, 'alpha', 0.0) * kl
    return _finish(params, opt_state, {'update': grads}, tx, method, axis_name, devices,
                   shard_mapped, loss, ce, kl, logits, labels)
  if method.passes == 2:
    inputs = {k: jnp.concatenate([v, v]) for k, v in inputs.items()}

  def loss_terms(p):
    logits = apply_model(graphdef, p, inputs, key)
    if method.passes == 1:
      return (losses.cross_entropy(logits, labels), jnp.zeros((), jnp.float32)), (logits, None)
    first, second = jnp.split(logits, 2)
    ce = (losses.cross_entropy(first, labels) + losses.cross_entropy(second, labels)) / 2
    return ((ce, devices * losses.symmetric_kl(first, second)),
            (first, losses.disagreement(first, second)))

  (ce, kl), pullback, (logits, disagreement) = jax.vjp(loss_terms, params, has_aux=True)
  cotangent = lambda w: (_typed_like(ce, w[0]), _typed_like(kl, w[1]))
  rows = gradient_rows(method)
  if len(rows) > 1 and cotangents == 'vmap':
    weights = jnp.asarray([w for _, w in rows], jnp.float32)
    stacked = jax.vmap(lambda w: pullback(cotangent(w))[0])(weights)
    grads = {name: jax.tree.map(lambda g, i=i: g[i], stacked) for i, (name, _) in enumerate(rows)}
  else:  # one backward per gradient, all through the same forward
    grads = {name: pullback(cotangent(jnp.asarray(w, jnp.float32)))[0] for name, w in rows}
  if method.ce_grads and 'ce_grads' not in grads:
    grads['ce_grads'] = grads['update']
  return _finish(params, opt_state, grads, tx, method, axis_name, devices, shard_mapped,
                 ce + method.rose_kl_weight * kl, ce, kl, logits, labels, disagreement)


def _adversarial_gradients(graphdef, params, opt_state, inputs, labels, key, adversary):
  """SMART's or FreeLB's update gradient, and ``(ce, regulariser, logits)``."""
  dropout_key, noise_key = jax.random.split(key)
  shape = (*inputs['input_ids'].shape, nnx.merge(graphdef, params).config.hidden_size)
  apply = lambda p, perturbation, k: apply_model(graphdef, p, inputs, k, perturbation)
  if isinstance(adversary, adversarial.Smart):
    ema = find_params_ema(opt_state)
    grads, (ce, regulariser, logits) = jax.grad(adversary.loss, argnums=1, has_aux=True)(
        apply, params, labels, shape, dropout_key, noise_key,
        None if ema is None else ema.ema)
    return grads, (ce, regulariser, logits)
  mask = inputs.get('attention_mask', jnp.ones_like(inputs['input_ids']))
  grads, (ce, logits) = adversary.gradients(apply, params, labels, mask, shape, dropout_key,
                                            noise_key)
  return grads, (ce, jnp.zeros((), jnp.float32), logits)


def _finish(params, opt_state, grads, tx, method, axis_name, devices, shard_mapped,
            loss, ce, kl, logits, labels, disagreement=None):
  """Averages the gradients over devices, applies the optimizer, and the metrics
  (``disagreement`` only for methods with two dropout passes)."""
  if axis_name is not None:
    grads = jax.tree.map(
        lambda g: _mean_over_devices(g, axis_name, devices, shard_mapped), grads)
  extra = {k: v for k, v in grads.items() if k != 'update'}
  updates, opt_state = tx.update(grads['update'], opt_state, params, **extra)
  params = optax.apply_updates(params, updates)

  rose_state = find_rose_state(opt_state)
  metrics = {
      'loss': loss,
      'ce': ce,
      'kl': kl,
      'accuracy': losses.accuracy(logits, labels),
      'kept_fraction': (jnp.ones((), jnp.float32) if rose_state is None
                        else kept_fraction(rose_state.mask)),
  }
  if disagreement is not None:
    metrics['disagreement'] = disagreement
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  return params, opt_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    method: Method,
    *,
    parallel: Parallel = 'none',
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = 'data',
    donate: bool = True,
    cotangents: Cotangents = 'sequential',
) -> Callable[[Any, Any, Batch, jax.Array], tuple[Any, Any, dict]]:
  """``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

  Args:
    graphdef: the model's graph, from :func:`split_model`.
    tx: the optimizer; for ROSE methods an optimizer built by
      :func:`rose_jax.rose` with the method's variant.
    method: what to compute (:func:`rose_jax.training.methods.get_method`).
    parallel: ``"none"``, ``"shard_map"`` or ``"pmap"`` (see module doc).
    mesh: for ``"shard_map"``, a mesh with axis ``axis_name``; by default
      all devices, ``AxisType.Auto``.
    axis_name: the data-parallel axis name.
    donate: donate params and optimizer state buffers to the step.
    cotangents: for methods that need several gradients (ROSE-First and
      -Ensemble, R-Drop + ROSE), ``"sequential"`` runs one backward per
      gradient, ``"vmap"`` one batched backward over the stacked
      cotangents, both through the shared forward. Under ``vmap`` each
      weight gradient contracts the middle axis of a ``[2, tokens,
      features]`` cotangent, and XLA:CPU transposes it into a fresh buffer
      first; on our 2-core CPU (RoBERTa-base, batch 8) ROSE-Ensemble steps
      took 8.2 s sequential and 10.2 s vmapped. Measure both on your
      hardware with ``benchmarks/step_benchmark.py``.
  """
  if cotangents not in ('sequential', 'vmap'):
    raise ValueError(f'cotangents must be "sequential" or "vmap", got {cotangents!r}.')
  donate_argnums = (0, 1) if donate else ()
  common = dict(graphdef=graphdef, tx=tx, method=method, cotangents=cotangents)
  if parallel == 'none':
    body = functools.partial(local_step, axis_name=None, **common)
    return jax.jit(body, donate_argnums=donate_argnums)
  body = functools.partial(local_step, axis_name=axis_name, **common)
  if parallel == 'pmap':
    return jax.pmap(body, axis_name=axis_name, in_axes=(0, 0, 0, None),
                    donate_argnums=donate_argnums)
  if parallel == 'shard_map':
    mesh = mesh or data_mesh(axis_name)
    body = functools.partial(body, shard_mapped=True)
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(axis_name), P()),
                            out_specs=(P(), P(), P()))
    return jax.jit(sharded, donate_argnums=donate_argnums)
  raise ValueError(f'Unknown parallel={parallel!r}; choose "none", "shard_map" or "pmap".')


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[Any, Batch], jax.Array]:
  """``eval_step(params, batch) -> logits`` without dropout, jitted."""
  return jax.jit(lambda params, batch: apply_model(graphdef, params, batch))


def data_mesh(axis_name: str = 'data') -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes, for data parallelism."""
  return jax.make_mesh((jax.device_count(),), (axis_name,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _check_divisible(batch: Mapping[str, Any], devices: int) -> int:
  sizes = {np.shape(v)[0] for v in batch.values()}
  if len(sizes) != 1:
    raise ValueError(f'Batch entries have different leading sizes {sorted(sizes)}.')
  size = sizes.pop()
  if size % devices:
    raise ValueError(
        f'The batch of {size} examples does not divide over {devices} devices; '
        f'use a batch size that is a multiple of {devices} (per process).')
  return size


def shard_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh,
                axis_name: str = 'data') -> dict[str, jax.Array]:
  """Global arrays sharded along ``axis_name`` from this process's examples.

  Each process passes its own share of the global batch; with one process
  that is the whole batch.
  """
  _check_divisible(batch, len(mesh.local_devices))
  sharding = NamedSharding(mesh, P(axis_name))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def split_for_pmap(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Reshapes ``[batch, ...]`` to ``[local_devices, batch / devices, ...]``."""
  devices = jax.local_device_count()
  _check_divisible(batch, devices)
  return {k: np.asarray(v).reshape(devices, -1, *np.shape(v)[1:]) for k, v in batch.items()}


def replicate(tree, axis_name: str = 'data'):
  """A copy of ``tree`` on every local device, with a leading device axis,
  for a ``pmap`` step over ``axis_name``.

  The copies are laid out as that step lays out its outputs, so the step
  compiles once; from host arrays (or another axis name) the first step
  would compile for one layout and the second again for the other.
  """
  devices = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), tree)
  return jax.pmap(lambda t: t, axis_name=axis_name)(stacked)


def replicate_on_mesh(tree, mesh: jax.sharding.Mesh):
  """``tree`` replicated over ``mesh``, as the ``shard_map`` step returns
  params and optimizer state, so the step compiles once."""
  return jax.device_put(jax.device_get(tree), NamedSharding(mesh, P()))


def unreplicate(tree):
  """The first device's copy of a ``pmap``-replicated tree."""
  return jax.tree.map(lambda x: x[0], tree)
