"""The analytic ladder against a trained network (analytic.md section 1; job `ladder`).

  python -m diffgen_jax.main --config=configs/ladder.py:local --config.run_dir=runs/quickstart \
      --workdir=runs/ladder_quickstart             # 2-core CPU, a few minutes on 8x8 digits
  python -m diffgen_jax.main --config=configs/ladder.py --config.run_dir=RUN --workdir=DIR
  python -m diffgen_jax.main --config=configs/ladder.py:smoke --config.run_dir=RUN --workdir=DIR
  python -m diffgen_jax.main --config=configs/ladder.py --config.model.denoiser=my_nets:make \
      --config.model.checkpoint=snapshots/ --config.data.name=digits --workdir=DIR  # a hook's

The run is a train job's workdir (its config.json names the data, model and sigma_data; its
snapshots hold the EMA parameters). Variants: `local` (a CPU-sized grid on 8x8 digits), `smoke`
(the test's sizes; about a minute on 2 cores, mostly compilation). Fields: `defaults.LADDER`.
"""

from diffgen_jax import defaults

MODES = ("local", "smoke")


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, mode=MODES)
  mode = chosen["mode"][0] if chosen["mode"] else ""

  config = defaults.ladder_config()
  if mode == "local":
    config.num_images = 128
    config.num_sigmas = 12
    config.trajectory.num_samples = 32
  elif mode == "smoke":  # every input set is 4 states x 3 sigmas = one batch of 12: one compile
    config.num_images = 4
    config.num_sigmas = 3
    config.batch_size = 16
    config.trajectory.update(dict(num_samples=4, num_steps=3))
    config.calibration.sizes = (1, 3)
    config.gaussian_ranks = (2,)  # below the smoke run's per-class covariance rank
  return config
