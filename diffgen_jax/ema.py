"""Exponential moving averages of the weights: EDM's half-life EMA and EDM2's power-function EMA.

Both are expressed as a decay `beta` per training step (the EMA is lerp(ema, params, 1 - beta));
the step functions here are pure numpy/jnp scalars of the images seen, so a resumed run reproduces
the uninterrupted one exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def halflife_beta(images_seen, batch_size: int, halflife_images: float, rampup_ratio: float = 0.05):
  """EDM: the EMA's half-life is halflife_images, ramped up to rampup_ratio * images_seen early on."""
  halflife = jnp.asarray(halflife_images, jnp.float32)
  if rampup_ratio is not None and rampup_ratio > 0:
    halflife = jnp.minimum(halflife, images_seen * rampup_ratio)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def std_to_exponent(sigma_rel: float) -> float:
  """EDM2: the power-function exponent gamma whose profile has relative std sigma_rel.

  sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)); solved as the largest real root of
  gamma^3 + 7 gamma^2 + (16 - t) gamma + (12 - t) = 0 with t = sigma_rel^-2.
  """
  if not 0 < sigma_rel < 0.2886:  # sigma_rel of gamma = 0 is sqrt(1/12) ~ 0.2887
    raise ValueError(f"sigma_rel must be in (0, 0.2886), got {sigma_rel}")
  t = sigma_rel ** -2
  return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def exponent_to_std(gamma: float) -> float:
  return float(np.sqrt((gamma + 1) / (gamma + 2) ** 2 / (gamma + 3)))


def power_beta(images_seen_after, batch_size: int, sigma_rel: float):
  """EDM2: beta = (1 - batch / t)^(gamma + 1), t the images seen after this step (first step: 0)."""
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
