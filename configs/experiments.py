"""The paper's findings as config sweeps, one variant per finding: `get_config("<finding>[,<mode>]")`.

Each finding is a small set of named job runs (train / evaluate / factors / toy2d configs, the
same configs `python -m diffgen_jax.main` takes), run in order by `experiments/<finding>.py`
(`experiments/common.py` runs or resumes each under RUNS_ROOT/<run name> and gathers their
results.json into experiments/results/<finding>/):

    python experiments/training_time.py                                   # local (the default)
    python experiments/training_time.py --config=configs/experiments.py:training_time,paper \
        --config.data_dir=/path/to/tfds                                   # the paper's scale
    python experiments/training_time.py --config.runs.unet.training.total_images=320000  # override

Findings (FINDINGS): toy2d, training_time, model_size, dataset_size, granularity, guidance,
receptive_field, trajectory_overlap, sample_gap, gradient_score, disjoint_subsets,
memorization_time (the last two: U-Nets on the disjoint training subsets S1, S2 of
`data.subset_side`, shared by name `unet_n<N>_s<side>`; settings of their own measurements in
`config.diagnostics`), analytic_ladder (the trained U-Net and DiT against every rung of the
analytic ladder, job `ladder`), paper_regime (28x28 Fashion-MNIST, 1,024 images, the 1.23M
U-Net, ~320k images: the paper's regime on a CPU). Modes (MODES):

  local  Real offline data on a 2-core CPU, each finding <= 30 minutes (estimates in
         experiments/README.md, from the measured ~700 img/s of the tiny U-Net at 8x8). Everything
         runs on scikit-learn's 8x8 digits (a 256-image training subset, as configs/quickstart.py,
         which overfits within the run); U-Net = DDPM++ with 32 channels (ddpmpp-tiny's
         architecture), DiT = 4 blocks, hidden 64, patch 2. Runs are SHARED between findings by name
         (same name = same config, e.g. `unet` serves training_time, trajectory_overlap,
         sample_gap and the trained factor sweeps), so a run is trained once per RUNS_ROOT.
  paper  The paper's scale. U-Net: EDM's DDPM++ on CIFAR-10 at EDM's settings (batch 512, 200M
         images, lr 1e-3 after a 10M-image warm-up, EMA half-life 500k images, dropout 0.13,
         x-flip, class-conditional with label dropout 0.1 so one network serves classifier-free
         guidance). Sizes: EDM2 img64 XS..XL on ImageNet-64 with the EDM2 loss (learned
         log-variance, P_mean -0.8, P_std 1.6), power-function EMA, inverse-sqrt lr (ref_lr 1e-2,
         t_ref 70k batches x 2048 images), batch 2048; DiT-{S,B,L,XL}/4 on ImageNet-64 pixels
         (256 tokens, as DiT's /2 models on 32x32 latents; DiT's lr 1e-4, batch 256, EMA 0.9999
         per step). Evaluation at the paper's protocol: 8192 images per split, the 64-sigma grid.
         DATA: the tfds datasets `cifar10` and `downsampled_imagenet/64x64` must be prepared
         (array_record) in a tfds data_dir on a connected machine and passed as
         --config.data_dir (nothing is downloaded). COMPUTE (from published numbers, rough):
           DDPM++ CIFAR-10, 200M images: ~2 days on 8 V100 (EDM) = ~400 V100-hours per run;
           EDM2 img64 S/M/L/XL (1-2 G images at batch 2048): ~10^3-10^4 A100-hours per run;
           DiT at 256 tokens: DiT-XL/2 400k steps x 256 ~ 1 day on a TPU v3-256 pod, DiT-S ~1/20.
         Each finding's docstring entry below sums its runs.
  smoke  A few training steps of tiny networks on 64 digits, 8 evaluation images, 4 sigmas: the
         end-to-end check of tests/test_experiments.py (seconds per run; the results mean nothing).

Placeholders: a string value "@run:NAME[/path]" in a run's config is replaced by that run's
workdir (joined with path) when the run starts; NAME runs first (e.g. the k-means pseudo-labels
of the factors run feed the granularity training runs, a training run feeds the `trained` sweep).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from diffgen_jax import defaults, models

# finding -> (what it shows, its runs in order, paper compute). Runs named here are built by _RUNS.
FINDINGS = ("toy2d", "training_time", "model_size", "dataset_size", "granularity", "guidance",
            "receptive_field", "trajectory_overlap", "sample_gap", "gradient_score",
            "disjoint_subsets", "memorization_time", "analytic_ladder", "paper_regime")
MODES = ("local", "paper", "smoke")

# Sweep values per mode: (local, paper, smoke).
_WIDTHS = {"ddpmpp": ((16, 32, 64), ("edm2-img64-xs", "edm2-img64-s", "edm2-img64-m", "edm2-img64-l",
                                     "edm2-img64-xl"), (8,)),  # (smoke: U-Net compiles are slow)
           "dit": ((32, 64, 128), ("DiT-S/4", "DiT-B/4", "DiT-L/4", "DiT-XL/4"), (8, 16))}
_SUBSETS = ((128, 256, 512, 1024), (2500, 5000, 10000, 25000, 50000), (32, 64))
# (smoke: k = 10 gives the pseudo-label run the class run's label count, so the test's compilation
# cache serves it)
_KS = ((2, 10, 50), (2, 10, 100, 500), (10,))
# (N, sides) of the disjoint training subsets S1, S2 (2N <= the training split: digits 1438,
# CIFAR-10 50k) per finding; runs are shared between the two findings by name. Local is cut to
# what 2 cores shared by seven engineers finish in about an hour: both sides at N = 16 and 256 for
# the reproducibility pairs, and one side more at N = 8 and 32 for the time scales (4 points at 3
# sizes).
_DISJOINT = ((((16, (1, 2)), (256, (1, 2)))),
             ((1000, (1, 2)), (5000, (1, 2)), (25000, (1, 2))),
             ((16, (1, 2)),))
_MEMORIZATION = (((8, (1,)), (16, (1, 2)), (32, (1,))),
                 ((1000, (1, 2)), (2000, (1, 2)), (4000, (1, 2)), (8000, (1, 2))),
                 ((16, (1, 2)),))

PAPER_COMPUTE = {
    "toy2d": "CPU minutes (analytic)",
    "training_time": "DDPM++ CIFAR-10 (~400 V100-h) + DiT-B/2 on CIFAR-10 at 200M images (~300 V100-h)",
    "model_size": "EDM2 img64 XS..XL + DiT S..XL/4 (~2-4 x 10^4 A100-h in all)",
    "dataset_size": "5 DDPM++ CIFAR-10 runs (~2,000 V100-h; the small subsets converge earlier)",
    "granularity": "6 DDPM++ CIFAR-10 runs (none, classes, 4 k-means k; ~2,400 V100-h) + factors (GPU-h)",
    "guidance": "the training_time U-Net + the factors job (a few GPU-h)",
    "receptive_field": "the training_time U-Net and DiT + the factors job (a few GPU-h)",
    "trajectory_overlap": "the training_time runs (their evaluate job's samples section)",
    "sample_gap": "the training_time runs (their evaluate job's samples section)",
    "gradient_score": "the training_time U-Net and DiT + the factors job (a few GPU-h)",
    "disjoint_subsets": "6 DDPM++ CIFAR-10 runs (N = 1k/5k/25k per side, 2 sides) at 100M images "
                        "(~200 V100-h each, ~1,200 V100-h)",
    "memorization_time": "8 DDPM++ CIFAR-10 runs (N = 1k..8k, 2 sides) at 100M images with dense "
                         "snapshots (~1,600 V100-h); shares the 1k runs with disjoint_subsets",
    "analytic_ladder": "the training_time U-Net and DiT + the ladder job (ELS at CIFAR shape: GPU-h)",
    "paper_regime": "DDPM++ on CIFAR-10 subsets (the paper's own runs); here 28x28 Fashion-MNIST "
                    "(~2-2.5 h on 2 CPU cores)",
}


def _parse(variant):
  chosen = defaults.parse_variant(variant, finding=FINDINGS, mode=MODES)
  findings, modes = chosen["finding"], chosen["mode"]
  if len(findings) != 1 or len(modes) > 1:
    raise ValueError(f"variant {variant!r}: use '<finding>[,<mode>]' with one finding of {FINDINGS} "
                     f"and at most one mode of {MODES} (default local)")
  return findings[0], (modes[0] if modes else "local")


# ------------------------------------------------------------------------------------------------
# Training runs


def _evaluation(config, mode: str, samples: bool) -> None:
  e = config.evaluation
  if mode == "smoke":
    e.num_images, e.num_sigmas, e.batch_size = 8, 4, 8
    e.at_sigmas = (0.5, 2.0)
    e.samples.update(dict(num_samples=8, num_steps=3, feature="pixels", probe_size=4, grid_size=4,
                          num_train_subsets=2))
  elif mode == "local":
    e.num_images, e.num_sigmas, e.batch_size = 128, 24, 128
    e.samples.update(dict(num_samples=256, num_steps=18, classifier_steps=300, probe_size=64,
                          grid_size=32, early_stop_every=1))
  else:  # paper: the paper's 8192 images per split and 64 sigmas; 10k samples per snapshot
    e.num_images, e.num_sigmas, e.batch_size = 8192, 64, 512
    e.samples.update(dict(num_samples=10000, num_steps=18, classifier_steps=20000,
                          probe_size=512, early_stop_every=1))
  e.samples.enabled = samples


def _unet(mode: str, width=None, subset=None, labels="class", pseudo="", samples=False):
  """The U-Net runs: DDPM++ (local, smoke, paper CIFAR-10) or an EDM2 preset (paper sizes)."""
  if mode == "paper" and isinstance(width, str):  # EDM2 on ImageNet-64 (model size sweep)
    c = defaults.train_config("downsampled_imagenet/64x64", "edm2")
    models.apply_preset(c.model, width)
    c.model.update(dict(img_resolution=64, img_channels=3, num_classes=1000,
                        dropout=0.0 if width.endswith(("xs", "-s")) else 0.1))
    c.training.update(dict(batch_size=2048, total_images=1024 << 20, lr=1e-2, lr_schedule="edm2",
                           lr_ref_images=70_000 * 2048, warmup_images=10_000_000, loss="edm2",
                           p_mean=-0.8, p_std=1.6))
    c.training.ema.kind = "power"
    c.training.ema.sigma_rels = (0.05, 0.10)
    c.checkpoint.update(dict(state_every_images=8 << 20, snapshot_every_images=64 << 20))
    c.sampling.num_steps = 32
  elif mode == "paper":  # EDM's DDPM++ on CIFAR-10
    c = defaults.train_config("cifar10", "ddpmpp")
    models.apply_preset(c.model, "ddpmpp-cifar10")
    c.model.update(dict(img_resolution=32, img_channels=3, num_classes=10, dropout=0.13))
    c.data.x_flip = True
    c.training.update(dict(batch_size=512, total_images=200_000_000, lr=1e-3,
                           warmup_images=10_000_000, label_dropout=0.1))
    c.training.ema.halflife_images = 500_000
    c.checkpoint.update(dict(state_every_images=5_000_000, snapshot_every_images=10_000_000))
  else:
    c = defaults.train_config("digits", "ddpmpp")
    c.model.update(dict(preset="", img_resolution=8, img_channels=1, num_classes=10, dropout=0.0,
                        model_channels=width or (32 if mode == "local" else 8),
                        channel_mult=(1, 2, 2) if mode == "local" else (1,), num_blocks=1,
                        attn_resolutions=()))
    _small_training(c, mode)
  if subset:
    c.data.subset_size = subset
  c.data.labels = labels
  c.data.pseudo_labels = pseudo
  _evaluation(c, mode, samples)
  return c


def _dit(mode: str, width=None, samples=False):
  if mode == "paper":
    preset = width if isinstance(width, str) else "DiT-B/2"
    if isinstance(width, str):  # DiT sizes on ImageNet-64 pixels, patch 4: 256 tokens
      c = defaults.train_config("downsampled_imagenet/64x64", "dit")
      c.model.update(dict(img_resolution=64, img_channels=3, num_classes=1000))
      c.training.update(dict(total_images=400_000 * 256))
    else:  # the training-time DiT next to the CIFAR-10 U-Net: DiT-B/2 on 32x32x3 (256 tokens)
      c = defaults.train_config("cifar10", "dit")
      c.model.update(dict(img_resolution=32, img_channels=3, num_classes=10))
      c.data.x_flip = True
      c.training.update(dict(total_images=200_000_000))
    models.apply_preset(c.model, preset)
    c.model.dropout = 0.0
    # DiT's recipe: AdamW-like constant lr 1e-4 (no warm-up), batch 256, EMA 0.9999 per step
    # (half-life ln 0.5 / ln 0.9999 = 6931 steps x 256 images).
    c.training.update(dict(batch_size=256, lr=1e-4, warmup_images=0, label_dropout=0.1))
    c.training.ema.halflife_images = 6931 * 256
    c.checkpoint.update(dict(state_every_images=5_000_000, snapshot_every_images=10_000_000))
  else:
    c = defaults.train_config("digits", "dit")
    c.model.update(dict(preset="", img_resolution=8, img_channels=1, num_classes=10, dropout=0.0,
                        patch_size=2, hidden_size=width or (64 if mode == "local" else 16),
                        depth=4 if mode == "local" else 1, num_heads=4 if mode == "local" else 2))
    _small_training(c, mode)
  _evaluation(c, mode, samples)
  return c


def _diagnostic_unet(mode: str, subset: int, side: int):
  """A U-Net on one side (1 or 2) of the disjoint training subsets of size `subset`.

  local: a smaller U-Net than the other local findings' (16 channels, mult (1, 2): the CPU is
  shared) on digits for 25.6k images (400 steps of 64, 10 snapshots), with a short warm-up (40
  steps) and EMA half-life (25 steps) so that the snapshots resolve time scales of a few thousand
  images; class conditional; the evaluate job on 64 images per split x 16 sigmas, without its
  sample section (the findings draw their own seed-paired samples from every snapshot).
  paper: DDPM++ on CIFAR-10 for 100M images, snapshots every 5M.
  """
  c = _unet(mode, subset=subset)
  c.data.subset_side = side
  if mode == "local":
    b = 64
    c.model.update(dict(model_channels=16, channel_mult=(1, 2)))
    c.training.update(dict(total_images=b * 400, warmup_images=b * 40))
    c.training.ema.halflife_images = b * 25
    c.checkpoint.update(dict(state_every_images=b * 200, snapshot_every_images=b * 40))
    c.evaluation.update(dict(num_images=64, num_sigmas=16, batch_size=64))
    # Fewer images than classes: y* is undefined for the classes the subset lacks, and neither
    # finding reads the evaluate job's y* (disjoint_subsets builds its own on each side).
    c.evaluation.optimal = subset >= c.model.num_classes
  elif mode == "paper":
    c.training.total_images = 100_000_000
    c.checkpoint.snapshot_every_images = 5_000_000
  c.evaluation.samples.enabled = False
  return c


def _fashion_unet():
  """A DDPM++ U-Net on a small Fashion-MNIST subset at 28x28: the analytic ladder's second data set
  (local mode only), sized for a 2-core CPU: 128 training images, 600 steps of batch 32."""
  c = defaults.train_config("fashion_mnist", "ddpmpp")
  c.model.update(dict(preset="", img_resolution=28, img_channels=1, num_classes=10, dropout=0.0,
                      model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=()))
  c.data.subset_size = 128
  b, steps = 32, 600
  c.training.update(dict(batch_size=b, total_images=b * steps, lr=2e-3, warmup_images=b * 50,
                         label_dropout=0.1))
  c.training.ema.halflife_images = b * 50
  c.checkpoint.update(dict(state_every_images=b * 300, snapshot_every_images=b * 150))
  c.sampling.grid_size = 16
  c.log_every_steps = 50
  c.monitor.every_images = 0
  _evaluation(c, "local", samples=False)
  c.evaluation.update(dict(num_images=64, num_sigmas=16, batch_size=64))  # y* at 28x28
  return c


def _regime_unet(mode: str):
  """The paper's regime at a size a 2-core CPU holds (issue 26): 28x28 Fashion-MNIST, 1,024
  training images, the quickstart's 1.23M-parameter U-Net (ddpmpp-tiny), 320k images seen (5,000
  steps of batch 64, ~2-2.5 h here), 10 snapshots, the sample-level evaluation on."""
  c = defaults.train_config("fashion_mnist", "ddpmpp")
  models.apply_preset(c.model, "ddpmpp-tiny")
  c.model.update(dict(img_resolution=28, img_channels=1, num_classes=10, dropout=0.1))
  c.data.subset_size = 1024 if mode != "smoke" else 64
  b, steps = (64, 5000) if mode != "smoke" else (16, 6)
  c.training.update(dict(batch_size=b, total_images=b * steps, lr=2e-3,
                         warmup_images=b * (200 if mode != "smoke" else 0), label_dropout=0.1))
  c.training.ema.halflife_images = b * (100 if mode != "smoke" else 4)
  c.checkpoint.update(dict(state_every_images=b * (500 if mode != "smoke" else 6),
                           snapshot_every_images=b * (500 if mode != "smoke" else 3)))
  c.sampling.grid_size = 64 if mode != "smoke" else 0
  c.log_every_steps = 100
  c.monitor.every_images = 0
  _evaluation(c, "smoke" if mode == "smoke" else "local", samples=True)
  if mode != "smoke":
    c.evaluation.update(dict(num_images=256, num_sigmas=32, batch_size=128))
    c.evaluation.samples.update(dict(num_samples=512, classifier_steps=500, probe_size=64))
  return c


def _small_training(c, mode: str) -> None:
  """The local (as configs/quickstart.py) and smoke training settings on 8x8 digits."""
  c.data.subset_size = 256 if mode == "local" else 64
  b = 64 if mode == "local" else 16
  steps, snap_every = (3000, 300) if mode == "local" else (6, 3)
  # (smoke: no warm-up and an EMA half-life of 4 batches, as the tiny runs of tests/test_training.py,
  # so the U-Net's train step is one program the tests' compilation cache serves to both)
  c.training.update(dict(batch_size=b, total_images=b * steps, lr=2e-3,
                         warmup_images=b * (200 if mode == "local" else 0), label_dropout=0.1))
  c.training.ema.halflife_images = b * (100 if mode == "local" else 4)
  c.checkpoint.update(dict(state_every_images=b * (1000 if mode == "local" else 6),
                           snapshot_every_images=b * snap_every))
  c.sampling.grid_size = 64 if mode == "local" else 0
  c.log_every_steps = 100 if mode == "local" else 3


# ------------------------------------------------------------------------------------------------
# Factors and toy runs


def _sibling(name: str):
  """configs/<name>.py as a module (config files are loaded by path, not as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_experiments_{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _factors(mode: str, sweeps, run_dir: str = "", data_from=None):
  """A factors job on the data of the training runs (`data_from`: a train config to copy data from)."""
  variant = ",".join(tuple(sweeps) + (("local",) if mode in ("local", "smoke") else ()))
  c = _sibling("factors").get_config(variant)
  base = data_from or _unet(mode)
  c.data = ml_collections.ConfigDict(base.data.to_dict())
  c.data.labels, c.data.pseudo_labels = "class", ""
  c.run_dir = run_dir
  if mode == "paper":
    c.num_images, c.num_sigmas, c.batch_size = 8192, 64, 512
    c.granularity.ks = (2, 5, 10, 20, 50, 100, 200, 300, 400, 500)  # paper.md section 6
    c.granularity.features = "classifier"
    c.receptive_field.crop_sizes = (16, 20, 24, 28, 32)
    c.gradient_score.num_images, c.gradient_score.num_sigmas = 16, 16
    c.trained.gradient_images = 8
  elif mode == "local":
    c.granularity.ks = _KS[0]
    c.num_images = 128
  else:
    c.num_images, c.num_sigmas, c.batch_size = 8, 4, 8
    c.delta.deltas = (0.2, 0.5)
    c.granularity.ks = _KS[2]
    c.guidance.ws = (0.0, 1.0)
    c.receptive_field.crop_sizes = (4, 8)
    # (smoke: one sigma; the score's vmapped VJPs run slowly at the tests' -O0 (tests/conftest.py),
    # and the numbers are tests/test_gradient_score.py's)
    c.gradient_score.update(dict(num_images=1, num_sigmas=1, deltas=(0.3,)))
    c.trained.update(dict(ws=(0.0, 1.0), gradient_images=1, crop_sizes=(4, 8),
                          sample_gap_samples=16, sample_gap_steps=4))
  c.make_plots = True
  return c


def _toy2d(mode: str):
  # paper: the authors' exact realization of (a)-(e) (configs/toy2d.py:paper)
  c = _sibling("toy2d").get_config("paper" if mode == "paper" else None)
  if mode == "smoke":
    c.draws = 8
    c.quadrature.spacing = 0.5  # 812 nodes (the default 0.1: 20,108)
    c.sigma_grid_steps = 16
    c.flow_field.grid_size = 11
    c.relative_error.update(dict(num_angles=16, draws=8))
    c.gap_vs_delta.deltas = (2.0, 1.2)
    c.gap_vs_density.num_points = (16, 20)
    c.guidance.weights = (0.0, 1.0)
    c.trajectories.update(dict(num_samples=20, num_plotted=5, num_steps=16))
    c.frechet.update(dict(deltas=(0.0, 1.0), num_samples=20, num_steps=16))
  return c


def _ladder(mode: str, run_dir: str, fashion: bool = False):
  """The ladder job (configs/ladder.py) on a training run's last snapshot (fashion: the 28x28 run,
  with fewer states and sizes, since ELS costs (28 x 28)^2 patch pairs per training image)."""
  c = _sibling("ladder").get_config("local" if mode == "local" else "smoke" if mode == "smoke"
                                    else None)
  c.run_dir = run_dir
  if fashion:
    c.num_images, c.num_sigmas, c.batch_size = 32, 8, 32
    c.trajectory.num_samples = 16
    c.calibration.sizes = (1, 3, 5, 7, 9, 13)
    c.gaussian_ranks = (8,)  # below its per-class covariance rank (~13 images a class)
  if mode == "paper":  # CIFAR-10 32x32x3: windows up to the whole image (k >= 2H - 1 = 63 is y*)
    c.num_images, c.num_sigmas, c.batch_size = 1024, 24, 128
    c.trajectory.num_samples = 256
    c.calibration.sizes = (3, 5, 7, 9, 11, 15, 19, 23, 31)
    c.gaussian_ranks = (64, 256)
  return c


# ------------------------------------------------------------------------------------------------
# The findings


def _runs(finding: str, mode: str):
  """[(run name, job config, sweep metadata {group, value} or None)] in run order."""
  m = {"local": 0, "paper": 1, "smoke": 2}[mode]
  unet = lambda: _unet(mode, samples=True)
  dit = lambda: _dit(mode, samples=True)
  if finding == "toy2d":
    return [("toy2d", _toy2d(mode), None)]
  if finding == "paper_regime":  # (smoke: the plumbing on the shared smoke U-Net and its sweep)
    if mode == "smoke":
      return [("unet", unet(), {"group": "U-Net", "value": 0}),
              ("factors_trained_unet", _factors(mode, ("trained",), "@run:unet"), None)]
    regime = _regime_unet(mode)
    # Guidance (CFG: the run dropped labels 10% of the time; autoguidance: its first snapshot as
    # the negative) and every crop size the U-Net accepts, on the last snapshot, with each guided
    # denoiser's sample gap.
    factors = _factors(mode, ("trained",), "@run:regime_unet", data_from=regime)
    return [("regime_unet", regime, {"group": "U-Net (28x28, 1,024 images)", "value": 0}),
            ("factors_regime", factors, None)]
  if finding in ("training_time", "trajectory_overlap", "sample_gap"):
    return [("unet", unet(), {"group": "U-Net", "value": 0}),
            ("dit", dit(), {"group": "DiT", "value": 0})]
  if finding == "model_size":
    runs = []
    for family, build in (("ddpmpp", _unet), ("dit", _dit)):
      default = {"ddpmpp": 32, "dit": 64}[family] if mode == "local" else \
          {"ddpmpp": 8, "dit": 16}[family]
      for w in _WIDTHS[family][m]:
        shared = mode != "paper" and w == default  # the training_time run itself
        short = "unet" if family == "ddpmpp" else "dit"
        name = short if shared else (f"{short}_w{w}" if isinstance(w, int) else
                                     w.replace("/", "_").replace("-", "_").lower())
        cfg = (unet() if family == "ddpmpp" else dit()) if shared else build(mode, width=w)
        runs.append((name, cfg, {"group": "U-Net" if family == "ddpmpp" else "DiT", "value": w}))
    return runs
  if finding == "dataset_size":
    runs = []
    for n in _SUBSETS[m]:
      shared = (mode == "local" and n == 256) or (mode == "smoke" and n == 64)
      runs.append(("unet" if shared else f"unet_n{n}", unet() if shared else _unet(mode, subset=n),
                   {"group": "U-Net", "value": n}))
    return runs
  if finding == "granularity":
    f = _factors(mode, ("granularity",))
    runs = [("factors_granularity", f, None)]
    if mode != "smoke":  # (smoke: the classes and one k-means run only, to keep the test short)
      runs.append(("unet_uncond", _unet(mode, labels="none"), {"group": "none", "value": 1}))
    runs.append(("unet", unet(), {"group": "classes", "value": 10}))
    for k in _KS[m]:
      runs.append((f"unet_k{k}", _unet(mode, labels="pseudo",
                                       pseudo=f"@run:factors_granularity/pseudo_labels/k{k}.npz"),
                   {"group": "k-means", "value": k}))
    return runs
  if finding in ("guidance", "receptive_field", "gradient_score"):
    analytic = {"guidance": ("guidance",), "receptive_field": ("receptive_field",),
                "gradient_score": ("gradient_score",)}[finding]
    runs = [(f"factors_{finding}", _factors(mode, analytic), None), ("unet", unet(), None),
            ("factors_trained_unet", _factors(mode, ("trained",), "@run:unet"), None)]
    if finding != "guidance":  # the DiT's receptive field is global (attention)
      runs += [("dit", dit(), None),
               ("factors_trained_dit", _factors(mode, ("trained",), "@run:dit", dit()), None)]
      runs[-1][1].trained.styles = ("autoguidance",)
    return runs
  if finding in ("disjoint_subsets", "memorization_time"):
    sizes = (_DISJOINT if finding == "disjoint_subsets" else _MEMORIZATION)[m]
    return [(f"unet_n{n}_s{side}", _diagnostic_unet(mode, n, side),
             {"group": f"S{side}", "value": n}) for n, sides in sizes for side in sides]
  if finding == "analytic_ladder":
    return [("unet", unet(), None), ("dit", dit(), None),
            ("ladder_unet", _ladder(mode, "@run:unet"), None),
            ("ladder_dit", _ladder(mode, "@run:dit"), None)] + (
                [] if mode != "local" else  # (paper: the CIFAR-10 runs are the 32x32 case)
                [("fashion_unet", _fashion_unet(), None),
                 ("ladder_fashion_unet", _ladder(mode, "@run:fashion_unet", fashion=True), None)])
  raise ValueError(finding)


def _diagnostics(finding: str, mode: str) -> ml_collections.ConfigDict:
  """Settings of the two diagnostic findings' own measurements (their gather step)."""
  local, smoke = mode == "local", mode == "smoke"
  d = ml_collections.ConfigDict({
      # Seed-paired samples of every snapshot: the same noise and labels for every run.
      "num_samples": 8 if smoke else (128 if local else 10000),
      "num_steps": 3 if smoke else (12 if local else 18),
      "sample_seed": 0,
      "classifier_steps": 20 if smoke else (300 if local else 20000),  # feature-space classifier
      "copy_ratio": 1.0 / 3.0,  # Gu et al.
      "similarity_threshold": 0.9,  # seed-paired pixel cosine (centred at the training mean)
      "feature_similarity_threshold": 0.9,
      "num_resamples": 50 if smoke else 1000,  # bootstrap resamples (FD: num_resamples // 5)
      # Time-scale thresholds: copy fraction for tau_mem, FD target as a multiple of the FD
      # between held-out training images and the validation set (same sample size) for tau_gen,
      # peak G for tau_G.
      "tau_mem_threshold": 0.1,
      "tau_gen_fd_multiple": 2.0,
      "tau_gap_threshold": 1.0,
  })
  return d


def get_config(variant=None):
  finding, mode = _parse(variant)
  config = ml_collections.ConfigDict()
  config.finding = finding
  config.mode = mode
  config.runs_root = ""  # "" = runs/experiments/<mode> (shared by every finding of the mode)
  config.results_dir = ""  # "" = experiments/results/<finding> (local), .../<mode>/<finding> else
  config.data_dir = ""  # non-empty: replaces data.data_dir of every run (the paper's tfds dir)
  # A replicate: k > 0 adds k to every run's `seed` (initialization, batch order, dropout, sigma
  # and noise draws; k-means seeding in factors runs), keeping the data (subsets, evaluation
  # noise) fixed; its runs and results default to runs/experiments/<mode>_seed<k> and
  # <results_dir>/seed<k>, beside the seed-0 ones.
  config.seed = 0
  config.paper_compute = PAPER_COMPUTE[finding]
  config.runs = ml_collections.ConfigDict()
  config.sweep = ml_collections.ConfigDict()  # run name -> {group, value} for swept runs
  order = []
  for name, run_config, meta in _runs(finding, mode):
    config.runs[name] = run_config
    order.append(name)
    if meta is not None:
      config.sweep[name] = ml_collections.ConfigDict(meta)
  config.order = tuple(order)
  if finding in ("disjoint_subsets", "memorization_time"):
    config.diagnostics = _diagnostics(finding, mode)
  return config
