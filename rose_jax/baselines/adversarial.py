"""The adversarial baselines, SMART and FreeLB, as gradient rules for the step.

Both perturb the embeddings through the model's one hook,
:class:`rose_jax.training.EmbeddingPerturbation` (see
:class:`rose_jax.training.ApplyFn`), and return the gradient the
optimizer applies, so the train step runs them jitted and data-parallel like
every other method. What the official code does, and where it departs from
the papers, is summarised in each class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from rose_jax._src import losses
from rose_jax._src.apply_fn import EmbeddingPerturbation

# apply(params, perturbation, dropout_key) -> logits
Apply = Callable[[object, EmbeddingPerturbation | None, jax.Array], jax.Array]


# Ascent steps and passes are unrolled into the compiled step: more would
# take long to compile and longer to run.
MAX_STEPS = 32

def _check(name: str, value: float, *, positive: bool = False) -> None:
  if positive and not value > 0:
    raise ValueError(f'{name} must be > 0, got {value}.')
  if value < 0:
    raise ValueError(f'{name} must be >= 0, got {value}.')


def _kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """``sum KL(p || q)`` over batch and classes."""
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32))
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q))


def _log_odds(p: jax.Array, eps: float = 1e-6) -> jax.Array:
  """mt-dnn's ``-log(1 / (p + eps) - 1 + eps)``."""
  return -jnp.log(1.0 / (p + eps) - 1.0 + eps)


def stable_kl(logits: jax.Array, target: jax.Array) -> jax.Array:
  """mt-dnn's ``stable_kl(logits, target, reduce=False)``: ``2 sum p (r_p - r_q)``
  over batch and classes, with the log-odds ``r`` held constant, so the
  gradient flows through ``p = softmax(logits)`` alone."""
  p = jax.nn.softmax(logits.astype(jnp.float32))
  q = jax.nn.softmax(target.astype(jnp.float32))
  r_p, r_q = jax.lax.stop_gradient(_log_odds(p)), jax.lax.stop_gradient(_log_odds(q))
  return jnp.sum(p * (r_p - r_q) * 2.0)


