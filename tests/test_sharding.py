"""sharding: meshes, batches split over them (also lazily, per process), gathering results."""

import jax
import numpy as np
import pytest

from counted import Counted  # tests/counted.py
from diffgen_jax import sharding


def test_lazy_rows_read_only_what_is_sliced_and_transform_it():
  source = Counted(np.arange(40, dtype=np.float32).reshape(10, 4))
  lazy = sharding.LazyRows(source, [7, 3, 3, 9], transform=lambda a: -a)
  assert len(lazy) == 4 and lazy.shape == (4, 4) and source.reads == []
  np.testing.assert_array_equal(lazy[1:3], -source.array[[3, 3]])
  assert np.concatenate(source.reads).tolist() == [3, 3]
  np.testing.assert_array_equal(np.asarray(lazy), -source.array[[7, 3, 3, 9]])


def test_put_batch_of_lazy_rows_equals_the_array_and_fetch_gathers_it():
  mesh = sharding.make_mesh()  # 8 simulated devices
  array = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  sharding.rows_built.clear()
  put = sharding.put_batch(sharding.LazyRows(Counted(array), np.arange(16)), mesh)
  assert put.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  assert sharding.rows_built["batch"] == 16
  np.testing.assert_array_equal(sharding.fetch(put), array)
  np.testing.assert_array_equal(sharding.fetch(np.ones(3)), np.ones(3))
  with pytest.raises(ValueError, match="batch=12 must be divisible by the 8 devices"):
    sharding.put_batch(array[:12], mesh)


def test_addressable_rows_of_one_process_is_the_whole_batch():
  mesh = sharding.make_mesh()
  assert sharding.addressable_rows(sharding.batch_sharded(mesh), 16, (3,)) == slice(0, 16)


def test_shard_rows_pads_to_whole_chunks_per_shard():
  assert sharding.shard_rows(10, 4, 2) == (2, 4)  # 4 shards x 2 chunks of 2 = 16 >= 10
  assert sharding.shard_rows(10, 4, 100) == (3, 3)  # chunk capped at ceil(10 / 4)
  assert sharding.shard_rows(8, 1, 3) == (3, 9)
  with pytest.raises(ValueError, match="chunk_size"):
    sharding.shard_rows(8, 1, 0)


def test_rows_on_mesh_builds_each_shard_once_and_equals_the_whole():
  mesh = sharding.make_mesh(-1, 2)  # 4 (data) x 2 (model): each data shard sits on 2 devices
  whole = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
  calls = []

  def build(lo, hi):
    calls.append((lo, hi))
    return {"x": whole[lo:hi], "norm": (whole[lo:hi] ** 2).sum(1)}

  out = sharding.rows_on_mesh(32, build, mesh)
  assert sorted(calls) == [(0, 8), (8, 16), (16, 24), (24, 32)]
  assert out["x"].sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  np.testing.assert_array_equal(np.asarray(out["x"]), whole)
  np.testing.assert_array_equal(np.asarray(out["norm"]), (whole ** 2).sum(1))
  assert sharding.process_span(32, mesh) == slice(0, 32)
  np.testing.assert_array_equal(np.asarray(sharding.rows_on_mesh(4, build, None)["x"]), whole[:4])


@pytest.mark.parametrize("d", [1, 3])
def test_row_sum_has_the_bits_of_the_whole_arrays_sum_whatever_the_blocks(d):
  """Added block by block (blocks of 1, 199 and 100 rows), the float64 row sum is np.sum(axis=0)
  of the whole array bit for bit, a single column (summed pairwise by numpy) included."""
  rng = np.random.default_rng(0)
  # Magnitudes over many octaves: the sum is inexact, so its order shows in the bits.
  whole = rng.normal(size=(300, d)) * np.exp(5 * rng.normal(size=(300, 1)))
  row_sum = sharding.RowSum(d)
  for lo, hi in ((0, 1), (1, 200), (200, 300)):  # naive per-block adds differ here at d = 1
    row_sum.add(whole[lo:hi])
  assert row_sum.value().tobytes() == whole.sum(axis=0).tobytes()
  assert sharding.RowSum(d).value().tolist() == [0.0] * d


