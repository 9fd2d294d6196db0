"""Copies of training images (Gu et al. 2023): known answers."""

import numpy as np

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
  mem = copies.memorization(train[:3], train, _uniform(9, 6).reshape(6, -1))
  assert mem["samples"] == 1.0 and 0.0 <= mem["validation_control"] < 1.0
