"""Frechet distance: known closed forms, symmetry, non-negativity and singular covariances."""

import numpy as np
import pytest
from scipy import linalg

from diffgen_jax.evaluation import frechet


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T


def test_set_with_itself_is_zero():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
  assert abs(frechet.frechet_distance(x, x)) < 1e-8
  ten = rng.normal(size=(10, 2))  # a small set, as in the toy model
  assert abs(frechet.frechet_distance(ten, ten)) < 1e-10


def test_diagonal_gaussians_closed_form():
  mu1, mu2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
  a, b = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.gaussian_frechet(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_matches_scipy_sqrtm_formula_for_full_covariances():
  rng = np.random.default_rng(1)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
  covmean = linalg.sqrtm(c1 @ c2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
  np.testing.assert_allclose(frechet.gaussian_frechet(mu1, c1, mu2, c2), expected, rtol=1e-8)


def test_symmetric_and_non_negative():
  rng = np.random.default_rng(2)
  for _ in range(20):
    d = int(rng.integers(1, 6))
    x = rng.normal(size=(int(rng.integers(2, 30)), d)) * rng.uniform(0.1, 3)
    y = rng.normal(size=(int(rng.integers(2, 30)), d)) + rng.normal(size=d)
    fxy, fyx = frechet.frechet_distance(x, y), frechet.frechet_distance(y, x)
    assert fxy >= 0 and fyx >= 0
    np.testing.assert_allclose(fxy, fyx, rtol=1e-7, atol=1e-10)


def test_singular_covariances():
  rng = np.random.default_rng(3)
  # Points on a line in 2D: rank-1 covariances. Against themselves: 0; against a shifted copy: the
  # squared shift; two orthogonal lines through 0 with variances a, b: a + b.
  t = rng.normal(size=(50, 1))
  line = np.concatenate([t, 2 * t], axis=1)
  assert frechet.frechet_distance(line, line) < 1e-10
  np.testing.assert_allclose(frechet.frechet_distance(line, line + [3.0, 4.0]), 25.0, rtol=1e-9)
  a, b = 2.0, 0.5
  got = frechet.gaussian_frechet(np.zeros(2), np.diag([a, 0.0]), np.zeros(2), np.diag([0.0, b]))
  np.testing.assert_allclose(got, a + b, rtol=1e-12)
  # Fewer samples than dimensions (rank 4 in 16-D), as with small feature sets: finite, real, >= 0.
  x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
  value = frechet.frechet_distance(x, y)
  assert np.isfinite(value) and value >= 0
  assert frechet.frechet_distance(x, x) < 1e-8
  # All-zero covariance: the distance is the squared mean difference plus the other trace.
  np.testing.assert_allclose(
      frechet.gaussian_frechet(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.eye(3)), 6.0)


def test_gaussian_stats_and_ddof():
  x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
  mu, cov = frechet.gaussian_stats(x)
  np.testing.assert_allclose(mu, [1.0, 1.0])
  np.testing.assert_allclose(cov, np.cov(x, rowvar=False))
  _, cov0 = frechet.gaussian_stats(x, ddof=0)
  np.testing.assert_allclose(cov0, np.eye(2))


def test_input_errors():
  with pytest.raises(ValueError, match="num_samples, dim"):
    frechet.frechet_distance(np.zeros(5), np.zeros(5))
  with pytest.raises(ValueError, match="more than 1 samples"):
    frechet.frechet_distance(np.zeros((1, 2)), np.zeros((5, 2)))
  with pytest.raises(ValueError, match="dimensions differ"):
    frechet.frechet_distance(np.random.rand(5, 2), np.random.rand(5, 3))
  with pytest.raises(ValueError, match="NaN"):
    frechet.frechet_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))
  with pytest.raises(ValueError, match="covariance must be"):
    frechet.gaussian_frechet(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
