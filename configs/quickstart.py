"""The main job: a small DDPM++ U-Net on scikit-learn's bundled 8x8 digits, on a laptop CPU.

A 256-image training subset is small enough that the network starts to memorize it within the
run, so the gap between validation and training denoising error opens up.

    python -m diffgen_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from diffgen_jax import defaults, models


def get_config(variant=None):
  defaults.parse_variant(variant)  # no variants: the one setting
  config = defaults.train_config(dataset="digits", family="ddpmpp")
  config.data.subset_size = 256
  models.apply_preset(config.model, "ddpmpp-tiny")  # its fields; an override of one is refused
  config.model.img_resolution = 8
  config.model.img_channels = 1
  config.model.num_classes = 10
  config.model.dropout = 0.0
  config.training.batch_size = 64
  config.training.total_images = 64 * 3000
  config.training.lr = 2e-3
  config.training.warmup_images = 64 * 200
  config.training.label_dropout = 0.1
  config.training.ema.halflife_images = 64 * 100
  config.checkpoint.state_every_images = 64 * 500
  config.checkpoint.snapshot_every_images = 64 * 600
  config.sampling.grid_size = 100
  config.evaluation.num_images = 128
  config.evaluation.samples.num_samples = 256
  config.evaluation.samples.classifier_steps = 300
  config.evaluation.samples.probe_size = 64
  config.monitor.every_images = 64 * 300  # G(sigma) at a few sigmas, 10 times during the run
  config.monitor.num_images = 128
  config.log_every_steps = 100
  return config
