"""Property-based tests (hypothesis) of the numeric checks: config fields and sampler arguments.

Issue 10, kind 6: every numeric config field and every numeric sampler argument is checked for
finiteness and range, with an error naming it. Examples are few and derandomized (CI-stable, fast).
"""

from __future__ import annotations

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from diffgen_jax import config_checks, defaults, edm, jobs, samplers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEW = settings(max_examples=40, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
F32_MAX = float(np.finfo(np.float32).max)

# Numbers a user can type: ordinary, boundary, huge (finite in float64, inf in float32) and
# non-finite values, plus integers and the odd non-number.
ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 0.9999, 1e39, -1e39, 3.5e38, 1e-300, math.nan,
                     math.inf, -math.inf]),
    st.integers(min_value=-10, max_value=10**12),
    st.sampled_from([True, "1.0", None]))


def _config_file(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _configs():
  return {"train": defaults.train_config(), "quickstart": _config_file("quickstart"),
          "factors": _config_file("factors"), "toy2d": _config_file("toy2d")}


def _set(config, field, value):
  *path, name = field.split(".")
  node = config
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[name] = value


def test_default_configs_validate():
  for name, config in _configs().items():
    assert jobs.validate(config) == config.job, name


FLOAT_FIELDS = sorted({(name, field.split("[")[0]) for name, config in _configs().items()
                       for field, _ in config_checks.float_leaves(config)})


@pytest.mark.parametrize("name,field", FLOAT_FIELDS)
@FEW
@given(value=st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -3.5e39]))
def test_every_float_field_rejects_non_finite_values(name, field, value):
  """Every float field of every job's config: NaN, +-inf, and values infinite in float32 are
  refused at start-up with an error naming the field."""
  config = _configs()[name]
  current = config_checks.get(config, field)
  _set(config, field, tuple(value for _ in current) if isinstance(current, (list, tuple))
       else value)
  with pytest.raises(config_checks.ConfigError, match=rf"config\.{field.replace('.', '[.]')}"):
    jobs.validate(config)


# Documented ranges (defaults.py comments, paper.md), stated here independently of the package.
DOCUMENTED = {
    "training.lr": lambda v: v > 0,
    "training.adam_b1": lambda v: 0 <= v < 1,
    "training.adam_b2": lambda v: 0 <= v < 1,
    "training.adam_eps": lambda v: v > 0,
    "training.label_dropout": lambda v: 0 <= v < 1,
    "training.sigma_data": lambda v: v > 0,
    "training.p_std": lambda v: v > 0,
    "training.grad_clip": lambda v: v >= 0,
    "training.ema.halflife_images": lambda v: v > 0,
    "evaluation.samples.copy_ratio": lambda v: 0 < v < 1,
}
ALL_RANGED = sorted(f for f in config_checks.FIELD_RANGES if not f.endswith("[]"))


@pytest.mark.parametrize("field", ALL_RANGED)
@FEW
@given(value=ANY_NUMBER)
def test_numeric_train_fields_are_checked_by_name(field, value):
  """Any value in any numeric field of the train config: either accepted (then a finite number,
  float32-finite, inside the documented range) or refused by an error naming that field."""
  config = defaults.train_config()
  config.data.subset_size = 0
  _set(config, field, value)
  value = config_checks.get(config, field)  # as stored (ConfigDict turns True into 1.0 in a float)
  try:
    jobs.validate(config)
  except config_checks.ConfigError as err:
    assert f"config.{field}" in str(err), (field, value, str(err))
    return
  except ValueError as err:  # a downstream check (e.g. the mesh) may refuse with its own words
    assert field.split(".")[-1] in str(err) or "mesh" in str(err), (field, value, str(err))
    return
  assert isinstance(value, (int, float)) and not isinstance(value, bool)
  assert math.isfinite(value) and abs(value) <= F32_MAX
  if field in DOCUMENTED:
    assert DOCUMENTED[field](value), (field, value)


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
