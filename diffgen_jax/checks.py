"""Checks of the public API's numeric arguments: one helper, errors that name the argument.

Imports nothing of the package, so every layer (the mathematics included) can use it; config
fields are checked by config_checks.py, which names them as config.<field>.
"""

from __future__ import annotations

import math

import numpy as np


def check_number(value, name: str, *, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, allow_inf: bool = False,
                 error=ValueError):
  """Returns `value` if it is a real number in the range, else raises `error` naming `name`.

  NaN is always rejected; +-inf only with allow_inf=True (and then still subject to the range).
  integer=True also rejects non-integral values (bools are never numbers). Ranges: [low, high],
  an open end with low_open / high_open. Works on Python and numpy scalars and 0-d arrays.
  """
  kind = "an integer" if integer else "a number"
  try:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    ok = is_int or (not integer and isinstance(value, (float, np.floating)))
    if not ok and not isinstance(value, (bool, np.bool_)) and np.ndim(value) == 0:
      arr = np.asarray(value)
      ok = arr.dtype.kind in ("iu" if integer else "iuf")
      value = arr.item() if ok else value
  except TypeError:
    ok = False
  if not ok:
    raise error(f"{name}={value!r} must be {kind}")
  if math.isnan(value):
    raise error(f"{name}={value!r} must be {kind}, not NaN")
  if math.isinf(value) and not allow_inf:
    raise error(f"{name}={value!r} must be finite")
  if low is not None and (value <= low if low_open else value < low):
    raise error(f"{name}={value!r} must be {'>' if low_open else '>='} {low}")
  if high is not None and (value >= high if high_open else value > high):
    raise error(f"{name}={value!r} must be {'<' if high_open else '<='} {high}")
  return value


def check_float_dtype(dtype, name: str = "dtype"):
  """Returns `dtype` as a numpy dtype if it is float32, or float64 with jax's x64 mode on; else
  raises ValueError naming `name` (float64 without x64 would silently compute in float32)."""
  import jax  # pylint: disable=import-outside-toplevel  (kept out of this module's import)
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    raise ValueError(f"{name} must be float32 or float64, got {dtype!r}") from None
  if dtype not in (np.float32, np.float64):
    raise ValueError(f"{name} must be float32 or float64, got {dtype}")
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError(f'{name}=float64 needs jax.config.update("jax_enable_x64", True) first')
  return dtype


def check_resamples(num_resamples, confidence, name: str = "num_resamples") -> int:
  """num_resamples of a percentile bootstrap interval at `confidence`, if each tail holds at least
  one resample (num_resamples >= 2 / (1 - confidence): 40 at 95%); else ValueError naming `name`
  (fewer give an interval of a few resamples, or a point, that reads like a measurement), or
  naming confidence when it is not in (0, 1)."""
  check_number(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
  check_number(num_resamples, name, integer=True)
  least = int(math.ceil(2.0 / (1.0 - confidence) - 1e-9))
  if num_resamples < least:
    raise ValueError(f"{name}={num_resamples} must be >= {least} for a {confidence:g} interval "
                     "(at least one resample in each tail)")
  return int(num_resamples)
