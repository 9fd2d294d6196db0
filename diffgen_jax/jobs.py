"""The jobs a config can name in its `job` field, and their dispatch."""

from __future__ import annotations

import importlib

from diffgen_jax import config_checks

# job name -> module whose `run(config, workdir)` runs it (imported only when chosen).
JOBS = {
    "toy2d": "diffgen_jax.toy2d",
    "train": "diffgen_jax.trainer",
    "evaluate": "diffgen_jax.evaluator",
    "factors": "diffgen_jax.factor_sweeps",
}


def validate(config) -> str:
  """Checks the config for the job it names; returns the job's name. Raises ConfigError naming
  the field: every float finite, also in the compute dtype (1e39 is inf in float32), every numeric
  field of config_checks.FIELD_RANGES in its range, then the job's own checks."""
  job = config_checks.choice(config, "job", JOBS)
  config_checks.finite_floats(config)
  config_checks.field_ranges(config)
  importlib.import_module(JOBS[job]).validate_config(config)
  return job


def run(config, workdir: str):
  job = validate(config)
  return importlib.import_module(JOBS[job]).run(config, workdir)
