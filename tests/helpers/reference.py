"""A NumPy transcription of the authors' SparseAdamW rule set.

Written from ``shared/paper/reference-implementation.md``, independently of
``rose_jax``: per-tensor Frobenius-norm risks, ``torch.quantile``'s linear
rule (float32 rank, ``torch.lerp``), ``lo <= risk <= hi`` masks, the
ensemble, warm-up, the momentum feed-back of masked tensors, Hugging Face's
bias correction and the decay applied after the Adam step.
"""

from __future__ import annotations

import numpy as np


def torch_quantile(values: np.ndarray, q: float) -> np.float32:
  values = np.sort(np.asarray(values, np.float32))
  n = values.shape[0]
  rank = np.float32(q) * np.float32(n - 1)
  low = int(np.clip(np.floor(rank), 0, n - 1))
  high = int(np.clip(np.ceil(rank), 0, n - 1))
  weight = np.float32(rank - np.float32(low))
  a, b = values[low], values[high]
  if weight < 0.5:
    return np.float32(a + weight * (b - a))
  return np.float32(b - (b - a) * (np.float32(1) - weight))


def frobenius(x) -> np.float32:
  x = np.asarray(x, np.float32)
  return np.float32(np.sqrt(np.sum(x * x)))


class SparseAdamW:
  """Per-tensor ROSE with AdamW over a flat dict of named float32 arrays;
  ``variant=None`` keeps every tensor (Hugging Face's AdamW).

  ``first_order_every=k`` keeps the KL risks of steps 1, k + 1, 2k + 1, ...
  and ranks by them on the steps in between, which pass no ``kl_grads``."""

  def __init__(self, params, *, lr, variant, upper, lower=0.0, gamma=0.5,
               warmup_steps=0, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01,
               ranked=None, decayed=None, first_order_every=None):
    self.params = {k: np.array(v, np.float32) for k, v in params.items()}
    self.lr, self.variant = lr, variant
    self.upper, self.lower, self.gamma = upper, lower, gamma
    self.warmup_steps = warmup_steps
    self.b1, self.b2, self.eps, self.weight_decay = b1, b2, eps, weight_decay
    self.ranked = list(ranked if ranked is not None else params)
    self.decayed = set(decayed if decayed is not None else params)
    self.exp_avg = {}
    self.exp_avg_sq = {}
    self.step_count = 0
    self.last_mask = {}
    self.first_order_every = first_order_every
    self.kl_risks = None

  def _mask(self, risks):
    values = np.array([risks[k] for k in self.ranked], np.float32)
    lo = torch_quantile(values, self.lower)
    hi = torch_quantile(values, self.upper)
    return {k: np.float32(lo <= risks[k] <= hi) for k in self.ranked}

  def step(self, grads, kl_grads=None, ce_grads=None):
    self.step_count += 1
    t = self.step_count
    lr = self.lr(t - 1) if callable(self.lr) else self.lr
    ce_grads = grads if ce_grads is None else ce_grads
    masks = []
    if self.variant in ('first', 'ensemble'):
      every = self.first_order_every or 1
      if (t - 1) % every == 0:
        self.kl_risks = {k: frobenius(kl_grads[k]) for k in self.ranked}
      masks.append(self._mask(self.kl_risks))
    if self.variant in ('second', 'ensemble'):
      if not self.exp_avg:  # no momentum yet
        masks.append({k: np.float32(1) for k in self.ranked})
      else:
        alpha = 1 - self.b1
        masks.append(self._mask({
            k: np.float32(abs(alpha * frobenius(ce_grads[k]) / frobenius(self.exp_avg[k]) - 1))
            for k in self.ranked}))
    if len(masks) == 2:
      mask = {k: self.gamma * masks[0][k] + (1 - self.gamma) * masks[1][k] for k in self.ranked}
    elif masks:
      mask = masks[0]
    else:  # variant None: every tensor kept, Hugging Face's AdamW
      mask = {}
    if t <= self.warmup_steps:
      mask = {k: np.float32(1) for k in self.ranked}
    self.last_mask = mask
    for name, p in self.params.items():
      g = np.asarray(grads[name], np.float32)
      m_prev = self.exp_avg.get(name, np.zeros_like(p))
      v_prev = self.exp_avg_sq.get(name, np.zeros_like(p))
      keep = np.float32(mask.get(name, 1.0))
      g = keep * g + (1 - keep) * m_prev
      m = self.b1 * m_prev + (1 - self.b1) * g
      v = self.b2 * v_prev + (1 - self.b2) * g * g
      self.exp_avg[name], self.exp_avg_sq[name] = m, v
      step_size = lr * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
      p = p - step_size * (m * keep) / (np.sqrt(v) + self.eps)
      if name in self.decayed:
        p = p - lr * self.weight_decay * p * keep
      self.params[name] = p.astype(np.float32)
    return self.params


# Names laid out like a small Hugging Face encoder: ranked are those with
# 'layer' and 'weight'; biases and LayerNorms do not decay.
SHAPES = {
    'embeddings.word_embeddings.weight': (11, 4),
    'embeddings.LayerNorm.weight': (4,),
    'encoder.layer.0.attention.self.query.weight': (4, 4),
    'encoder.layer.0.attention.self.query.bias': (4,),
    'encoder.layer.0.attention.output.LayerNorm.weight': (4,),
    'encoder.layer.0.intermediate.dense.weight': (4, 6),
    'encoder.layer.1.attention.self.key.weight': (4, 4),
    'encoder.layer.1.output.dense.weight': (6, 4),
    'encoder.layer.1.output.LayerNorm.weight': (4,),
    'encoder.layer.1.output.LayerNorm.bias': (4,),
    'classifier.weight': (4, 2),
}


def named_tree(rng, scale: float = 1.0) -> dict[str, np.ndarray]:
  """Random float32 tensors of :data:`SHAPES`."""
  return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def by_name(predicate) -> dict[str, bool]:
  """``predicate`` of each name of :data:`SHAPES`, as a mask tree."""
  return {k: predicate(k) for k in SHAPES}
