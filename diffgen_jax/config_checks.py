"""Start-up validation of ml_collections configs: every error names the field and what it allows."""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator, Tuple

import ml_collections
import numpy as np

from diffgen_jax import edm, ema
from diffgen_jax.checks import check_number
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
    raise ConfigError(f"{field('name')}={name!r} must be one of the built-in datasets {data_sources.DATASETS}, "
                      "the tfds name of a dataset prepared in data_dir, or "
                      "'edm_zip:TRAIN.zip,VALIDATION.zip'")
  if name.startswith("edm_zip:"):
    from diffgen_jax.data import edm_zip  # pylint: disable=g-import-not-at-top
    try:
      paths = edm_zip.parse_name(name)
    except ValueError as err:
      raise ConfigError(f"{field('name')}: {err}") from None
    for path in paths:
      if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{field('name')}={name!r}: {path} does not exist")
  elif name not in data_sources.DATASETS and not data_sources.is_prepared(name, data_dir):
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
  side = data_config.get("subset_side", 1)
  if isinstance(side, bool) or side not in data_splits.SUBSET_SIDES:
    raise ConfigError(f"{field('subset_side')}={side!r} must be one of {data_splits.SUBSET_SIDES} "
                      "(the two disjoint nested training subsets)")
  if side != 1 and not data_config.subset_size:
    raise ConfigError(f"{field('subset_side')}={side} needs {field('subset_size')} > 0 (side 2 of "
                      "the whole split would be the whole split again)")
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
  # Parameters, optimizer state and schedules are float32 whatever training.compute_dtype
  # (bfloat16 activations share float32's exponent range).
  limit = float(np.finfo(np.float32).max)
  for field, value in float_leaves(config):
    if not math.isfinite(value):
      raise ConfigError(f"config.{field}={value!r} must be finite")
    if abs(value) > limit:
      raise ConfigError(f"config.{field}={value!r} is not finite in the compute dtype "
                        f"{compute_dtype} (largest finite value {limit:.4g}): it would reach the "
                        "computation as inf")


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
    "training.ema.sigma_rels[]": dict(_NUM, low=0.0, high=ema.MAX_SIGMA_REL, low_open=True,
                                      high_open=True),
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
    "monitor.every_images": dict(_NUM, low=0.0),
    "monitor.num_images": dict(_INT, low=1),
    "monitor.sigmas[]": dict(_NUM, low=0.0, low_open=True),
    "monitor.batch_size": dict(_INT, low=1),
}

