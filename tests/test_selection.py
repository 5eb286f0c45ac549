"""The authors' ranking and decay rules on Flax-style parameter paths."""

import jax
import jax.numpy as jnp

from rose_jax import selection


def _tree():
  layer = {
      'attention': {'self': {'query': {'kernel': 1, 'bias': 1}},
                    'output': {'dense': {'kernel': 1, 'bias': 1},
                               'LayerNorm': {'scale': 1, 'bias': 1}}},
  }
  return {'roberta': {'embeddings': {'word_embeddings': {'embedding': 1},
                                     'LayerNorm': {'scale': 1, 'bias': 1}},
                      'encoder': {'layer': {0: layer, 1: layer}}},
          'classifier': {'dense': {'kernel': 1, 'bias': 1}}}


def test_hf_name_maps_flax_leaves_to_torch_names():
  assert selection.hf_name(('roberta', 'encoder', 'layer', 0, 'attention', 'self',
                            'query', 'kernel')) == \
      'roberta.encoder.layer.0.attention.self.query.weight'
  assert selection.hf_name(('a', 'LayerNorm', 'scale')) == 'a.LayerNorm.weight'


def test_authors_rule_ranks_layer_weights_only():
  import jax
  names = {selection.hf_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      selection.authors_selectable(_tree()))[0]}
  ranked = sorted(k for k, v in names.items() if v)
  assert ranked == [f'roberta.encoder.layer.{i}.attention.{n}' for i in (0, 1) for n in (
      'output.LayerNorm.weight', 'output.dense.weight', 'self.query.weight')]
  decays = {selection.hf_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      selection.authors_decay_mask(_tree()))[0]}
  assert not any(v for k, v in decays.items() if k.endswith('bias') or 'LayerNorm' in k)
  assert all(v for k, v in decays.items() if not (k.endswith('bias') or 'LayerNorm' in k))
  assert decays['roberta.embeddings.word_embeddings.weight']


def test_rules_accept_arrays_as_leaves():
  tree = {'encoder': {'layer': [{'dense': {'kernel': jnp.ones((2, 2))}}]}}
  assert selection.authors_selectable(tree) == {'encoder': {'layer': [{'dense': {'kernel': True}}]}}


def test_an_nnx_states_paths_are_read_as_their_variables_names():
  from flax import nnx

  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs)])
      self.head = nnx.Linear(2, 2, rngs=rngs)

  state = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)  # what nnx.Optimizer hands tx.init
  names = {selection.hf_name(path) for path, _ in jax.tree.flatten_with_path(state)[0]}
  assert names == {'layers.0.weight', 'layers.0.bias', 'head.weight', 'head.bias'}
  ranked = jax.tree.leaves(selection.authors_selectable(state))
  assert sorted(ranked) == [False, False, False, True]
