"""EDM samplers against Gaussian data, where the optimal denoiser and the ODE solution are closed-form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from diffgen_jax import edm, samplers
from diffgen_jax.optimal import empirical_optimal_denoiser

S = 0.5  # data std: y ~ N(0, S^2 I)


def gaussian_denoiser(x, sigma, labels=None):
  """Posterior mean for N(0, S^2 I) data: S^2 / (S^2 + sigma^2) x."""
  sigma = jnp.asarray(sigma, x.dtype)
  return (S ** 2 / (S ** 2 + sigma ** 2)) * x


def _noise(shape=(8, 3), seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def _relative_error(num_steps, solver):
  noise = _noise()
  out = samplers.sample(gaussian_denoiser, noise, num_steps=num_steps, solver=solver).samples
  # dx/dsigma = x sigma / (S^2 + sigma^2)  =>  x(0) = x(80) S / sqrt(S^2 + 80^2).
  exact = noise * 80.0 * S / math.sqrt(S ** 2 + 80.0 ** 2)
  return float(jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact))


def test_heun_second_order_on_gaussian_data():
  errors = {n: _relative_error(n, "heun") for n in (18, 32, 64, 128)}
  assert errors[18] == pytest.approx(0.055, rel=0.05)
  assert errors[128] < 1e-3
  assert math.log2(errors[64] / errors[128]) == pytest.approx(2.0, abs=0.15)
  assert math.log2(errors[32] / errors[64]) == pytest.approx(2.0, abs=0.25)


def test_euler_first_order_on_gaussian_data():
  errors = {n: _relative_error(n, "euler") for n in (64, 128)}
  assert errors[64] == pytest.approx(0.044, rel=0.05)
  assert math.log2(errors[64] / errors[128]) == pytest.approx(1.0, abs=0.1)


def test_deterministic_sampling_ignores_key():
  # s_churn = 0 must not inject any noise, whatever key is passed.
  noise = _noise()
  a = samplers.sample(gaussian_denoiser, noise, num_steps=16, key=jax.random.key(1)).samples
  b = samplers.sample(gaussian_denoiser, noise, num_steps=16, key=jax.random.key(2)).samples
  np.testing.assert_array_equal(a, b)


def test_trajectory_records_every_denoiser_call():
  noise = _noise((4, 2, 3))
  n = 10
  out = samplers.sample(gaussian_denoiser, noise, num_steps=n, return_trajectory=True)
  traj = out.trajectory
  assert traj.sigmas.shape == (n,)
  assert traj.x.shape == (n, 4, 2, 3) and traj.denoised.shape == (n, 4, 2, 3)
  np.testing.assert_allclose(traj.sigmas, edm.karras_sigmas(n)[:-1], rtol=1e-6)
  np.testing.assert_allclose(traj.x[0], noise * 80.0, rtol=1e-6)
  for i in range(n):
    np.testing.assert_allclose(traj.denoised[i], gaussian_denoiser(traj.x[i], traj.sigmas[i]),
                               rtol=1e-6)
  # The last step is Euler into sigma = 0, whose output is the last prediction.
  np.testing.assert_allclose(out.samples, traj.denoised[-1], rtol=1e-5, atol=1e-7)
  assert samplers.sample(gaussian_denoiser, noise, num_steps=n).trajectory is None


@pytest.mark.parametrize("stop_step", [0, 3, 9])
def test_early_stop_is_denoised_trajectory_state(stop_step):
  noise = _noise()
  full = samplers.sample(gaussian_denoiser, noise, num_steps=10, return_trajectory=True)
  stopped = samplers.sample(gaussian_denoiser, noise, num_steps=10, stop_step=stop_step).samples
  want = gaussian_denoiser(full.trajectory.x[stop_step], full.trajectory.sigmas[stop_step])
  np.testing.assert_allclose(stopped, want, rtol=1e-5, atol=1e-6)


def test_churn_is_keyed_and_keeps_the_data_distribution():
  noise = _noise((4000, 2), seed=3)
  kwargs = dict(num_steps=128, s_churn=25.6, s_min=0.05, s_max=50.0)  # gamma = 0.2 per step
  a = samplers.sample(gaussian_denoiser, noise, key=jax.random.key(7), **kwargs).samples
  b = samplers.sample(gaussian_denoiser, noise, key=jax.random.key(7), **kwargs).samples
  c = samplers.sample(gaussian_denoiser, noise, key=jax.random.key(8), **kwargs).samples
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - c))) > 0.1
  deterministic = samplers.sample(gaussian_denoiser, noise, num_steps=128).samples
  assert float(jnp.max(jnp.abs(a - deterministic))) > 0.1
  # Samples still follow N(0, S^2). Churn's discretization bias on the std falls with the steps
  # (measured +0.018 at 32 steps, +0.005 at 128, +0.001 at 256); plus ~3 standard errors of a
  # std from 8000 normals (S / sqrt(2 * 8000) ~ 0.004).
  assert float(jnp.std(a)) == pytest.approx(S, abs=0.017)
  assert float(jnp.mean(a)) == pytest.approx(0.0, abs=0.03)


def test_bad_arguments():
  noise = _noise()
  with pytest.raises(ValueError, match="PRNG key"):
    samplers.sample(gaussian_denoiser, noise, s_churn=1.0)
  with pytest.raises(ValueError, match="solver"):
    samplers.sample(gaussian_denoiser, noise, solver="rk4")
  with pytest.raises(ValueError, match="s_churn"):
    samplers.sample(gaussian_denoiser, noise, s_churn=-1.0)
  with pytest.raises(ValueError, match="stop_step"):
    samplers.sample(gaussian_denoiser, noise, num_steps=5, stop_step=5)


def test_labels_reach_the_denoiser():
  # Class c has mean m_c: D = m_c + S^2/(S^2+sigma^2) (x - m_c); the ODE ends at
  # m_c + (x(80) - m_c) S / sqrt(S^2 + 80^2).
  means = jnp.asarray([[-3.0, 0.0], [0.0, 0.0], [3.0, 1.0]])

  def labelled(x, sigma, labels):
    m = means[labels]
    return m + (S ** 2 / (S ** 2 + jnp.asarray(sigma) ** 2)) * (x - m)

  noise = _noise((6, 2))
  labels = jnp.asarray([0, 1, 2, 2, 1, 0])
  out = samplers.sample(labelled, noise, labels, num_steps=128).samples
  m = means[labels]
  exact = m + (noise * 80.0 - m) * S / math.sqrt(S ** 2 + 80.0 ** 2)
  np.testing.assert_allclose(out, exact, atol=2e-3)


def test_optimal_denoiser_euler_sampling_ends_on_training_points():
  angles = 2 * np.pi * (np.arange(8) / 8 + 0.01)
  train = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * 10
  denoise = empirical_optimal_denoiser(train)
  out = samplers.sample(denoise, _noise((16, 2), seed=5), num_steps=64, solver="euler").samples
  dist = np.sqrt(((np.asarray(out)[:, None] - train[None]) ** 2).sum(-1)).min(1)
  assert dist.max() < 1e-4


# ------------------------------------------------------------------------------------------------
# Every numeric argument checked by name (hypothesis; few derandomized examples: CI-stable, fast)


FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def _shrink(x, sigma, labels=None):
  """D(x; sigma) = x / (1 + sigma^2): the posterior mean for data N(0, 1), a finite flow."""
  return x / (1.0 + jnp.reshape(jnp.asarray(sigma, x.dtype) ** 2, (-1,) + (1,) * (x.ndim - 1)))


SAMPLER_VALID = {
    "num_steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v,
    # Positive and normal in the sampling dtype (float32): else the last step divides by 0.
    "sigma_min": lambda v: math.isfinite(v) and v >= float(np.finfo(np.float32).tiny),
    "sigma_max": lambda v: math.isfinite(v) and v > 0,
    "rho": lambda v: math.isfinite(v) and v > 0,
    "s_churn": lambda v: math.isfinite(v) and v >= 0,
    "s_min": lambda v: math.isfinite(v) and v >= 0,
    "s_max": lambda v: not math.isnan(v) and v >= 0,
    "s_noise": lambda v: math.isfinite(v) and v >= 0,
}
SMALL = st.one_of(st.floats(min_value=-5, max_value=100, allow_nan=False),
                  st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0]))


@FEW
@given(name=st.sampled_from(sorted(SAMPLER_VALID)), value=SMALL,
       steps=st.integers(min_value=-1, max_value=4))
def test_sampler_arguments_are_checked_by_name(name, value, steps):
  kwargs = dict(num_steps=3, sigma_min=0.01, sigma_max=10.0, key=jax.random.key(0))
  kwargs[name] = steps if name == "num_steps" else value
  shown = kwargs[name]
  valid = SAMPLER_VALID[name](shown)
  if name in ("sigma_min", "sigma_max") and valid:
    valid = kwargs["sigma_min"] <= kwargs["sigma_max"]
  if name == "rho" and valid:
    with np.errstate(over="ignore"):
      valid = math.isfinite(np.float64(10.0) ** (1.0 / shown))
  noise = jax.random.normal(jax.random.key(1), (2, 3))
  if not valid:
    with pytest.raises(ValueError, match=name):
      samplers.sample(_shrink, noise, **kwargs)
    return
  out = np.asarray(samplers.sample(_shrink, noise, **kwargs).samples)
  assert np.all(np.isfinite(out)), (name, shown)


@FEW
@given(rho=st.floats(allow_nan=True, allow_infinity=True),
       num=st.integers(min_value=-2, max_value=50))
def test_karras_sigmas_valid_or_named_error(rho, num):
  with np.errstate(over="ignore", invalid="ignore"):
    valid_rho = math.isfinite(rho) and rho > 0 and math.isfinite(np.float64(80.0) ** (1 / rho))
  try:
    sigmas = edm.karras_sigmas(num, rho=rho)
  except ValueError as err:
    if "num_steps" in str(err):
      assert num < 1
    else:
      assert "rho" in str(err) and not valid_rho and num >= 1, str(err)
    return
  assert num >= 1 and valid_rho
  assert np.all(np.isfinite(sigmas)) and sigmas[-1] == 0.0
  assert np.all(np.diff(sigmas[:-1]) <= 0)  # descending
