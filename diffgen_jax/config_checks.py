"""Start-up validation of ml_collections configs: every error names the field and what it allows."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Tuple

import ml_collections
import numpy as np

from diffgen_jax.checks import check_number


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
# Float fields finite (also in the compute dtype); numeric API arguments: diffgen_jax/checks.py


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


# Ranges of the numeric fields of the train / evaluate configs (defaults.train_config), checked for
# whichever of them a config has; errors name the field. int: an integer (bools are not);
# float: any real number (ints too). Bounds as in checks.check_number.
_INT, _NUM = dict(integer=True), {}
FIELD_RANGES = {
    "seed": dict(_INT, low=0),
    "log_every_steps": dict(_INT, low=1),
    "mesh.data": dict(_INT, low=-1),
    "mesh.model": dict(_INT, low=1),
    "data.subset_size": dict(_INT, low=0),
    "data.subset_seed": dict(_INT, low=0),
    "training.batch_size": dict(_INT, low=1),
    "training.total_images": dict(_INT, low=1),
    "training.lr": dict(_NUM, low=0.0, low_open=True),
    "training.lr_ref_images": dict(_NUM, low=0.0),
    "training.warmup_images": dict(_NUM, low=0.0),
    "training.adam_b1": dict(_NUM, low=0.0, high=1.0, high_open=True),
    "training.adam_b2": dict(_NUM, low=0.0, high=1.0, high_open=True),
    "training.adam_eps": dict(_NUM, low=0.0, low_open=True),
    "training.grad_clip": dict(_NUM, low=0.0),
    "training.p_mean": dict(_NUM),
    "training.p_std": dict(_NUM, low=0.0, low_open=True),
    "training.sigma_data": dict(_NUM, low=0.0, low_open=True),
    "training.label_dropout": dict(_NUM, low=0.0, high=1.0, high_open=True),
    "training.ema.halflife_images": dict(_NUM, low=0.0, low_open=True),
    "training.ema.rampup_ratio": dict(_NUM, low=0.0),
    # EDM2's power EMA: sigma_rel of gamma = 0 is sqrt(1/12) ~ 0.2887 (ema.std_to_exponent).
    "training.ema.sigma_rels[]": dict(_NUM, low=0.0, high=0.2886, low_open=True, high_open=True),
    "checkpoint.state_every_images": dict(_NUM, low=0.0, low_open=True),
    "checkpoint.snapshot_every_images": dict(_NUM, low=0.0, low_open=True),
    "checkpoint.keep_states": dict(_INT, low=1),
    "sampling.grid_size": dict(_INT, low=0),
    "sampling.num_steps": dict(_INT, low=1),
    "evaluation.num_images": dict(_INT, low=1),
    "evaluation.num_sigmas": dict(_INT, low=1),
    "evaluation.noise_seed": dict(_INT, low=0),
    "evaluation.batch_size": dict(_INT, low=1),
    "evaluation.sigmas[]": dict(_NUM, low=0.0, low_open=True),
    "evaluation.at_sigmas[]": dict(_NUM, low=0.0, low_open=True),
    "evaluation.samples.num_samples": dict(_INT, low=2),
    "evaluation.samples.num_steps": dict(_INT, low=1),
    "evaluation.samples.seed": dict(_INT, low=0),
    "evaluation.samples.classifier_steps": dict(_INT, low=0),
    "evaluation.samples.num_train_subsets": dict(_INT, low=1),
    "evaluation.samples.early_stop_every": dict(_INT, low=1),
    "evaluation.samples.probe_size": dict(_INT, low=1),
    "evaluation.samples.copy_ratio": dict(_NUM, low=0.0, high=1.0, low_open=True, high_open=True),
    "evaluation.samples.grid_size": dict(_INT, low=0),
}


def _lookup(config, field: str):
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      return None, False
    node = node[part]
  return node, True


def field_ranges(config, ranges=None) -> None:
  """Checks every field of `ranges` (default FIELD_RANGES) that the config has: a number of the
  right kind (integer or real), not NaN or inf, inside its range. "field[]" names a list of
  numbers, each checked. Raises ConfigError naming the field (and the entry of a list)."""
  for field, bounds in (FIELD_RANGES if ranges is None else ranges).items():
    is_list = field.endswith("[]")
    value, present = _lookup(config, field[:-2] if is_list else field)
    if not present:
      continue
    if is_list:
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"config.{field[:-2]}={value!r} must be a list of numbers")
      for i, v in enumerate(value):
        check_number(v, f"config.{field[:-2]}[{i}]", error=ConfigError, **bounds)
    else:
      check_number(value, f"config.{field}", error=ConfigError, **bounds)
