"""A Flax NNX RoBERTa/BERT encoder for sequence classification.

Attribute names follow Hugging Face's PyTorch modules, so that a parameter's
path is its tensor name (``roberta.encoder.layer.0.attention.self.query``
with Flax's ``kernel`` for ``weight``) and ROSE's per-tensor ranking sees
the same tensors as the authors' code.

Dropout draws from ``rngs.dropout`` when ``rngs`` is given and is off
otherwise, so a training step passes a fresh ``nnx.Rngs(dropout=key)``.

Between the embeddings and the output, hidden states are kept as one
``[batch * length, hidden]`` matrix, so that each weight gradient
contracts one axis: XLA:CPU copies a transpose of the operand before a
matmul that contracts two.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from rose_jax._src.apply_fn import EmbeddingPerturbation
from rose_jax.models import layers, segments
from rose_jax.models.config import EncoderConfig

Rngs = nnx.Rngs | None


def _activation(name: str):
  if name == 'relu':
    return jax.nn.relu
  return functools.partial(jax.nn.gelu, approximate=name != 'gelu')


_Factory = layers.Factory


class Embeddings(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.word_embeddings = make.embed(c.vocab_size)
    self.position_embeddings = make.embed(c.max_position_embeddings)
    self.token_type_embeddings = make.embed(c.type_vocab_size)
    self.LayerNorm = make.layer_norm()

  def __call__(self, input_ids, token_type_ids, rngs: Rngs,
               perturbation: EmbeddingPerturbation | None = None, segment_ids=None):
    c = self.config
    perturbation = perturbation or EmbeddingPerturbation()
    if segment_ids is not None:  # packed rows: positions restart in every segment
      positions = (segments.roberta_positions(input_ids, segment_ids, c.pad_token_id)
                   if c.model_type == 'roberta' else segments.bert_positions(segment_ids))
    elif c.model_type == 'roberta':
      # Hugging Face's create_position_ids_from_input_ids.
      not_pad = (input_ids != c.pad_token_id).astype(jnp.int32)
      positions = jnp.cumsum(not_pad, axis=1) * not_pad + c.pad_token_id
    else:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = (layers.add(self.word_embeddings(input_ids), perturbation.word)
         + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids))
    return layers.add(layers.dropout(c.hidden_dropout_prob, self.LayerNorm(x), rngs),
                      perturbation.output)


class SelfAttention(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.config = c
    self.query = make.linear(c.hidden_size, c.hidden_size)
    self.key = make.linear(c.hidden_size, c.hidden_size)
    self.value = make.linear(c.hidden_size, c.hidden_size)

  def __call__(self, x, attention_mask, rngs: Rngs):
    """``x`` is ``[batch * length, hidden]``; ``attention_mask`` is ``[batch,
    1, 1 or length, length]`` bools: which keys each query (or every query) sees."""
    c = self.config
    heads, size = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    split = lambda t: t.reshape(attention_mask.shape[0], attention_mask.shape[-1], heads, size)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / jnp.sqrt(size)
    scores = jnp.where(attention_mask, scores, jnp.finfo(jnp.float32).min)
    probs = layers.dropout(c.attention_probs_dropout_prob, jax.nn.softmax(scores, axis=-1), rngs)
    context = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)
    return context.reshape(x.shape)


class SelfOutput(nnx.Module):

  def __init__(self, make: _Factory, din: int):
    self.rate = make.config.hidden_dropout_prob
    self.dense = make.linear(din, make.config.hidden_size)
    self.LayerNorm = make.layer_norm()

  def __call__(self, x, residual, rngs: Rngs):
    return self.LayerNorm(layers.dropout(self.rate, self.dense(x), rngs) + residual)


class Attention(nnx.Module):

  def __init__(self, make: _Factory):
    self.self = SelfAttention(make)
    self.output = SelfOutput(make, make.config.hidden_size)

  def __call__(self, x, attention_mask, rngs: Rngs):
    return self.output(self.self(x, attention_mask, rngs), x, rngs)


class Intermediate(nnx.Module):

  def __init__(self, make: _Factory):
    self.activation = _activation(make.config.hidden_act)
    self.dense = make.linear(make.config.hidden_size, make.config.intermediate_size)

  def __call__(self, x):
    return self.activation(self.dense(x))


class Layer(nnx.Module):

  def __init__(self, make: _Factory):
    self.attention = Attention(make)
    self.intermediate = Intermediate(make)
    self.output = SelfOutput(make, make.config.intermediate_size)

  def __call__(self, x, attention_mask, rngs: Rngs):
    x = self.attention(x, attention_mask, rngs)
    return self.output(self.intermediate(x), x, rngs)


class Encoder(nnx.Module):

  def __init__(self, make: _Factory):
    self.layer = nnx.List([Layer(make) for _ in range(make.config.num_hidden_layers)])

  def __call__(self, x, attention_mask, rngs: Rngs):
    for layer in self.layer:
      x = layer(x, attention_mask, rngs)
    return x


class Pooler(nnx.Module):

  def __init__(self, make: _Factory):
    self.dense = make.linear(make.config.hidden_size, make.config.hidden_size)

  def __call__(self, first: jax.Array) -> jax.Array:
    """``first``: each example's first-token hidden state, ``[examples, hidden]``."""
    return jnp.tanh(self.dense(first))


