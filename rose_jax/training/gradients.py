"""One batch's gradients for every method, on one device or data-parallel.

:func:`compute_gradients` runs the model once or twice (two dropout passes
over the batch, concatenated into one forward), takes the gradients the
method asks for from a single ``jax.vjp`` (one backward per gradient, or
``vmap`` over the cotangents) and averages them over devices: what the
optimizer's ``update`` takes. :func:`rose_jax.training.make_train_step` is
this plus the optimizer; a training loop of one's own calls it directly.

Under data parallelism (``axis_name=``, inside ``shard_map`` or ``pmap``)
every device draws its own dropout randomness (the key folded with the device
index). The KL loss is a sum over the batch, so each device's KL is scaled by
the device count before averaging: the averaged gradients are those of the
global batch's loss.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from rose_jax._src import apply_fn, losses, segments
from rose_jax._src.apply_fn import ApplyFn, Batch, EmbeddingShape
from rose_jax._src.objectives import CLASSIFICATION, Objective, get_objective
from rose_jax.baselines import adversarial
from rose_jax.training import sub_batch
from rose_jax.training.methods import Method
from rose_jax.training.sub_batch import SubBatch, kl_examples

Cotangents = Literal['sequential', 'vmap']


class Gradients(NamedTuple):
  """One batch's gradients, each a tree like the params (None where the method
  does not use it).

  Attributes:
    update: the gradient the optimizer applies.
    kl_grads: the KL loss's gradient, ROSE's first-order risk.
    ce_grads: the cross-entropy's gradient, where it differs from ``update``
      and the method ranks by it (R-Drop + ROSE's second-order risk).
  """
  update: Any
  kl_grads: Any = None
  ce_grads: Any = None

  def extra_args(self) -> dict[str, Any]:
    """The keyword arguments for the optimizer's ``update``: ``kl_grads`` and
    ``ce_grads`` where the method computes them."""
    return {name: tree for name, tree in (('kl_grads', self.kl_grads),
                                          ('ce_grads', self.ce_grads)) if tree is not None}


# Every metric a step may return, in the order of metric_names.
METRIC_NAMES = ('loss', 'ce', 'kl', 'accuracy', 'kept_fraction', 'disagreement')


def metric_names(method: Method, objective: Objective | str = CLASSIFICATION) -> tuple[str, ...]:
  """The metrics that the method's step returns: ``accuracy`` for classes,
  and ``disagreement`` (the share of examples whose two dropout passes
  predict different labels) only for classes and two dropout passes."""
  classes = get_objective(objective).classes
  two_passes = method.passes == 2 and method.adversary is None
  skipped = {'accuracy'} if not classes else set()
  if not (classes and two_passes):
    skipped.add('disagreement')
  return tuple(name for name in METRIC_NAMES if name not in skipped)


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


def _mean_over_devices(grad: jax.Array, axis_name: str, devices, tracked: bool):
  """The mean of the devices' gradients.

  Where ``shard_map`` tracks what varies over devices (``tracked``), the
  gradient of a replicated parameter comes out of the vjp already summed over
  devices, the transpose of its implicit broadcast, and no longer varies:
  dividing gives the mean. Under ``pmap`` each device holds its own
  gradient: ``pmean``.
  """
  if tracked and axis_name not in _varying_axes(grad):
    return grad / devices
  return jax.lax.pmean(grad, axis_name)


def _checked_outputs(apply: ApplyFn, params, batch: Batch, key, labels, objective: Objective,
                     perturbation=None, passes: int = 1, debug: bool = False) -> jax.Array:
  """``apply``'s outputs for ``passes`` copies of the batch, checked against
  the labels and the objective at trace time (and, with ``debug``, the
  labels' values under ``checkify``)."""
  outputs = apply_fn.check_logits(apply_fn.call(apply, params, batch, key, perturbation),
                                  passes * labels.shape[0])
  objective.check(outputs, labels)
  if debug:
    objective.check_values(outputs, labels)
  return outputs


def _two_pass_gradients(apply: ApplyFn, params, batch: Batch, labels, key, method: Method,
                        devices, cotangents: Cotangents, objective: Objective, debug: bool,
                        ce_weight: float = 1.0, kl_scale: float = 1.0):
  """The dropout passes' gradients by name, and ``(loss, ce, kl, logits,
  disagreement)``; the gradients weigh the task loss by ``ce_weight`` and the
  consistency loss by ``kl_scale`` (a sub-batch's share of the batch), the
  losses returned are the batch's own."""
  if method.passes == 2:
    batch = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
  # A consistency loss summed over examples grows with the global batch.
  scale = devices if objective.consistency_sums else 1

  def loss_terms(p):
    logits = _checked_outputs(apply, p, batch, key, labels, objective, passes=method.passes,
                              debug=debug)
    if method.passes == 1:
      return (objective.task_loss(logits, labels), jnp.zeros((), jnp.float32)), (logits, None)
    first, second = jnp.split(logits, 2)
    ce = (objective.task_loss(first, labels) + objective.task_loss(second, labels)) / 2
    disagreement = losses.disagreement(first, second) if objective.classes else None
    return (ce, scale * objective.consistency(first, second)), (first, disagreement)

  (ce, kl), pullback, (logits, disagreement) = jax.vjp(loss_terms, params, has_aux=True)
  cotangent = lambda w: (_typed_like(ce, w[0] * ce_weight), _typed_like(kl, w[1] * kl_scale))
  rows = gradient_rows(method)
  if len(rows) > 1 and cotangents == 'vmap':
    weights = jnp.asarray([w for _, w in rows], jnp.float32)
    stacked = jax.vmap(lambda w: pullback(cotangent(w))[0])(weights)
    grads = {name: jax.tree.map(lambda g, i=i: g[i], stacked) for i, (name, _) in enumerate(rows)}
  else:  # one backward per gradient, all through the same forward
    grads = {name: pullback(cotangent(jnp.asarray(w, jnp.float32)))[0] for name, w in rows}
  if method.ce_grads and 'ce_grads' not in grads:
    grads['ce_grads'] = grads['update']
  return grads, (ce + method.rose_kl_weight * kl, ce, kl, logits, disagreement)


def _sub_batch_gradients(apply: ApplyFn, params, batch: SubBatch, key, method: Method, devices,
                         cotangents: Cotangents, objective: Objective, debug: bool):
  """The gradients of a :class:`SubBatch`: the method's two passes on
  ``batch.kl``, one pass on ``batch.rest``, the task loss over both.

  Each part's forward has its own pullback, so the KL's backward runs through
  the ``kl`` examples alone. The consistency loss, where it sums over
  examples, is scaled to the whole batch's."""
  labels_kl, labels_rest = apply_fn.labels_of(batch.kl), apply_fn.labels_of(batch.rest)
  n_kl, n_rest = labels_kl.shape[0], labels_rest.shape[0]
  if n_kl == 0:
    raise ValueError('The SubBatch has no examples in kl: the KL passes need at least one.')
  if n_rest == 0:  # every example runs both passes: the method's own step
    return _two_pass_gradients(apply, params, batch.kl, labels_kl, key, method, devices,
                               cotangents, objective, debug)
  weight = n_kl / (n_kl + n_rest)
  kl_scale = (n_kl + n_rest) / n_kl if objective.consistency_sums else 1.0
  grads, (_, ce_kl, kl, logits_kl, disagreement) = _two_pass_gradients(
      apply, params, batch.kl, labels_kl, key, method, devices, cotangents, objective, debug,
      ce_weight=weight, kl_scale=kl_scale)

  def rest_loss(p):
    logits = _checked_outputs(apply, p, batch.rest, jax.random.fold_in(key, 1), labels_rest,
                              objective, debug=debug)
    return objective.task_loss(logits, labels_rest), logits

  ce_rest, pullback, logits_rest = jax.vjp(rest_loss, params, has_aux=True)
  rest_grads = pullback(_typed_like(ce_rest, jnp.asarray(1 - weight, jnp.float32)))[0]
  for name in ('update', 'ce_grads'):  # the gradients with a task-loss term
    if name in grads and (name == 'update' or method.kl_weight):
      grads[name] = jax.tree.map(jnp.add, grads[name], rest_grads)
  if method.ce_grads and not method.kl_weight:
    grads['ce_grads'] = grads['update']
  ce = weight * ce_kl + (1 - weight) * ce_rest
  kl = kl_scale * kl
  logits = jnp.concatenate([logits_kl, logits_rest])
  return grads, (ce + method.rose_kl_weight * kl, ce, kl, logits, disagreement)


def _adversarial_gradients(apply: ApplyFn, params, batch: Batch, labels, key, method: Method,
                           embedding_shape: EmbeddingShape, teacher, objective: Objective,
                           debug: bool):
  """SMART's or FreeLB's update gradient, and ``(loss, ce, regulariser, logits)``."""
  adversary = method.adversary
  dropout_key, noise_key = jax.random.split(key)
  shape = tuple(embedding_shape(batch))
  perturbed = lambda p, perturbation, k: _checked_outputs(apply, p, batch, k, labels, objective,
                                                          perturbation, debug=debug)
  if isinstance(adversary, adversarial.Smart):
    grads, (ce, regulariser, logits) = jax.grad(adversary.loss, argnums=1, has_aux=True)(
        perturbed, params, labels, shape, dropout_key, noise_key, teacher)
  else:
    ids = None
    if 'segment_ids' in batch:  # packed rows: an example is a segment
      ids = segments.example_ids(batch['segment_ids'])
      mask = (batch['segment_ids'] != 0).astype(jnp.int32)
    else:
      mask = batch.get('attention_mask', jnp.ones(shape[:-1], jnp.int32))
    grads, (ce, logits) = adversary.gradients(perturbed, params, labels, mask, shape,
                                              dropout_key, noise_key, ids,
                                              task_loss=objective.task_loss)
    regulariser = jnp.zeros((), jnp.float32)
  loss = ce + getattr(adversary, 'alpha', 0.0) * regulariser
  return {'update': grads}, (loss, ce, regulariser, logits, None)


def check_embedding_shape(method: Method, embedding_shape: EmbeddingShape | None) -> None:
  """Raises ValueError when ``method`` perturbs embeddings but the model
  declares none."""
  if method.adversary is not None and embedding_shape is None:
    raise ValueError(
        f'{method.name} perturbs the embeddings, so the model must declare them: pass '
        'embedding_shape=lambda batch: (*token_shape, embedding_width) and make apply_fn '
        'take perturbation= (a rose_jax.training.EmbeddingPerturbation) and add it to its '
        'embeddings, as rose_jax.models.as_apply_fn does for our encoder.')


def check_arguments(apply: ApplyFn, method: Method) -> None:
  """TypeError, naming the argument and what it should be, for an ``apply``
  that is no function or a ``method`` that is no :class:`Method`."""
  if not callable(apply):
    raise TypeError(f'apply must be a function apply_fn(params, batch, *, dropout_key) -> '
                    f'logits, got {type(apply).__name__}; for a Flax NNX model use '
                    'rose_jax.models.as_apply_fn(model).')
  if not isinstance(method, Method):
    hint = (f": pass rose_jax.training.get_method({method!r})" if isinstance(method, str)
            else '')
    raise TypeError(f'method must be a rose_jax.training.Method, got {type(method).__name__}'
                    f'{hint}.')


def check_method_fits(method: Method, objective: Objective | str) -> None:
  """Raises ValueError for a method that ``objective`` cannot train: SMART's
  regulariser is a divergence between class distributions."""
  objective = get_objective(objective)
  if isinstance(method.adversary, adversarial.Smart) and not objective.classes:
    raise ValueError(f'{method.name} regularises with a KL divergence between class '
                     f'distributions, which a {objective.name} output has none of; train it '
                     'with another method (FreeLB, R-Drop and ROSE train regression).')


def check_kl_fraction(method: Method, kl_fraction: float | None) -> None:
  """ValueError, naming the option, for a fraction outside (0, 1] or a method
  that computes no KL gradient."""
  sub_batch.check_fraction(kl_fraction)
  if kl_fraction is not None and not method.kl_grads:
    raise ValueError(f'kl_fraction runs the KL passes that rank by the first-order risk on '
                     f'part of the batch, and {method.name} has no first-order risk: leave '
                     'it out, or use rose-first, rose-ensemble or their R-Drop forms.')


def _split(batch: Batch | SubBatch, method: Method, kl_fraction: float | None):
  """The batch as this device computes it: a flat batch split by
  ``kl_fraction`` (the first examples run the KL), or merged into one for a
  method of one pass."""
  if isinstance(batch, SubBatch):
    if method.passes == 1 or method.adversary is not None:
      return {name: jnp.concatenate([batch.kl[name], batch.rest[name]]) for name in batch.kl}
    return batch
  if kl_fraction is None or not method.kl_grads:
    return batch
  if 'segment_ids' in batch:
    raise ValueError('kl_fraction splits a batch by example, but a packed batch holds several '
                     'examples a row: split the examples before packing and pass a '
                     'rose_jax.training.SubBatch(kl=..., rest=...).')
  take = kl_examples(apply_fn.labels_of(batch).shape[0], kl_fraction)
  return SubBatch({k: v[:take] for k, v in batch.items()}, {k: v[take:] for k, v in batch.items()})


def compute_gradients(apply: ApplyFn, params, batch: Batch | SubBatch, key: jax.Array, *,
                      method: Method, embedding_shape: EmbeddingShape | None = None,
                      teacher: Any = None, axis_name: str | None = None,
                      cotangents: Cotangents = 'sequential',
                      objective: Objective | str = CLASSIFICATION,
                      debug: bool = False,
                      kl_fraction: float | None = None) -> tuple[Gradients, dict]:
  """One batch's gradients for ``method``, averaged over devices, and its metrics.

  .. code-block:: python

    grads, metrics = compute_gradients(apply_fn, params, batch, key, method=method)
    updates, opt_state = tx.update(grads.update, opt_state, params, **grads.extra_args())

  Args:
    apply: ``apply_fn(params, batch, *, dropout_key) -> logits`` (see
      :class:`rose_jax.training.ApplyFn`).
    params: the trained parameters.
    batch: arrays with a leading example axis, labels in ``batch['labels']``;
      or a :class:`~rose_jax.training.SubBatch` whose ``kl`` part alone runs
      the KL passes.
    key: this step's randomness (dropout, and SMART's and FreeLB's noise).
    method: what to compute (:func:`rose_jax.training.get_method`).
    embedding_shape: ``embedding_shape(batch) -> shape`` of the perturbation
      that SMART and FreeLB add (default: ``apply.embedding_shape`` if the
      function has it).
    teacher: SMART's momentum teacher parameters, for ``bregman_mu > 0``.
    axis_name: the data-parallel axis when called inside ``shard_map`` or
      ``pmap``; the gradients and metrics are then the global batch's.
    cotangents: for methods with several gradients, ``"sequential"`` (one
      backward each) or ``"vmap"`` (one batched backward); see
      :func:`rose_jax.training.make_train_step`.
    objective: :data:`~rose_jax.training.CLASSIFICATION` (integer labels,
      cross-entropy, symmetric KL) or :data:`~rose_jax.training.REGRESSION`
      (float labels, one output, squared errors), or its name.
    debug: also check the labels' values under ``jax.experimental.checkify``
      (class indices within the outputs' classes, finite targets): call it
      inside ``checkify.checkify``, as ``make_train_step(debug=True)`` does.
    kl_fraction: run the second dropout pass and the KL on this share of
      the batch (of each device's share): its first
      ``floor(kl_fraction * examples)`` examples, a random draw where the
      batch's order is random. The task loss covers every example. None (the
      default): the whole batch, the authors' recipe. See
      :class:`rose_jax.training.SubBatch`.

  Returns:
    ``(Gradients, metrics)``; the metrics are ``loss``, ``ce`` (the task
    loss: cross-entropy, or mean squared error), ``kl`` (the consistency
    loss: the global batch's summed symmetric KL, half the mean squared
    difference for regression, or SMART's regulariser) and, for classes,
    ``accuracy`` and, for two dropout passes, ``disagreement``.

  Raises:
    ValueError: at trace time, for a batch without labels, labels of the
      wrong dtype for the objective, logits that are not ``[examples,
      classes]`` (``[examples, 1]`` for regression), or SMART and FreeLB
      without an embedding shape.
  """
  if cotangents not in ('sequential', 'vmap'):
    raise ValueError(f'cotangents must be "sequential" or "vmap", got {cotangents!r}.')
  check_arguments(apply, method)
  objective = get_objective(objective)
  check_method_fits(method, objective)
  sub_batch.check_fraction(kl_fraction)
  if kl_fraction is not None and (method.passes != 2 or method.adversary is not None):
    raise ValueError(f'kl_fraction splits the batch for the two dropout passes of the KL, and '
                     f'{method.name} runs one pass: leave it out.')
  embedding_shape = apply_fn.resolve_embedding_shape(apply, embedding_shape)
  check_embedding_shape(method, embedding_shape)
  batch = _split(batch, method, kl_fraction)
  labels = (jnp.concatenate([apply_fn.labels_of(batch.kl), apply_fn.labels_of(batch.rest)])
            if isinstance(batch, SubBatch) else apply_fn.labels_of(batch))
  devices = 1
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    devices = jax.lax.psum(1, axis_name)
  if method.adversary is not None:
    grads, (loss, ce, kl, logits, disagreement) = _adversarial_gradients(
        apply, params, batch, labels, key, method, embedding_shape, teacher, objective, debug)
  elif isinstance(batch, SubBatch):
    grads, (loss, ce, kl, logits, disagreement) = _sub_batch_gradients(
        apply, params, batch, key, method, devices, cotangents, objective, debug)
  else:
    grads, (loss, ce, kl, logits, disagreement) = _two_pass_gradients(
        apply, params, batch, labels, key, method, devices, cotangents, objective, debug)
  if axis_name is not None:
    tracked = axis_name in _varying_axes(labels)
    grads = jax.tree.map(lambda g: _mean_over_devices(g, axis_name, devices, tracked), grads)
  metrics = {'loss': loss, 'ce': ce, 'kl': kl}
  if objective.classes:
    metrics['accuracy'] = losses.accuracy(logits, labels)
  if disagreement is not None:
    metrics['disagreement'] = disagreement
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  return Gradients(**grads), metrics
