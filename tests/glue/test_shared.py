"""What a group of runs shares: the checkpoint is read once, and every seed
still gets the params it would get from its own load."""

import jax
import numpy as np

from rose_jax._src import seeds
from rose_jax.glue import loop
from rose_jax.models import as_apply_fn, load_pretrained, loading
from tests import helpers


def _counting_reads(monkeypatch) -> list:
  reads = []
  real = loading.read_state_dict

  def counted(directory):
    reads.append(directory)
    return real(directory)

  monkeypatch.setattr(loading, 'read_state_dict', counted)
  return reads


def _alone(config):
  """The params as a run of its own loads them: one read of the checkpoint."""
  model = load_pretrained(config.model, num_labels=2, hidden_dropout=config.dropout,
                          attention_dropout=config.dropout,
                          seed=seeds.stream_seed(config.seed, 'head'),
                          ignore_mismatched_head=True)
  return as_apply_fn(model)[1]


def test_a_sweep_reads_its_checkpoint_once_and_each_seed_gets_its_own_head(
    files, tmp_path, monkeypatch):
  # A head of 3 labels for SST-2's 2: every run starts a new head, from its seed.
  model = str(helpers.tiny_checkpoint(tmp_path / 'model', num_labels=3))
  configs = [loop.TrainConfig(**helpers.run_settings(files, tmp_path / str(seed), seed=seed,
                                                     model=model))
             for seed in (1, 2, 3, 2)]
  reads = _counting_reads(monkeypatch)
  shared = loop.Shared(configs[0], runs=len(configs))
  params = [shared.params(config) for config in configs]
  assert len(reads) == 1
  for config, got in zip(configs, params, strict=True):
    expected = _alone(config)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
  heads = [np.asarray(p['classifier']['kernel']) for p in params]
  assert not np.array_equal(heads[0], heads[1])  # seeds 1 and 2: new heads of their own
  np.testing.assert_array_equal(heads[1], heads[3])  # seed 2 twice: the same head


def test_once_every_run_has_its_params_the_checkpoint_is_let_go(files, tmp_path, monkeypatch):
  config = loop.TrainConfig(**helpers.run_settings(files, tmp_path / 'run'))
  reads = _counting_reads(monkeypatch)
  shared = loop.Shared(config)
  shared.params(config)
  assert len(reads) == 1
  again = shared.params(config)  # one more than announced: read again, same result
  assert len(reads) == 2
  jax.tree.map(np.testing.assert_array_equal, again, _alone(config))
