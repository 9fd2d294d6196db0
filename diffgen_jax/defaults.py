"""Every field a job reads, declared once: its default, one line of help, and what it allows.

Each section is a dict of `Setting`s (config_checks.Setting: default, help, kind, range or choices);
the ConfigDicts are built from them (`build`), and `jobs.validate` checks a job's config against
the same declarations (`job_settings`, `config_checks.check_settings`). Rules between fields (e.g.
guidance.delta_neg > guidance.delta_pos) are in the job's validate_config. configs/*.py start from
these and override what their experiment changes, so that every field exists (and
`--config.x=y` overrides work) whatever the experiment; EDM's settings where EDM has one.
`python -m diffgen_jax.defaults [JOB]` prints the table of a job's fields.
"""

from __future__ import annotations

import sys
from typing import Dict

import ml_collections

from diffgen_jax import ema, models, samplers, toy2d, training
from diffgen_jax.config_checks import Setting as S, settings_of
from diffgen_jax.data import splits as data_splits
from diffgen_jax.evaluation.sweeps import GUIDANCE_STYLES
from diffgen_jax.optimal_patches import BOUNDARIES


def parse_variant(variant, **groups) -> dict:
  """The one way configs name variants: `configs/<file>.py:<token>[,<token>...]`.

  Each token belongs to one of the named groups (e.g. sweeps=(...), modes=(...)); order is free,
  "all" and empty tokens are ignored. Returns {group: tuple of its tokens, in the order given}.
  Raises ValueError naming the unknown or repeated tokens and every allowed value.
  """
  tokens = [t.strip() for t in str(variant or "").split(",")]
  tokens = [t for t in tokens if t and t != "all"]
  owner = {t: g for g, allowed in groups.items() for t in allowed}
  unknown = [t for t in tokens if t not in owner]
  repeated = sorted({t for t in tokens if tokens.count(t) > 1})
  if unknown or repeated:
    allowed = "; ".join(f"{g}: {tuple(a)}" for g, a in groups.items()) or "none (no variants)"
    raise ValueError((f"variant {variant!r}: unknown variant(s) {unknown}" if unknown else
                      f"variant {variant!r}: repeated {repeated}") + f"; allowed values: {allowed}")
  return {g: tuple(t for t in tokens if owner[t] == g) for g in groups}




# Ranges used often (as in checks.check_number): > 0, >= 0, numpy's legacy RandomState seeds.
POS = dict(low=0.0, low_open=True)
NONNEG = dict(low=0.0)
SEED32 = dict(low=0, high=2 ** 32 - 1)


def build(tree) -> ml_collections.ConfigDict:
  """The ConfigDict of a declaration tree: each Setting's default; a callable is a section built
  by its owner (e.g. the model config, `models`)."""
  return ml_collections.ConfigDict({
      k: v.default if isinstance(v, S) else build(v) if isinstance(v, dict) else v()
      for k, v in tree.items() if not (isinstance(v, S) and v.optional)})


# ------------------------------------------------------------------------------------------------
# Sections shared by the jobs