# The other jobs' numeric fields (configs/factors.py, configs/toy2d.py, configs/ladder.py), by job:
# their configs reuse names with other meanings (factors' `delta` is a section, ladder's a number),
# so each job's table is merged over FIELD_RANGES for that job only (`job_field_ranges`). The jobs'
# own validators add what a range cannot say (e.g. delta_neg > delta_pos, odd window sizes).
_POS, _NONNEG = dict(_NUM, low=0.0, low_open=True), dict(_NUM, low=0.0)
_SEED32 = dict(_INT, low=0, high=2 ** 32 - 1)  # numpy's legacy RandomState seeds
JOB_FIELD_RANGES = {
    "factors": {
        "num_images": dict(_INT, low=1),
        "num_sigmas": dict(_INT, low=1),  # >= 2 when no explicit grid (jobs.factors)
        "sigmas[]": _POS,
        "noise_seed": dict(_INT, low=0),
        "batch_size": dict(_INT, low=1),
        "chunk_size": dict(_INT, low=1),
        "model_error": _NONNEG,
        "delta.deltas[]": _NONNEG,
        "granularity.ks[]": dict(_INT, low=0),
        "granularity.deltas[]": _NONNEG,
        "granularity.classifier_steps": dict(_INT, low=1),
        "guidance.ws[]": _NONNEG,
        "guidance.delta_pos": _NONNEG,
        "guidance.delta_neg": _NONNEG,
        "receptive_field.crop_sizes[]": dict(_INT, low=1),
        "receptive_field.deltas[]": _NONNEG,
        "gradient_score.deltas[]": _NONNEG,
        "gradient_score.num_images": dict(_INT, low=1),
        "gradient_score.num_sigmas": dict(_INT, low=1),
        "trained.ws[]": _NONNEG,
        "trained.crop_sizes[]": dict(_INT, low=1),
        "trained.snapshot": dict(_INT),  # an index into the run's snapshots (-1: the last)
        "trained.negative_snapshot": dict(_INT),
        "trained.gradient_images": dict(_INT, low=1),
        "trained.sample_gap_samples": dict(_INT, low=0),  # 0 = off, else >= 2 (jobs.factors)
        "trained.sample_gap_steps": dict(_INT, low=1),
    },
    "toy2d": {
        "seed": _SEED32,
        "radius": _POS,
        "offset": _NONNEG,
        "draws": dict(_INT, low=1),
        "legacy_seed": _SEED32,
        "sigma_grid_steps": dict(_INT, low=2),
        "quadrature.spacing": _POS,
        "quadrature.radius": _POS,  # > quadrature.spacing (jobs.toy2d)
        "flow_field.num_points": dict(_INT, low=2),
        "flow_field.offset": _NONNEG,
        "flow_field.sigmas[]": _POS,
        "flow_field.sigma_indices[]": dict(_INT, low=0),  # < sigma_grid_steps (jobs.toy2d)
        "flow_field.grid_size": dict(_INT, low=2),
        "flow_field.extent": _POS,
        "relative_error.num_points": dict(_INT, low=2),
        "relative_error.offset": _NONNEG,
        "relative_error.num_angles": dict(_INT, low=1),
        "relative_error.draws": dict(_INT, low=1),
        "relative_error.legacy_seed": _SEED32,
        "relative_error.sigma": _POS,
        "relative_error.deltas[]": _NONNEG,
        "gap_vs_delta.num_points": dict(_INT, low=2),
        "gap_vs_delta.deltas[]": _POS,  # with delta = 0 the training error vanishes
        "gap_vs_density.num_points[]": dict(_INT, low=2),
        "gap_vs_density.delta": _POS,
        "guidance.num_points": dict(_INT, low=2),
        "guidance.delta_pos": _POS,
        "guidance.delta_neg": _POS,
        "guidance.weights[]": _NONNEG,
        "trajectories.num_points": dict(_INT, low=2),
        "trajectories.deltas[]": _NONNEG,
        "trajectories.num_samples": dict(_INT, low=1),
        "trajectories.num_plotted": dict(_INT, low=0),  # <= num_samples (jobs.toy2d)
        "trajectories.num_steps": dict(_INT, low=1),
        "trajectories.tolerance": _POS,
        "frechet.num_points": dict(_INT, low=2),
        "frechet.deltas[]": _NONNEG,
        "frechet.num_samples": dict(_INT, low=2),
        "frechet.num_steps": dict(_INT, low=1),
        "frechet.ddof": dict(_INT, low=0, high=1),
    },
    "ladder": {
        "step": dict(_INT, low=-1),  # -1 = the last snapshot
        "num_images": dict(_INT, low=2),  # r2 needs an output variance
        "num_sigmas": dict(_INT, low=1),
        "sigmas[]": _POS,
        "noise_seed": dict(_INT, low=0),
        "batch_size": dict(_INT, low=1),
        "trajectory.num_samples": dict(_INT, low=2),
        "trajectory.num_steps": dict(_INT, low=1),
        "trajectory.seed": dict(_INT, low=0),
        "calibration.sizes[]": dict(_INT, low=1),  # odd and distinct (jobs.ladder)
        "delta": _NONNEG,
        "gaussian_ranks[]": dict(_INT, low=1),
    },
}


def job_field_ranges(job: str) -> dict:
  """The range table of a job: FIELD_RANGES with the job's own entries (JOB_FIELD_RANGES) over it."""
  return {**FIELD_RANGES, **JOB_FIELD_RANGES.get(job, {})}


def _lookup(config, field: str):
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      return None, False
    node = node[part]
  return node, True


def field_ranges(config, ranges=None, skip: Iterable[str] = ()) -> None:
  """Checks every field of `ranges` (default FIELD_RANGES) that the config has: a number of the
  right kind (integer or real), not NaN or inf, inside its range. "field[]" names a list of
  numbers (a single number counts as one, as in `numbers`), each checked. Fields starting with a prefix in `skip` (e.g. "evaluation." when the job
  does not evaluate) are left alone. Raises ConfigError naming the field (and the list entry)."""
  skip = tuple(skip)
  for field, bounds in (FIELD_RANGES if ranges is None else ranges).items():
    if skip and field.startswith(skip):
      continue
    is_list = field.endswith("[]")
    value, present = _lookup(config, field[:-2] if is_list else field)
    if not present:
      continue
    if is_list:
      if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value,)
      if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"config.{field[:-2]}={value!r} must be a list of numbers")
      for i, v in enumerate(value):
        check_number(v, f"config.{field[:-2]}[{i}]", error=ConfigError, **bounds)
    else:
      check_number(value, f"config.{field}", error=ConfigError, **bounds)
