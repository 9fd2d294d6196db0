"""Start-up validation of ml_collections configs: every error names the field and what it allows."""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections


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
