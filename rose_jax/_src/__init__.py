"""rose_jax's private infrastructure: no stable API.

What the public packages share and re-export (the model contract of
:mod:`rose_jax.training`, the losses, packed-row segments) and what serves
them behind the scenes (atomic files, memory estimates, hyperparameter and
version checks, seeds, the CPU allocator, multi-host start-up). Import the
public names from ``rose_jax``, ``rose_jax.training`` and the other public
packages; modules here may change without notice.
"""