class Backbone(nnx.Module):
  """``RobertaModel``/``BertModel``: embeddings, encoder, BERT's pooler."""

  def __init__(self, make: _Factory):
    self.embeddings = Embeddings(make)
    self.encoder = Encoder(make)
    if make.config.model_type == 'bert':
      self.pooler = Pooler(make)

  def __call__(self, input_ids, token_type_ids, attention_mask, rngs: Rngs,
               perturbation: EmbeddingPerturbation | None = None, segment_ids=None):
    x = self.embeddings(input_ids, token_type_ids, rngs, perturbation, segment_ids)
    if segment_ids is None:
      mask = attention_mask.astype(bool)[:, None, None, :]
    else:
      mask = segments.attention_mask(segment_ids)[:, None]
    flat = self.encoder(x.reshape(-1, x.shape[-1]), mask, rngs)
    return flat.reshape(x.shape)


class RobertaClassificationHead(nnx.Module):

  def __init__(self, make: _Factory):
    c = make.config
    self.rate = c.head_dropout
    self.dense = make.linear(c.hidden_size, c.hidden_size)
    self.out_proj = make.linear(c.hidden_size, c.num_labels)

  def __call__(self, first: jax.Array, rngs: Rngs):
    x = layers.dropout(self.rate, first, rngs)
    x = layers.dropout(self.rate, jnp.tanh(self.dense(x)), rngs)
    return self.out_proj(x)


class EncoderForSequenceClassification(nnx.Module):
  """``RobertaForSequenceClassification`` or ``BertForSequenceClassification``.

  Args:
    config: the encoder's configuration (``EncoderConfig.from_hf``).
    rngs: parameter initialisation randomness.
    dtype: computation dtype (``jnp.bfloat16`` for mixed precision);
      parameters stay float32, softmax and logits are float32.
  """

  def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.config = config
    make = _Factory(config, dtype, rngs)
    setattr(self, config.model_type, Backbone(make))
    if config.model_type == 'roberta':
      self.classifier = RobertaClassificationHead(make)
    else:
      self.classifier = make.linear(config.hidden_size, config.num_labels)

  @property
  def backbone(self) -> Backbone:
    return getattr(self, self.config.model_type)

  def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, *,
                    segment_ids=None, rngs: Rngs = None,
                    perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """The last layer's hidden states, shape ``[rows, length, hidden]``."""
    attention_mask = layers.check_inputs(input_ids, self.config.max_sequence_length,
                                         attention_mask, segment_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    return self.backbone(input_ids, token_type_ids, attention_mask, rngs, perturbation,
                         segment_ids)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               segment_ids=None, examples: int | None = None, rngs: Rngs = None,
               perturbation: EmbeddingPerturbation | None = None) -> jax.Array:
    """Float32 logits ``[examples, num_labels]``; dropout on iff ``rngs`` is given.

    Unpacked, every row is one example (``attention_mask`` marks its tokens).
    Packed, ``segment_ids`` (``[rows, length]``: 0 padding, 1, 2, ... the
    examples of a row, see :mod:`rose_jax.models.segments`) say which
    tokens belong together, and ``examples`` is how many the rows hold:
    attention stays within an example, positions restart in each, and each
    is classified from its first token, so that with dropout off an
    example's logits are those it has alone. ``perturbation`` adds to the
    embeddings (:class:`EmbeddingPerturbation`); a zero perturbation gives
    exactly the unperturbed logits.
    """
    layers.check_packed(segment_ids, examples)
    hidden = self.hidden_states(input_ids, attention_mask, token_type_ids,
                                segment_ids=segment_ids, rngs=rngs, perturbation=perturbation)
    first = segments.first_token_states(hidden, segment_ids, examples)
    if self.config.model_type == 'roberta':
      logits = self.classifier(first, rngs)
    else:
      pooled = layers.dropout(self.config.head_dropout, self.backbone.pooler(first), rngs)
      logits = self.classifier(pooled)
    return logits.astype(jnp.float32)
