"""Loading Hugging Face checkpoints (RoBERTa, BERT, ModernBERT, DeBERTa-v2/v3) into our
Flax models, and saving them back in the same layout.

A checkpoint is a directory, or a hub name resolved to one, holding
``config.json`` and ``model.safetensors`` (or a sharded
``model.safetensors.index.json``); ``pytorch_model.bin`` is read only where
torch is installed. ``transformers`` supplies configs and tokenizers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rose_jax._src import atomic
from rose_jax.models.config import EncoderConfig
from rose_jax.models.deberta import DebertaV2Config, DebertaV2ForSequenceClassification
from rose_jax.models.encoder import EncoderForSequenceClassification
from rose_jax.models.files import (
  CheckpointError,
  read_json,
  read_state_dict,
  resolve_checkpoint,
)
from rose_jax.models.modernbert import ModernBertConfig, ModernBertForSequenceClassification
from rose_jax.selection import hf_name

log = logging.getLogger(__name__)

Config = EncoderConfig | ModernBertConfig | DebertaV2Config
Model = (EncoderForSequenceClassification | ModernBertForSequenceClassification
         | DebertaV2ForSequenceClassification)


@dataclasses.dataclass(frozen=True)
class Family:
  """How a model family's checkpoints map onto our module.

  Attributes:
    config: its configuration class (``from_hf``).
    model: its module class.
    prefix: the base model's tensor prefix (``roberta``, ``model``).
    head: prefixes of the tensors a new classification model initialises
      when the checkpoint lacks them.
    labels_tensor: the tensor whose length is the head's number of labels.
    architecture: the transformers class that ``save_pretrained``'s files load as.
  """
  config: type
  model: type
  prefix: str
  head: tuple[str, ...]
  labels_tensor: str
  architecture: str


FAMILIES = {
    'roberta': Family(EncoderConfig, EncoderForSequenceClassification, 'roberta',
                      ('classifier.',), 'classifier.out_proj.bias',
                      'RobertaForSequenceClassification'),
    'bert': Family(EncoderConfig, EncoderForSequenceClassification, 'bert',
                   ('classifier.', 'bert.pooler.'), 'classifier.bias',
                   'BertForSequenceClassification'),
    'modernbert': Family(ModernBertConfig, ModernBertForSequenceClassification, 'model',
                         ('classifier.', 'head.'), 'classifier.bias',
                         'ModernBertForSequenceClassification'),
    'deberta-v2': Family(DebertaV2Config, DebertaV2ForSequenceClassification, 'deberta',
                         ('classifier.', 'pooler.'), 'classifier.bias',
                         'DebertaV2ForSequenceClassification'),
}


def read_config(directory: Path, **overrides) -> Config:
  """The model's configuration (its family's class) from ``directory/config.json``."""
  file = directory / 'config.json'
  if not file.exists():
    raise CheckpointError(f'{directory} has no config.json.')
  raw = read_json(file, "the model's configuration (model_type, hidden_size...)")
  family = FAMILIES.get(raw.get('model_type'))
  if family is None:
    raise CheckpointError(
        f'{file} is a {raw.get("model_type")!r} checkpoint (its "model_type"); rose_jax '
        f'loads the families {", ".join(FAMILIES)}.')
  try:
    return family.config.from_hf(raw, **overrides)
  except (KeyError, TypeError, ValueError) as error:  # fields missing, of the wrong kind...
    raise CheckpointError(f'{file} is not a complete {raw["model_type"]} configuration: '
                          f'{error}') from None


_LEGACY_NAMES = {'.gamma': '.weight', '.beta': '.bias'}


# Heads of other tasks (masked language modelling) that a checkpoint may hold.
_OTHER_HEADS = ('lm_head.', 'cls.', 'decoder.')


def _normalise_names(state: dict[str, np.ndarray], family: Family) -> dict[str, np.ndarray]:
  """Adds the base-model prefix where missing and renames old LayerNorm keys."""
  out = {}
  for name, value in state.items():
    for old, new in _LEGACY_NAMES.items():
      if name.endswith(old):
        name = name[: -len(old)] + new
    if not name.startswith((family.prefix + '.', *family.head, *_OTHER_HEADS)):
      name = f'{family.prefix}.{name}'
    out[name] = np.asarray(value, np.float32)
  return out


def _num_labels_in(state: dict[str, np.ndarray], family: Family) -> int | None:
  key = family.labels_tensor
  return None if key not in state else int(state[key].shape[0])


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A checkpoint read into host memory, to build models from without
  reading it again (a sweep's seeds differ only in their new head).

  Attributes:
    config: the model's configuration, with the run's labels and dropout.
    state: the checkpoint's tensors by Hugging Face name (float32 NumPy),
      without a head that is to be initialised anew.
  """
  config: Config
  state: dict[str, np.ndarray]

  def model(self, *, dtype=jnp.float32, seed: int = 0) -> Model:
    """A model with these weights; the tensors the checkpoint lacks (the
    classification head, a BERT pooler) newly initialised from ``seed``.

    Args:
      dtype: computation dtype; parameters are float32.
      seed: seed for newly initialised tensors.
    """
    family = FAMILIES[self.config.model_type]
    model = family.model(self.config, rngs=nnx.Rngs(seed), dtype=dtype)
    assign_weights(model, self.state)
    return model


