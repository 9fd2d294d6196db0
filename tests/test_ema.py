"""EMA decays with known answers: EDM's half-life and EDM2's power-function profiles."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import ema


def test_halflife_beta_halves_after_halflife_images():
  batch, halflife = 64, 64 * 100
  beta = float(ema.halflife_beta(images_seen=10**9, batch_size=batch, halflife_images=halflife))
  # After halflife / batch steps the weight of the old average is exactly one half.
  np.testing.assert_allclose(beta ** (halflife / batch), 0.5, rtol=1e-5)


def test_halflife_rampup_starts_from_the_parameters():
  assert float(ema.halflife_beta(0, 64, 500_000, rampup_ratio=0.05)) == 0.0
  # Early on the half-life is rampup_ratio * images seen, not the configured one.
  early = float(ema.halflife_beta(64_000, 64, 500_000, rampup_ratio=0.05))
  np.testing.assert_allclose(early, 0.5 ** (64 / 3200), rtol=1e-6)


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_std_to_exponent_inverts_the_profile_std(sigma_rel):
  # EDM2 (Karras et al. 2024, appendix C.1): the power profile with exponent gamma has
  # sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))).
  gamma = ema.std_to_exponent(sigma_rel)
  np.testing.assert_allclose(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))), sigma_rel,
                             rtol=1e-10)


def test_std_of_power_profile_matches_its_definition():
  # The profile p(t) ~ t^gamma on [0, 1]: its std relative to the end time, by quadrature.
  gamma = ema.std_to_exponent(0.1)
  t = np.linspace(0, 1, 2_000_001)
  w = t ** gamma
  w /= np.trapezoid(w, t)
  mean = np.trapezoid(w * t, t)
  std = np.sqrt(np.trapezoid(w * (t - mean) ** 2, t))
  np.testing.assert_allclose(std, 0.1, rtol=1e-4)


def test_power_ema_is_the_power_weighted_average():
  # Running the recursion over steps 1..T with parameters p_t = t gives sum t^g t / sum t^g,
  # the power-function average (up to the discretisation of the profile).
  batch, steps, sigma_rel = 4, 400, 0.1
  gamma = ema.std_to_exponent(sigma_rel)
  avg = 0.0
  for t in range(1, steps + 1):
    beta = float(ema.power_beta(t * batch, batch, sigma_rel))
    avg = t + beta * (avg - t)
  ts = np.arange(1, steps + 1, dtype=np.float64)
  # The recursion's weights are exactly prod (1 - 1/s)^(g+1) ... which telescopes to
  # w_t ~ t^(g+1) - (t-1)^(g+1) (discrete power profile).
  w = ts ** (gamma + 1) - (ts - 1) ** (gamma + 1)
  np.testing.assert_allclose(avg, np.sum(w * ts) / np.sum(w), rtol=1e-4)
  first = float(ema.power_beta(batch, batch, sigma_rel))
  assert first == 0.0


def test_power_ema_rejects_impossible_std():
  with pytest.raises(ValueError, match="sigma_rel"):
    ema.std_to_exponent(0.5)