DATA = {
    "name": S("digits", "a built-in dataset, a tfds dataset prepared in data_dir, or "
              "'edm_zip:TRAIN.zip,VALIDATION.zip'"),
    "data_dir": S("", "'' = diffgen_jax.data.DEFAULT_DATA_DIR", none=True),
    "subset_size": S(0, "0 = the whole training split; else a nested, seeded subset", low=0),
    "subset_seed": S(0, "the seed of the training subset", low=0),
    "subset_side": S(1, "1 | 2: two disjoint nested subsets of subset_size (2 * size <= split)",
                     choices=data_splits.SUBSET_SIDES),
    "labels": S("class", "the labels: the classes, none, or pseudo-labels from a file",
                choices=data_splits.LABEL_MODES),
    "pseudo_labels": S("", "labels='pseudo': .npz with int arrays `train` and `validation`"),
    "x_flip": S(False, "random horizontal flips of the training images"),
}
MESH = {
    # data=-1: every device not used by the model axis; model > 1 shards parameters and optimizer.
    "data": S(-1, "devices along the data axis (-1: every device the model axis leaves)", low=-1),
    "model": S(1, "devices along the model axis (> 1 shards parameters and optimizer)", low=1),
}
SAMPLES = {
    "enabled": S(True, "measure the samples of every snapshot"),
    "num_samples": S(512, "samples per snapshot (deterministic Heun, fixed noise and labels)",
                     low=2),
    "num_steps": S(18, "Heun steps (noise levels of the Karras schedule)", low=1),
    "seed": S(0, "the samples' noise and the choice of the FD reference subsets", low=0),
    "feature": S("classifier", "the feature space of FD and copies (`features`)",
                 choices=("classifier", "pixels", "hook")),
    # feature="hook": Inception, DINOv2, SSCD... in any framework; copies are then also tested in
    # its space.
    "features": S("", "feature='hook': MODULE:FUNCTION, a factory f() -> features(images) -> "
                  "(B, F) (`hooks`)"),
    "classifier_steps": S(2000, "training steps of the SmallCNN when it must be trained", low=0),
    "classifier_path": S("", "'' = WORKDIR/evaluation/classifier.npz, trained once and cached"),
    "num_train_subsets": S(2, "disjoint training subsets for FD_train (averaged)", low=1),
    "early_stop_every": S(1, "early-stopped G_FD at every k-th sampling step (and the last)",
                          low=1),
    "overlap": S(True, "the trajectory overlap probe"),
    "nn_similarity": S(True, "the 1-NN cosine similarity probe"),
    "probe_size": S(128, "trajectories and training / validation images in the two probes",
                    low=1),
    "copy_ratio": S(1.0 / 3.0, "Gu et al.: a copy when d(1st NN) < ratio * d(2nd NN)",
                    low=0.0, high=1.0, low_open=True, high_open=True),
    "grid_size": S(32, "samples shown next to their nearest training images", low=0),
    "snapshots": S("all", "the snapshots whose samples are measured", choices=("all", "last")),
    "reference_images": S(50_000, "images featurized per split, a seeded subset (0 = all)",
                          low=0),
}


def hook_model_config() -> ml_collections.ConfigDict:
  """config.model of the jobs that measure a run's snapshot (ladder, export, factors' trained
  sweep): model.denoiser / model.checkpoint as in a run's model config (`models`), a hook's
  network instead of config.run_dir's: `MODULE:FUNCTION` called for each file under checkpoint
  (a file, or a directory of them in the natural order of their names; `jobs.common.hook_series`),
  measured on config.data."""
  fields = models.default_model_config("ddpmpp")
  return ml_collections.ConfigDict({"denoiser": fields.denoiser, "checkpoint": fields.checkpoint})


def _snapshot_source(job: str) -> dict:
  """The fields of the jobs that measure one snapshot of a run (or of a hook's network)."""
  return {
      "job": S(job, "the job"),
      "run_dir": S("", "a train job's workdir (required unless model.denoiser is set)"),
      "step": S(-1, "the snapshot measured: -1 = the last, else a snapshot step of the run",
                low=-1),
      "ema": S("first", "the snapshot's EMA set: 'first' or a set's name (`ema.pick`)"),
      "data_dir": S("", "'' = the run's data.data_dir"),
      # A hook's network instead of run_dir's (`hook_model_config`; step -1: the last file), its
      # image shape and classes those of config.data (read only with model.denoiser).
      "model": hook_model_config,
      "data": DATA,
  }


# ------------------------------------------------------------------------------------------------
# train (and evaluate, convert: a run's config)

