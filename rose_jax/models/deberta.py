"""DeBERTa-v2 and -v3 (He et al., 2021) in Flax NNX, as ``transformers`` defines
``DebertaV2Model`` and ``DebertaV2ForSequenceClassification``.

Disentangled attention: besides content-to-content scores, each layer adds
content-to-position (``c2p``) and position-to-content (``p2c``) scores from
relative position embeddings that all layers share (normalised once by the
encoder's LayerNorm, ``norm_rel_ebd="layer_norm"``), with relative distances
put in logarithmic buckets beyond ``position_buckets / 2``. The classifier
reads the first token through the context pooler.

Attribute names follow the PyTorch modules (``deberta.encoder.layer.0.
attention.self.query_proj``), so that the authors' ranking rule and the
decay rule see the tensor names they were written for. Packed rows keep
attention within each example; relative distances within an example are
those it has alone, and absolute positions (``position_biased_input``, off
in v3) restart in each segment.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rose_jax._src.apply_fn import EmbeddingPerturbation
from rose_jax.models import layers, segments

# DeBERTa's feed-forward block and residual outputs are BERT's.
from rose_jax.models.encoder import Intermediate, SelfOutput

Rngs = layers.Rngs
_ACTIVATIONS = {'gelu': functools.partial(jax.nn.gelu, approximate=False),
                'gelu_new': functools.partial(jax.nn.gelu, approximate=True),
                'relu': jax.nn.relu, 'tanh': jnp.tanh}


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """What the Flax DeBERTa-v2/v3 needs of a ``DebertaV2Config``."""
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  layer_norm_eps: float = 1e-7
  relative_attention: bool = True
  max_relative_positions: int = -1
  position_buckets: int = 256
  pos_att_type: tuple[str, ...] = ('p2c', 'c2p')
  norm_rel_ebd: str = 'layer_norm'
  share_att_key: bool = True
  position_biased_input: bool = False
  pooler_hidden_act: str = 'gelu'
  pooler_dropout: float = 0.0
  cls_dropout: float | None = None
  pad_token_id: int = 0
  initializer_range: float = 0.02
  num_labels: int = 2
  model_type: str = 'deberta-v2'

  def __post_init__(self):
    known = sorted(_ACTIVATIONS)
    layers.check_config(
        self, activations={'hidden_act': known, 'pooler_hidden_act': known},
        rates=('hidden_dropout_prob', 'attention_probs_dropout_prob', 'pooler_dropout'))
    if set(self.pos_att_type) - {'c2p', 'p2c'}:
      raise ValueError(f'pos_att_type must hold "c2p" and/or "p2c", got {self.pos_att_type}.')

  @property
  def max_sequence_length(self) -> int:
    """The longest input: the absolute position table's, where there is one."""
    return self.max_position_embeddings

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def max_relative(self) -> int:
    return self.max_relative_positions if self.max_relative_positions >= 1 else \
        self.max_position_embeddings

  @property
  def attention_span(self) -> int:
    """Half the rows of the relative embedding table."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative

  @property
  def head_dropout(self) -> float:
    return self.hidden_dropout_prob if self.cls_dropout is None else self.cls_dropout

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides) -> DebertaV2Config:
    """From a ``transformers`` config or a ``config.json`` dict.

    Raises:
      ValueError: settings this implementation does not cover (a
        convolution layer, an embedding size other than the hidden size,
        other head sizes, pooler widths or attention without relative
        positions), each named.
    """
    source = dict(hf_config if isinstance(hf_config, dict) else hf_config.to_dict())
    unsupported = {
        'conv_kernel_size': source.get('conv_kernel_size', 0) not in (0, None),
        'embedding_size': source.get('embedding_size') not in (None, source['hidden_size']),
        'pooler_hidden_size': source.get('pooler_hidden_size') not in (None,
                                                                       source['hidden_size']),
        'attention_head_size': source.get('attention_head_size') not in (
            None, source['hidden_size'] // source['num_attention_heads']),
        'relative_attention': not source.get('relative_attention', False),
    }
    named = [name for name, bad in unsupported.items() if bad]
    if named:
      raise ValueError(f'This DeBERTa configuration sets {named}, which rose_jax does not '
                       'implement (it covers DeBERTa-v3 and the v2 models without a '
                       'convolution layer).')
    kinds = source.get('pos_att_type') or ()
    if isinstance(kinds, str):
      kinds = [k.strip() for k in kinds.lower().split('|') if k.strip()]
    source['pos_att_type'] = tuple(kinds)
    source['model_type'] = cls.model_type
    return layers.config_from_fields(cls, source, overrides)

  def with_dropout(self, hidden: float | None = None,
                   attention: float | None = None) -> DebertaV2Config:
    """Overrides the hidden and attention dropout rates."""
    return dataclasses.replace(
        self,
        hidden_dropout_prob=self.hidden_dropout_prob if hidden is None else hidden,
        attention_probs_dropout_prob=(
            self.attention_probs_dropout_prob if attention is None else attention))

  def to_hf(self) -> dict[str, Any]:
    """The ``config.json`` fields."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out['pos_att_type'] = list(self.pos_att_type)
    return out


