"""ModernBERT (Warner et al., 2024) in Flax NNX, as ``transformers`` defines
``ModernBertModel`` and ``ModernBertForSequenceClassification``.

Rotary positions with one base for the global and one for the local layers,
local layers that attend within a sliding window of ``local_attention``
tokens (``|i - j| <= local_attention // 2``), GeGLU feed-forward blocks,
pre-norm layers (the first without its attention norm), a final norm, no
biases by default, and a head of dense, activation and norm over the first
token or the mean of the tokens (``classifier_pooling``).

Attribute names follow the PyTorch modules, so that a parameter's path is its
tensor name (``model.layers.0.attn.Wqkv`` with Flax's ``kernel`` for
``weight``). Packed rows (``segment_ids``) restart the rotary positions in
every segment and keep attention, the sliding window included, within it, so
that an example's logits are those it has alone.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rose_jax._src.apply_fn import EmbeddingPerturbation
from rose_jax._src.segments import example_ids
from rose_jax.models import layers, segments

Rngs = layers.Rngs
_ACTIVATIONS = {'gelu': functools.partial(jax.nn.gelu, approximate=False),
                'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
                'gelu_pytorch_tanh': functools.partial(jax.nn.gelu, approximate=True),
                'relu': jax.nn.relu, 'silu': jax.nn.silu}
FULL, SLIDING = 'full_attention', 'sliding_attention'


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
  """What the Flax ModernBERT needs of a ``ModernBertConfig``."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  max_position_embeddings: int
  layer_types: tuple[str, ...]
  global_rope_theta: float = 160000.0
  local_rope_theta: float = 10000.0
  local_attention: int = 128
  hidden_activation: str = 'gelu'
  norm_eps: float = 1e-5
  norm_bias: bool = False
  attention_bias: bool = False
  mlp_bias: bool = False
  attention_dropout: float = 0.0
  embedding_dropout: float = 0.0
  mlp_dropout: float = 0.0
  classifier_dropout: float = 0.0
  classifier_bias: bool = False
  classifier_activation: str = 'gelu'
  classifier_pooling: str = 'cls'
  pad_token_id: int = 50283
  # The tokenizer's special tokens, kept for the config.json we write.
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  cls_token_id: int | None = None
  sep_token_id: int | None = None
  initializer_range: float = 0.02
  num_labels: int = 2
  model_type: str = 'modernbert'

  def __post_init__(self):
    known = sorted(_ACTIVATIONS)
    layers.check_config(
        self, activations={'hidden_activation': known, 'classifier_activation': known},
        rates=('attention_dropout', 'embedding_dropout', 'mlp_dropout', 'classifier_dropout'))
    if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {FULL,
                                                                                   SLIDING}:
      raise ValueError(f'layer_types must name {FULL!r} or {SLIDING!r} for each of the '
                       f'{self.num_hidden_layers} layers, got {list(self.layer_types)}.')
    if self.classifier_pooling not in ('cls', 'mean'):
      raise ValueError(f'classifier_pooling must be "cls" or "mean", got '
                       f'{self.classifier_pooling!r}.')

  @property
  def max_sequence_length(self) -> int:
    """Longest input the model was trained for (rotary positions have no table)."""
    return self.max_position_embeddings

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides) -> ModernBertConfig:
    """From a ``transformers`` config or a ``config.json`` dict, in the layout
    of transformers 5 (``layer_types``, ``rope_parameters``) or of the
    released checkpoints (``global_attn_every_n_layers``, ``global_rope_theta``)."""
    source = dict(hf_config if isinstance(hf_config, dict) else hf_config.to_dict())
    count = source['num_hidden_layers']
    if source.get('layer_types') is None:
      every = source.get('global_attn_every_n_layers', 3)
      source['layer_types'] = [SLIDING if i % every else FULL for i in range(count)]
    rope = source.get('rope_parameters') or {}
    for layer_type, name in ((FULL, 'global_rope_theta'), (SLIDING, 'local_rope_theta')):
      if (rope.get(layer_type) or {}).get('rope_theta') is not None:
        source[name] = rope[layer_type]['rope_theta']
      if (rope.get(layer_type) or {}).get('rope_type', 'default') != 'default':
        raise ValueError(f'Rotary scaling {rope[layer_type]["rope_type"]!r} is not '
                         'supported: rose_jax implements the default rotary embedding.')
    source['layer_types'] = tuple(source['layer_types'])
    return layers.config_from_fields(cls, source, overrides)

  def with_dropout(self, hidden: float | None = None,
                   attention: float | None = None) -> ModernBertConfig:
    """Overrides the dropout rates: ``hidden`` for the embeddings and the
    feed-forward blocks, ``attention`` for attention (the classifier's stays)."""
    changes = {}
    if hidden is not None:
      changes.update(embedding_dropout=hidden, mlp_dropout=hidden)
    if attention is not None:
      changes.update(attention_dropout=attention)
    return dataclasses.replace(self, **changes)

  def to_hf(self) -> dict[str, Any]:
    """The ``config.json`` fields, as transformers 5 reads them."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ('global_rope_theta', 'local_rope_theta')
           and getattr(self, f.name) is not None}
    out['layer_types'] = list(self.layer_types)
    out['rope_parameters'] = {
        FULL: {'rope_type': 'default', 'rope_theta': self.global_rope_theta},
        SLIDING: {'rope_type': 'default', 'rope_theta': self.local_rope_theta}}
    return out


class _Factory:
  """Builds layers with the config's initialiser and compute dtype."""

  def __init__(self, config: ModernBertConfig, dtype, rngs: nnx.Rngs):
    self.config, self.dtype, self.rngs = config, dtype, rngs
    self.init = nnx.initializers.normal(config.initializer_range)

  def linear(self, din: int, dout: int, bias: bool) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, kernel_init=self.init, dtype=self.dtype,
                      param_dtype=jnp.float32, rngs=self.rngs)

  def norm(self) -> nnx.LayerNorm:
    c = self.config
    return nnx.LayerNorm(c.hidden_size, epsilon=c.norm_eps, use_bias=c.norm_bias,
                         dtype=self.dtype, param_dtype=jnp.float32, rngs=self.rngs)