TRAINING = {
    "batch_size": S(512, "images per step", low=1),
    "total_images": S(200_000_000, "images seen by the end of training", low=1),
    "lr": S(1e-3, "the learning rate (after the warm-up)", **POS),
    "lr_schedule": S("edm", "'edm': warm-up then constant; 'edm2': inverse square root decay",
                     choices=training.LR_SCHEDULES),
    "lr_ref_images": S(0, "EDM2's t_ref in images (ref_batches * batch_size)", kind=float,
                       **NONNEG),
    "warmup_images": S(10_000_000, "images of the linear learning-rate warm-up", kind=float,
                       **NONNEG),
    "adam_b1": S(0.9, "Adam's beta1", low=0.0, high=1.0, high_open=True),
    "adam_b2": S(0.999, "Adam's beta2", low=0.0, high=1.0, high_open=True),
    "adam_eps": S(1e-8, "Adam's epsilon", **POS),
    "grad_clip": S(0.0, "global gradient-norm clip (0 = off)", **NONNEG),
    "loss": S("edm", "'edm' | 'edm2' (learned log-variance; needs model.family='edm2')",
              choices=training.LOSSES),
    "p_mean": S(-1.2, "mean of the training log-sigma distribution"),
    "p_std": S(1.2, "standard deviation of the training log-sigma distribution", **POS),
    "sigma_data": S(0.5, "the data's standard deviation in the preconditioning", **POS),
    "label_dropout": S(0.0, "probability of the null label per training image (cfg)",
                       low=0.0, high=1.0, high_open=True),
    "compute_dtype": S("float32", "the activations' dtype", choices=("float32", "bfloat16")),
    "ema": {
        "kind": S("halflife", "'halflife' (EDM) | 'power' (EDM2 power-function profiles)",
                  choices=training.EMA_KINDS),
        "halflife_images": S(500_000, "the EMA's half-life in images", kind=float, **POS),
        "rampup_ratio": S(0.05, "half-life at most this fraction of images seen (0 = off)",
                          **NONNEG),
        # EDM2's power EMA: sigma_rel of gamma = 0 is sqrt(1/12) ~ 0.2887 (ema.std_to_exponent).
        "sigma_rels": S((0.05, 0.10), "kind='power': the profiles' relative standard deviations",
                        low=0.0, high=ema.MAX_SIGMA_REL, low_open=True, high_open=True),
    },
}
CHECKPOINT = {
    "state_every_images": S(5_000_000, "latest full state, for resume", kind=float, **POS),
    "snapshot_every_images": S(5_000_000, "EMA snapshots, kept for the analysis over training "
                               "time", kind=float, **POS),
    "keep_states": S(2, "full states kept", low=1),
}
EVALUATION = {
    "after_training": S(True, "the train job ends with the gap evaluation of its snapshots"),
    "num_images": S(8192, "fixed images per split (the paper: 8192)", low=1),
    "num_sigmas": S(64, "log grid in [0.002, 80] ...", low=1),
    "sigmas": S((), "... unless given explicitly", kind=float, **POS),
    "noise_seed": S(0, "the images' noise", low=0),
    "subset_seed": S(0, "which num_images of each split: a seeded uniform subset "
                     "(data.seeded_rows)", low=0),
    "batch_size": S(256, "images per compiled call", low=1),
    # The exact optimal denoiser y* of the whole training split (streamed from where the split
    # lives, split over every device of every process).
    "optimal": S(True, "measure y*'s errors and, with model_vs_optimal, the network's distance "
                 "to it"),
    "model_vs_optimal": S(True, "distance of the network's predictions to the optimal "
                          "denoiser's"),
    "ema": S("first", "the 'first' EMA set or 'all' of them", choices=("first", "all")),
    "at_sigmas": S((0.1, 0.5, 1.0, 2.0, 5.0), "G over training time at these sigmas", empty=True,
                   **POS),
    # The inference side: samples' Frechet-distance gap, copies, early stopping, trajectory probes.
    "samples": SAMPLES,
}
# While training: the denoising error of the first EMA set on fixed training / validation subsets
# (the evaluate job's images and noise) at a few sigmas around the gap's usual peak, so G(sigma)
# shows during the run (metrics.jsonl and TensorBoard).
MONITOR = {
    "every_images": S(1_000_000, "images between two monitor evaluations (0 = off)", kind=float,
                      **NONNEG),
    "num_images": S(256, "images of each split (the evaluation's seeded subsets: among them)",
                    low=1),
    "sigmas": S((0.1, 0.2, 0.5, 1.0, 2.0), "the sigmas monitored", **POS),
    "batch_size": S(256, "images per compiled call", low=1),
}
TRAIN = {
    "job": S("train", "the job"),
    "seed": S(0, "initialization, batch order, dropout, sigma and noise draws", low=0),
    "data": DATA,
    "model": lambda: models.default_model_config("ddpmpp"),
    "training": TRAINING,
    "checkpoint": CHECKPOINT,
    "sampling": {
        "grid_size": S(64, "samples in the grid drawn per snapshot (0 = none)", low=0),
        "num_steps": S(18, "Heun steps of the grid's samples", low=1),
    },
    "evaluation": EVALUATION,
    "monitor": MONITOR,
    "tensorboard": S(True, "WORKDIR/tensorboard: scalars and the sample grid per snapshot"),
    "mesh": MESH,
    "log_every_steps": S(100, "steps between two console lines", low=1),
    # config.json records each change with its step (jobs/common.py: RESUME_FREE, the fields a
    # resume changes without them, IDENTITY, the fields it never changes).
    "resume_changes": S((), "fields (dotted, e.g. ('training.lr',)) a resume may change although "
                        "they change what the steps compute", kind=str),
}


