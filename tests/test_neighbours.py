"""Nearest neighbours (evaluation/neighbours.py): exact answers, ties, sources and meshes."""

import numpy as np
import pytest

from counted import Counted  # tests/counted.py
from diffgen_jax import sharding
from diffgen_jax.evaluation.neighbours import nearest_neighbours
from diffgen_jax.sharding import make_mesh


def _brute_force(queries, reference, k):
  """(indices, distances) by float64 distances, ties to the lowest index."""
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(reference, np.float64).reshape(len(reference), -1)
  d2 = ((q[:, None] - r[None]) ** 2).sum(-1)
  idx = np.stack([np.lexsort((np.arange(len(r)), row))[:k] for row in d2])
  return idx, np.sqrt(np.take_along_axis(d2, idx, 1))


@pytest.mark.parametrize("mesh_shape,chunk", [(None, 3), (None, 64), ((8, 1), 1), ((8, 1), 3),
                                              ((4, 2), 2)])
def test_exact_ties_lowest_index_first(mesh_shape, chunk):
  """Small integers with a dyadic mean: every score is exact, so equal distances are real ties,
  broken towards the lowest index on one device and after the merge across devices alike."""
  rng = np.random.default_rng(0)
  base = rng.integers(-2, 3, (8, 3))
  # 16 rows (8 of them repeated): the mean is a multiple of 1/16, exact in float32.
  reference = np.concatenate([base, base[[0, 0, 1, 5]], -base[:4]]).astype(np.float32)
  queries = np.concatenate([reference[[0, 3, 9]], rng.integers(-3, 4, (9, 3))]).astype(np.float32)
  mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
  idx, dist = nearest_neighbours(queries, reference, 5, chunk_size=chunk, query_batch=5, mesh=mesh)
  want_idx, want_dist = _brute_force(queries, reference, 5)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-6)
  assert np.all(dist[:3, 0] == 0.0)  # exact copies: exactly 0


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
def test_sharded_source_equals_unsharded_array(mesh_shape):
  """A lazily read reference over a mesh gives the single-device result on the array (indices
  equal, distances within rounding), reading each row twice (centre, then shard), a chunk at once."""
  rng = np.random.default_rng(1)
  reference = rng.uniform(-1, 1, (53, 2, 2, 3)).astype(np.float32)
  queries = np.concatenate([reference[[4, 50]], rng.uniform(-1, 1, (9, 2, 2, 3))]).astype(np.float32)
  want_idx, want_dist = nearest_neighbours(queries, reference, 3, chunk_size=4, query_batch=4)
  counted = Counted(reference)
  sharding.rows_built.clear()
  idx, dist = nearest_neighbours(queries, sharding.LazyRows(counted, np.arange(53)), 3,
                                 chunk_size=4, query_batch=4, mesh=make_mesh(*mesh_shape))
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-6)
  assert np.all(dist[:2, 0] == 0.0)
  np.testing.assert_array_equal(np.bincount(np.concatenate(counted.reads), minlength=53),
                                np.full(53, 2))
  assert max(len(r) for r in counted.reads) <= 4
  shards = mesh_shape[0]
  assert sharding.rows_built["shard"] <= -(-53 // shards) + 4


def test_unsharded_matches_brute_force_and_checks_arguments():
  rng = np.random.default_rng(2)
  reference = rng.uniform(-1, 1, (37, 5)).astype(np.float32)
  queries = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
  idx, dist = nearest_neighbours(queries, reference, 4, chunk_size=8, query_batch=4)
  want_idx, want_dist = _brute_force(queries, reference, 4)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-5)
  with pytest.raises(ValueError, match="features"):
    nearest_neighbours(queries, reference[:, :4], 1)
  with pytest.raises(ValueError, match="k=38"):
    nearest_neighbours(queries, reference, 38)
  with pytest.raises(ValueError, match="chunk_size"):
    nearest_neighbours(queries, reference, 1, chunk_size=0)


_TWO_PROCESS_NEIGHBOURS = """
from diffgen_jax.evaluation import copies, neighbours
rng = np.random.default_rng(0)
N = 45
whole = rng.uniform(-1, 1, (N, 2, 2, 1)).astype(np.float32)
whole[40:] = whole[[1, 2, 30, 1, 7]]  # duplicates, one of them in the other process's half

from counted import Counted  # tests/counted.py
source = Counted(whole)
queries = np.concatenate([whole[[2, 30, 44]], whole[:5] + 0.01, rng.uniform(-1, 1, (4, 2, 2, 1))])
queries = queries.astype(np.float32)
mesh = sharding.make_mesh()
idx, dist = neighbours.nearest_neighbours(queries, source, 3, chunk_size=4, query_batch=8,
                                          mesh=mesh)
read = np.concatenate(source.reads)
near, near_dist, dups = copies.nearest_distinct(queries, source, chunk_size=4, mesh=mesh)
flags = copies.copy_flags(queries, source, mesh=mesh, chunk_size=4)
report(idx=idx, dist=dist, read=read, near=near, near_dist=near_dist, dups=np.array(dups),
       flags=flags)
"""


def test_two_processes_equal_one_process_and_no_mesh(tmp_path):
  """k-NN, the nearest distinct neighbours and the copy flags from a source split over
  2 processes x 4 devices equal 1 x 8 and the single-device result on the array; in the k-NN
  each process reads only its rows (N = 45 over 8 devices in chunks of 4: shards of 8 rows,
  process 0 rows 0..31, process 1 rows 32..44 and padding), twice."""
  import multiprocess  # pylint: disable=import-outside-toplevel  (tests/multiprocess.py)
  from diffgen_jax.evaluation import copies  # pylint: disable=import-outside-toplevel
  two = multiprocess.run(_TWO_PROCESS_NEIGHBOURS, tmp_path / "two", processes=2, devices=4)
  (one,) = multiprocess.run(_TWO_PROCESS_NEIGHBOURS, tmp_path / "one", processes=1, devices=8)
  rng = np.random.default_rng(0)
  whole = rng.uniform(-1, 1, (45, 2, 2, 1)).astype(np.float32)
  whole[40:] = whole[[1, 2, 30, 1, 7]]
  queries = np.concatenate([whole[[2, 30, 44]], whole[:5] + 0.01,
                            rng.uniform(-1, 1, (4, 2, 2, 1))]).astype(np.float32)
  idx, dist = nearest_neighbours(queries, whole, 3, chunk_size=4, query_batch=8)
  near, near_dist, dups = copies.nearest_distinct(queries, whole, chunk_size=4)
  flags = copies.copy_flags(queries, whole, chunk_size=4)
  assert dups == 5 and flags[:3].all()
  spans = [np.arange(0, 32), np.arange(32, 45)]
  for p, r in enumerate(two + [one]):
    np.testing.assert_array_equal(r["idx"], idx)
    np.testing.assert_allclose(r["dist"], dist, rtol=1e-6)
    assert np.all(r["dist"][:3, 0] == 0.0)
    np.testing.assert_array_equal(r["near"], near)
    np.testing.assert_allclose(r["near_dist"], near_dist, rtol=1e-6)
    assert int(r["dups"]) == dups
    np.testing.assert_array_equal(r["flags"], flags)
    mine = spans[p] if p < 2 else np.arange(45)
    np.testing.assert_array_equal(np.bincount(r["read"], minlength=45),
                                  2 * np.isin(np.arange(45), mine))
