"""How many sweep members or grid points fit a memory budget."""

import hypothesis
from hypothesis import strategies as st

from rose_jax._src import memory


@hypothesis.given(members=st.integers(1, 64), fixed=st.integers(0, 10**6),
                  per_member=st.integers(-10, 10**5), budget=st.integers(0, 10**7))
def test_chunk_size_fits_the_budget_and_is_at_least_one(members, fixed, per_member, budget):
  chunk = memory.chunk_size(members, fixed, per_member, budget)
  assert 1 <= chunk <= members
  if per_member <= 0:  # XLA's estimates can say a member adds nothing
    assert chunk == members
  elif chunk > 1:
    assert fixed + chunk * per_member <= budget