def sample_evaluation_config() -> ml_collections.ConfigDict:
  """Settings of the evaluate job's sample-level side (config.evaluation.samples;
  `jobs.evaluate`, `evaluation.samples`)."""
  return build(SAMPLES)


def mesh_config() -> ml_collections.ConfigDict:
  return build(MESH)


def data_config(name: str = "digits") -> ml_collections.ConfigDict:
  config = build(DATA)
  config.name = name
  return config


def train_config(dataset: str = "digits", family: str = "ddpmpp") -> ml_collections.ConfigDict:
  config = build(TRAIN)
  config.data.name = dataset
  config.model = models.default_model_config(family)
  return config


# ------------------------------------------------------------------------------------------------
# export

EXPORT = dict(_snapshot_source("export"), **{
    "num_samples": S(1000, "samples written (0 = none): deterministic Heun, labels cycling",
                     low=0),
    "num_steps": S(18, "Heun steps of the samples (Karras schedule)", low=1),
    "seed": S(0, "sample i's noise: normal(fold_in(key(seed), i)), whatever num_samples", low=0),
    "batch_size": S(256, "images per compiled call (rounded up to a multiple of the devices)",
                    low=1),
    "denoised": {
        "sigmas": S((), "also D(x; sigma) of noised training images at these sigmas (() = off)",
                    kind=float, **POS),
        "num_images": S(256, "training images of the run's split (with their labels), a seeded "
                        "subset", low=1),
        "subset_seed": S(0, "which images: data.seeded_rows (the evaluate job's draw)", low=0),
        "noise_seed": S(0, "their per-image noise: the gap evaluation's (`gap.image_noise`)",
                        low=0),
    },
})


def export_config() -> ml_collections.ConfigDict:
  """Every field of the export job (configs/export.py, `jobs.export`): a run's snapshot as EDM
  dataset zips for the field's scorers."""
  return build(EXPORT)


# ------------------------------------------------------------------------------------------------
# ladder: a trained network against every rung of the analytic ladder

LADDER_INPUT_SETS = ("train", "val", "trajectory")
LOCAL_RUNGS = ("LS", "ELS", "PSPC")
LADDER = dict(_snapshot_source("ladder"), **{
    "num_images": S(256, "noised training / validation images per split (a seeded subset; r2 "
                    "needs >= 2)", low=2),
    "subset_seed": S(0, "which images: data.seeded_rows (the evaluate job's draw)", low=0),
    "num_sigmas": S(16, "log grid in [0.002, 80] (edm.gap_sigma_grid) for the noised sets", low=1),
    "sigmas": S((), "explicit grid instead", kind=float, **POS),
    "noise_seed": S(0, "training images; validation uses noise_seed + 1 (as the evaluate job)",
                    low=0),
    "batch_size": S(256, "states per compiled call", low=1),
    "trajectory": {
        "num_samples": S(64, "the network's own Heun trajectories (deterministic)", low=2),
        "num_steps": S(18, "Karras schedule; the trajectory's sigmas are its noise levels", low=1),
        "seed": S(0, "initial noise and (class-conditional runs) the samples' labels", low=0),
    },
    "calibration": {
        "sizes": S((1, 3, 5, 7, 9, 11, 15), "candidate patch sizes (distinct, odd)", low=1),
        "on": S("trajectory", "the calibration set ('trajectory': Kamb & Ganguli)",
                choices=LADDER_INPUT_SETS),
    },
    # Rungs: y* always; y_delta if delta > 0; LS / ELS / PSPC (each at its own calibrated size per
    # sigma); the Gaussian (Wiener) denoiser at full rank and at each rank r.
    "delta": S(0.3, "the model error of the y_delta rung (0 = none)", **NONNEG),
    "local_rungs": S(("LS", "ELS", "PSPC"), "the local rungs (distinct; () for none)",
                     choices=LOCAL_RUNGS, empty=True),
    "els_boundary": S("circular", "ELS's boundary condition", choices=BOUNDARIES),
    "gaussian_full": S(True, "the full-rank Gaussian (Wiener) denoiser"),
    "gaussian_ranks": S((8,), "the Gaussian denoiser at each of these ranks", empty=True, low=1),
    "make_plots": S(True, "draw the figures"),
})


