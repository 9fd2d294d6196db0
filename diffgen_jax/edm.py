"""EDM formulas: sigma grids, preconditioning, sigma sampling and loss weights.

This module is the single home of these formulas (paper.md section 2). Everything else in the
package imports them from here; nothing recomputes them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.checks import check_number

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0

# The 64-point log grid of the image gap evaluation (paper.md section 6).
GAP_GRID_SIZE = 64
# The toy model's sigma grid: the 120-step EDM schedule, sorted ascending (paper.md section 5).
TOY_GRID_STEPS = 120


def karras_sigmas(num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO, append_zero: bool = True) -> np.ndarray:
  """EDM's rho-schedule, descending from sigma_max to sigma_min, then a final 0 (if asked).

  sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1.
  Raises ValueError naming the argument unless num_steps is an integer >= 1, sigma_min and
  sigma_max are finite with 0 < sigma_min <= sigma_max, and rho is finite and > 0 (and large
  enough that sigma_max^(1/rho) is finite in float64).
  """
  check_sigma_range(num_steps, sigma_min, sigma_max)
  check_number(rho, "rho", low=0.0, low_open=True)
  if num_steps == 1:
    sigmas = np.array([sigma_max], np.float64)
  else:
    ramp = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, naming rho
      lo, hi = np.float64(sigma_min) ** (1 / rho), np.float64(sigma_max) ** (1 / rho)
      sigmas = (hi + ramp * (lo - hi)) ** rho
  if not np.all(np.isfinite(sigmas)):
    raise ValueError(f"rho={rho!r} is too small: sigma_max^(1/rho) overflows float64")
  if append_zero:
    sigmas = np.concatenate([sigmas, [0.0]])
  return sigmas


def check_sigma_range(num: int, sigma_min: float, sigma_max: float, num_name: str = "num_steps"
                      ) -> None:
  """num an integer >= 1; sigma_min, sigma_max finite with 0 < sigma_min <= sigma_max."""
  check_number(num, num_name, low=1, integer=True)
  check_number(sigma_min, "sigma_min", low=0.0, low_open=True)
  check_number(sigma_max, "sigma_max", low=0.0, low_open=True)
  if sigma_min > sigma_max:
    raise ValueError(f"need sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                     f"sigma_max={sigma_max}")


def gap_sigma_grid(num: int = GAP_GRID_SIZE, sigma_min: float = SIGMA_MIN,
                   sigma_max: float = SIGMA_MAX) -> np.ndarray:
  """The log-spaced grid on which denoising errors and gaps are evaluated, ascending."""
  check_sigma_range(num, sigma_min, sigma_max, "num")
  return np.geomspace(sigma_min, sigma_max, num)


def toy_sigma_grid(num_steps: int = TOY_GRID_STEPS) -> np.ndarray:
  """The toy model's gap grid: the 120-step EDM schedule (without the 0), ascending."""
  return np.sort(karras_sigmas(num_steps, append_zero=False))


def validate_sigma_grid(sigmas, name: str = "sigmas") -> np.ndarray:
  """Checks a user-given sigma grid: 1-D, non-empty, finite and positive."""
  sigmas = np.asarray(sigmas, dtype=np.float64)
  if sigmas.ndim != 1 or sigmas.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D list of noise levels, got shape {sigmas.shape}")
  if not np.all(np.isfinite(sigmas)) or np.any(sigmas <= 0):
    raise ValueError(f"{name} must be finite and > 0, got {sigmas.tolist()}")
  return sigmas


