"""Which parameters ROSE ranks and which decay, by Hugging Face tensor names.

The authors' code ranks a tensor when its PyTorch name contains both
``layer`` and ``weight`` (case-sensitive: ``LayerNorm`` alone does not
count), and decays every tensor except biases and LayerNorm parameters.
Our Flax parameter trees mirror those names, with Flax's leaf names
(``kernel``, ``scale``, ``embedding``) standing for PyTorch's ``weight``;
:func:`hf_name` maps a path back, so the rules below apply to any tree laid
out like a Hugging Face model. Neither the model nor the optimizer is
imported here.
"""

from __future__ import annotations

import jax

_FLAX_TO_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight'}


def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def hf_name(path) -> str:
  """The Hugging Face (PyTorch) tensor name of a pytree key path.

  ``('roberta', 'encoder', 'layer', 0, 'attention', 'self', 'query', 'kernel')``
  becomes ``'roberta.encoder.layer.0.attention.self.query.weight'``. A Flax
  NNX state's path ends in its variable's ``value`` (``nnx.Optimizer``
  hands the optimizer such a state), which is not part of the name.
  """
  names = [_key_name(k) for k in path]
  if len(names) > 1 and names[-1] == 'value':
    names = names[:-1]
  if names:
    names[-1] = _FLAX_TO_TORCH_LEAF.get(names[-1], names[-1])
  return '.'.join(names)


def is_authors_ranked(name: str) -> bool:
  """The authors' rule: ranked iff the name contains 'layer' and 'weight'."""
  return 'layer' in name and 'weight' in name


def is_decayed(name: str) -> bool:
  """The Hugging Face/authors' decay rule: no decay on biases and norms
  (BERT's ``LayerNorm``, ModernBERT's ``attn_norm``, ``final_norm``...)."""
  return not (name.endswith('bias') or 'norm' in name.lower())


def authors_selectable(params):
  """A tree of bools: True for tensors the authors' code ranks.

  For RoBERTa-base these are the 8 weight matrices and LayerNorm scales of
  each of the 12 layers, 96 tensors; biases, embeddings, the embedding
  LayerNorm and the classification head are always updated. ModernBERT's
  names (``model.layers.N.attn.Wqkv.weight``...) select the same kind: each
  layer's 4 weight matrices (``Wqkv``, attention ``Wo``, ``mlp.Wi``,
  ``mlp.Wo``) and its norms (the first layer has no attention norm), while
  the embeddings, the final norm and the head are always updated.
  DeBERTa's (``deberta.encoder.layer.N.attention.self.query_proj.weight``...)
  select BERT's eight per layer; the relative position embeddings that all
  layers share, and their LayerNorm, are always updated.
  """
  return jax.tree.map_with_path(
      lambda path, _: is_authors_ranked(hf_name(path)), params)


def authors_decay_mask(params):
  """A tree of bools: True for tensors that take weight decay."""
  return jax.tree.map_with_path(
      lambda path, _: is_decayed(hf_name(path)), params)


__all__ = ['authors_decay_mask', 'authors_selectable', 'hf_name', 'is_authors_ranked',
           'is_decayed']
