"""The encoder's configuration, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
from typing import Any

from rose_jax.models import layers

SUPPORTED_MODEL_TYPES = ('roberta', 'bert')
_ACTIVATIONS = ('gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu')


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """What the Flax encoder needs of a RoBERTa or BERT configuration."""
  model_type: str
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int = 2
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  classifier_dropout: float | None = None
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  initializer_range: float = 0.02
  num_labels: int = 2

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f'Unknown model type {self.model_type!r}: rose_jax implements '
          f'{SUPPORTED_MODEL_TYPES} encoders (config.json "model_type").')
    layers.check_config(self, activations={'hidden_act': _ACTIVATIONS},
                        rates=('hidden_dropout_prob', 'attention_probs_dropout_prob'))

  @property
  def max_sequence_length(self) -> int:
    """Longest input the position table allows (RoBERTa offsets by pad + 1)."""
    if self.model_type == 'roberta':
      return self.max_position_embeddings - self.pad_token_id - 1
    return self.max_position_embeddings

  @property
  def head_dropout(self) -> float:
    if self.classifier_dropout is None:
      return self.hidden_dropout_prob
    return self.classifier_dropout

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides) -> EncoderConfig:
    """From a ``transformers`` config object or a ``config.json`` dict."""
    source = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    return layers.config_from_fields(cls, source, overrides)

  def with_dropout(self, hidden: float | None = None,
                   attention: float | None = None) -> EncoderConfig:
    """Overrides the dropout rates (the authors set both to one value)."""
    return dataclasses.replace(
        self,
        hidden_dropout_prob=self.hidden_dropout_prob if hidden is None else hidden,
        attention_probs_dropout_prob=(
            self.attention_probs_dropout_prob if attention is None else attention))
