"""NVIDIA's published EDM / EDM2 networks under the paper's protocol: `get_config("<variant>")`.

    python -m diffgen_jax.main --config=configs/nvidia.py:edm2-img64 \
        --config.model.checkpoint=/data/edm2-img64-s-raw \
        --config.data.name=edm_zip:/data/img64-train.zip,/data/img64-val.zip --workdir=runs/edm2-s

The evaluate job converts every network at `model.checkpoint` (a .pkl, a state_dict.npz +
config.json directory, or a run directory of snapshots; `model.checkpoint_ema` keeps one EDM2 EMA
profile) into WORKDIR/checkpoints/snapshots/<kimg> (nothing from the pickles is executed), then
measures each snapshot in order of images seen, as for a run trained here. The architecture, class
count and sigma_data come from the files; the model fields below are placeholders.

Variants:
  edm2-img64   the paper's protocol for EDM2 ImageNet-64 raw snapshots (paper.md section 6):
               64 log-spaced sigmas in [0.002, 80], 8,192 images per split with one fixed noise
               draw per image, the class labels, EMA profile 0.100, samples with the 32-step Heun
               sampler. Data: EDM's dataset zips of ImageNet-64 train / validation with labels.
  edm-cifar10  the same protocol for EDM's CIFAR-10 DDPM++ networks (18-step Heun, as EDM).
  local        a CPU check of the pipeline: the fixture network in tests/fixtures/nvidia_networks
               (16x16, 10 classes) on an EDM zip given in data.name; 8 images, 4 sigmas, no samples.

The exact optimal denoiser y* and each network's distance to it are on in every variant: y* streams
the training split from the zip, split over every device of every process (each process reads
only its share; no copy of the set in one place). `--config.evaluation.optimal=False` turns it off
(then the gap needs only the networks). The sample-level references (FD statistics, the
classifier's training images) read a seeded subset of evaluation.samples.reference_images = 50,000
images per split, not ImageNet's 1.28M. benchmarks/imagenet64_e2e.py runs edm2-img64 end to end
on a synthetic ImageNet-64-shaped zip pair and a tiny EDM2 network, with peak memory per process.
"""

from diffgen_jax import defaults, models

VARIANTS = ("edm2-img64", "edm-cifar10", "local")


def get_config(variant: str = "edm2-img64"):
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
  config = defaults.train_config(dataset="digits", family="edm2")
  config.job = "evaluate"
  config.model.checkpoint = ""
  config.model.checkpoint_ema = "0.100" if variant == "edm2-img64" else ""
  config.data.labels = "class"
  e = config.evaluation
  e.optimal = True
  e.model_vs_optimal = True
  e.num_images = 8192
  e.num_sigmas = 64
  e.noise_seed = 0
  e.batch_size = 256
  e.samples.num_steps = 32
  e.samples.reference_images = 50_000  # a seeded subset per split (ImageNet's train has 1.28M)
  if variant == "edm2-img64":
    config.data.name = "edm_zip:/data/imagenet-64x64-train.zip,/data/imagenet-64x64-val.zip"
    config.training.loss = "edm2"
  elif variant == "edm-cifar10":
    config.data.name = "edm_zip:/data/cifar10-32x32-train.zip,/data/cifar10-32x32-test.zip"
    config.model = models.default_model_config("ddpmpp")
    config.model.checkpoint = ""
    e.samples.num_steps = 18
  else:  # local
    config.data.name = "edm_zip:train.zip,val.zip"
    e.num_images = 8
    e.num_sigmas = 4
    e.batch_size = 8
    e.samples.enabled = False
  return config