def test_read_rows_reads_runs_as_slices_checks_and_counts():
  source = Counted(np.arange(24, dtype=np.float32).reshape(6, 2, 2))
  sharding.rows_built.clear()
  seen = []
  np.testing.assert_array_equal(sharding.read_rows(source, np.arange(1, 4), check=seen.append),
                                source.array[1:4])
  np.testing.assert_array_equal(sharding.read_rows(source, [0, 5]), source.array[[0, 5]])
  assert len(seen) == 1  # checked where asked
  assert source.reads[0].tolist() == [1, 2, 3] and source.reads[1].tolist() == [0, 5]
  assert sharding.rows_built["source"] == 5 and sharding.rows_built["read"] == 3
  wrong = sharding.LazyRows(source.array[:, :1], np.arange(6))
  wrong.shape = (6, 2, 2)  # rows of another shape than it declares
  with pytest.raises(ValueError, match="reference: a read returned rows of shape"):
    sharding.read_rows(wrong, slice(0, 2), "reference")
  # training_source reads nothing and names the argument.
  assert sharding.training_source(source)[1:] == (6, (2, 2)) and len(source.reads) == 2
  with pytest.raises(ValueError, match="x must be 4-D images; got shape"):
    sharding.training_source(source, "x", ndim=4, layout="4-D images")
  with pytest.raises(ValueError, match="x must be a non-empty"):
    sharding.training_source(np.zeros((3, 0)), "x")


_TWO_PROCESS_ROWS = """
whole = np.arange(64 * 2, dtype=np.float64).reshape(64, 2) / 7.0
mesh = sharding.make_mesh()
span = sharding.process_span(64, mesh)
built = []
out = sharding.rows_on_mesh(64, lambda lo, hi: built.append((lo, hi)) or {"x": whole[lo:hi]}, mesh)
total = sharding.sum_over_processes(whole[span].sum(axis=0))
# Sums over the rows each process counts: its own half over the data axis; over a model axis
# across both processes (one span on devices of both), all rows on process 0 and none on 1;
# without a mesh, all rows on each, and nothing added over processes.
counted = {}
for name, m in (("data", mesh), ("model", sharding.make_mesh(data=1, model=8)), ("none", None)):
  rows = sharding.counted_rows(np.arange(64), 64, sharding.padded_rows(64, 1, m)[1], m)
  row_sum = sharding.RowSum(2)
  row_sum.add(whole[rows])
  counted[name + "_rows"] = np.array(len(rows))
  counted[name + "_total"] = sharding.sum_counted(row_sum.value(), m)
report(x=sharding.fetch(out["x"]), span=np.array([span.start, span.stop]), built=np.array(built),
       total=total, **counted)
"""


def test_rows_on_mesh_and_sums_over_two_processes():
  """Each process builds only its own shards (process p: rows [32 p, 32 p + 32) in 4 shards of 8),
  and the float64 sums of the halves come back whole on both, not rounded to float32."""
  import multiprocess  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    reports = multiprocess.run(_TWO_PROCESS_ROWS, tmp, processes=2, devices=4)
  whole = np.arange(64 * 2, dtype=np.float64).reshape(64, 2) / 7.0
  for p, r in enumerate(reports):
    assert r["span"].tolist() == [32 * p, 32 * p + 32]
    assert r["built"].tolist() == [[32 * p + 8 * i, 32 * p + 8 * i + 8] for i in range(4)]
    np.testing.assert_array_equal(r["x"], whole.astype(np.float32))
    np.testing.assert_allclose(r["total"], whole.sum(axis=0), rtol=1e-15)
    assert r["total"].dtype == np.float64
    assert [int(r[k + "_rows"]) for k in ("data", "model", "none")] == [32, 64 * (p == 0), 64]
    for k in ("data", "model", "none"):
      np.testing.assert_allclose(r[k + "_total"], whole.sum(axis=0), rtol=1e-15, err_msg=k)