def ladder_config() -> ml_collections.ConfigDict:
  return build(LADDER)


# ------------------------------------------------------------------------------------------------
# factors: sweeps of the gap's factors on analytic denoisers and on a trained run

FACTOR_SWEEPS = ("delta", "granularity", "guidance", "receptive_field", "gradient_score",
                 "trained")
ANALYTIC_SWEEPS = FACTOR_SWEEPS[:-1]
FACTOR_FEATURES = ("pixels", "classifier")
FACTORS = {
    "job": S("factors", "the job"),
    "sweeps": S(ANALYTIC_SWEEPS, "the sweeps run, in order", choices=FACTOR_SWEEPS),
    "seed": S(0, "k-means seeding and the optional feature classifier", low=0),
    "data": DATA,
    "num_images": S(512, "fixed evaluation images per split (a seeded subset of each split)",
                    low=1),
    "subset_seed": S(0, "which images: data.seeded_rows (the evaluate job's draw)", low=0),
    "num_sigmas": S(24, "log grid in [0.002, 80] (edm.gap_sigma_grid), >= 2; 64 = the paper's",
                    low=1),
    "sigmas": S((), "explicit grid instead", kind=float, **POS),
    "noise_seed": S(0, "train images; validation uses noise_seed + 1", low=0),
    "batch_size": S(256, "images per compiled call", low=1),
    "chunk_size": S(2048, "training points per streaming step of the optimal denoiser", low=1),
    "make_plots": S(True, "draw the figures"),
    # With delta = 0, y* recalls noisy training images exactly at small sigma and G is infinite.
    "model_error": S(0.3, "the toy model error of y_delta in every sweep but `delta` (pixels in "
                     "[-1, 1])", **NONNEG),
    "delta": {"deltas": S((0.15, 0.2, 0.3, 0.4, 0.5, 0.7), "model errors of y_delta", **NONNEG)},
    "granularity": {
        "ks": S((2, 5, 10, 20, 50, 100, 200), "k-means clusters (0 = unconditional)", low=0),
        "deltas": S((0.3,), "y_delta per condition (0.0 adds y*)", **NONNEG),
        "include_classes": S(True, "also condition on the true classes"),
        "features": S("pixels", "what k-means clusters: pixels or a SmallCNN's penultimate layer",
                      choices=FACTOR_FEATURES),
        "classifier_params": S("", "saved classifier (features.save_params); '' trains one"),
        "classifier_steps": S(1000, "training steps of that classifier", low=1),
    },
    "guidance": {
        "ws": S((0.0, 0.5, 1.0, 2.0, 3.0), "guidance weights", **NONNEG),
        "styles": S(GUIDANCE_STYLES, "cfg uses model_error for both models", choices=GUIDANCE_STYLES),
        "delta_pos": S(0.3, "autoguidance: the positive (better) model's error", **NONNEG),
        "delta_neg": S(0.45, "... and the negative (more error-prone) one's (> delta_pos)",
                       **NONNEG),
    },
    "receptive_field": {
        "crop_sizes": S((4, 5, 6, 7, 8), "H/2 <= s <= H; s = H is the unwrapped denoiser", low=1),
        "deltas": S((0.3,), "model errors of y_delta", **NONNEG),
    },
    "gradient_score": {
        "deltas": S((0.0, 0.3), "model errors (0.0 = y*)", **NONNEG),
        "num_images": S(4, "images per split", low=1),
        "num_sigmas": S(10, "log grid in [0.002, 80]", low=1),
    },
    # ... or a hook's network (run_dir ''): model.denoiser=MODULE:FUNCTION over the files under
    # model.checkpoint (trained.snapshot indexes them), measured on config.data
    "run_dir": S("", "the `trained` sweep: a train job's workdir with this data config"),
    "model": hook_model_config,
    "trained": {
        "ws": S((0.0, 0.5, 1.0, 2.0), "guidance weights", **NONNEG),
        "styles": S(GUIDANCE_STYLES, "cfg needs a conditional run (null label num_classes)",
                    choices=GUIDANCE_STYLES),
        "snapshot": S(-1, "the snapshot measured (index into the run's snapshots; -1 = last)"),
        "negative_snapshot": S(0, "autoguidance's negative: an earlier snapshot (0 = the first)"),
        "crop_sizes": S((), "() = every size in [H/2, H] the network accepts", kind=int, low=1),
        "gradient_images": S(2, "images per split", low=1),
        "sample_gap_samples": S(256, "G_FD of this many Heun samples per guided denoiser (0 = "
                                "off, else >= 2)", low=0),
        "sample_gap_steps": S(18, "Heun steps of those samples", low=1),
        # cfg needs a run trained with training.label_dropout > 0 (else its network never learned
        # the null label).
        "allow_cfg_without_label_dropout": S(False, "measure cfg anyway, for those who know what "
                                             "the numbers mean"),
    },
}