@dataclasses.dataclass(frozen=True)
class Smart:
  """SMART's smoothness-inducing adversarial regulariser (Jiang et al., ACL 2020),
  as mt-dnn runs it.

  * Noise ``N(0, 1) * noise_var`` on the embedding layer's output (after its
    LayerNorm and dropout), at every position.
  * ``steps`` ascent steps, each on a fresh dropout pass: the gradient ``g``
    of ``stable_kl(adv, clean)`` (summed over the batch) with respect to the
    noise; ``noise = (noise + step_size * g)``, divided per token by its
    largest absolute value plus ``epsilon`` (mt-dnn's default token-level
    ``inf`` norm, the only one its current code runs). There is no
    epsilon-ball projection, as in mt-dnn since August 2020. A non-finite
    ``g`` drops the regulariser for that step, as mt-dnn does.
  * Loss: ``CE(clean) + alpha * [KL(P_adv || P_clean) + KL(P_clean || P_adv)]
    / batch``, the first KL differentiated through the clean pass and the
    second through the adversarial one (mt-dnn's ``SymKlCriterion``).

  The adversarial passes see the perturbation where the encoder reads the
  embeddings, unlike mt-dnn since February 2021, which feeds embeddings +
  noise back in as ``inputs_embeds`` so that position embeddings and
  LayerNorm are applied twice. Here each adversarial pass draws its own
  dropout in the embedding layer too; mt-dnn reuses the clean pass's
  embedding output (and its dropout).

  The Bregman proximal point term of the paper, which mt-dnn does not have, is
  an option (``bregman_mu > 0``): ``mu * [KL(P_teacher || P) + KL(P || P_teacher)]
  / batch`` between the clean pass and the same pass (same dropout) of a
  momentum teacher, whose parameters are an average of the model's kept by
  :func:`rose_jax.baselines.params_ema` in the optimizer state (the paper: ``mu = 1``,
  ``beta`` 0.99 for the first 10% of updates, then 0.999). Off by default,
  as in the official code.

  Attributes:
    alpha: ``lambda_s``, the regulariser's weight (mt-dnn ``adv_alpha`` 1).
    steps: ascent steps (mt-dnn ``adv_k`` 1; paper ``T_x`` 1).
    step_size: ascent step (mt-dnn train.py ``adv_step_size`` 1e-5; paper eta 1e-3).
    noise_var: the initial noise's scale (mt-dnn ``adv_noise_var`` 1e-5).
    epsilon: added to the per-token max-abs norm (mt-dnn ``adv_epsilon`` 1e-6).
    bregman_mu: the Bregman term's weight ``mu`` (0: off, as mt-dnn).
  """
  alpha: float = 1.0
  steps: int = 1
  step_size: float = 1e-5
  noise_var: float = 1e-5
  epsilon: float = 1e-6
  bregman_mu: float = 0.0

  def __post_init__(self):
    _check('SMART alpha', self.alpha)
    _check('SMART steps', self.steps)
    _check('SMART step_size', self.step_size)
    _check('SMART noise_var', self.noise_var)
    _check('SMART epsilon', self.epsilon, positive=True)
    _check('SMART bregman_mu', self.bregman_mu)
    if self.steps != int(self.steps):
      raise ValueError(f'SMART steps must be a whole number, got {self.steps}.')
    if self.steps > MAX_STEPS:
      raise ValueError(f'SMART steps {self.steps} is more than {MAX_STEPS}: each ascent step is '
                       'unrolled into the compiled step (mt-dnn and the paper use 1).')

  def loss(self, apply: Apply, params, labels, embedding_shape, dropout_key, noise_key,
           teacher=None):
    """``(loss, (ce, regulariser, clean_logits))`` for one batch; ``teacher``
    holds the momentum teacher's parameters when ``bregman_mu > 0``."""
    keys = jax.random.split(dropout_key, self.steps + 2)
    clean = apply(params, None, keys[0])
    ce = losses.cross_entropy(clean, labels)
    target = jax.lax.stop_gradient(clean)
    frozen = jax.lax.stop_gradient(params)
    noise = jax.random.normal(noise_key, embedding_shape, jnp.float32) * self.noise_var
    finite = jnp.array(True)
    for step in range(self.steps):
      ascent = lambda n, key=keys[1 + step]: stable_kl(
          apply(frozen, EmbeddingPerturbation(output=n), key), target)
      grad = jax.grad(ascent)(noise)
      finite &= jnp.isfinite(jnp.sqrt(jnp.sum(jnp.square(grad))))
      noise = noise + self.step_size * grad
      noise = noise / (jnp.max(jnp.abs(noise), axis=-1, keepdims=True) + self.epsilon)
    noise = jax.lax.stop_gradient(noise)
    adv = apply(params, EmbeddingPerturbation(output=noise), keys[-1])
    batch = labels.shape[0]
    regulariser = (_kl(jax.lax.stop_gradient(adv), clean) + _kl(target, adv)) / batch
    regulariser = jnp.where(finite, regulariser, 0.0)
    loss = ce + self.alpha * regulariser
    if self.bregman_mu:
      if teacher is None:
        raise ValueError('SMART with bregman_mu > 0 needs the momentum teacher: chain '
                         'rose_jax.params_ema(...) after the optimizer.')
      taught = jax.lax.stop_gradient(apply(teacher, None, keys[0]))
      loss = loss + self.bregman_mu * (_kl(taught, clean) + _kl(clean, taught)) / batch
    return loss, (ce, regulariser, clean)


Norm = Literal['l2', 'linf']


def _per_example(segment_reduce, values: jax.Array, ids: jax.Array) -> jax.Array:
  """``values`` (``[rows, length]``) reduced over each example's tokens, and
  given back to every token of the example."""
  reduced = segment_reduce(values.reshape(-1), ids.reshape(-1), num_segments=ids.size + 1)
  return reduced[ids]


def _example_size(reduce, segment_reduce, values: jax.Array, ids: jax.Array | None):
  """``values`` (``[rows, length, hidden]``) reduced over each example, shaped
  to broadcast against them: per row without ``ids``, per segment with."""
  if ids is None:
    return reduce(values.reshape(values.shape[0], -1), axis=1)[:, None, None]
  return _per_example(segment_reduce, reduce(values, axis=-1), ids)[..., None]


