"""Our Flax models (RoBERTa/BERT, ModernBERT, DeBERTa-v2/v3) and their Hugging Face
checkpoint loading."""

from rose_jax._src import versions

versions.check('flax')

# ruff: noqa: E402

from rose_jax._src.apply_fn import EmbeddingPerturbation
from rose_jax.models.apply import ModuleApply, as_apply_fn, call_encoder
from rose_jax.models.config import EncoderConfig
from rose_jax.models.deberta import DebertaV2Config, DebertaV2ForSequenceClassification
from rose_jax.models.encoder import EncoderForSequenceClassification
from rose_jax.models.loading import (
    FAMILIES,
    CheckpointError,
    Pretrained,
    check_tokenizer,
    load_pretrained,
    load_tokenizer,
    read_pretrained,
    resolve_checkpoint,
    save_pretrained,
)
from rose_jax.models.modernbert import ModernBertConfig, ModernBertForSequenceClassification

__all__ = [
    'FAMILIES',
    'CheckpointError',
    'DebertaV2Config',
    'DebertaV2ForSequenceClassification',
    'EmbeddingPerturbation',
    'EncoderConfig',
    'EncoderForSequenceClassification',
    'check_tokenizer',
    'load_pretrained',
    'ModernBertConfig',
    'ModernBertForSequenceClassification',
    'ModuleApply',
    'Pretrained',
    'as_apply_fn',
    'call_encoder',
    'load_tokenizer',
    'read_pretrained',
    'resolve_checkpoint',
    'save_pretrained',
]