def read_pretrained(
    name_or_path: str | os.PathLike,
    *,
    num_labels: int | None = None,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
    ignore_mismatched_head: bool = False,
) -> Pretrained:
  """A checkpoint's configuration and tensors, read once (see :func:`load_pretrained`).

  Args:
    name_or_path: a local checkpoint directory or a hub name (``roberta-base``).
    num_labels: output classes; defaults to the checkpoint's.
    hidden_dropout: overrides the config's hidden dropout rate.
    attention_dropout: overrides the config's attention dropout rate.
    ignore_mismatched_head: leave out a checkpoint head whose number of
      labels differs from ``num_labels`` (to be initialised anew) instead of
      raising.
  """
  directory = resolve_checkpoint(name_or_path)
  config = read_config(directory).with_dropout(hidden_dropout, attention_dropout)
  family = FAMILIES[config.model_type]
  state = _normalise_names(read_state_dict(directory), family)
  head_labels = _num_labels_in(state, family)
  if num_labels is None:
    num_labels = head_labels or config.num_labels
  if head_labels is not None and head_labels != num_labels:
    if not ignore_mismatched_head:
      raise CheckpointError(
          f'num_labels={num_labels} conflicts with the checkpoint\'s classification '
          f'head, which has {head_labels} labels; pass num_labels={head_labels}, or '
          'ignore_mismatched_head=True to start a new head.')
    state = {k: v for k, v in state.items() if not k.startswith('classifier.')}
  return Pretrained(dataclasses.replace(config, num_labels=num_labels), state)


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    num_labels: int | None = None,
    hidden_dropout: float | None = None,
    attention_dropout: float | None = None,
    dtype=jnp.float32,
    seed: int = 0,
    ignore_mismatched_head: bool = False,
) -> Model:
  """A Flax model with a checkpoint's weights: an
  :class:`EncoderForSequenceClassification` for RoBERTa and BERT, a
  :class:`~rose_jax.models.ModernBertForSequenceClassification` for
  ModernBERT (``config.json``'s ``model_type`` decides).

  The classification head is newly initialised when the checkpoint has none
  (as ``transformers`` does); the pooler of a BERT checkpoint without one
  too. Every other tensor must be present. ``read_pretrained(...).model(...)``
  does the same in two steps, reading the checkpoint once for many models.

  Args:
    name_or_path: a local checkpoint directory or a hub name (``roberta-base``).
    num_labels: output classes; defaults to the checkpoint's.
    hidden_dropout: overrides the config's hidden dropout rate.
    attention_dropout: overrides the config's attention dropout rate.
    dtype: computation dtype; parameters are float32.
    seed: seed for newly initialised tensors.
    ignore_mismatched_head: reinitialise a checkpoint head whose number of
      labels differs from ``num_labels`` instead of raising.
  """
  return read_pretrained(
      name_or_path, num_labels=num_labels, hidden_dropout=hidden_dropout,
      attention_dropout=attention_dropout,
      ignore_mismatched_head=ignore_mismatched_head).model(dtype=dtype, seed=seed)


def assign_weights(model: Model, state: dict[str, np.ndarray]) -> None:
  """Copies Hugging Face tensors into ``model`` in place, checking shapes."""
  params = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(params)
  fresh, missing = [], []

  def assign(path, current):
    name, leaf = hf_name(path), str(getattr(path[-1], 'key', path[-1]))
    if name not in state:
      if name.startswith(FAMILIES[model.config.model_type].head):
        fresh.append(name)
        return current
      missing.append(name)
      return current
    # PyTorch's Linear stores [out, in]; Flax's kernel is [in, out].
    value = state[name].T if leaf == 'kernel' else state[name]
    if value.shape != current.shape:
      raise CheckpointError(f'{name} has shape {value.shape} in the checkpoint, '
                            f'expected {current.shape} from config.json.')
    return jnp.asarray(value, current.dtype)

  pure = jax.tree.map_with_path(assign, pure)
  if missing:
    raise CheckpointError(f'The checkpoint lacks {len(missing)} tensors the model needs, '
                          f'e.g. {missing[:5]}.')
  if fresh:
    log.warning('Newly initialised (not in the checkpoint): %s', ', '.join(fresh))
  nnx.replace_by_pure_dict(params, pure)
  nnx.update(model, params)