def log_bucket_position(relative: jax.Array, bucket_size: int, max_position: int) -> jax.Array:
  """Hugging Face's ``make_log_bucket_position``: distances within
  ``bucket_size / 2`` kept, longer ones in logarithmic buckets."""
  sign = jnp.sign(relative)
  mid = bucket_size // 2
  near = (relative < mid) & (relative > -mid)
  absolute = jnp.where(near, mid - 1, jnp.abs(relative)).astype(jnp.float32)
  log_pos = jnp.ceil(jnp.log(absolute / mid) / jnp.log(jnp.float32((max_position - 1) / mid))
                     * (mid - 1)) + mid
  return jnp.where(absolute <= mid, relative.astype(jnp.float32), log_pos * sign).astype(
      jnp.int32)


def relative_positions(length: int, config: DebertaV2Config) -> jax.Array:
  """``[length, length]``: query minus key position, bucketed as the config says."""
  index = jnp.arange(length)
  relative = index[:, None] - index[None, :]
  if config.position_buckets > 0 and config.max_relative > 0:
    return log_bucket_position(relative, config.position_buckets, config.max_relative)
  return relative


_Factory = layers.Factory


class Embeddings(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.word_embeddings = make.embed(c.vocab_size)
    self.position_embeddings = make.embed(c.max_position_embeddings) \
        if c.position_biased_input else None
    self.token_type_embeddings = make.embed(c.type_vocab_size) if c.type_vocab_size else None
    self.LayerNorm = make.layer_norm()

  def __call__(self, input_ids, token_type_ids, keep, positions, rngs: Rngs,
               perturbation: EmbeddingPerturbation):
    x = layers.add(self.word_embeddings(input_ids), perturbation.word)
    if self.position_embeddings is not None:
      x = x + self.position_embeddings(positions)
    if self.token_type_embeddings is not None:
      x = x + self.token_type_embeddings(token_type_ids)
    x = self.LayerNorm(x) * keep[..., None].astype(x.dtype)
    return layers.add(layers.dropout(self.config.hidden_dropout_prob, x, rngs), perturbation.output)


class DisentangledSelfAttention(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.query_proj = make.linear(c.hidden_size, c.hidden_size)
    self.key_proj = make.linear(c.hidden_size, c.hidden_size)
    self.value_proj = make.linear(c.hidden_size, c.hidden_size)
    if not c.share_att_key:
      self.pos_key_proj = make.linear(c.hidden_size, c.hidden_size) \
          if 'c2p' in c.pos_att_type else None
      self.pos_query_proj = make.linear(c.hidden_size, c.hidden_size) \
          if 'p2c' in c.pos_att_type else None

  def __call__(self, x, mask, relative, rel_embeddings, rngs: Rngs):
    """``x`` ``[batch * length, hidden]``, ``mask`` ``[batch, 1, length, length]``,
    ``relative`` ``[length, length]`` bucketed distances, ``rel_embeddings``
    ``[2 * span, hidden]``."""
    c = self.config
    b, length = mask.shape[0], mask.shape[-1]
    heads = lambda t: t.reshape(*t.shape[:-1], c.num_attention_heads, c.head_dim)
    rows = lambda t: heads(t).reshape(b, length, c.num_attention_heads, c.head_dim)
    q, k, v = rows(self.query_proj(x)), rows(self.key_proj(x)), rows(self.value_proj(x))
    scale = jnp.sqrt(jnp.float32(c.head_dim * (1 + len(c.pos_att_type))))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k / scale.astype(k.dtype)).astype(jnp.float32)
    rel = layers.dropout(c.hidden_dropout_prob, rel_embeddings, rngs)
    span = c.attention_span
    if 'c2p' in c.pos_att_type:
      pos_key = heads(self.key_proj(rel) if c.share_att_key else self.pos_key_proj(rel))
      c2p = jnp.einsum('bqhd,rhd->bhqr', q, pos_key).astype(jnp.float32)
      index = jnp.clip(relative + span, 0, 2 * span - 1)
      c2p = jnp.take_along_axis(c2p, jnp.broadcast_to(index, (b, c.num_attention_heads,
                                                              length, length)), axis=-1)
      scores = scores + c2p / scale
    if 'p2c' in c.pos_att_type:
      pos_query = heads(self.query_proj(rel) if c.share_att_key else self.pos_query_proj(rel))
      p2c = jnp.einsum('bkhd,rhd->bhkr', k, pos_query).astype(jnp.float32)
      index = jnp.clip(-relative + span, 0, 2 * span - 1)  # [key, query]
      p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(index, (b, c.num_attention_heads,
                                                              length, length)), axis=-1)
      scores = scores + jnp.swapaxes(p2c, -1, -2) / scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = layers.dropout(c.attention_probs_dropout_prob, jax.nn.softmax(scores, axis=-1), rngs)
    context = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)
    return context.reshape(x.shape)


