"""Factors of the denoising gap (paper.md sections 6-7): analytic sweeps, and a trained run's.

  python -m diffgen_jax.main --config=configs/factors.py:local --workdir=/tmp/factors  # CPU, minutes
  python -m diffgen_jax.main --config=configs/factors.py --workdir=runs/factors        # all analytic
  python -m diffgen_jax.main --config=configs/factors.py:granularity --workdir=runs/gran  # one sweep
  python -m diffgen_jax.main --config=configs/factors.py:fashion,guidance --workdir=runs/fg
  python -m diffgen_jax.main --config=configs/factors.py:trained --config.run_dir=runs/quickstart \
      --workdir=runs/factors_trained       # needs the run's data config (here: subset_size=256)

The variant is a comma-separated list: sweep names (delta, granularity, guidance, receptive_field,
gradient_score, trained) select sweeps (none named: every analytic sweep); `local` shrinks
everything to run on 2 CPU cores in a couple of minutes; `fashion` switches to 28x28 Fashion-MNIST
(or use --config.data.name=fashion_mnist and 28x28 crop sizes).
"""

import ml_collections

from diffgen_jax import defaults

SWEEPS = ("delta", "granularity", "guidance", "receptive_field", "gradient_score", "trained")
ANALYTIC = SWEEPS[:-1]
MODIFIERS = ("local", "fashion")


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, sweeps=SWEEPS, modifiers=MODIFIERS)
  local, fashion = "local" in chosen["modifiers"], "fashion" in chosen["modifiers"]

  config = ml_collections.ConfigDict()
  config.job = "factors"
  config.sweeps = chosen["sweeps"] or ANALYTIC
  config.seed = 0  # k-means seeding and the optional feature classifier
  config.data = defaults.data_config("fashion_mnist" if fashion else "digits")
  config.num_images = 512  # fixed evaluation images per split (a seeded subset of each split)
  config.subset_seed = 0  # which images: data.seeded_rows (the evaluate job's draw)
  config.num_sigmas = 24  # log grid in [0.002, 80] (edm.gap_sigma_grid); 64 = the paper's grid
  config.sigmas = ()  # explicit grid instead
  config.noise_seed = 0  # train images; validation uses noise_seed + 1
  config.batch_size = 256
  config.chunk_size = 2048  # training points per streaming step of the optimal denoiser
  config.make_plots = True
  # The toy model's model error of y_delta in every sweep but `delta` (pixel values in [-1, 1];
  # with delta = 0, y* recalls noisy training images exactly at small sigma and G is infinite).
  config.model_error = 0.3

  config.delta = ml_collections.ConfigDict({"deltas": (0.15, 0.2, 0.3, 0.4, 0.5, 0.7)})
  config.granularity = ml_collections.ConfigDict({
      "ks": (2, 5, 10, 20, 50, 100, 200),  # k-means clusters (0 = unconditional)
      "deltas": (0.3,),  # y_delta per condition (0.0 adds y*)
      "include_classes": True,  # also condition on the true classes
      "features": "pixels",  # "pixels" | "classifier" (a SmallCNN's penultimate layer)
      "classifier_params": "",  # saved classifier (features.save_params); "" trains one
      "classifier_steps": 1000,
  })
  config.guidance = ml_collections.ConfigDict({
      "ws": (0.0, 0.5, 1.0, 2.0, 3.0),
      "styles": ("cfg", "autoguidance"),  # cfg uses model_error for both models
      "delta_pos": 0.3,  # autoguidance: the positive (better) model
      "delta_neg": 0.45,  # ... and the negative (more error-prone) one
  })
  config.receptive_field = ml_collections.ConfigDict({
      "crop_sizes": (4, 5, 6, 7, 8),  # H/2 <= s <= H; s = H is the unwrapped denoiser
      "deltas": (0.3,),
  })
  config.gradient_score = ml_collections.ConfigDict({
      "deltas": (0.0, 0.3),  # 0.0 = y*
      "num_images": 4,  # per split
      "num_sigmas": 10,  # log grid in [0.002, 80]
  })
  config.run_dir = ""  # the `trained` sweep: a train job's workdir with this data config
  # ... or a hook's network (run_dir ''): model.denoiser=MODULE:FUNCTION over the files under
  # model.checkpoint (trained.snapshot indexes them), measured on config.data
  config.model = defaults.hook_model_config()
  config.trained = ml_collections.ConfigDict({
      "ws": (0.0, 0.5, 1.0, 2.0),
      "styles": ("cfg", "autoguidance"),  # cfg needs a conditional run (null label num_classes)
      "snapshot": -1,  # the snapshot measured (index into the run's snapshots; -1 = last)
      "negative_snapshot": 0,  # autoguidance's negative: an earlier snapshot (0 = the first)
      "crop_sizes": (),  # () = every size in [H/2, H] the network accepts
      "gradient_images": 2,  # per split
      # Sample-level gap of each guided denoiser: G_FD of this many Heun samples (0 = off).
      "sample_gap_samples": 256,
      "sample_gap_steps": 18,
      # cfg needs a run trained with training.label_dropout > 0 (else its network never learned
      # the null label); True measures it anyway, for those who know what the numbers mean.
      "allow_cfg_without_label_dropout": False,
  })

  if fashion:
    config.receptive_field.crop_sizes = (14, 18, 22, 28)
    config.num_images = 1024
  if local:
    config.num_images = 256
    config.num_sigmas = 24
    config.delta.deltas = (0.15, 0.2, 0.3, 0.5)
    config.granularity.ks = (2, 5, 10, 20, 50)
    config.guidance.ws = (0.0, 1.0, 2.0)
    config.gradient_score.num_images = 2
    config.gradient_score.num_sigmas = 6
    config.trained.ws = (0.0, 1.0, 2.0)
    if "trained" in chosen["sweeps"]:
      config.num_images = 128
    if fashion:
      config.data.subset_size = 4096
      config.num_images = 256
      config.granularity.ks = (2, 10, 50)
      config.receptive_field.crop_sizes = (14, 20, 28)
      config.gradient_score.deltas = (0.3,)
      config.gradient_score.num_images = 1
      config.gradient_score.num_sigmas = 3
  return config
