"""The commands' malloc setting: freed memory is reused instead of faulted in again."""

import os
import subprocess
import sys

import pytest

from rose_jax._src import cpu_malloc

# The module alone, by its path: importing the package (JAX and all) would
# cost each of these processes seconds and change nothing of malloc's.
LOAD = f'''
import importlib.util
spec = importlib.util.spec_from_file_location('cpu_malloc', {cpu_malloc.__file__!r})
cpu_malloc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_malloc)
'''
# Blocks allocated and freed in a worker thread, as XLA:CPU's executor threads do.
PROGRAM = LOAD + '''
import resource, sys, threading
import numpy as np
if sys.argv[1] == 'keep':
  cpu_malloc.keep_freed_memory()
faults = []
def work():
  for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(1 << 20) for _ in range(6)]  # 8 MiB each, in this thread's arena
    blocks.append(np.ones(5 << 20))  # 40 MiB, over glibc's mmap threshold
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del blocks
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(min(faults[1:]), max(faults[1:]))
'''


def _faults(mode: str, **env) -> tuple[int, int]:
  done = subprocess.run([sys.executable, '-c', PROGRAM, mode], capture_output=True, text=True,
                        env={**os.environ, **env}, check=True)
  low, high = done.stdout.split()
  return int(low), int(high)


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc only')
def test_freed_blocks_are_reused_without_page_faults():
  # Page counts depend on transparent huge pages; the ratio does not.
  system = _faults('system')[0]
  assert system > 100  # glibc gives the memory back and faults it in again
  assert _faults('keep')[1] < system / 20
  assert _faults('keep', ROSE_JAX_SYSTEM_MALLOC='1')[0] > system / 2


LARGE = LOAD + '''
import resource, sys
import numpy as np
cpu_malloc.keep_freed_memory()
faults = []
for _ in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  # 2.25 GiB: over the largest positive trim threshold. One byte written a
  # page faults each page in, as filling it would, without writing 2 GiB.
  block = np.empty(2304 << 20, np.uint8)
  block[::4096] = 1
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  del block
print(*faults)
'''


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc only')
def test_a_block_of_more_than_2_gib_is_kept_too():
  # A base-sized ROSE step frees more than 2 GiB of temporaries at once.
  done = subprocess.run([sys.executable, '-c', LARGE], capture_output=True, text=True,
                        check=True)
  first, later = map(int, done.stdout.split())
  assert first > 1000 and later < first / 20


def test_opting_out_and_preloaded_allocators_are_respected(monkeypatch):
  monkeypatch.setenv('ROSE_JAX_SYSTEM_MALLOC', '1')
  assert 'left as it is' in cpu_malloc.keep_freed_memory()
  monkeypatch.delenv('ROSE_JAX_SYSTEM_MALLOC')
  monkeypatch.setenv('LD_PRELOAD', 'libtcmalloc_minimal.so.4')
  assert 'preloaded' in cpu_malloc.keep_freed_memory()