class Attention(nnx.Module):

  def __init__(self, make: _Factory):
    self.self = DisentangledSelfAttention(make)
    self.output = SelfOutput(make, make.config.hidden_size)

  def __call__(self, x, mask, relative, rel_embeddings, rngs: Rngs):
    return self.output(self.self(x, mask, relative, rel_embeddings, rngs), x, rngs)


class Layer(nnx.Module):

  def __init__(self, make: _Factory):
    self.attention = Attention(make)
    self.intermediate = Intermediate(make)
    self.output = SelfOutput(make, make.config.intermediate_size)

  def __call__(self, x, mask, relative, rel_embeddings, rngs: Rngs):
    x = self.attention(x, mask, relative, rel_embeddings, rngs)
    return self.output(self.intermediate(x), x, rngs)


class Encoder(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.layer = nnx.List([Layer(make) for _ in range(c.num_hidden_layers)])
    self.rel_embeddings = make.embed(2 * c.attention_span)
    self.LayerNorm = make.layer_norm() if 'layer_norm' in c.norm_rel_ebd.lower() else None

  def __call__(self, x, mask, rngs: Rngs):
    rel = self.rel_embeddings.embedding[...]
    if self.LayerNorm is not None:
      rel = self.LayerNorm(rel)
    shape = x.shape
    relative = relative_positions(shape[1], self.config)
    # One [batch * length, hidden] matrix between the layers, as in our
    # encoder (rose_jax.models.encoder says why).
    x = x.reshape(-1, shape[-1])
    for layer in self.layer:
      x = layer(x, mask, relative, rel.astype(x.dtype), rngs)
    return x.reshape(shape)


class Backbone(nnx.Module):
  """``DebertaV2Model``: embeddings and encoder."""

  def __init__(self, make: _Factory):
    self.embeddings = Embeddings(make)
    self.encoder = Encoder(make)

  def __call__(self, input_ids, token_type_ids, attention_mask, rngs: Rngs,
               perturbation: EmbeddingPerturbation, segment_ids=None):
    if segment_ids is None:
      keep = attention_mask.astype(bool)
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
      # A query and a key must both be tokens (Hugging Face's pair mask).
      mask = keep[:, None, :, None] & keep[:, None, None, :]
    else:
      keep = segment_ids != 0
      positions = segments.bert_positions(segment_ids)
      mask = segments.attention_mask(segment_ids)[:, None] & keep[:, None, :, None]
    x = self.embeddings(input_ids, token_type_ids, keep, positions, rngs, perturbation)
    return self.encoder(x, mask, rngs)


class ContextPooler(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.rate = c.pooler_dropout
    self.activation = _ACTIVATIONS[c.pooler_hidden_act]
    self.dense = make.linear(c.hidden_size, c.hidden_size)

  def __call__(self, first, rngs: Rngs):
    return self.activation(self.dense(layers.dropout(self.rate, first, rngs)))


class DebertaV2ForSequenceClassification(nnx.Module):
  """``DebertaV2ForSequenceClassification``, called as
  :class:`rose_jax.models.EncoderForSequenceClassification` is.

  Args:
    config: the model's configuration (``DebertaV2Config.from_hf``).
    rngs: parameter initialisation randomness.
    dtype: computation dtype; parameters stay float32, softmax and logits
      are float32.
  """

  def __init__(self, config: DebertaV2Config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.config = config
    make = _Factory(config, dtype, rngs)
    self.deberta = Backbone(make)
    self.pooler = ContextPooler(make)
    self.classifier = make.linear(config.hidden_size, config.num_labels)

  def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, *,
                    segment_ids=None, rngs: Rngs = None,
                    perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """The last layer's hidden states, shape ``[rows, length, hidden]``."""
    attention_mask = layers.check_inputs(input_ids, self.config.max_sequence_length,
                                         attention_mask, segment_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    return self.deberta(input_ids, token_type_ids, attention_mask, rngs,
                        perturbation or EmbeddingPerturbation(), segment_ids)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               segment_ids=None, examples: int | None = None, rngs: Rngs = None,
               perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """Float32 logits ``[examples, num_labels]``; dropout on iff ``rngs`` is
    given. Packed rows as in :class:`rose_jax.models.EncoderForSequenceClassification`."""
    layers.check_packed(segment_ids, examples)
    hidden = self.hidden_states(input_ids, attention_mask, token_type_ids,
                                segment_ids=segment_ids, rngs=rngs, perturbation=perturbation)
    first = segments.first_token_states(hidden, segment_ids, examples)
    pooled = layers.dropout(self.config.head_dropout, self.pooler(first, rngs), rngs)
    return self.classifier(pooled).astype(jnp.float32)
