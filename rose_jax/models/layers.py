"""What our model families share: dropout, the embedding hook, the input
checks of a classification model, and reading a config's fields."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Rngs = nnx.Rngs | None


class Factory:
  """Builds BERT's layers (biased linears, LayerNorms, embeddings) with the
  config's initialiser (``initializer_range``), ``layer_norm_eps``,
  ``hidden_size`` and the compute dtype; parameters are float32."""

  def __init__(self, config, dtype, rngs: nnx.Rngs):
    self.config, self.dtype, self.rngs = config, dtype, rngs
    self.init = nnx.initializers.normal(config.initializer_range)

  def linear(self, din: int, dout: int) -> nnx.Linear:
    return nnx.Linear(din, dout, kernel_init=self.init, dtype=self.dtype,
                      param_dtype=jnp.float32, rngs=self.rngs)

  def layer_norm(self) -> nnx.LayerNorm:
    return nnx.LayerNorm(self.config.hidden_size, epsilon=self.config.layer_norm_eps,
                         dtype=self.dtype, param_dtype=jnp.float32, rngs=self.rngs)

  def embed(self, n: int) -> nnx.Embed:
    return nnx.Embed(n, self.config.hidden_size, embedding_init=self.init, dtype=self.dtype,
                     param_dtype=jnp.float32, rngs=self.rngs)


def dropout(rate: float, x: jax.Array, rngs: Rngs) -> jax.Array:
  """Inverted dropout drawn from ``rngs.dropout``; off without ``rngs``."""
  if rngs is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(next_key(rngs.dropout), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def next_key(stream: nnx.RngStream) -> jax.Array:
  """``stream()``: its key folded in with its count, the count then stepped.

  The same keys as calling the stream, drawn without its ``count[...] += 1``:
  under tracing, flax then compares the new count's sharding, and a tracer
  builds a whole error message to say it has none, a cost paid for every
  dropout layer each time a step is traced.
  """
  count = stream.count[...]
  key = jax.random.fold_in(stream.key[...], count)
  stream.count.set_value(count + 1)
  return key


def add(x: jax.Array, delta: jax.Array | None) -> jax.Array:
  """``x + delta`` in ``x``'s dtype, or ``x`` (a perturbation that is not given)."""
  return x if delta is None else x + delta.astype(x.dtype)


def check_inputs(input_ids, limit: int, attention_mask, segment_ids):
  """The attention mask to use (all ones by default); ValueError for inputs
  longer than ``limit`` or for both a mask and packed rows."""
  length = input_ids.shape[-1]
  if length > limit:
    raise ValueError(
        f'Sequences of length {length} exceed the model\'s position table '
        f'({limit} tokens); truncate to max_length <= {limit}.')
  if segment_ids is not None and attention_mask is not None:
    raise ValueError('Give segment_ids (packed rows) or attention_mask, not both: packed '
                     'rows take their attention from the segments.')
  if attention_mask is None and segment_ids is None:
    return jnp.ones_like(input_ids)
  return attention_mask


def check_packed(segment_ids, examples) -> None:
  if (segment_ids is None) != (examples is None):
    raise ValueError('Packed rows need both segment_ids and examples (their number).')


def check_config(config, *, activations: dict[str, Any], rates: tuple[str, ...]) -> None:
  """ValueError, naming the field, for what every family's configuration
  must satisfy: each field in ``activations`` one of its allowed values,
  heads that divide the hidden size, dropout ``rates`` in [0, 1), at least
  one label."""
  for name, allowed in activations.items():
    if getattr(config, name) not in allowed:
      raise ValueError(f'Unsupported {name} {getattr(config, name)!r}; expected one of '
                       f'{allowed}.')
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(f'hidden_size {config.hidden_size} is not a multiple of '
                     f'num_attention_heads {config.num_attention_heads}.')
  for name in rates:
    if not 0.0 <= getattr(config, name) < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {getattr(config, name)}.')
  if config.num_labels < 1:
    raise ValueError(f'num_labels must be >= 1, got {config.num_labels}.')


def config_from_fields(cls, source: dict[str, Any], overrides: dict[str, Any]):
  """``cls`` (a config dataclass) from the fields of ``source`` it has, with
  ``overrides`` that are not None; ValueError naming missing fields."""
  if 'num_labels' not in source and 'id2label' in source:
    source = dict(source, num_labels=len(source['id2label']))
  fields = {f.name for f in dataclasses.fields(cls)}
  values = {k: v for k, v in source.items() if k in fields}
  values.update({k: v for k, v in overrides.items() if v is not None})
  missing = {f.name for f in dataclasses.fields(cls)
             if f.default is dataclasses.MISSING} - set(values)
  if missing:
    raise ValueError(f'The configuration lacks {sorted(missing)}.')
  return cls(**values)
