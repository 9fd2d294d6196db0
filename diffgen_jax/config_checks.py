"""Validation of configs at start-up and of the public API's numeric arguments.

Every error names the field (config.<field>) or the argument, and what it allows.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Tuple

import ml_collections
import numpy as np


class ConfigError(ValueError):
  """A config field has a value the job cannot run with."""


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(f"config.{field} is missing")
    node = node[part]
  return node


def choice(config, field: str, allowed: Iterable[Any]) -> Any:
  allowed = tuple(allowed)
  value = get(config, field)
  if value not in allowed:
    raise ConfigError(f"config.{field}={value!r} is not one of the allowed values {allowed}")
  return value


def positive(config, field: str, allow_zero: bool = False) -> Any:
  value = get(config, field)
  if not isinstance(value, (int, float)) or isinstance(value, bool) or (
      value < 0 if allow_zero else value <= 0):
    raise ConfigError(f"config.{field}={value!r} must be a number {'>=' if allow_zero else '>'} 0")
  return value


def subset(config, field: str, allowed: Iterable[Any]) -> Any:
  allowed = tuple(allowed)
  values = get(config, field)
  if isinstance(values, str):
    values = tuple(v for v in values.split(",") if v)
  bad = [v for v in values if v not in allowed]
  if bad or not values:
    raise ConfigError(f"config.{field}={tuple(values)!r}: each entry must be one of {allowed}")
  return tuple(values)


# ------------------------------------------------------------------------------------------------
# Numeric arguments of the public API and numeric config fields


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


def number(config, field: str, **kwargs):
  """check_number on config.<field>, raising ConfigError naming the field."""
  return check_number(get(config, field), f"config.{field}", error=ConfigError, **kwargs)


def float_leaves(config, prefix: str = "") -> Iterator[Tuple[str, float]]:
  """(dotted field, value) of every float in a config, including floats inside lists and tuples."""
  items = config.items() if hasattr(config, "items") else ()
  for key, value in items:
    field = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from float_leaves(value, field + ".")
    elif isinstance(value, (list, tuple)):
      for i, v in enumerate(value):
        if isinstance(v, (float, np.floating)):
          yield f"{field}[{i}]", float(v)
    elif isinstance(value, (float, np.floating)):
      yield field, float(value)


def finite_floats(config, compute_dtype: str = "float32") -> None:
  """Every float field of the config must be finite, also once cast to the compute dtype.

  A valid Python float such as 1e39 is infinite in float32 (and bfloat16, whose range is
  float32's), so it would reach the computation as inf: rejected here, naming the field.
  """
  limit = float(np.finfo(np.float32).max)  # bfloat16 shares float32's exponent range
  for field, value in float_leaves(config):
    if not math.isfinite(value):
      raise ConfigError(f"config.{field}={value!r} must be finite")
    if abs(value) > limit:
      raise ConfigError(f"config.{field}={value!r} is not finite in the compute dtype "
                        f"{compute_dtype} (largest finite value {limit:.4g})")
