"""Fine-tuning methods: which passes, losses and gradients each one needs.

Methods differ only here; one train step serves them all.

| method | passes | update gradient | ``kl_grads`` | ``ce_grads`` | optimizer |
|---|---|---|---|---|---|
| vanilla | 1 | CE | | | AdamW |
| rdrop | 2 | CE + alpha KL | | | AdamW |
| child-tuning-d | 1 | CE | | | AdamW under a fixed Fisher mask |
| smart | 2 + steps | CE + lambda sym. KL(clean, adversarial) | | | AdamW |
| freelb | steps | mean of the passes' CE | | | AdamW |
| rose-second | 1 | CE | | | ROSE second |
| rose-first, rose-ensemble | 2 | CE | KL | | ROSE first/ensemble |
| rdrop-rose-* | 2 | CE + alpha KL | KL (first, ensemble) | CE (second, ensemble) | ROSE |
"""

from __future__ import annotations

import dataclasses

from rose_jax.baselines.adversarial import FreeLB, Smart


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method asks of the train step.

  Attributes:
    name: the method's name.
    passes: dropout passes over each batch (1 or 2).
    kl_weight: R-Drop's ``alpha``; the update gradient is that of
      ``CE + kl_weight * KL_rdrop`` (0 for CE alone), where R-Drop's KL
      (:func:`rose_jax.training.rdrop_kl`) is twice ROSE's
      first-order loss (:func:`~rose_jax.training.symmetric_kl`).
    kl_grads: hand the KL gradient to the optimizer (ROSE's first-order risk).
    ce_grads: hand the CE gradient to the optimizer separately (R-Drop +
      ROSE's second-order risk).
    rose_variant: the ROSE variant of the optimizer, or None for AdamW.
    adversary: SMART's or FreeLB's rule (:mod:`rose_jax.baselines`),
      which then computes the update gradient.
    fisher_mask: the optimizer needs CHILD-TUNING_D's Fisher mask, computed
      before training.
  """
  name: str
  passes: int
  kl_weight: float = 0.0
  kl_grads: bool = False
  ce_grads: bool = False
  rose_variant: str | None = None
  adversary: Smart | FreeLB | None = None
  fisher_mask: bool = False

  def __post_init__(self):
    if self.passes not in (1, 2):
      raise ValueError(f'passes must be 1 or 2, got {self.passes}.')
    if self.passes == 1 and (self.kl_grads or self.kl_weight):
      raise ValueError(
          f'Method {self.name!r} needs a KL loss, which needs a second dropout pass: '
          'set passes=2 (ROSE-First, ROSE-Ensemble and R-Drop run the batch twice).')
    if self.rose_variant in ('first', 'ensemble') and not self.kl_grads:
      raise ValueError(f'ROSE-{self.rose_variant} ranks by the KL gradient: set kl_grads=True.')
    if self.kl_weight < 0:
      raise ValueError(f'kl_weight must be >= 0, got {self.kl_weight}.')

  @property
  def rose_kl_weight(self) -> float:
    """The update's weight on ROSE's KL (``symmetric_kl``), which the step
    computes: R-Drop's KL is twice it."""
    return 2.0 * self.kl_weight

  @property
  def uses_rose(self) -> bool:
    return self.rose_variant is not None

  def without_first_order(self) -> Method:
    """This method on a step that computes no KL gradient (an optimizer's
    ``first_order_every`` step between refreshes): one pass and the task
    loss, or for R-Drop + ROSE both passes for the update's KL."""
    if not self.kl_grads:
      return self
    return dataclasses.replace(self, kl_grads=False, passes=2 if self.kl_weight else 1,
                               rose_variant=None)


# The paper's Table 1 order: baselines, then ROSE, then R-Drop + ROSE.
METHOD_NAMES = ('vanilla', 'rdrop', 'child-tuning-d', 'smart', 'freelb',
                'rose-first', 'rose-second', 'rose-ensemble',
                'rdrop-rose-first', 'rdrop-rose-second', 'rdrop-rose-ensemble')


def get_method(name: str, *, rdrop_alpha: float = 1.0, smart: Smart | None = None,
               freelb: FreeLB | None = None) -> Method:
  """The :class:`Method` called ``name`` (see ``METHOD_NAMES``); ``smart`` and
  ``freelb`` are those baselines' settings (default: their official code's)."""
  if name == 'vanilla':
    return Method(name, passes=1)
  if name == 'child-tuning-d':
    return Method(name, passes=1, fisher_mask=True)
  if name == 'smart':
    return Method(name, passes=1, adversary=smart or Smart())
  if name == 'freelb':
    return Method(name, passes=1, adversary=freelb or FreeLB())
  if name == 'rdrop':
    return Method(name, passes=2, kl_weight=rdrop_alpha)
  if name.startswith('rose-') and name[5:] in ('first', 'second', 'ensemble'):
    variant = name[5:]
    return Method(name, passes=1 if variant == 'second' else 2,
                  kl_grads=variant != 'second', rose_variant=variant)
  if name.startswith('rdrop-rose-') and name[11:] in ('first', 'second', 'ensemble'):
    variant = name[11:]
    # Only the second-order risk ranks by the CE gradient: ROSE-First does not
    # ask for it, and its step runs no backward for it.
    return Method(name, passes=2, kl_weight=rdrop_alpha, kl_grads=variant != 'second',
                  ce_grads=variant != 'first', rose_variant=variant)
  raise ValueError(f'Unknown method {name!r}; choose one of {METHOD_NAMES}.')