def factors_config(dataset: str = "digits") -> ml_collections.ConfigDict:
  config = build(FACTORS)
  config.data.name = dataset
  return config


# ------------------------------------------------------------------------------------------------
# toy2d: the 2D toy model of paper.md section 5

TOY2D_EXPERIMENTS = ("flow_field", "relative_error", "gap_vs_delta", "gap_vs_density",
                     "guidance", "trajectories", "frechet")
TOY2D_DTYPES = ("float32", "float64")


def frange(start, stop, step):
  """Inclusive, rounded float range (avoids 1.2000000000000002 in configs and results)."""
  n = int(round((stop - start) / step))
  return tuple(round(start + i * step, 10) for i in range(n + 1))


def _toy_dataset(default="symmetric"):
  return S(default, "the point set: symmetric (the paper's circle) or random",
           choices=toy2d.DATASETS)


def _toy_points(default=20):
  return S(default, "points of the set; train = even k", low=2)


TOY2D = {
    "job": S("toy2d", "the job"),
    "experiments": S(TOY2D_EXPERIMENTS, "the experiments run, in order",
                     choices=TOY2D_EXPERIMENTS),
    # Shared protocol (paper.md section 5).
    "seed": S(0, "the jax draws", **SEED32),
    "radius": S(10.0, "radius of the circle", **POS),
    "offset": S(0.01, "symmetric sets: angles 2 pi (k / N + offset)", **NONNEG),
    # "paper_draws": the authors' numpy draws; "draws": ours, jax draws (see local_frame_draws).
    "estimate": S("expected", "how E_n ||D(y + sigma n) - y|| is taken (quadrature: the expected "
                  "curve)", choices=toy2d.ESTIMATES),
    "quadrature": {
        "spacing": S(0.1, "lattice rule h: error O(h^3), < 1e-4 of the peak G at 0.1", **POS),
        "radius": S(8.0, "nodes within |n| <= radius (tail mass 1.3e-14 at 8; 20,108 nodes); "
                    "> spacing", **POS),
    },
    # Of the band for "expected", of the estimate itself otherwise (one fixed set for every sigma).
    "draws": S(50, "draws per point", low=1),
    "legacy_seed": S(0, "'paper_draws': np.random.seed(legacy_seed) for the gap experiments",
                     **SEED32),
    "compare_expected": S(False, "'draws' / 'paper_draws': also the expected curves (dashed, "
                          "with their band)"),
    # (ours) one set of (radial, tangential) vectors shared by every point, expressed in each
    # point's local frame (common random numbers). False: independent world-frame draws.
    "local_frame_draws": S(True, "'draws' only: one draw set in every point's local frame"),
    # float64 (the job switches jax's 64-bit mode on for it): float32 rounding alone moves G by
    # ~3e-5 where the errors are tiny (sigma -> 0).
    "dtype": S("float64", "the computation's dtype", choices=TOY2D_DTYPES),
    "sigma_grid_steps": S(120, "the toy gap grid: the N-step EDM schedule, ascending", low=2),
    "make_plots": S(True, "draw the figures"),
    "flow_field": {
        "dataset": _toy_dataset(),
        "num_points": _toy_points(),
        "offset": S(0.001, "angles 2 pi (k / N + offset)", **NONNEG),
        "sigmas": S((28.0, 2.8, 0.63), "nearest grid sigmas are used and recorded", **POS),
        "sigma_indices": S((), "if given: grid[indices] instead of `sigmas` (< sigma_grid_steps)",
                           kind=int, low=0),
        "grid_size": S(121, "evaluation grid per axis", low=2),
        "extent": S(15.0, "the grid spans [-extent, extent]^2", **POS),
    },
    "relative_error": {
        "dataset": _toy_dataset(),
        "num_points": _toy_points(),
        "offset": S(0.001, "this experiment's offset (absent: config.offset)", optional=True,
                    **NONNEG),
        "all_training": S(False, "True: all num_points points are training points"),
        "num_angles": S(200, "test angles", low=1),
        "test_angles": S("circle", "'circle': 2 pi (k/200 + offset); 'half_circle': pi k/200",
                         choices=toy2d.TEST_ANGLES),
        "draws": S(500, "'draws' / 'paper_draws' only", low=1),
        "legacy_seed": S(1, "'paper_draws': np.random.seed(1), (500, 2) shared", **SEED32),
        "sigma": S(1.0, "nearest grid sigma is used", **POS),
        "deltas": S((2.0, 1.6, 1.2), "model errors", **NONNEG),
    },
    "gap_vs_delta": {
        "dataset": _toy_dataset(),
        "num_points": _toy_points(),
        "deltas": S(frange(2.2, 1.2, -0.1), "model errors (> 0: with delta = 0 the training "
                    "error vanishes)", **POS),
    },
    "gap_vs_density": {
        "dataset": _toy_dataset(),
        "num_points": S(tuple(range(16, 31, 2)), "point counts (8..15 training points)", low=2),
        "delta": S(1.6, "the model error", **POS),
    },
    "guidance": {
        "dataset": _toy_dataset(),
        "num_points": _toy_points(),
        "delta_pos": S(1.8, "the positive (better) model's error", **POS),
        "delta_neg": S(2.2, "the negative model's error", **POS),
        "weights": S(frange(0.0, 2.0, 0.25), "guidance weights", **NONNEG),
    },
    "trajectories": {
        "dataset": _toy_dataset(),
        "num_points": _toy_points(),
        "deltas": S((0.0, 0.5, 1.2), "model errors", **NONNEG),
        "num_samples": S(1000, "trajectories", low=1),
        "num_plotted": S(40, "trajectories drawn (<= num_samples)", low=0),
        "num_steps": S(120, "(ours) the EDM schedule with this many steps", low=1),
        "solver": S("euler", "the sampler", choices=samplers.SOLVERS),
        "tolerance": S(1e-2, "'lands on a point': endpoint within this distance", **POS),
    },
    # (ours) the random set: on a symmetric set the train and validation halves have identical
    # means and covariances (0 and r^2/2 I), so FD_train == FD_val and G_FD is identically 0.
    "frechet": {
        "dataset": _toy_dataset("random"),
        "num_points": _toy_points(),
        "deltas": S(frange(0.0, 2.2, 0.2), "model errors", **NONNEG),
        "num_samples": S(1000, "samples per model error", low=2),
        "num_steps": S(120, "sampler steps", low=1),
        "solver": S("heun", "the sampler", choices=samplers.SOLVERS),
        "ddof": S(0, "covariance normalization: 0 = the point sets' own moments (ours)", low=0,
                  high=1),
    },
}