@dataclasses.dataclass(frozen=True)
class FreeLB:
  """FreeLB (Zhu et al., ICLR 2020), as its Hugging Face loop runs it.

  ``steps`` passes over the batch with ``delta`` added to the word-embedding
  lookup; the parameter gradients of the passes' ``CE / steps`` accumulate.
  Between passes, ``delta += step_size * g / ||g||`` per example (``g`` its
  gradient, Frobenius norm for ``l2``, max-abs for ``linf``); then ``l2``
  rescales examples beyond ``max_norm`` onto the sphere and ``linf`` clips to
  ``+-max_norm`` (``max_norm`` 0: unbounded). No update follows the last
  pass. The start: ``l2``: ``U(-1, 1) * init_mag / sqrt(L * H)`` (``L`` the
  example's unpadded length, ``H`` the embedding size); ``linf``:
  ``U(-init_mag, init_mag)``; both zero at padding, and ``delta = 0`` when
  ``init_mag`` is 0. Every pass reuses the first pass's dropout masks, as
  fairseq's ``init_dp`` does. In packed rows (``example_ids``, see
  :func:`rose_jax.training.example_ids`) an example is its segment,
  not its row: norms, lengths and the bound are per segment.

  ``steps`` counts passes, as the Hugging Face loop's ``adv-steps`` does;
  fairseq's ``--adv-steps m`` runs one pass more (a pass at ``delta_0``, then
  ``m`` update-and-pass rounds, each loss divided by ``m + 1``), so it is
  ``steps = m + 1`` here.

  Attributes (defaults: fairseq's RoBERTa SST-2 script, ``--adv-steps 2``):
    steps: passes ``K`` (3).
    step_size: ``alpha``, fairseq ``adv-lr`` (0.1).
    init_mag: the start's magnitude (1.0).
    max_norm: the bound (0.6; 0 for none).
    norm: ``"l2"`` or ``"linf"`` (fairseq's default l2).
  """
  steps: int = 3
  step_size: float = 0.1
  init_mag: float = 1.0
  max_norm: float = 0.6
  norm: Norm = 'l2'

  def __post_init__(self):
    if self.norm not in ('l2', 'linf'):
      raise ValueError(f'Unknown FreeLB norm {self.norm!r}; choose "l2" or "linf".')
    _check('FreeLB steps', self.steps, positive=True)
    if self.steps != int(self.steps):
      raise ValueError(f'FreeLB steps must be a whole number, got {self.steps}.')
    if self.steps > MAX_STEPS:
      raise ValueError(f'FreeLB steps {self.steps} is more than {MAX_STEPS}: each pass is '
                       'unrolled into the compiled step (FreeLB\'s GLUE scripts use 2 to 6).')
    _check('FreeLB step_size', self.step_size)
    _check('FreeLB init_mag', self.init_mag)
    _check('FreeLB max_norm', self.max_norm)

  def initial_delta(self, key, embedding_shape, attention_mask,
                    example_ids: jax.Array | None = None) -> jax.Array:
    mask = attention_mask.astype(jnp.float32)[:, :, None]
    if self.init_mag == 0:
      return jnp.zeros(embedding_shape, jnp.float32)
    if self.norm == 'l2':
      if example_ids is None:
        lengths = jnp.sum(attention_mask, axis=1).astype(jnp.float32)[:, None, None]
      else:
        # Padding (example 0) counts no tokens; 1 keeps its zero start finite.
        lengths = jnp.maximum(
            _per_example(jax.ops.segment_sum, mask[..., 0], example_ids), 1.0)[..., None]
      magnitude = self.init_mag / jnp.sqrt(lengths * embedding_shape[-1])
      return jax.random.uniform(key, embedding_shape, jnp.float32, -1.0, 1.0) * mask \
          * magnitude
    return jax.random.uniform(key, embedding_shape, jnp.float32, -self.init_mag,
                              self.init_mag) * mask

  def ascend(self, delta: jax.Array, grad: jax.Array,
             example_ids: jax.Array | None = None) -> jax.Array:
    """One update of ``delta`` from its gradient, then the bound."""
    if self.norm == 'l2':
      size = _example_size(jnp.sum, jax.ops.segment_sum, jnp.square(grad), example_ids)
      size = jnp.sqrt(size)
    else:
      size = _example_size(jnp.max, jax.ops.segment_max, jnp.abs(grad), example_ids)
    delta = delta + self.step_size * grad / jnp.maximum(size, 1e-8)
    if self.max_norm > 0:
      if self.norm == 'l2':
        norm = jnp.sqrt(_example_size(jnp.sum, jax.ops.segment_sum, jnp.square(delta),
                                      example_ids))
        delta = delta * jnp.where(norm > self.max_norm, self.max_norm / norm, 1.0)
      else:
        delta = jnp.clip(delta, -self.max_norm, self.max_norm)
    return delta

  def gradients(self, apply: Apply, params, labels, attention_mask, embedding_shape,
                dropout_key, noise_key, example_ids: jax.Array | None = None, *,
                task_loss=losses.cross_entropy):
    """``(parameter gradients, (loss, clean_logits))``; ``loss`` is the passes'
    mean of ``task_loss(outputs, labels)`` (cross-entropy; mean squared error
    for regression)."""
    delta = self.initial_delta(noise_key, embedding_shape, attention_mask, example_ids)

    def pass_loss(p, d):
      logits = apply(p, EmbeddingPerturbation(word=d), dropout_key)  # same masks each pass
      return task_loss(logits, labels) / self.steps, logits

    total, ce, first_logits = None, 0.0, None
    for k in range(self.steps):
      (loss, logits), (grads, delta_grad) = jax.value_and_grad(
          pass_loss, argnums=(0, 1), has_aux=True)(params, delta)
      total = grads if total is None else jax.tree.map(jnp.add, total, grads)
      ce = ce + loss
      first_logits = logits if first_logits is None else first_logits
      if k < self.steps - 1:
        delta = jax.lax.stop_gradient(self.ascend(delta, delta_grad, example_ids))
    return total, (ce, first_logits)
