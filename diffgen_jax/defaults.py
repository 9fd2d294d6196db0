"""Default configs: every field a job reads, with EDM's settings where EDM has one.

configs/*.py start from these and override what their experiment changes, so that every field
exists (and `--config.x=y` overrides work) whatever the experiment.
"""

from __future__ import annotations

import ml_collections

from diffgen_jax import models


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


def sample_evaluation_config() -> ml_collections.ConfigDict:
  """Settings of the evaluate job's sample-level side (config.evaluation.samples;
  `jobs.evaluate`, `evaluation.samples`)."""
  return ml_collections.ConfigDict({
      "enabled": True,
      "num_samples": 512,  # samples per snapshot (deterministic Heun, fixed noise and labels)
      "num_steps": 18,  # Heun steps (noise levels of the Karras schedule)
      "seed": 0,  # the samples' noise and the choice of the FD reference subsets
      "feature": "classifier",  # "classifier" | "pixels" | "hook" (the extractor of `features`)
      # feature="hook": MODULE:FUNCTION, a factory f() -> features(images) -> (B, F) (`hooks`):
      # Inception, DINOv2, SSCD... in any framework; copies are then also tested in its space
      "features": "",
      "classifier_steps": 2000,  # training steps of the SmallCNN when it must be trained
      "classifier_path": "",  # "" = WORKDIR/evaluation/classifier.npz, trained once and cached
      "num_train_subsets": 2,  # disjoint training subsets for FD_train (averaged)
      "early_stop_every": 1,  # early-stopped G_FD at every k-th sampling step (and the last)
      "overlap": True,  # trajectory overlap probe
      "nn_similarity": True,  # 1-NN cosine similarity probe
      "probe_size": 128,  # trajectories and training / validation images in the two probes
      "copy_ratio": 1.0 / 3.0,  # Gu et al.: a copy when d(1st NN) < ratio * d(2nd NN)
      "grid_size": 32,  # samples shown next to their nearest training images
      "snapshots": "all",  # "all" | "last"
      "reference_images": 50_000,  # images featurized per split, a seeded subset (0 = all)
  })


def hook_model_config() -> ml_collections.ConfigDict:
  """config.model of the jobs that measure a run's snapshot (ladder, export, factors' trained
  sweep): model.denoiser / model.checkpoint as in a run's model config (`models`), a hook's
  network instead of config.run_dir's: `MODULE:FUNCTION` called for each file under checkpoint
  (a file, or a directory of them in the natural order of their names; `jobs.common.hook_series`),
  measured on config.data."""
  fields = models.default_model_config("ddpmpp")
  return ml_collections.ConfigDict({"denoiser": fields.denoiser, "checkpoint": fields.checkpoint})


def export_config() -> ml_collections.ConfigDict:
  """Every field of the export job (configs/export.py, `jobs.export`): a run's snapshot as EDM
  dataset zips for the field's scorers."""
  return ml_collections.ConfigDict({
      "job": "export",
      "run_dir": "",  # a train job's workdir (required unless model.denoiser is set)
      "step": -1,  # the snapshot exported: -1 = the last, else a snapshot step of the run
      "ema": "first",  # the snapshot's EMA set: "first" or a set's name (`ema.pick`)
      "data_dir": "",  # "" = the run's data.data_dir (read only for `denoised`)
      # A hook's network instead of run_dir's (`hook_model_config`; step -1: the last file), its
      # image shape and classes those of this data config (read only with model.denoiser).
      "model": hook_model_config(),
      "data": data_config(),
      "num_samples": 1000,  # samples written (0 = none): deterministic Heun, labels cycling
      "num_steps": 18,  # Heun steps of the samples (Karras schedule)
      "seed": 0,  # sample i's noise: normal(fold_in(key(seed), i)), whatever num_samples
      "batch_size": 256,  # images per compiled call (rounded up to a multiple of the devices)
      "denoised": {
          "sigmas": (),  # also D(x; sigma) of noised training images at these sigmas (() = off)
          "num_images": 256,  # the first training images of the run's split (with their labels)
          "noise_seed": 0,  # their per-image noise: the gap evaluation's (`gap.image_noise`)
      },
  })


def mesh_config() -> ml_collections.ConfigDict:
  # data=-1: every device not used by the model axis; model > 1 shards parameters and optimizer.
  return ml_collections.ConfigDict({"data": -1, "model": 1})