def load_tokenizer(name_or_path: str | os.PathLike, config: Config | None = None):
  """The checkpoint's tokenizer, checked against the model's vocabulary."""
  from transformers import AutoTokenizer
  directory = resolve_checkpoint(name_or_path)
  if not any(any(directory.glob(pattern)) for pattern in _VOCABULARY_FILES):
    raise CheckpointError(
        f'{directory} has no tokenizer files (one of {", ".join(_VOCABULARY_FILES)}); '
        'copy them from the checkpoint the model came from (tokenizer.save_pretrained).')
  for name in ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
    if (directory / name).exists():
      read_json(directory / name, "the tokenizer's settings")
  try:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise CheckpointError(f'The tokenizer in {directory} cannot be loaded ({type(error).__name__}'
                          f': {str(error)[:200]}); copy its files again from the checkpoint the '
                          'model came from.') from None
  if config is not None:
    check_tokenizer(tokenizer, config)
  return tokenizer


# Files that define a tokenizer's vocabulary, as transformers saves them.
_VOCABULARY_FILES = ('tokenizer.json', 'vocab.txt', 'vocab.json', '*.model')
# Models pad their embedding table past the tokenizer (to a multiple of 8 or
# 64, say), but a tokenizer that reaches less than this share of it has lost
# its vocabulary.
MIN_VOCABULARY_COVERAGE = 0.9


def check_tokenizer(tokenizer, config: Config) -> None:
  """Raises CheckpointError if the tokenizer cannot feed this model."""
  if len(tokenizer) < MIN_VOCABULARY_COVERAGE * config.vocab_size:
    raise CheckpointError(
        f'The tokenizer has {len(tokenizer)} tokens but the model\'s vocabulary holds '
        f'{config.vocab_size}: most words would become unknown tokens. Load the tokenizer '
        'from the checkpoint the model came from.')
  if len(tokenizer) > config.vocab_size:
    raise CheckpointError(
        f'The tokenizer has {len(tokenizer)} tokens but the model\'s vocabulary '
        f'holds {config.vocab_size}: they do not belong together; load the '
        'tokenizer from the same checkpoint as the model.')
  if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != config.pad_token_id:
    raise CheckpointError(
        f'The tokenizer pads with id {tokenizer.pad_token_id} but the model expects '
        f'{config.pad_token_id}: load the tokenizer from the model\'s checkpoint.')


def save_pretrained(model: Model, directory: str | os.PathLike, *,
                    label_names: Sequence[str] | None = None) -> Path:
  """Writes ``config.json`` and ``model.safetensors`` in the Hugging Face layout.

  The result loads with :func:`load_pretrained` and with ``transformers``'
  PyTorch classes. Each file is written to a temporary name and renamed, so
  an interruption leaves the old file or the new one, never half of one.

  Args:
    model: the model.
    directory: where to write.
    label_names: the classes' names in index order, for ``id2label`` and
      ``label2id`` (``pipeline("text-classification")`` prints them);
      default ``LABEL_0``... A one-output model is saved as regression
      (``problem_type``).
  """
  from safetensors.numpy import save
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  config = model.config
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  tensors = {}
  for path, value in jax.tree.flatten_with_path(pure)[0]:
    leaf = str(getattr(path[-1], 'key', path[-1]))
    array = np.asarray(value, np.float32)
    tensors[hf_name(path)] = np.ascontiguousarray(array.T if leaf == 'kernel' else array)
  fields = config.to_hf() if hasattr(config, 'to_hf') else dataclasses.asdict(config)
  architecture = FAMILIES[config.model_type].architecture
  names = list(label_names) if label_names else [f'LABEL_{i}' for i in range(config.num_labels)]
  if len(names) != config.num_labels:
    raise ValueError(f'{len(names)} label names for a model of {config.num_labels} outputs.')
  hf_config = {**fields, 'architectures': [architecture],
               'id2label': {str(i): name for i, name in enumerate(names)},
               'label2id': {name: i for i, name in enumerate(names)},
               'problem_type': ('regression' if config.num_labels == 1
                                else 'single_label_classification')}
  atomic.write_bytes(directory / 'config.json', json.dumps(hf_config, indent=2).encode())
  atomic.write_bytes(directory / 'model.safetensors', save(tensors, metadata={'format': 'pt'}))
  return directory

