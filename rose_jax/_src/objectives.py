"""What a model's outputs are trained against: classes, or one number.

An :class:`Objective` gives the train step its task loss, the consistency
loss between two dropout passes (ROSE's first-order loss and R-Drop's
regulariser), the predictions the outputs stand for, and which of the step's
metrics apply:

* :data:`CLASSIFICATION`: softmax cross-entropy on integer labels; the
  symmetric KL between the passes' class distributions, at the authors'
  scale (:func:`rose_jax.training.symmetric_kl`); accuracy and the share of
  examples whose passes disagree.
* :data:`REGRESSION`: a one-output head and float labels; mean squared
  error, and half the mean squared difference of the two passes' outputs,
  so that R-Drop's ``alpha`` weighs ``mean((p - q)^2)`` as R-Drop's own
  code does for regression (its ``MSELoss`` between the passes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rose_jax._src import losses


@dataclasses.dataclass(frozen=True)
class Objective:
  """A task's loss and predictions.

  Attributes:
    name: ``"classification"`` or ``"regression"``.
    task_loss: ``task_loss(outputs, labels)``, the batch mean.
    consistency: ``consistency(first, second)`` between two passes' outputs.
    consistency_sums: the consistency loss sums over examples (the authors'
      KL) rather than averaging; data parallelism then scales each
      device's by the device count.
    predict: ``predict(outputs)``: class indices, or the numbers.
    classes: the outputs are class scores (accuracy and disagreement apply).
  """
  name: str
  task_loss: Callable[[jax.Array, jax.Array], jax.Array]
  consistency: Callable[[jax.Array, jax.Array], jax.Array]
  consistency_sums: bool
  predict: Callable[[jax.Array], jax.Array]
  classes: bool

  def check(self, outputs: jax.Array, labels: jax.Array) -> None:
    """At trace time: ``labels`` of the dtype this objective needs and outputs
    of the width it needs (shapes and dtypes are static, so this costs the
    step nothing). ValueError naming the argument and the fix otherwise."""
    dtype = jnp.result_type(labels)
    width = jnp.shape(outputs)[-1]
    if self.classes:
      if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f'batch["labels"] has dtype {dtype}; classification needs integer class indices '
            '0..classes-1 (np.int32). For numeric targets pass objective=REGRESSION '
            '(rose_jax.training.REGRESSION) and a one-output model.')
      if width < 2:
        raise ValueError(
            f'apply_fn returns {width} output per example, but classification needs one per '
            'class (at least 2). For one numeric output per example pass '
            'objective=REGRESSION (rose_jax.training.REGRESSION).')
    else:
      if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f'batch["labels"] has dtype {dtype}; regression needs float targets '
            '(np.float32). For class indices use objective=CLASSIFICATION.')
      if width != 1:
        raise ValueError(
            f'apply_fn returns {width} outputs per example, but regression needs exactly one '
            '(a head with num_labels=1).')


  def check_values(self, outputs: jax.Array, labels: jax.Array) -> None:
    """Inside ``jax.experimental.checkify``: labels within ``0..classes-1``
    (classification) or finite (regression). The values are traced, so this
    is a runtime check: the steps make it with ``debug=True``."""
    from jax.experimental import checkify
    if self.classes:
      classes = jnp.shape(outputs)[-1]
      checkify.check(jnp.all((labels >= 0) & (labels < classes)),
                     'batch["labels"] holds {low}..{high}, but the outputs have '
                     f'{classes} classes: labels must be class indices 0..{classes - 1}.',
                     low=jnp.min(labels), high=jnp.max(labels))
    else:
      checkify.check(jnp.all(jnp.isfinite(labels)),
                     'batch["labels"] holds a NaN or infinite regression target.')


def _mean_squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(outputs[:, 0].astype(jnp.float32) - labels.astype(jnp.float32)))


CLASSIFICATION = Objective(
    'classification', task_loss=losses.cross_entropy, consistency=losses.symmetric_kl,
    consistency_sums=True, predict=lambda outputs: jnp.argmax(outputs, axis=-1), classes=True)

REGRESSION = Objective(
    'regression', task_loss=_mean_squared_error, consistency=losses.squared_difference,
    consistency_sums=False, predict=lambda outputs: outputs[:, 0].astype(jnp.float32),
    classes=False)

OBJECTIVES = {o.name: o for o in (CLASSIFICATION, REGRESSION)}


def get_objective(objective: str | Objective) -> Objective:
  """``objective`` itself, or the one of that name; ValueError otherwise."""
  if isinstance(objective, Objective):
    return objective
  if objective not in OBJECTIVES:
    raise ValueError(f'Unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)} '
                     '(or pass rose_jax.training.CLASSIFICATION / REGRESSION).')
  return OBJECTIVES[objective]
