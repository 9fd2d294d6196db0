"""EDM samplers over the Karras schedule: Euler and Heun, with optional stochastic churn.

Written once against the denoiser interface: `denoise(x, sigma, labels) -> x_hat`. All steps run
inside one `lax.scan`, so a whole sampling run is a single compiled program. The probability-flow
ODE is dx/dsigma = (x - D(x; sigma)) / sigma (paper.md section 2).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax import edm
from diffgen_jax.checks import check_number
from diffgen_jax.denoisers import Denoiser, check_labels, is_array_pytree

SOLVERS = ("euler", "heun")


class Trajectory(NamedTuple):
  """Per step i: the noise level the denoiser saw, the state it saw, and its prediction."""
  sigmas: jax.Array  # (steps,)
  x: jax.Array  # (steps, B, ...)
  denoised: jax.Array  # (steps, B, ...)


class SamplerOutput(NamedTuple):
  samples: jax.Array
  trajectory: Optional[Trajectory]


def sample(denoise: Denoiser, noise: jax.Array, labels: Optional[jax.Array] = None, *,
           num_steps: int = 18, sigma_min: float = edm.SIGMA_MIN, sigma_max: float = edm.SIGMA_MAX,
           rho: float = edm.RHO, solver: str = "heun", s_churn: float = 0.0, s_min: float = 0.0,
           s_max: float = math.inf, s_noise: float = 1.0, key: Optional[jax.Array] = None,
           stop_step: Optional[int] = None, return_trajectory: bool = False) -> SamplerOutput:
  """Integrates the probability-flow ODE (or EDM's churned SDE) from sigma_max down to 0.

  Args:
    denoise: any denoiser of the package interface.
    noise: standard normal (B, ...); the initial state is noise * sigma_max.
    labels: optional (B,) labels passed to every denoiser call.
    num_steps: N noise levels of the Karras schedule; the last step is Euler into sigma = 0.
    solver: "heun" (EDM's second-order method) or "euler".
    s_churn, s_min, s_max, s_noise: EDM stochastic sampling; s_churn = 0 is deterministic.
    key: PRNG key, required when s_churn > 0; step i draws from fold_in(key, i).
    stop_step: early stop: run steps 0..stop_step-1, then return D(x_i; sigma_i) at i = stop_step.
    return_trajectory: also return (sigma, x, D(x; sigma)) of every denoiser call on the path
      (the first evaluation of each step).

  Returns:
    SamplerOutput(samples, trajectory or None).

  Raises:
    ValueError naming the argument: num_steps not an integer >= 1; sigma_min, sigma_max not finite
    with 0 < sigma_min <= sigma_max, or outside the normal numbers of noise's dtype; rho not finite and > 0; s_churn, s_min, s_noise not finite
    and >= 0; s_max NaN or < 0 (inf allowed); stop_step outside [0, num_steps - 1]; noise not a
    floating-point array of finite values; labels that a component of `denoise` has no training
    points for (`denoisers.check_labels`).
  """
  if solver not in SOLVERS:
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
  edm.check_sigma_range(num_steps, sigma_min, sigma_max)
  check_number(rho, "rho", low=0.0, low_open=True)
  check_number(s_churn, "s_churn", low=0.0)
  check_number(s_min, "s_min", low=0.0)
  check_number(s_max, "s_max", low=0.0, allow_inf=True)
  check_number(s_noise, "s_noise", low=0.0)
  if s_churn > 0 and key is None:
    raise ValueError("s_churn > 0 needs a PRNG key")
  if stop_step is not None:
    check_number(stop_step, "stop_step", low=0, high=num_steps - 1, integer=True)
  _check_noise(noise)
  # Every noise level must be a positive normal number in the sampling dtype: a sigma_min that is
  # 0 (or subnormal) in float32 would make the last Heun step divide by 0.
  finfo = np.finfo(noise.dtype)
  if sigma_min < finfo.tiny:
    raise ValueError(f"sigma_min={sigma_min!r} is below the smallest normal {noise.dtype} number "
                     f"{finfo.tiny:.3g} (the dtype of noise): use sigma_min >= {finfo.tiny:.3g}")
  if sigma_max > finfo.max:
    raise ValueError(f"sigma_max={sigma_max!r} is not finite in {noise.dtype} (the dtype of noise)")
  check_labels(denoise, labels)
  if key is None:
    key = jax.random.key(0)  # unused by deterministic sampling
  settings = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                  solver=solver, s_churn=s_churn, s_min=s_min, s_max=s_max, s_noise=s_noise,
                  stop_step=stop_step, return_trajectory=return_trajectory)
  if is_array_pytree(denoise):
    # One compiled program with the denoiser's arrays (e.g. a training set) as arguments.
    return _integrate_jit(denoise, noise, labels, key, **settings)
  return _integrate(denoise, noise, labels, key, **settings)


def _integrate(denoise, noise, labels, key, *, num_steps, sigma_min, sigma_max, rho, solver,
               s_churn, s_min, s_max, s_noise, stop_step, return_trajectory) -> SamplerOutput:
  sigmas = edm.karras_sigmas(num_steps, sigma_min, sigma_max, rho)  # N + 1 levels, last is 0
  gamma_max = min(s_churn / num_steps, math.sqrt(2.0) - 1.0)
  gammas = np.where((sigmas[:-1] >= s_min) & (sigmas[:-1] <= s_max), gamma_max, 0.0)
  steps = num_steps if stop_step is None else stop_step
  dtype = noise.dtype

  def step(x, per_step, second_order):
    index, t_cur, t_next, gamma = per_step
    t_hat = t_cur * (1.0 + gamma)
    if s_churn > 0:
      # sqrt(t_hat^2 - t_cur^2) written as t_cur sqrt(gamma (2 + gamma)): exactly 0 where gamma = 0.
      # (The difference of squares is not: its rounding error, e.g. under FMA contraction, would
      # inject noise of relative size ~sqrt(eps) into every deterministic step.)
      eps = jax.random.normal(jax.random.fold_in(key, index), x.shape, dtype)
      x_hat = x + t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * eps
    else:
      x_hat = x
    denoised = denoise(x_hat, t_hat, labels)
    slope = (x_hat - denoised) / t_hat
    x_next = x_hat + (t_next - t_hat) * slope
    if second_order:
      slope_next = (x_next - denoise(x_next, t_next, labels)) / t_next
      x_next = x_hat + (t_next - t_hat) * 0.5 * (slope + slope_next)
    return x_next, ((t_hat, x_hat, denoised) if return_trajectory else None)

  # Steps into sigma > 0 run in one scan (Heun: with the correction); the final step into
  # sigma = 0 is EDM's plain Euler step, taken after the scan (no per-step branch inside it).
  final_euler = stop_step is None
  scanned = steps - 1 if final_euler else steps
  per_step = (jnp.arange(steps), jnp.asarray(sigmas[:steps], dtype),
              jnp.asarray(sigmas[1:steps + 1], dtype), jnp.asarray(gammas[:steps], dtype))
  head = jax.tree.map(lambda a: a[:scanned], per_step)
  x = noise * jnp.asarray(sigmas[0], dtype)
  x, seen = lax.scan(lambda x, p: step(x, p, second_order=solver == "heun"), x, head)
  if final_euler:
    x, last = step(x, jax.tree.map(lambda a: a[scanned], per_step), second_order=False)
    if return_trajectory:
      seen = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), seen, last)
  else:
    x = denoise(x, jnp.asarray(sigmas[stop_step], dtype), labels)
  return SamplerOutput(x, Trajectory(*seen) if return_trajectory else None)


def _check_noise(noise) -> None:
  noise = noise if hasattr(noise, "dtype") else np.asarray(noise)
  if not jnp.issubdtype(noise.dtype, jnp.floating):
    raise ValueError(f"noise must be a floating-point array, got dtype {noise.dtype}")
  # Concrete noise is checked on the host (also when sample() itself is traced, e.g. inside a
  # jitted function closing over the noise, where jnp ops would give tracers).
  if isinstance(noise, jax.core.Tracer) or (isinstance(noise, jax.Array)
                                            and not noise.is_fully_addressable):
    return
  if not np.all(np.isfinite(np.asarray(noise))):
    raise ValueError("noise contains NaN or Inf")


_integrate_jit = jax.jit(_integrate, static_argnames=(
    "num_steps", "sigma_min", "sigma_max", "rho", "solver", "s_churn", "s_min", "s_max", "s_noise",
    "stop_step", "return_trajectory"))