def data_config(name: str = "digits") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": name,
      "data_dir": "",  # "" = diffgen_jax.data.DEFAULT_DATA_DIR
      "subset_size": 0,  # 0 = the whole training split; else a nested, seeded subset
      "subset_seed": 0,
      "subset_side": 1,  # 1 | 2: two disjoint nested subsets of subset_size (2 * size <= split)
      "labels": "class",  # "class" | "none" | "pseudo"
      "pseudo_labels": "",  # labels="pseudo": .npz with int arrays `train` and `validation`
      "x_flip": False,
  })


def training_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "batch_size": 512,
      "total_images": 200_000_000,
      "lr": 1e-3,
      "lr_schedule": "edm",  # "edm": warm-up then constant; "edm2": inverse square root decay
      "lr_ref_images": 0,  # EDM2's t_ref in images (ref_batches * batch_size)
      "warmup_images": 10_000_000,
      "adam_b1": 0.9,
      "adam_b2": 0.999,
      "adam_eps": 1e-8,
      "grad_clip": 0.0,  # 0 = off
      "loss": "edm",  # "edm" | "edm2" (learned log-variance; needs model.family="edm2")
      "p_mean": -1.2,
      "p_std": 1.2,
      "sigma_data": 0.5,
      "label_dropout": 0.0,
      "compute_dtype": "float32",  # or "bfloat16"
      "ema": {
          "kind": "halflife",  # "halflife" (EDM) | "power" (EDM2 power-function profiles)
          "halflife_images": 500_000,
          "rampup_ratio": 0.05,
          "sigma_rels": (0.05, 0.10),
      },
  })


def train_config(dataset: str = "digits", family: str = "ddpmpp") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.job = "train"
  config.seed = 0
  config.data = data_config(dataset)
  config.model = models.default_model_config(family)
  config.training = training_config()
  config.checkpoint = ml_collections.ConfigDict({
      "state_every_images": 5_000_000,  # latest full state, for resume
      "snapshot_every_images": 5_000_000,  # EMA snapshots, kept for the analysis over training time
      "keep_states": 2,
  })
  config.sampling = ml_collections.ConfigDict({"grid_size": 64, "num_steps": 18})
  config.evaluation = ml_collections.ConfigDict({
      "after_training": True,  # the train job ends with the gap evaluation of its snapshots
      "num_images": 8192,  # fixed images per split (the paper: 8192)
      "num_sigmas": 64,  # log grid in [0.002, 80] ...
      "sigmas": (),  # ... unless given explicitly
      "noise_seed": 0,
      "subset_seed": 0,  # which num_images of each split: a seeded uniform subset (data.seeded_rows)
      "batch_size": 256,
      # The exact optimal denoiser y* of the whole training split (streamed from where the split
      # lives, split over every device of every process): its own errors and, with
      # model_vs_optimal, the network's distance to it. False: neither is measured.
      "optimal": True,
      "model_vs_optimal": True,  # distance of the network's predictions to the optimal denoiser's
      "ema": "first",  # "first" EMA set or "all" of them
      "at_sigmas": (0.1, 0.5, 1.0, 2.0, 5.0),  # G over training time at these sigmas
  })
  # The inference side: samples' Frechet-distance gap, copies, early stopping, trajectory probes.
  config.evaluation.samples = sample_evaluation_config()
  # While training: the denoising error of the first EMA set on fixed training / validation
  # subsets (the evaluate job's images and noise) at a few sigmas around the gap's usual peak,
  # so G(sigma) shows during the run (metrics.jsonl and TensorBoard).
  config.monitor = ml_collections.ConfigDict({
      "every_images": 1_000_000,  # 0 = off
      "num_images": 256,  # images of each split (the evaluation's seeded subsets: among them)
      "sigmas": (0.1, 0.2, 0.5, 1.0, 2.0),
      "batch_size": 256,
  })
  config.tensorboard = True  # WORKDIR/tensorboard: scalars and the sample grid per snapshot
  config.mesh = mesh_config()
  config.log_every_steps = 100
  # Fields (dotted, e.g. ("training.lr",)) a resume may change although they change what the
  # steps compute; config.json records each change with its step (jobs/common.py: RESUME_FREE,
  # the fields a resume changes without them, IDENTITY, the fields it never changes).
  config.resume_changes = ()
  return config
