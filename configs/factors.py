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
(or use --config.data.name=fashion_mnist and 28x28 crop sizes). Fields: `defaults.FACTORS`.
"""

from diffgen_jax import defaults

SWEEPS, ANALYTIC = defaults.FACTOR_SWEEPS, defaults.ANALYTIC_SWEEPS
MODIFIERS = ("local", "fashion")


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, sweeps=SWEEPS, modifiers=MODIFIERS)
  local, fashion = "local" in chosen["modifiers"], "fashion" in chosen["modifiers"]

  config = defaults.factors_config("fashion_mnist" if fashion else "digits")
  config.sweeps = chosen["sweeps"] or ANALYTIC
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
