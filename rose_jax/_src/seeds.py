"""Independent random streams derived from one ``--seed``.

Each stream's seed is the first 32-bit word of NumPy's
``SeedSequence((seed, STREAM_IDS[stream]))``. Streams are independent, so
changing how one is used (a new head, another data order, a baseline's
noise) leaves the others' random numbers as they were:

* ``head``: newly initialised tensors (the classification head),
  ``nnx.Rngs(stream_seed(seed, 'head'))``;
* ``dropout``: dropout masks, ``fold_in(stream_key(seed, 'dropout'), step)``;
* ``data``: the order of training examples,
  ``default_rng([stream_seed(seed, 'data'), epoch])``;
* ``noise``: a baseline's own noise (an adversarial start, say),
  ``fold_in(stream_key(seed, 'noise'), step)``.
"""

from __future__ import annotations

import jax
import numpy as np

STREAM_IDS = {'head': 1, 'dropout': 2, 'data': 3, 'noise': 4}


def stream_seed(seed: int, stream: str) -> int:
  """The 32-bit seed of ``stream`` (one of ``STREAM_IDS``) for a run's ``seed``."""
  if stream not in STREAM_IDS:
    raise ValueError(f'Unknown random stream {stream!r}; choose one of {sorted(STREAM_IDS)}.')
  return int(np.random.SeedSequence((seed, STREAM_IDS[stream])).generate_state(1)[0])


def stream_key(seed: int, stream: str) -> jax.Array:
  """A JAX key for ``stream``."""
  return jax.random.key(stream_seed(seed, stream))
