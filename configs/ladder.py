"""The analytic ladder against a trained network (analytic.md section 1; job `ladder`).

  python -m diffgen_jax.main --config=configs/ladder.py:local --config.run_dir=runs/quickstart \
      --workdir=runs/ladder_quickstart             # 2-core CPU, a few minutes on 8x8 digits
  python -m diffgen_jax.main --config=configs/ladder.py --config.run_dir=RUN --workdir=DIR
  python -m diffgen_jax.main --config=configs/ladder.py:smoke --config.run_dir=RUN --workdir=DIR
  python -m diffgen_jax.main --config=configs/ladder.py --config.model.denoiser=my_nets:make \
      --config.model.checkpoint=snapshots/ --config.data.name=digits --workdir=DIR  # a hook's

The run is a train job's workdir (its config.json names the data, model and sigma_data; its
snapshots hold the EMA parameters). Variants: `local` (a CPU-sized grid on 8x8 digits), `smoke`
(the test's sizes; about a minute on 2 cores, mostly compilation).
"""

import ml_collections

from diffgen_jax import defaults

MODES = ("local", "smoke")


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, mode=MODES)
  mode = chosen["mode"][0] if chosen["mode"] else ""

  config = ml_collections.ConfigDict()
  config.job = "ladder"
  config.run_dir = ""  # a train job's workdir (required)
  config.step = -1  # the snapshot measured: -1 = the last, else a snapshot step of the run
  config.ema = "first"  # EMA set of the snapshot ("first" or a set name, `ema.pick`)
  config.data_dir = ""  # "" = the run's data.data_dir
  # Or a hook's network (run_dir ''): model.denoiser=MODULE:FUNCTION on the last file under
  # model.checkpoint, measured on the data config.data names (read only with model.denoiser).
  config.model = defaults.hook_model_config()
  config.data = defaults.data_config()
  config.num_images = 256  # noised training / validation images per split (a seeded subset)
  config.subset_seed = 0  # which images: data.seeded_rows (the evaluate job's draw)
  config.num_sigmas = 16  # log grid in [0.002, 80] (edm.gap_sigma_grid) for the noised sets
  config.sigmas = ()  # explicit grid instead
  config.noise_seed = 0  # training images; validation uses noise_seed + 1 (as the evaluate job)
  config.batch_size = 256
  config.trajectory = ml_collections.ConfigDict({
      "num_samples": 64,  # the network's own Heun trajectories (deterministic)
      "num_steps": 18,  # Karras schedule; the trajectory's sigmas are its noise levels
      "seed": 0,  # initial noise and (class-conditional runs) the samples' labels
  })
  config.calibration = ml_collections.ConfigDict({
      "sizes": (1, 3, 5, 7, 9, 11, 15),  # candidate odd patch sizes
      "on": "trajectory",  # "trajectory" (Kamb & Ganguli) | "train" | "val": the calibration set
  })
  # Rungs: y* always; y_delta if delta > 0; LS / ELS / PSPC (each at its own calibrated size per
  # sigma); the Gaussian (Wiener) denoiser at full rank and at each rank r.
  config.delta = 0.3
  config.local_rungs = ("LS", "ELS", "PSPC")
  config.els_boundary = "circular"  # "circular" | "zeros"
  config.gaussian_full = True
  config.gaussian_ranks = (8,)
  config.make_plots = True

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
    config.gaussian_ranks = (4,)
  return config
