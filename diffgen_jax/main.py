"""The one entry point: python -m diffgen_jax.main --config=configs/<experiment>.py[:variant] --workdir=DIR

The config's `job` field names what to run; each job validates the config once, before anything
compiles, and writes everything it produces under the workdir (re-running resumes).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from diffgen_jax import jobs
from diffgen_jax.sharding import initialize_distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, results and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  initialize_distributed()
  config = _CONFIG.value
  logging.info("config:\n%s", config)
  jobs.run(config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
