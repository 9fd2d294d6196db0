"""The one entry point: python -m diffgen_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR

The config's `job` field names what to run; each job validates the config once, before anything
compiles, and writes everything it produces under the workdir (re-running resumes).
"""

from absl import app, flags
from ml_collections import config_flags

from diffgen_jax import jobs
from diffgen_jax.jobs import console
from diffgen_jax.sharding import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and plots.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs that jax does not "
    "detect by itself (SLURM, TPU pods and JAX_COORDINATOR_ADDRESS are detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure(flags.FLAGS.verbosity)  # quiet by default; --verbosity=1: library logs too
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  console.progress(f"config:\n{config}")
  jobs.run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
