"""The jobs: thin shells that read a config, call the library and write results under a workdir.

    train      jobs/train.py     the training loop (checkpoints, snapshots, progress), then `evaluate`
    evaluate   jobs/evaluate.py  the denoising gap and the sample-level measurements of every snapshot
    factors    jobs/factors.py   factor sweeps (model error, granularity, guidance, receptive field,
                                 gradient score) on analytic denoisers and on a trained run
    toy2d      jobs/toy2d.py     the 2D toy model's experiments (a)-(g)
    ladder     jobs/ladder.py    a trained run's network against every rung of the analytic ladder
    convert    jobs/convert.py   NVIDIA's published EDM/EDM2 networks -> snapshots of this package

Only the jobs see configs and workdirs; everything below them takes arrays, denoisers and plain
arguments. Every job writes WORKDIR/results.json in one layout (`jobs.results`). `run` validates
the config once, up front (including the fields of the jobs a job chains, e.g. the evaluation at
the end of training), then runs the job.
"""

from __future__ import annotations

import importlib

from diffgen_jax import config_checks, progress
from diffgen_jax.jobs import console

# job name -> module whose `validate_config(config)` and `run(config, workdir)` run it (imported
# only when chosen).
JOBS = {
    "toy2d": "diffgen_jax.jobs.toy2d",
    "train": "diffgen_jax.jobs.train",
    "evaluate": "diffgen_jax.jobs.evaluate",
    "factors": "diffgen_jax.jobs.factors",
    "ladder": "diffgen_jax.jobs.ladder",
    "convert": "diffgen_jax.jobs.convert",
}


def validate(config) -> str:
  """Checks every field the job named by config.job (and the jobs it chains) reads; returns the
  job's name. Raises config_checks.ConfigError naming the field."""
  job = config_checks.choice(config, "job", JOBS)
  # Every float finite, also in the compute dtype (1e39 is inf in float32); every numeric field of
  # the job's range table (config_checks.FIELD_RANGES, then JOB_FIELD_RANGES[job]) that the config
  # has in its range.
  config_checks.finite_floats(config)
  unused = []  # sections this run does not read are not held to their ranges
  if job == "train" and "evaluation" in config and not config.evaluation.get("after_training", True):
    unused.append("evaluation.")
  if "monitor" in config and not config.monitor.get("every_images", 0):
    unused += ["monitor.num_images", "monitor.sigmas", "monitor.batch_size"]
  job_ranges = config_checks.JOB_FIELD_RANGES.get(job, {})
  config_checks.field_ranges(config, {f: bounds for f, bounds in config_checks.FIELD_RANGES.items()
                                      if f not in job_ranges}, skip=unused)
  if job == "evaluate":  # reads the run's data, model and training fields as well
    importlib.import_module(JOBS["train"]).validate_training_fields(config)
  importlib.import_module(JOBS[job]).validate_config(config)
  # The job's own table last: its validator's messages (which say more, e.g. "distinct odd") win
  # where it looks, and the table covers what it leaves alone (sections no chosen sweep reads).
  config_checks.field_ranges(config, job_ranges, skip=unused)
  return job


def run(config, workdir: str):
  job = validate(config)
  progress.enable(console.progress)  # the library's long loops report (process 0, every 30 s)
  return importlib.import_module(JOBS[job]).run(config, workdir)
