"""Property-based tests (hypothesis) of the sampler's numeric arguments.

Every numeric sampler argument is checked for finiteness and range, with an error naming it (config
fields: tests/test_defaults.py). Examples are few and derandomized (CI-stable, fast).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from diffgen_jax import edm, samplers

FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------
# Sampler arguments


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
