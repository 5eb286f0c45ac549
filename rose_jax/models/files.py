"""A checkpoint's files: its directory (a local path, or a hub name fetched
into the cache) and its JSON and weight files, each read with a failure that
names the file and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rose_jax._src import json_files

_HUB_FILES = ['config.json', '*.safetensors', 'model.safetensors.index.json', '*.txt',
              'tokenizer*', 'special_tokens_map.json', 'vocab*', 'merges.txt',
              # sentencepiece vocabularies (DeBERTa-v3's spm.model)
              '*.model']
# Fetched only for a repository without safetensors (microsoft/deberta-v3-base).
_HUB_TORCH_FILES = ['pytorch_model.bin', 'pytorch_model.bin.index.json', 'pytorch_model-*.bin']


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded, with what to do about it."""


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
  """A local directory for ``name_or_path``, downloading from the hub if needed."""
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  if path.exists():
    raise CheckpointError(f'{path} is a file; pass the checkpoint directory that holds '
                          'config.json and model.safetensors.')
  if looks_like_a_path(str(name_or_path)):
    raise CheckpointError(f'The model directory {path} does not exist; check the path, or '
                          'give a hub name such as roberta-base.')
  from huggingface_hub import snapshot_download
  try:
    directory = Path(snapshot_download(str(name_or_path), allow_patterns=_HUB_FILES))
    if not any(directory.glob('*.safetensors')):
      directory = Path(snapshot_download(str(name_or_path), allow_patterns=_HUB_TORCH_FILES))
    return directory
  except Exception as error:  # network, authentication or name errors alike
    raise CheckpointError(
        f'Could not fetch {str(name_or_path)!r} from the Hugging Face Hub '
        f'({type(error).__name__}: {error}). Without network, pass a local '
        'directory holding config.json, model.safetensors and the tokenizer '
        'files (a checkpoint saved by transformers\' save_pretrained).') from None


def looks_like_a_path(name: str) -> bool:
  """Hub ids are ``name`` or ``owner/name``; anything else is meant as a path."""
  return (name.startswith(('/', '.', '~')) or name.count('/') > 1 or (os.sep != '/' and os.sep
          in name))


def read_json(file: Path, what: str) -> dict:
  """A checkpoint's JSON file as a dict; CheckpointError naming the file and
  what it should hold otherwise (cut short, not JSON, not an object)."""
  return json_files.read_object(file, f'{what}; copy it again from the checkpoint',
                                CheckpointError)


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  if not file.is_file():
    raise CheckpointError(f'{file} is missing; the checkpoint\'s weights are incomplete.')
  try:
    return load_file(file)
  except Exception as error:  # safetensors raises its own kinds for a damaged file
    raise CheckpointError(f'{file} is not a readable safetensors file ({error}): cut short '
                          'or damaged? Copy the weights again from the checkpoint.') from None


def read_state_dict(directory: Path) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 NumPy arrays, by Hugging Face name."""
  single, index = directory / 'model.safetensors', directory / 'model.safetensors.index.json'
  if single.exists():
    return _load_safetensors(single)
  if index.exists():
    weight_map = read_json(index, 'the shards of the weights ("weight_map")').get('weight_map')
    if not isinstance(weight_map, dict):
      raise CheckpointError(f'{index} has no "weight_map" of tensors to shard files.')
    tensors = {}
    for shard in sorted(set(weight_map.values())):
      tensors.update(_load_safetensors(directory / shard))
    return tensors
  bin_file = directory / 'pytorch_model.bin'
  if bin_file.exists():
    try:
      import torch
    except ImportError:
      raise CheckpointError(
          f'{directory} holds only pytorch_model.bin, which needs torch to read: '
          'install torch, or convert the checkpoint to model.safetensors.') from None
    state = torch.load(bin_file, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise CheckpointError(
      f'{directory} has no weights: expected model.safetensors, '
      'model.safetensors.index.json or pytorch_model.bin.')
