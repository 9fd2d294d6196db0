"""EDM formulas: sigma grids, preconditioning, loss weight and training-sigma sampling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import edm

SD = edm.SIGMA_DATA


def _karras_reference(n, smin, smax, rho):
  # paper.md section 2, written out term by term with Python floats.
  return [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
          for i in range(n)]


@pytest.mark.parametrize("n", [2, 18, 32, 120])
def test_karras_schedule_matches_formula(n):
  sigmas = edm.karras_sigmas(n)
  assert sigmas.shape == (n + 1,)
  assert sigmas[-1] == 0.0
  assert sigmas[0] == pytest.approx(80.0, rel=1e-12)
  assert sigmas[n - 1] == pytest.approx(0.002, rel=1e-12)
  assert np.all(np.diff(sigmas) < 0)
  np.testing.assert_allclose(sigmas[:-1], _karras_reference(n, 0.002, 80.0, 7.0), rtol=1e-12)


def test_karras_schedule_options():
  sigmas = edm.karras_sigmas(10, sigma_min=0.1, sigma_max=5.0, rho=3.0, append_zero=False)
  assert sigmas.shape == (10,)
  np.testing.assert_allclose(sigmas, _karras_reference(10, 0.1, 5.0, 3.0), rtol=1e-12)
  assert edm.karras_sigmas(1).tolist() == [80.0, 0.0]
  with pytest.raises(ValueError, match="num_steps"):
    edm.karras_sigmas(0)
  with pytest.raises(ValueError, match="sigma_min"):
    edm.karras_sigmas(5, sigma_min=2.0, sigma_max=1.0)


def test_gap_grid_is_64_log_spaced():
  grid = edm.gap_sigma_grid()
  assert grid.shape == (64,)
  assert grid[0] == pytest.approx(0.002, rel=1e-12)
  assert grid[-1] == pytest.approx(80.0, rel=1e-12)
  steps = np.diff(np.log(grid))
  np.testing.assert_allclose(steps, math.log(80 / 0.002) / 63, rtol=1e-10)


def test_toy_grid_is_sorted_120_step_schedule():
  grid = edm.toy_sigma_grid()
  assert grid.shape == (120,)
  assert np.all(np.diff(grid) > 0)
  np.testing.assert_allclose(grid, sorted(_karras_reference(120, 0.002, 80.0, 7.0)), rtol=1e-12)


def test_validate_sigma_grid():
  np.testing.assert_array_equal(edm.validate_sigma_grid([0.1, 1.0]), [0.1, 1.0])
  for bad in ([], [[1.0]], [0.0, 1.0], [-1.0], [np.nan], [np.inf]):
    with pytest.raises(ValueError, match="sigmas"):
      edm.validate_sigma_grid(bad)


SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 3.0, 80.0])


def test_preconditioning_matches_paper():
  c = edm.preconditioning(jnp.asarray(SIGMAS, jnp.float32))
  np.testing.assert_allclose(c.c_skip, SD ** 2 / (SIGMAS ** 2 + SD ** 2), rtol=1e-6)
  np.testing.assert_allclose(c.c_out, SIGMAS * SD / np.sqrt(SIGMAS ** 2 + SD ** 2), rtol=1e-6)
  np.testing.assert_allclose(c.c_in, 1 / np.sqrt(SIGMAS ** 2 + SD ** 2), rtol=1e-6)
  np.testing.assert_allclose(c.c_noise, np.log(SIGMAS) / 4, rtol=1e-6, atol=1e-7)


def test_preconditioning_identities():
  c = edm.preconditioning(jnp.asarray(SIGMAS, jnp.float32))
  c_skip, c_out, c_in = (np.asarray(v, np.float64) for v in (c.c_skip, c.c_out, c.c_in))
  # Input of F has unit variance for data of std sd: c_in^2 (sd^2 + sigma^2) = 1.
  np.testing.assert_allclose(c_in ** 2 * (SD ** 2 + SIGMAS ** 2), 1.0, rtol=1e-6)
  # Training target of F, (y - c_skip x)/c_out with x = y + sigma n, has unit variance:
  # ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2 = 1.
  np.testing.assert_allclose(((1 - c_skip) ** 2 * SD ** 2 + c_skip ** 2 * SIGMAS ** 2) / c_out ** 2,
                             1.0, rtol=1e-5)
  # c_skip minimizes that variance (EDM's derivation): d/dc_skip = 0.
  np.testing.assert_allclose(-(1 - c_skip) * SD ** 2 + c_skip * SIGMAS ** 2, 0.0, atol=1e-6)
  # Loss weight undoes c_out^2: lambda(sigma) c_out^2 = 1.
  np.testing.assert_allclose(np.asarray(edm.loss_weight(jnp.asarray(SIGMAS))) * c_out ** 2, 1.0,
                             rtol=1e-5)


def test_training_target_has_unit_variance_empirically():
  key_y, key_n = jax.random.split(jax.random.key(0))
  n = 200_000
  y = SD * jax.random.normal(key_y, (n,))
  noise = jax.random.normal(key_n, (n,))
  for sigma in (0.01, 0.5, 2.0, 50.0):
    c = edm.preconditioning(sigma)
    x = y + sigma * noise
    target = (y - c.c_skip * x) / c.c_out
    # Standard error of a variance estimate from n normals: sqrt(2/n) ~ 0.003; 5 sigma.
    assert float(jnp.var(target)) == pytest.approx(1.0, abs=0.016)
    assert float(jnp.var(c.c_in * x)) == pytest.approx(1.0, abs=0.016)


def test_precondition_wraps_raw_network():
  x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
  sigma = jnp.asarray([0.1, 1.0, 10.0])
  seen = {}

  def zero_net(x_in, c_noise, labels):
    seen.update(x_in=x_in, c_noise=c_noise, labels=labels)
    return jnp.zeros_like(x_in)

  d = edm.precondition(zero_net)(x, sigma, jnp.asarray([0, 1, 2]))
  c = edm.preconditioning(sigma)
  # F = 0 gives D = c_skip x; F sees c_in x and c_noise per example; labels pass through.
  np.testing.assert_allclose(d, c.c_skip[:, None, None, None] * x, rtol=1e-6)
  np.testing.assert_allclose(seen["x_in"], c.c_in[:, None, None, None] * x, rtol=1e-6)
  np.testing.assert_allclose(seen["c_noise"], np.log([0.1, 1.0, 10.0]) / 4, rtol=1e-6)
  np.testing.assert_array_equal(seen["labels"], [0, 1, 2])

  # F = 1 adds c_out; a scalar sigma broadcasts over the batch.
  d1 = edm.precondition(lambda x_in, c_noise, labels: jnp.ones_like(x_in))(x, 2.0)
  c2 = edm.preconditioning(2.0)
  np.testing.assert_allclose(d1, c2.c_skip * x + c2.c_out, rtol=1e-6)


def test_lognormal_training_sigmas():
  for p_mean, p_std in ((-1.2, 1.2), (-0.8, 1.6)):
    sig = edm.sample_training_sigmas(jax.random.key(3), (100_000,), p_mean, p_std)
    assert bool(jnp.all(sig > 0))
    log_sig = np.log(np.asarray(sig, np.float64))
    # Standard errors: p_std/sqrt(n) ~ 0.005 for the mean, p_std/sqrt(2n) ~ 0.004 for the std.
    assert log_sig.mean() == pytest.approx(p_mean, abs=0.025)
    assert log_sig.std() == pytest.approx(p_std, abs=0.02)
