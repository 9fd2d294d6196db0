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


def run(config, workdir: str):
  job = config_checks.choice(config, "job", JOBS)
  module = importlib.import_module(JOBS[job])
  # Every float field finite, also in the compute dtype (1e39 is inf in float32), whatever the job.
  config_checks.finite_floats(config)
  module.validate_config(config)
  return module.run(config, workdir)