def toy2d_config() -> ml_collections.ConfigDict:
  return build(TOY2D)


# ------------------------------------------------------------------------------------------------
# Every job's declarations

JOB_SETTINGS = {"train": TRAIN, "evaluate": TRAIN, "convert": TRAIN, "export": EXPORT,
                "ladder": LADDER, "factors": FACTORS, "toy2d": TOY2D}


def job_settings(job: str) -> Dict[str, S]:
  """{dotted field: Setting} of every field a job's config declares."""
  return settings_of(JOB_SETTINGS[job])


def describe(job: str) -> str:
  """The table of a job's fields: name, default, what it allows, help."""
  return "\n".join(f"{field} = {s.default!r}  ({s.allows()})  {s.help}"
                   for field, s in job_settings(job).items())


if __name__ == "__main__":
  _job = sys.argv[1] if len(sys.argv) > 1 else "train"
  if _job not in JOB_SETTINGS:
    sys.exit(f"usage: python -m diffgen_jax.defaults [JOB]: the fields of a job's config, JOB one "
             f"of {tuple(JOB_SETTINGS)} (model.* fields: diffgen_jax/models, with their presets)")
  print(describe(_job))
  print("model.*: declared by diffgen_jax/models (default_model_config, the presets); a preset's "
        "fields cannot be overridden")
