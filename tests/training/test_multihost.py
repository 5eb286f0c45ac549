"""Two processes under jax.distributed (4 CPU devices each, gloo collectives)
take the same train steps as one process on the same global batches."""

import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from rose_jax.models import as_apply_fn
from rose_jax.training.methods import get_method
from tests.helpers import free_port, rose_chain, runner, tiny_batch, tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings('ignore::rose_jax.training.NoDropoutWarning')  # dropout 0 on purpose
def test_two_processes_equal_one_process(tmp_path):
  port, out = free_port(), tmp_path / 'params.npz'
  workers = [subprocess.Popen(
      [sys.executable, '-m', 'tests.helpers.multihost_worker', 'step', str(i), '2', str(port),
       str(out)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [w.communicate(timeout=300)[0] for w in workers]
  assert all(w.returncode == 0 for w in workers), '\n'.join(logs)

  method = get_method('rdrop-rose-ensemble')
  apply_fn, params = as_apply_fn(tiny_model(dropout=0.0))
  expected, _ = runner('none', rose_chain(), apply_fn, method)(params, [tiny_batch(i)
                                                                    for i in range(3)])
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got = dict(np.load(out))
  assert got.keys() == flat.keys()
  # Gradients are summed in another order across processes, and Adam's
  # normalisation magnifies the rounding of near-zero entries: one element in
  # 800 of the word embeddings has differed by 2.2e-6 after three steps of
  # lr 1e-3. 1e-5 is still 1% of one step.
  chex.assert_trees_all_close(got, flat, rtol=1e-4, atol=1e-5)