def rotary(positions: jax.Array, theta: float, dim: int) -> tuple[jax.Array, jax.Array]:
  """``(cos, sin)`` of Hugging Face's default rotary embedding, ``[..., dim]``."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  freqs = positions[..., None].astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """``x * cos + rotate_half(x) * sin`` in float32; ``x`` is ``[b, l, heads, d]``."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class Embeddings(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.rate = c.embedding_dropout
    self.tok_embeddings = nnx.Embed(c.vocab_size, c.hidden_size, embedding_init=make.init,
                                    dtype=make.dtype, param_dtype=jnp.float32, rngs=make.rngs)
    self.norm = make.norm()

  def __call__(self, input_ids, rngs: Rngs, perturbation: EmbeddingPerturbation):
    x = layers.add(self.tok_embeddings(input_ids), perturbation.word)
    return layers.add(layers.dropout(self.rate, self.norm(x), rngs), perturbation.output)


class Attention(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.Wqkv = make.linear(c.hidden_size, 3 * c.hidden_size, c.attention_bias)
    self.Wo = make.linear(c.hidden_size, c.hidden_size, c.attention_bias)

  def __call__(self, x, mask, cos, sin, rngs: Rngs):
    """``x`` is ``[batch * length, hidden]``; ``mask`` ``[batch, 1, length, length]``."""
    c = self.config
    b, length = mask.shape[0], mask.shape[-1]
    qkv = self.Wqkv(x).reshape(b, length, 3, c.num_attention_heads, c.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * c.head_dim ** -0.5
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = layers.dropout(c.attention_dropout, jax.nn.softmax(scores, axis=-1), rngs)
    context = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v).reshape(x.shape)
    return layers.dropout(c.attention_dropout, self.Wo(context), rngs)


class MLP(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.rate = c.mlp_dropout
    self.activation = _ACTIVATIONS[c.hidden_activation]
    self.Wi = make.linear(c.hidden_size, 2 * c.intermediate_size, c.mlp_bias)
    self.Wo = make.linear(c.intermediate_size, c.hidden_size, c.mlp_bias)

  def __call__(self, x, rngs: Rngs):
    value, gate = jnp.split(self.Wi(x), 2, axis=-1)
    return self.Wo(layers.dropout(self.rate, self.activation(value) * gate, rngs))


class Layer(nnx.Module):

  def __init__(self, make: _Factory, index: int):
    # The first layer has no attention norm: the embeddings' norm precedes it.
    self.attn_norm = make.norm() if index else None
    self.attn = Attention(make)
    self.mlp_norm = make.norm()
    self.mlp = MLP(make)
    self.attention_type = make.config.layer_types[index]

  def __call__(self, x, mask, cos, sin, rngs: Rngs):
    normed = x if self.attn_norm is None else self.attn_norm(x)
    x = x + self.attn(normed, mask, cos, sin, rngs)
    return x + self.mlp(self.mlp_norm(x), rngs)


class Backbone(nnx.Module):
  """``ModernBertModel``: embeddings, layers and the final norm."""

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.embeddings = Embeddings(make)
    self.layers = nnx.List([Layer(make, i) for i in range(c.num_hidden_layers)])
    self.final_norm = make.norm()

  def __call__(self, input_ids, attention_mask, rngs: Rngs,
               perturbation: EmbeddingPerturbation, segment_ids=None):
    c = self.config
    x = self.embeddings(input_ids, rngs, perturbation)
    shape, length = x.shape, input_ids.shape[1]
    # One [batch * length, hidden] matrix between the layers, as in our
    # encoder (rose_jax.models.encoder says why).
    x = x.reshape(-1, shape[-1])
    if segment_ids is None:
      positions = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
      full = jnp.broadcast_to(attention_mask.astype(bool)[:, None, :], (*input_ids.shape,
                                                                        length))
    else:
      positions = segments.bert_positions(segment_ids)
      full = segments.attention_mask(segment_ids)
    index = jnp.arange(length)
    window = jnp.abs(index[:, None] - index[None, :]) <= c.local_attention // 2
    masks = {FULL: full[:, None], SLIDING: (full & window)[:, None]}
    rotations = {FULL: rotary(positions, c.global_rope_theta, c.head_dim),
                 SLIDING: rotary(positions, c.local_rope_theta, c.head_dim)}
    for layer in self.layers:
      x = layer(x, masks[layer.attention_type], *rotations[layer.attention_type], rngs)
    return self.final_norm(x).reshape(shape)


class PredictionHead(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.activation = _ACTIVATIONS[c.classifier_activation]
    self.dense = make.linear(c.hidden_size, c.hidden_size, c.classifier_bias)
    self.norm = make.norm()

  def __call__(self, x):
    return self.norm(self.activation(self.dense(x)))


class ModernBertForSequenceClassification(nnx.Module):
  """``ModernBertForSequenceClassification``, called as
  :class:`rose_jax.models.EncoderForSequenceClassification` is (it has no
  token types; ``token_type_ids`` is accepted and ignored).

  Args:
    config: the model's configuration (``ModernBertConfig.from_hf``).
    rngs: parameter initialisation randomness.
    dtype: computation dtype; parameters stay float32, softmax and logits
      are float32.
  """

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.config = config
    make = _Factory(config, dtype, rngs)
    self.model = Backbone(make)
    self.head = PredictionHead(make)
    self.classifier = nnx.Linear(config.hidden_size, config.num_labels, kernel_init=make.init,
                                 dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, *,
                    segment_ids=None, rngs: Rngs = None,
                    perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """The final norm's output, shape ``[rows, length, hidden]``."""
    del token_type_ids
    attention_mask = layers.check_inputs(input_ids, self.config.max_sequence_length,
                                         attention_mask, segment_ids)
    return self.model(input_ids, attention_mask, rngs, perturbation or EmbeddingPerturbation(),
                      segment_ids)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               segment_ids=None, examples: int | None = None, rngs: Rngs = None,
               perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """Float32 logits ``[examples, num_labels]``; dropout on iff ``rngs`` is
    given. Packed rows as in :class:`rose_jax.models.EncoderForSequenceClassification`."""
    layers.check_packed(segment_ids, examples)
    hidden = self.hidden_states(input_ids, attention_mask, segment_ids=segment_ids, rngs=rngs,
                                perturbation=perturbation)
    pooled = self._pool(hidden, attention_mask, segment_ids, examples)
    x = layers.dropout(self.config.classifier_dropout, self.head(pooled), rngs)
    return self.classifier(x).astype(jnp.float32)

  def _pool(self, hidden, attention_mask, segment_ids, examples):
    if self.config.classifier_pooling == 'cls':
      return segments.first_token_states(hidden, segment_ids, examples)
    if segment_ids is None:
      weights = jnp.ones(hidden.shape[:2]) if attention_mask is None else attention_mask
      weights = weights.astype(hidden.dtype)[..., None]
      return (hidden * weights).sum(1) / weights.sum(1)
    owner = example_ids(segment_ids).reshape(-1)  # 1, 2, ...; 0 at padding
    sums = jax.ops.segment_sum(hidden.reshape(-1, hidden.shape[-1]), owner, examples + 1)
    counts = jax.ops.segment_sum(jnp.ones_like(owner, hidden.dtype), owner, examples + 1)
    return sums[1:] / counts[1:, None]