def per_example(v, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or a (B,) vector against x of shape (B, ...) (`denoisers.per_example`)."""
  v = jnp.asarray(v, x.dtype)
  if v.ndim == 0:
    v = jnp.broadcast_to(v, x.shape[:1])
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


class Preconditioning(NamedTuple):
  c_skip: jax.Array
  c_out: jax.Array
  c_in: jax.Array
  c_noise: jax.Array


def peak_index(values) -> int:
  """Index of the maximum of a curve over a sigma grid, NaNs ignored (np.argmax would return the
  first NaN's; +inf is a maximum); -1 for an all-NaN curve.

  Raises ValueError unless values is 1-D and not empty."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"values must be a non-empty 1-D curve, got shape {values.shape}")
  return -1 if np.all(np.isnan(values)) else int(np.nanargmax(values))


def peak(sigmas, values):
  """(sigma, value) at the maximum of a curve such as G(sigma) (`peak_index`); (nan, nan) for an
  all-NaN curve. Raises ValueError unless sigmas and values are 1-D, non-empty, of one shape."""
  values, sigmas = np.asarray(values, np.float64), np.asarray(sigmas, np.float64)
  if sigmas.shape != values.shape:
    raise ValueError(f"sigmas {sigmas.shape} and values {values.shape} must have the same shape")
  i = peak_index(values)
  return (float("nan"), float("nan")) if i < 0 else (float(sigmas[i]), float(values[i]))


def preconditioning(sigma, sigma_data: float = SIGMA_DATA) -> Preconditioning:
  """EDM's c_skip, c_out, c_in and c_noise for noise level(s) sigma >= 0 (paper.md section 2).

  At sigma = 0: c_skip = 1, c_out = 0 (no noise: D(x; 0) = x) and c_noise = ln(0)/4 = -inf.
  Raises ValueError unless sigma_data is finite and > 0, or if a concrete sigma is negative or
  not finite.
  """
  check_number(sigma_data, "sigma_data", low=0.0, low_open=True)
  _check_concrete_sigma(sigma)
  sigma = jnp.asarray(sigma)
  total = sigma ** 2 + sigma_data ** 2
  return Preconditioning(
      c_skip=sigma_data ** 2 / total,
      c_out=sigma * sigma_data / jnp.sqrt(total),
      c_in=1.0 / jnp.sqrt(total),
      c_noise=jnp.log(sigma) / 4.0,
  )


def _check_concrete_sigma(sigma) -> None:
  if isinstance(sigma, jax.core.Tracer):
    return  # a check on traced values never runs; the denoiser below is safe at sigma = 0
  s = np.asarray(sigma, np.float64)
  bad = s[~(np.isfinite(s) & (s >= 0))]
  if bad.size:
    raise ValueError(f"sigma must be finite and >= 0, got {bad.ravel()[0]}")


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
  """EDM's lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2: unit loss magnitude at every sigma."""
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def sample_training_sigmas(key: jax.Array, shape, p_mean: float = -1.2, p_std: float = 1.2):
  """ln sigma ~ N(p_mean, p_std^2): EDM's (-1.2, 1.2), EDM2 ImageNet-64's (-0.8, 1.6).

  Raises ValueError unless p_mean is finite and p_std finite and >= 0.
  """
  check_number(p_mean, "p_mean")
  check_number(p_std, "p_std", low=0.0)
  return jnp.exp(p_mean + p_std * jax.random.normal(key, shape))


RawNetwork = Callable[..., jax.Array]


def precondition(raw_network: RawNetwork, sigma_data: float = SIGMA_DATA, *, has_aux: bool = False):
  """Wraps a raw network F(x_in, c_noise, labels) into EDM's denoiser D(x, sigma, labels).

  D(x; sigma, c) = c_skip x + c_out F(c_in x; c_noise, c). The result follows the package's
  denoiser interface; sigma may be a scalar or one value per example, each >= 0. has_aux=True:
  the raw network returns (F, aux) (e.g. EDM2's log-variance) and the denoiser returns (D, aux),
  so the loss gets it as a return value, not through a side channel.
  sigma = 0 gives D(x; 0) = x exactly (c_skip = 1, c_out = 0): the network then sees a finite
  c_noise (that of sigma = 1) instead of ln(0) = -inf, whose NaN output 0 * NaN would not cancel.
  Concrete sigmas that are negative or not finite raise ValueError (traced ones cannot be checked).
  """
  check_number(sigma_data, "sigma_data", low=0.0, low_open=True)

  def denoise(x, sigma, labels=None):
    _check_concrete_sigma(sigma)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    c = preconditioning(sigma, sigma_data)
    c_noise = jnp.where(sigma > 0, c.c_noise, 0.0)
    f = raw_network(per_example(c.c_in, x) * x, c_noise, labels)
    f, aux = f if has_aux else (f, None)
    d = per_example(c.c_skip, x) * x + per_example(c.c_out, x) * f.astype(x.dtype)
    return (d, aux) if has_aux else d

  return denoise
