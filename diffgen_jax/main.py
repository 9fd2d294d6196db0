"""The one entry point: python -m diffgen_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR

The config's `job` field names what to run; each job validates the config once, before anything
compiles, and writes everything it produces under the workdir (re-running resumes).
"""

import os
import sys
from typing import Optional

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from diffgen_jax import config_checks, jobs
from diffgen_jax.jobs import console
from diffgen_jax.sharding import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant], e.g. configs/quickstart.py. Any field is "
    "overridden as --config.<section>.<field>=value; the fields, defaults and ranges: python -m "
    "diffgen_jax.defaults train|evaluate|...", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs that jax does not "
    "detect by itself (SLURM, TPU pods and JAX_COORDINATOR_ADDRESS are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def use_cpu_cores_as_devices(batch_size: Optional[int] = None) -> int:
  """One CPU device per core (the largest count <= cores dividing batch_size), before jax starts.

  XLA:CPU runs one device's step with little intra-op parallelism, so a single-process run on a
  CPU trains faster data-parallel over one device per core (benchmarks/README.md, issue 15). Only
  jax's CPU platform is affected (a GPU/TPU stays the default backend). Left alone, returning 0,
  when the user chose a count (--xla_force_host_platform_device_count in XLA_FLAGS, or
  JAX_NUM_CPU_DEVICES / jax_num_cpu_devices), when JAX_PLATFORMS excludes the CPU, or when jax's
  backends already started. Returns the device count set.
  """
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices != -1 or (platforms and "cpu" not in platforms)
      or xla_bridge.backends_are_initialized()):
    return 0
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  n = max(d for d in range(1, cores + 1) if not batch_size or batch_size % d == 0)
  jax.config.update("jax_num_cpu_devices", n)
  return n


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure(flags.FLAGS.verbosity)  # quiet by default; --verbosity=1: library logs too
  config = _CONFIG.value
  n = 0
  if _COORDINATOR.value is None:
    training = config.get("training") or {}
    n = use_cpu_cores_as_devices(training.get("batch_size"))
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    jobs.validate(config)  # before anything is printed: a bad field is the only line shown
    if n and jax.default_backend() == "cpu":  # (the CPU's devices are not used beside a GPU/TPU)
      console.progress(f"{n} CPU devices (one per core)")
    logging.info("config:\n%s", config)  # (config.json records it; --verbosity=1 shows it)
    jobs.run(config, _WORKDIR.value)
  except (config_checks.ConfigError, jobs.WorkdirBusyError, jobs.MeasurementError) as err:
    _fail(str(err))


def _config_file_error(argv) -> Optional[str]:
  """One line when the --config file (its path before ":variant") is not a file, else None
  (ml_collections would report it in a traceback, naming no path)."""
  args = list(argv[1:])
  values = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
  values += [b for a, b in zip(args, args[1:]) if a == "--config"]
  for value in values:
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
      what = "is a directory" if os.path.isdir(path) else "does not exist"
      return (f"--config={value}: {os.path.abspath(path)} {what}; give a config file, "
              "--config=configs/<experiment>.py[:variant] (e.g. configs/quickstart.py)")
  return None


def _fail(message: str) -> None:
  """One line on stderr (no traceback: the message names the field or file), exit status 2."""
  print(f"diffgen_jax: {' '.join(message.split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv):
  """absl's flag parsing, with a bad --config.<field> override (a misspelled field, a value of the
  wrong type) reported in one line naming it instead of a traceback."""
  bad_file = _config_file_error(argv)
  if bad_file:
    _fail(bad_file)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
    missing = [n for n in ("config", "workdir") if f"Flag --{n} must have a value other than "
               "None" in str(err)]
    if missing:  # (absl's words: "flag --workdir=None: Flag --workdir must have a value ...")
      _fail(f"--{missing[0]} is required: {flags.FLAGS[missing[0]].help}")
    _fail(config_checks.flag_error(err, argv))


def cli():
  """The `diffgen_jax` console script (pyproject.toml): the same as python -m diffgen_jax.main."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
