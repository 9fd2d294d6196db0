"""Copies of training images (Gu et al. 2023): known answers."""

import numpy as np
import pytest

from diffgen_jax.evaluation import copies


def _uniform(seed, n, shape=(4, 4, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def test_copy_fraction_known_answers():
  train = _uniform(8, 10).reshape(10, -1)
  assert copies.copy_fraction(train[:5], train) == 1.0
  # Two training points equidistant from far-away samples: ratio 1, never a copy.
  pair = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
  far = np.array([[0.0, 100.0], [0.0, -50.0]], np.float32)
  assert copies.copy_fraction(far, pair) == 0.0
  # A point near one training point is a copy, in the middle it is not.
  flags = copies.copy_flags(np.array([[0.9, 0.0], [0.0, 0.1]], np.float32), pair)
  np.testing.assert_array_equal(flags, [True, False])


def test_first_occurrences_follow_np_unique():
  """Equal rows are one image (-0.0 equals 0.0), a row with NaN equals none; first occurrences in
  order, as np.unique(axis=0) finds them."""
  rows = np.array([[0.0, 1], [-0.0, 1], [np.nan, 2], [np.nan, 2], [1, 1], [0, 1], [1, 1]],
                  np.float32)
  first, duplicates = copies.first_occurrences(rows)
  np.testing.assert_array_equal(first, np.sort(np.unique(rows, axis=0, return_index=True)[1]))
  assert first.tolist() == [0, 2, 3, 4] and duplicates == 3
  train = _uniform(1, 40)
  train[30:] = train[[3, 3, 9, 0, 12, 5, 5, 21, 3, 39]]
  first, duplicates = copies.first_occurrences(train)
  np.testing.assert_array_equal(first, np.sort(np.unique(train.reshape(40, -1), axis=0,
                                                         return_index=True)[1]))
  assert duplicates == 40 - len(first)


def test_lazy_source_over_a_mesh_equals_the_array():
  from diffgen_jax import sharding  # pylint: disable=import-outside-toplevel
  train = _uniform(2, 30)
  train[25:] = train[[0, 4, 4, 17, 2]]
  rng = np.random.default_rng(3)
  samples = np.concatenate([train[[4, 17]], train[:6] + 0.02 * rng.standard_normal(train[:6].shape),
                            _uniform(4, 5)]).astype(np.float32)
  want = copies.nearest_distinct(samples, train, chunk_size=4)
  lazy = sharding.LazyRows(train, np.arange(30))
  for mesh in (None, sharding.make_mesh(), sharding.make_mesh(-1, 2)):
    got = copies.nearest_distinct(samples, lazy, chunk_size=4, mesh=mesh)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert got[2] == want[2] == 5
    np.testing.assert_array_equal(copies.copy_flags(samples, lazy, mesh=mesh),
                                  copies.copy_flags(samples, train))
  assert copies.copy_fraction(samples, lazy, mesh=sharding.make_mesh()) == copies.copy_fraction(
      samples, train)
  pixels = sharding.LazyRows(np.full((30, 4, 4, 1), 200, np.uint8), np.arange(30))
  with pytest.raises(ValueError, match="train_images"):
    copies.copy_flags(samples, pixels)

