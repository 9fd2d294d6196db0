"""The jobs: thin shells that read a config, call the library and write results under a workdir.

    train      jobs/train.py     the training loop (checkpoints, snapshots, progress), then `evaluate`
    evaluate   jobs/evaluate.py  the denoising gap and the sample-level measurements of every snapshot
    factors    jobs/factors.py   factor sweeps (model error, granularity, guidance, receptive field,
                                 gradient score) on analytic denoisers and on a trained run
    toy2d      jobs/toy2d.py     the 2D toy model's experiments (a)-(g)
    ladder     jobs/ladder.py    a trained run's network against every rung of the analytic ladder
    convert    jobs/convert.py   NVIDIA's published EDM/EDM2 networks -> snapshots of this package
    export     jobs/export.py    a snapshot's samples (and D(x; sigma)) as EDM dataset zips

The evaluate, ladder, factors and export jobs measure a network trained elsewhere as well:
config.model.denoiser = MODULE:FUNCTION, a factory called on each file under config.model.checkpoint
(`common.SnapshotSeries`: a run's snapshots and a hook's files go through the same code).

Only the jobs see configs and workdirs; everything below them takes arrays, denoisers and plain
arguments. Every job writes WORKDIR/results.json in one layout (`jobs.results`). `run` validates
the config once, up front (including the fields of the jobs a job chains, e.g. the evaluation at
the end of training), then runs the job holding WORKDIR/job.lock, so that a second job on the same
workdir is refused (WorkdirBusyError) instead of mixing its files with the first one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import socket
import time

import jax

from diffgen_jax import config_checks, defaults, progress
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
    "export": "diffgen_jax.jobs.export",
}
LOCK_FILE = "job.lock"  # WORKDIR/job.lock: held by the job writing to the workdir (`workdir_lock`)


def validate(config) -> str:
  """Checks every field the job named by config.job (and the jobs it chains) reads; returns the
  job's name. Raises config_checks.ConfigError naming the field."""
  job = config_checks.choice(config, "job", JOBS)
  # Every float finite, also in the compute dtype (1e39 is inf in float32); every declared field
  # (defaults.JOB_SETTINGS: type, range, choices), except those this run does not read.
  config_checks.finite_floats(config)
  settings = defaults.job_settings(job)
  config_checks.check_settings(config, settings, skip=_unread(config, job, settings))
  if job == "evaluate":  # reads the run's data, model and training fields as well
    importlib.import_module(JOBS["train"]).validate_training_fields(config)
  importlib.import_module(JOBS[job]).validate_config(config)  # the rules between fields
  return job


def _unread(config, job: str, settings) -> list:
  """The declared fields a run does not read, not held to their declarations: the evaluation's
  when training does not end with it (but the seeds the monitor shares), the monitor's when off."""
  monitor = "monitor" in config and config.monitor.get("every_images", 0)
  unread = []
  if job == "train" and "evaluation" in config and not config.evaluation.get("after_training", True):
    unread += [f for f in settings if f.startswith("evaluation.") and not (
        monitor and f in ("evaluation.noise_seed", "evaluation.subset_seed"))]
  if not monitor:
    unread += ["monitor.num_images", "monitor.sigmas", "monitor.batch_size"]
  return unread


def run(config, workdir: str):
  """Validates the config, then runs its job in workdir while holding the workdir's lock
  (`workdir_lock`: one job at a time writes to a workdir)."""
  job = validate(config)
  progress.enable(console.progress)  # the library's long loops report (process 0, every 30 s)
  with workdir_lock(workdir, job):
    return importlib.import_module(JOBS[job]).run(config, workdir)


class WorkdirBusyError(RuntimeError):
  """Another job (or process) holds the workdir's lock."""


class MeasurementError(ValueError):
  """A measurement cannot be made of the denoiser given: its outputs (or samples) hold NaN or Inf
  (`common.require_finite`). The message names the denoiser, the measurement and the sigmas;
  main prints it in one line (exit status 2). (A ValueError: the values are what is wrong.)"""


@contextlib.contextmanager
def workdir_lock(workdir: str, job: str):
  """Holds an exclusive lock (fcntl.flock) on WORKDIR/job.lock for the block; WorkdirBusyError
  naming the workdir and the holder's pid, host and job when another job holds it; ConfigError
  naming --workdir when it cannot be made (a file on its path, no permission).

  Two jobs writing to one workdir would mix their checkpoints, metrics rows and results. The lock
  is released by the operating system when its holder ends, also when killed, so a workdir is never
  left locked. In a multi-process job only process 0 takes it (the processes of one job write
  together). A workdir this call creates is removed again when the job leaves nothing else in it.
  """
  if jax.process_index() != 0:
    yield
    return
  created = not os.path.isdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as err:  # (a file on the path, no permission, a read-only file system)
    why = "it is a file" if os.path.isfile(workdir) else f"{err.strerror}: {err.filename}"
    raise config_checks.ConfigError(
        f"--workdir={workdir}: cannot make the directory {os.path.abspath(workdir)} ({why})"
    ) from None
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "a job starting now"
      raise WorkdirBusyError(
          f"the workdir {os.path.abspath(workdir)} is in use by another job ({holder}; lock "
          f"{path}): one job at a time writes to a workdir. Wait for it to end, or give this job "
          "another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, job {job!r}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    try:
      yield
    finally:
      if created and os.listdir(workdir) == [LOCK_FILE]:  # a job refused before it wrote anything
        os.remove(path)
        os.rmdir(workdir)
  finally:
    os.close(fd)  # releases the lock
