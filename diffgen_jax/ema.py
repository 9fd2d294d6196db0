"""Exponential moving averages of the weights: EDM's half-life EMA and EDM2's power-function EMA.

Both are expressed as a decay `beta` per training step (the EMA is lerp(ema, params, 1 - beta));
the step functions here are pure numpy/jnp scalars of the images seen, so a resumed run reproduces
the uninterrupted one exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.checks import check_number

# sigma_rel of the power-function profile with gamma = 0 is sqrt(1/12) ~ 0.2887: the largest
# sigma_rel std_to_exponent solves for (gamma >= 0).
MAX_SIGMA_REL = 0.2886


def _check_images_seen(images_seen, name: str) -> None:
  """A concrete count of images must be finite and >= 0 (a traced one, under jit, passes)."""
  if not isinstance(images_seen, jax.core.Tracer):
    value = np.asarray(images_seen)
    if value.ndim == 0:
      check_number(value, name, low=0)
    elif not (np.all(np.isfinite(value)) and np.all(value >= 0)):
      raise ValueError(f"{name} must be finite and >= 0")


def halflife_beta(images_seen, batch_size: int, halflife_images: float, rampup_ratio: float = 0.05):
  """EDM: the EMA's half-life is halflife_images, ramped up to rampup_ratio * images_seen early on.

  images_seen: images seen before this step (>= 0; may be traced). batch_size: an integer >= 1;
  halflife_images: finite and > 0; rampup_ratio: None or 0 (no ramp-up) or finite and > 0.
  Returns beta = 0.5^(batch_size / half-life), the decay per step (EDM, Karras et al. 2022,
  appendix F.1). Raises ValueError naming the argument that is out of range.
  """
  check_number(batch_size, "batch_size", low=1, integer=True)
  check_number(halflife_images, "halflife_images", low=0.0, low_open=True)
  if rampup_ratio is not None:
    check_number(rampup_ratio, "rampup_ratio", low=0.0)
  _check_images_seen(images_seen, "images_seen")
  halflife = jnp.asarray(halflife_images, jnp.float32)
  if rampup_ratio is not None and rampup_ratio > 0:
    halflife = jnp.minimum(halflife, images_seen * rampup_ratio)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def std_to_exponent(sigma_rel: float) -> float:
  """EDM2: the power-function exponent gamma whose profile has relative std sigma_rel.

  sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)); solved as the largest real root of
  gamma^3 + 7 gamma^2 + (16 - t) gamma + (12 - t) = 0 with t = sigma_rel^-2 (EDM2, Karras et al.
  2024, appendix C.1). Raises ValueError unless 0 < sigma_rel < MAX_SIGMA_REL.
  """
  check_number(sigma_rel, "sigma_rel", low=0.0, high=MAX_SIGMA_REL, low_open=True, high_open=True)
  t = sigma_rel ** -2
  return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def power_beta(images_seen_after, batch_size: int, sigma_rel: float):
  """EDM2: beta = (1 - batch / t)^(gamma + 1), t the images seen after this step (first step: 0).

  images_seen_after: >= 0 (may be traced); batch_size: an integer >= 1; sigma_rel: as in
  `std_to_exponent`. Raises ValueError naming the argument that is out of range.
  """
  check_number(batch_size, "batch_size", low=1, integer=True)
  _check_images_seen(images_seen_after, "images_seen_after")
  gamma = std_to_exponent(sigma_rel)
  t = jnp.maximum(jnp.asarray(images_seen_after, jnp.float32), batch_size)
  return (1.0 - batch_size / t) ** (gamma + 1.0)


# ------------------------------------------------------------------------------------------------
# Which EMA set: the one rule of the package.


def set_names(ema_sets, which: str = "first") -> list:
  """The EMA sets a measurement uses, from a {name: params} dict (a snapshot or `TrainState.ema`).

  which: "first" (the default everywhere: the first name in sorted order, i.e. "ema" for EDM's
  half-life EMA and the shortest profile "ema_0.050" for EDM2's power EMA), "all" (every set,
  sorted), or one set's name. Raises ValueError naming the sets that exist.
  """
  names = sorted(ema_sets)
  if not names:
    raise ValueError("no EMA sets")
  if which == "first":
    return names[:1]
  if which == "all":
    return names
  if which in ema_sets:
    return [which]
  raise ValueError(f"EMA set {which!r} is not one of 'first', 'all' or the sets {tuple(names)}")


def pick(ema_sets, which: str = "first"):
  """(name, params) of one EMA set: `set_names(ema_sets, which)[0]` ("first" by default)."""
  name = set_names(ema_sets, which)[0]
  return name, ema_sets[name]
