"""Start-up validation of ml_collections configs: every error names the field and what it allows."""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import ml_collections
import numpy as np

from diffgen_jax import edm
from diffgen_jax.data import sources as data_sources
from diffgen_jax.data import splits as data_splits


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


def fail(field: str, value, requirement: str):
  """Raises ConfigError("config.<field>=<value> <requirement>")."""
  raise ConfigError(f"config.{field}={value!r} {requirement}")


def integer(config, field: str, minimum: int) -> int:
  """An integer (not a bool) >= minimum."""
  value = get(config, field)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    fail(field, value, f"must be an integer >= {minimum}")
  return int(value)


def number(config, field: str, minimum: float = 0.0, *, strict: bool = False) -> float:
  """A single finite number > minimum (strict) or >= minimum."""
  value = get(config, field)
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  if not ok or not math.isfinite(value) or (value <= minimum if strict else value < minimum):
    fail(field, value, f"must be a finite number {'>' if strict else '>='} {minimum}")
  return float(value)


def numbers(config, field: str, minimum: float = 0.0, *, strict: bool = False,
            integer: bool = False, allow_empty: bool = False) -> tuple:
  """A tuple (a single number counts as one) of finite numbers (or integers) > / >= minimum."""
  values = get(config, field)
  if isinstance(values, (int, float)) and not isinstance(values, bool):
    values = (values,)
  if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
    fail(field, values, "must be a non-empty tuple of numbers")
  kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
  for v in values:
    if (not isinstance(v, kind) or isinstance(v, bool) or not math.isfinite(v)
        or (v <= minimum if strict else v < minimum)):
      fail(field, tuple(values), f"must contain only {'integers' if integer else 'finite numbers'}"
           f" {'>' if strict else '>='} {minimum}")
  return tuple(values)


def flag(config, field: str) -> bool:
  """True or False (not 0 / 1)."""
  value = get(config, field)
  if not isinstance(value, bool):
    fail(field, value, "must be True or False")
  return value


def sigma_grid(config, field: str) -> None:
  """An explicit sigma grid: 1-D, non-empty, finite, > 0 (`edm.validate_sigma_grid`)."""
  try:
    edm.validate_sigma_grid(get(config, field), f"config.{field}")
  except ValueError as err:
    raise ConfigError(str(err)) from None


def data_config(data_config, prefix: str = "data") -> None:
  """Checks a data ConfigDict (name, data_dir, subset_size, labels, x_flip) before a run starts.

  Raises ConfigError naming the field (as config.<prefix>.<field>) and what it allows.
  """
  def field(f):
    return f"config.{prefix}.{f}" if prefix else f"config.{f}"

  for f in ("name", "data_dir", "subset_size", "labels", "x_flip"):
    if f not in data_config:
      raise ConfigError(f"{field(f)} is missing")
  data_dir = data_config.data_dir
  if data_dir is not None and not isinstance(data_dir, str):
    raise ConfigError(f"{field('data_dir')}={data_dir!r} must be a path string or None "
                      f"(default: $DIFFGEN_DATA_DIR or {data_sources.DEFAULT_DATA_DIR})")
  name = data_config.name
  if not isinstance(name, str) or not name:
    raise ConfigError(f"{field('name')}={name!r} must be one of the built-in datasets {data_sources.DATASETS} "
                      "or the tfds name of a dataset prepared in data_dir")
  if name not in data_sources.DATASETS and not data_sources.is_prepared(name, data_dir):
    raise ConfigError(f"{field('name')}={name!r} is neither a built-in dataset {data_sources.DATASETS} nor a "
                      f"tfds dataset prepared (array_record) in data_dir="
                      f"{data_sources.resolve_data_dir(data_dir)!r}")
  labels = data_config.labels
  if labels not in data_splits.LABEL_MODES:
    raise ConfigError(f"{field('labels')}={labels!r} is not one of the allowed values "
                      f"{data_splits.LABEL_MODES}")
  if labels == "pseudo":
    path = data_config.get("pseudo_labels")
    if not path or not isinstance(path, str):
      raise ConfigError(f"{field('labels')}='pseudo' needs {field('pseudo_labels')}: a .npz file "
                        f"with integer arrays {data_splits.SPLITS} (see data.read_pseudo_labels)")
    if not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"{field('pseudo_labels')}={path!r} does not exist")
  if "subset_seed" in data_config and (
      isinstance(data_config.subset_seed, bool) or not isinstance(data_config.subset_seed, int)
      or data_config.subset_seed < 0):
    raise ConfigError(f"{field('subset_seed')}={data_config.subset_seed!r} must be an int >= 0")
  if not isinstance(data_config.x_flip, bool):
    raise ConfigError(f"{field('x_flip')}={data_config.x_flip!r} must be True or False")
  subset_size = data_config.subset_size
  if subset_size is not None and (isinstance(subset_size, bool) or
                                  not isinstance(subset_size, int) or subset_size < 0):
    raise ConfigError(f"{field('subset_size')}={subset_size!r} must be 0 or None (the whole "
                      "training split) or a positive int")
  if subset_size:
    available = data_sources.train_size(name, data_dir)
    if available is not None and subset_size > available:
      raise ConfigError(f"{field('subset_size')}={subset_size} exceeds the {available} images "
                        f"of {name!r}'s training split")
