"""sharding: meshes, batches split over them (also lazily, per process), gathering results."""

import jax
import numpy as np
import pytest

from diffgen_jax import sharding


class _CountingSource:
  """An image source that records which rows were read (a lazily decoded dataset stand-in)."""

  def __init__(self, array):
    self.array, self.read = array, []
    self.shape = array.shape

  def __len__(self):
    return len(self.array)

  def __getitem__(self, rows):
    self.read.extend(np.atleast_1d(rows).tolist())
    return self.array[rows]


def test_lazy_rows_read_only_what_is_sliced_and_transform_it():
  source = _CountingSource(np.arange(40, dtype=np.float32).reshape(10, 4))
  lazy = sharding.LazyRows(source, [7, 3, 3, 9], transform=lambda a: -a)
  assert len(lazy) == 4 and lazy.shape == (4, 4) and source.read == []
  np.testing.assert_array_equal(lazy[1:3], -source.array[[3, 3]])
  assert source.read == [3, 3]
  np.testing.assert_array_equal(np.asarray(lazy), -source.array[[7, 3, 3, 9]])


def test_put_batch_of_lazy_rows_equals_the_array_and_fetch_gathers_it():
  mesh = sharding.make_mesh()  # 8 simulated devices
  array = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
  sharding.rows_built.clear()
  put = sharding.put_batch(sharding.LazyRows(_CountingSource(array), np.arange(16)), mesh)
  assert put.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  assert sharding.rows_built["batch"] == 16
  np.testing.assert_array_equal(sharding.fetch(put), array)
  np.testing.assert_array_equal(sharding.fetch(np.ones(3)), np.ones(3))
  with pytest.raises(ValueError, match="batch=12 must be divisible by the 8 devices"):
    sharding.put_batch(array[:12], mesh)


def test_addressable_rows_of_one_process_is_the_whole_batch():
  mesh = sharding.make_mesh()
  assert sharding.addressable_rows(sharding.batch_sharded(mesh), 16, (3,)) == slice(0, 16)
