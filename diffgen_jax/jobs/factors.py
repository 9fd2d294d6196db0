"""The `factors` job: how each factor of paper.md section 6 moves the denoising gap G(sigma)
(the measurements are `evaluation.sweeps`; this job reads the config, calls them, writes results).

    G(sigma) = (E_val(sigma) - E_train(sigma)) / E_train(sigma)

on fixed subsets of the training and validation splits (`num_images` of each, seeded by
`subset_seed`: `data.seeded_rows`), one
seeded noise draw per image (`evaluation.gap`; seed `noise_seed` for train, `noise_seed + 1` for
validation, as in the `evaluate` job), on `edm.gap_sigma_grid(num_sigmas)` (or explicit `sigmas`).
Every sweep is a list of labelled curves: one denoiser per factor value, all of them pure
`denoise(x, sigma, labels)` functions evaluated by the same `gap.denoising_errors`.

Analytic sweeps (the "network" is the exact optimal denoiser y* of the training split, or the toy
model's y_delta built on it; `optimal.py`):
  delta            y_delta for several model errors delta (the toy model's story, on images).
  granularity      y_delta conditioned on nothing, on the true classes, and on k-means clusters of
                   training features (pixels, or a small classifier's features) for each k;
                   validation images get the label of their nearest centroid (`kmeans.assign`).
                   The pseudo-labels are written to WORKDIR/pseudo_labels/k{k}.npz for the train job
                   (`data.labels="pseudo"`, `data.pseudo_labels=<path>`); the train array covers
                   the training split (or subset) the data config names, the validation array the
                   whole validation split. k = 0 is the unconditional curve (labels="none").
  guidance         D = D_pos + w (D_pos - D_neg): "cfg" (positive class-conditional y_delta,
                   negative unconditional y_delta, same delta) and "autoguidance" (positive
                   y_delta(delta_pos), negative y_delta(delta_neg > delta_pos)), gap vs w.
  receptive_field  `denoisers.crop_averaged(y_delta, s)`: the denoiser sees 2x2 overlapping s x s
                   corner crops, overlaps averaged. Choice (ours, as in tests/test_jobs_factors.py):
                   the denoiser applied to a crop is the optimal denoiser (or its y_delta) of the
                   POOLED training crops, i.e. the s x s crops of every training image at all four
                   corner positions, so one crop-sized denoiser serves every position (a local,
                   translation-pooled denoiser, as a convolutional network is). s = the full image
                   is the unwrapped full-image denoiser.
  gradient_score   input-gradient correlation score vs sigma (`gradient_score.gradient_correlation_vs_sigma`)
                   of y* and y_delta on a few training and validation images.
Trained sweep (`trained`, needs `run_dir`: a train job's workdir with the same data config, compared
  with the run's record before any sweep runs, `common.compare_with_run`):
  the final snapshot's gap; classifier-free guidance (negative: the same network with the null
  label num_classes) and autoguidance (negative: an earlier snapshot, the first by default) over w;
  the receptive field via `denoisers.crop_averaged` on the network (crop sizes the U-Net accepts); the
  gradient score vs sigma of the network and of y*.
  Or a hook's network (config.model.denoiser = MODULE:FUNCTION over the files under
  config.model.checkpoint, `common.hook_series`, run_dir ''; checked on two images before any
  sweep runs), measured through its denoisers alone: guidance and autoguidance as for a run (cfg
  only with trained.allow_cfg_without_label_dropout=True: whether the hook's network learned the
  null label is not known); the receptive field by `crop_averaged` on the hook's denoiser itself,
  at the crop sizes it accepts (checked on two s x s images at start-up: trained.crop_sizes () =
  every size in [H/2, H] it accepts, the others listed in crop_sizes_skipped; an explicit size it
  refuses is a ConfigError); the network's gradient score only when jax can differentiate the
  hook's denoiser (else skipped, the reason recorded: e.g. the PyTorch bridge); the sample-level
  gap in the default sample settings (`defaults.sample_evaluation_config`), the classifier cached
  in WORKDIR/evaluation. The run's sharded parameters and their renaming for crops
  (`params_for_crops`) are the only part a hook cannot give.

Where it runs: one mesh over every device of every process (`common.evaluation_mesh`; with the
trained sweep, the run's model axis): the training and validation splits are sources read where
they are used, y* lays the training set out over the mesh (each process reads its share; the
gradient score's y*, which is differentiated, is built on one device of each process), every gap
batch is split over it, the snapshots are restored onto the run's parameter sharding, and each
sweep reports its progress over its curves (`progress`). settings.evaluation_devices and
settings.processes record it.

Outputs: WORKDIR/results.json in the jobs' one layout (`jobs.results`: {"job": "factors",
"settings", "sweeps": {name: section}}, sections as in `evaluation.sweeps`; plain JSON, non-finite
values as null) and WORKDIR/<sweep>.png and <sweep>_peak.png. Every G(sigma) carries its 95%
bootstrap interval over the evaluation images (gap_low, gap_high; the peak's peak_gap_low,
peak_gap_high; the gradient score's score_low, score_high), seeded and recorded in each section's
"interval" (`sweeps.INTERVAL`); the figures draw them as bands and error bars. The guided sample
gap's G_FD carries its bootstrap interval over the samples (gap_fd_<space>_low / _high,
`samples.fd_gap_interval`), its copy fraction a 95% Wilson interval (`timescales.wilson_interval`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffgen_jax import checkpointing, config_checks, data, defaults, edm, hooks, jsonio
from diffgen_jax.config_checks import ConfigError, fail as _fail
from diffgen_jax.denoisers import classifier_free_guided, crop_averaged, guided
from diffgen_jax.evaluation import features
from diffgen_jax.evaluation.timescales import wilson_interval
from diffgen_jax.evaluation.sweeps import (INTERVAL, Setup, gap_curve, make_setup,
                                           optimal_denoiser, score_curves, sweep_section,
                                           sweep_delta, sweep_gradient_score, sweep_granularity,
                                           sweep_guidance, sweep_receptive_field)
from diffgen_jax.jobs import common, console, results as results_lib
from diffgen_jax.models.network import (network_denoiser, params_for_crops,
                                        valid_network_crop_sizes)

SWEEPS, ANALYTIC_SWEEPS = defaults.FACTOR_SWEEPS, defaults.ANALYTIC_SWEEPS
FEATURES = defaults.FACTOR_FEATURES
PSEUDO_LABEL_DIR = "pseudo_labels"
# Image side of the built-in datasets, to check crop sizes before anything is loaded (an unknown,
# tfds-prepared dataset is checked once its images are loaded).
NOMINAL_IMAGE_SIZES = {"digits": 8, "fashion_mnist": 28, "mnist5k": 28}


# ------------------------------------------------------------------------------------------------
# The trained sweep


def _snapshot_steps_done(config):
  """The training steps of the snapshot config.trained.snapshot of the run (None before it has
  that snapshot)."""
  steps, i = checkpointing.snapshot_steps(config.run_dir), config.trained.snapshot
  return steps[i] if -len(steps) <= i < len(steps) else None


def check_guidance_of_hook(config) -> None:
  """Classifier-free guidance of a hook's network: whether it learned the null label is unknown,
  so 'cfg' with some w != 0 is refused (ConfigError naming config.trained.styles and
  config.model.denoiser) unless config.trained.allow_cfg_without_label_dropout is True."""
  t = config.trained
  if ("cfg" in tuple(t.styles) and any(float(w) != 0.0 for w in t.ws)
      and config.data.labels != "none" and not t.get("allow_cfg_without_label_dropout", False)):
    raise ConfigError(
        f"config.trained.styles={tuple(t.styles)} asks for classifier-free guidance of the hook's "
        f"network config.model.denoiser={config.model.denoiser!r}: whether it learned the null "
        "label (label num_classes) is not known here. Drop 'cfg' from "
        "config.trained.styles, or set config.trained.allow_cfg_without_label_dropout=True if it "
        "did")


def check_guidance_is_learned(config, run: common.Run) -> None:
  """Classifier-free guidance needs a network that learned the null label: a conditional run
  trained with training.label_dropout > 0 in some step up to the snapshot config.trained.snapshot
  (`common.Run.values`: a resume may have changed it). Raises ConfigError naming label_dropout
  otherwise, unless config.trained.allow_cfg_without_label_dropout is True."""
  t = config.trained
  if "cfg" not in tuple(t.styles) or not any(float(w) != 0.0 for w in t.ws):
    return
  if t.get("allow_cfg_without_label_dropout", False):
    return
  conditional = run.config["data"].get("labels", "class") != "none"  # (train sets num_classes)
  values = [float(v or 0.0)
            for v in run.values("training.label_dropout", _snapshot_steps_done(config))]
  if conditional and max(values) <= 0.0:
    shown = values[0] if len(values) == 1 else f"{values} (changed by resumes)"
    raise ConfigError(
        f"config.trained.styles={tuple(t.styles)} asks for classifier-free guidance, but the run in "
        f"config.run_dir={config.run_dir!r} was trained with config.training.label_dropout="
        f"{shown}: its network never saw the null label, so D(x; sigma, null) and the "
        "guided curves mean nothing. Drop 'cfg' from config.trained.styles, train with "
        "training.label_dropout > 0 (e.g. 0.1), or set "
        "config.trained.allow_cfg_without_label_dropout=True to measure it anyway")


def trained_series(config, setup: Setup) -> common.SnapshotSeries:
  """The snapshots of the trained sweep: a hook's files (config.model.denoiser; imported and
  checked now on two images of the data, `common.hook_series`) or the run's in config.run_dir
  (its network for the data's classes, parameters restored onto the setup's mesh)."""
  if common.uses_hook(config):
    return common.hook_series(config.model.denoiser, config.model.checkpoint,
                              setup.train_all.shape[1:], setup.num_classes)
  saved = common.read_run(config.run_dir).config_at()
  network = common.build_network(_model_config(saved, setup), setup.num_classes, "float32")
  series = common.run_series(config.run_dir, network, float(saved.training.sigma_data),
                             setup.mesh)
  if not series.keys:
    raise ConfigError(f"config.run_dir={config.run_dir!r} holds no snapshots: train first")
  return series


def _model_config(saved, setup: Setup) -> ml_collections.ConfigDict:
  model_config = ml_collections.ConfigDict(saved.model.to_dict())
  model_config.num_classes = setup.num_classes
  return model_config


def _hook_crop_sizes(config, denoise, setup: Setup):
  """(crop sizes, {size: why skipped}) of a hook's denoiser: config.trained.crop_sizes, or every
  size in [H/2, H], checked on two s x s images (`hooks.check_denoiser`); a size it refuses is
  skipped when the sizes are the default (), refused (ConfigError naming trained.crop_sizes and
  the hook's error) when asked for."""
  h, c = setup.train_all.shape[1], setup.train_all.shape[-1]
  asked = tuple(int(v) for v in config.trained.crop_sizes)
  sizes, skipped = [], {}
  for size in asked or range((h + 1) // 2, h + 1):
    try:
      hooks.check_denoiser(denoise, (size, size, c), setup.num_classes,
                           value=config.model.denoiser)
    except ConfigError as err:
      if asked:
        raise ConfigError(f"config.trained.crop_sizes={asked}: the hook's denoiser refuses "
                          f"{size} x {size} crops: {err}") from None
      skipped[str(size)] = f"the hook's denoiser refuses {size} x {size} images"
      continue
    sizes.append(size)
  return tuple(sizes), skipped


def _not_differentiable(denoise, setup: Setup) -> Optional[str]:
  """None when jax can differentiate denoise (traced, not run), else why not."""
  x = jnp.zeros((1,) + tuple(setup.train_all.shape[1:]), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if setup.num_classes > 0 else None
  try:
    jax.eval_shape(jax.grad(lambda v: jnp.sum(denoise(v, jnp.float32(1.0), labels))), x)
  except Exception as err:  # pylint: disable=broad-except  (a hook's own code)
    return f"jax cannot differentiate the hook's denoiser ({type(err).__name__}: {err})"[:600]
  return None


def sweep_trained(config, setup: Setup, series: common.SnapshotSeries,
                  workdir: str) -> Dict[str, Any]:
  t = config.trained
  hook = common.uses_hook(config)
  run = None if hook else common.read_run(config.run_dir)  # its data were compared by `run`
  if hook:  # (refused here too, before anything is measured)
    check_guidance_of_hook(config)
  else:
    check_guidance_is_learned(config, run)
  key = series.pick(t.snapshot, "trained.snapshot")
  negative_key = series.pick(t.negative_snapshot, "trained.negative_snapshot")
  snapshot = series.load(key)
  (ema_name, net), = snapshot.denoisers.items()
  meta = snapshot.meta
  h = setup.train_all.shape[1]
  if hook:
    crop_sizes, skipped = _hook_crop_sizes(config, net, setup)
  else:
    valid = valid_network_crop_sizes(_model_config(run.config_at(), setup), h)
    crop_sizes = tuple(t.crop_sizes) or tuple(valid)
    bad = [s for s in crop_sizes if s not in valid]
    if bad:
      raise ConfigError(f"config.trained.crop_sizes={tuple(crop_sizes)}: {bad} not accepted by the "
                        f"run's network on {h}x{h} images; allowed values {tuple(valid)}")
    skipped = {}
  conditional = setup.num_classes > 0
  who = series.describe(key, ema_name)

  def curve(*args, **kwargs):  # `gap_curve`, refused when the denoiser's errors are not finite
    c = gap_curve(*args, **kwargs)
    common.require_finite(np.stack([c["e_train"], c["e_val"]]), denoiser=who, sigmas=setup.sigmas,
                          measurement=f"the trained sweep's curve {c['label']!r} (E_train, E_val)")
    return c

  base = curve(setup, net, "network", 0.0, "network", conditional=conditional)
  curves = [base]
  same_as_base = lambda label, group: dict(base, label=label, group=group, value=0.0)
  # The label dropout of the snapshot's last step, and every value it had up to it (a run's).
  label_dropouts = None if hook else run.values("training.label_dropout", int(key))
  label_dropout = None if hook else float(label_dropouts[-1] or 0.0)
  if "cfg" in t.styles and conditional:
    for w in t.ws:  # w = 0 is the network itself: its curve is reused
      curves.append(same_as_base(f"cfg, w={w:g}", "cfg") if w == 0 else curve(
          setup, classifier_free_guided(net, setup.num_classes, float(w)), f"cfg, w={w:g}",
          float(w), "cfg", conditional=True))
  guided_denoisers = []  # (style, w, denoiser) for the sample-level gap (w = 0: the network)
  if "cfg" in t.styles and conditional:
    guided_denoisers += [("cfg", float(w), classifier_free_guided(net, setup.num_classes, float(w)))
                         for w in t.ws]
  negative = series.load(negative_key)
  if "autoguidance" in t.styles:
    neg = negative.denoisers[ema_name]
    for w in t.ws:
      curves.append(same_as_base(f"autoguidance, w={w:g}", "autoguidance") if w == 0 else curve(
          setup, guided(net, neg, float(w)), f"autoguidance, w={w:g}", float(w), "autoguidance",
          conditional=conditional))
      guided_denoisers.append(("autoguidance", float(w), guided(net, neg, float(w))))
  sample_gap = (_guided_sample_gaps(config, None if hook else run.config_at(), guided_denoisers,
                                    workdir, series.describe(key, ema_name))
                if t.sample_gap_samples else [])
  for s in crop_sizes:
    if hook:
      wrapped = crop_averaged(net, int(s), h)
    else:
      crop_params = params_for_crops(series.network, snapshot.params[ema_name], h, int(s),
                                     setup.train_all.shape[-1])
      if crop_params is None:
        skipped[str(s)] = "the network's parameter layout differs at this size"
        logging.warning("factors: trained crop size %d skipped: %s", s, skipped[str(s)])
        continue
      wrapped = crop_averaged(network_denoiser(series.network, crop_params, series.sigma_data),
                              int(s), h)
    curves.append(curve(setup, wrapped, f"crop s={s}", int(s), "receptive_field",
                            conditional=conditional))
  score_sigmas = edm.gap_sigma_grid(config.gradient_score.num_sigmas)
  not_differentiable = _not_differentiable(net, setup) if hook else None
  scores = ((score_curves(net, setup, score_sigmas, t.gradient_images, "network",
                          conditional=conditional) if not_differentiable is None else [])
            + score_curves(optimal_denoiser(setup, differentiable=True), setup, score_sigmas,
                           t.gradient_images, "y*"))
  gradient_score = {"sigmas": score_sigmas, "curves": scores, "interval": dict(INTERVAL)}
  if not_differentiable is not None:
    gradient_score["network_skipped"] = not_differentiable
  source = ({"denoiser": series.spec, "snapshot": meta["source"],
             "negative_snapshot": negative.meta["source"]} if hook else
            {"run_dir": os.path.abspath(config.run_dir)})
  return sweep_section("trained", setup, curves, value_name="w / crop size", **source,
                  snapshot_step=key if hook else int(key), images_seen=meta.get("images_seen"),
                  negative_snapshot_step=negative_key if hook else int(negative_key),
                  negative_images_seen=negative.meta.get("images_seen"),
                  label_dropout=label_dropout, label_dropout_values=label_dropouts,
                  null_label=setup.num_classes,
                  crop_sizes=list(crop_sizes), crop_sizes_skipped=skipped, sample_gap=sample_gap,
                  gradient_score=gradient_score)


def _guided_sample_gaps(config, saved, guided_denoisers, workdir: str,
                        denoiser: str = "the network") -> List[Dict[str, Any]]:
  """The inference side of guidance: G_FD = (FD_val - FD_train) / FD_train of each guided
  denoiser's Heun samples (`evaluation.samples`, in the run's feature space: its sample settings,
  its classifier cached in its workdir), the copy fraction, and the same in pixels. Paper:
  guidance raises this gap strongly. saved: the run's config; None for a hook's network (the
  default sample settings on config.data, the classifier cached in this job's workdir)."""
  from diffgen_jax.jobs import evaluate  # the sample machinery only when asked for
  t = config.trained
  cache_dir = config.run_dir
  if saved is None:
    saved = common.data_of(config)
    saved.evaluation = {"batch_size": config.batch_size, "noise_seed": config.noise_seed,
                        "samples": defaults.sample_evaluation_config().to_dict()}
    cache_dir = workdir
  settings = evaluate.sample_settings(saved).copy_and_resolve_references()
  with settings.unlocked():
    settings.num_samples = int(t.sample_gap_samples)
    settings.num_steps = int(t.sample_gap_steps)
    settings.overlap = False
    settings.nn_similarity = False
  run_config = saved.copy_and_resolve_references()
  if "evaluation" not in run_config:
    raise ConfigError(f"the run in config.run_dir={config.run_dir!r} has no evaluation settings")
  splits = [common.load_split(run_config, s) for s in data.SPLITS]
  ctx, _, _ = evaluate.sample_setup(run_config, cache_dir, *splits, settings=settings)
  out = []
  for style, w, denoise in guided_denoisers:
    record = evaluate.measure_samples(
        ctx, denoise, denoiser, f"deterministic Heun, {settings.num_steps} steps, guidance "
        f"{style!r} with w={w:g}").record
    fd = record["fd"]
    out.append({"style": style, "w": w, "gap_fd_features": fd["features"]["gap"],
                "gap_fd_features_low": fd["features"]["gap_low"],
                "gap_fd_features_high": fd["features"]["gap_high"],
                "gap_fd_pixels": fd["pixels"]["gap"],
                "gap_fd_pixels_low": fd["pixels"]["gap_low"],
                "gap_fd_pixels_high": fd["pixels"]["gap_high"],
                "copy_fraction": record["copy_fraction"]["samples"]})
    out[-1]["copy_fraction_low"], out[-1]["copy_fraction_high"] = wilson_interval(
        out[-1]["copy_fraction"], settings.num_samples)
    logging.info("factors: %s w=%g: sample-level G_FD = %.4f (features), copies %.3f", style, w,
                 out[-1]["gap_fd_features"], out[-1]["copy_fraction"])
  return out


# ------------------------------------------------------------------------------------------------
# Config, data and the job


def check_crop_sizes(sizes, image_size: int, field: str = "receptive_field.crop_sizes") -> None:
  """Crop sizes must satisfy image_size / 2 <= s <= image_size (2x2 corner crops cover the image)."""
  allowed = tuple(range((image_size + 1) // 2, image_size + 1))
  bad = [s for s in sizes if s not in allowed]
  if bad:
    _fail(field, tuple(sizes), f"has {bad}: crop sizes must be integers in [{allowed[0]}, "
          f"{allowed[-1]}] for {image_size}x{image_size} images (allowed values {allowed})")


def validate_config(config) -> None:
  """The rules between the fields the chosen sweeps read (each field alone: `defaults.FACTORS`);
  ConfigError names the field and allowed values."""
  config_checks.choice(config, "job", ("factors",))
  sweeps = config_checks.entries(config.sweeps)
  config_checks.data_config(config.data)
  if not config.sigmas and config.num_sigmas < 2:
    _fail("num_sigmas", config.num_sigmas, "must be >= 2 (a log grid) when config.sigmas=()")
  size = NOMINAL_IMAGE_SIZES.get(config.data.name)
  if "granularity" in sweeps and config.granularity.features == "classifier":
    path = config.granularity.classifier_params
    if path and not os.path.exists(os.path.expanduser(path)):
      _fail("granularity.classifier_params", path, "does not exist ('' trains a classifier)")
  if "guidance" in sweeps and config.guidance.delta_neg <= config.guidance.delta_pos:
    _fail("guidance.delta_neg", config.guidance.delta_neg, f"must be > guidance.delta_pos="
          f"{config.guidance.delta_pos} (the negative model is the more error-prone one)")
  if "receptive_field" in sweeps and size is not None:
    check_crop_sizes(config_checks.entries(config.receptive_field.crop_sizes), size)
  hook = common.validate_hook(config)
  if hook and "trained" not in sweeps:
    _fail("model.denoiser", config.model.denoiser, f"is read only by the 'trained' sweep, not by "
          f"config.sweeps={sweeps}: add 'trained' (or set model.denoiser='')")
  if "trained" in sweeps:
    run_dir = config.run_dir
    if hook and run_dir:
      _fail("run_dir", run_dir, f"must be '' with config.model.denoiser="
            f"{config.model.denoiser!r}: the trained sweep measures the hook's network (or set "
            "model.denoiser='' to measure the run)")
    if not hook and not run_dir:
      _fail("run_dir", run_dir, "must name a train job's workdir for the 'trained' sweep (or set "
            "config.model.denoiser to measure a hook's network)")
    if not hook and not os.path.isdir(run_dir):
      _fail("run_dir", run_dir, "does not exist")
    if size is not None and config.trained.crop_sizes:
      check_crop_sizes(tuple(config.trained.crop_sizes), size, "trained.crop_sizes")
    if config.trained.sample_gap_samples == 1:
      _fail("trained.sample_gap_samples", 1, "must be 0 (off) or >= 2 (a Frechet distance needs "
            "a covariance)")
    # Refused at start-up, not at the end.
    if hook:
      check_guidance_of_hook(config)
    elif os.path.exists(os.path.join(run_dir, common.RUN_FILE)):
      check_guidance_is_learned(config, common.read_run(run_dir))


def load_splits(config) -> Dict[str, data.Split]:
  """{"train", "validation"}: the training split (or subset) and the validation split that
  config.data names."""
  return {s: common.load_split(config, s) for s in data.SPLITS}


def load_setup(config, splits=None) -> Setup:
  """The training split (or subset) and validation split the config names (`load_splits`, unless
  given), as a Setup: the images sources read where they are used (`common.evaluation_rows`),
  on the one evaluation mesh over every device of every process (`common.evaluation_mesh`; with
  the trained sweep, the model axis of the run's mesh)."""
  splits = load_splits(config) if splits is None else splits
  tr, va = (common.evaluation_rows(splits[name]) for name in ("train", "validation"))
  for name in ("train", "validation"):  # (make_setup takes at most every image of each split)
    common.used_count("num_images", config.num_images, len(splits[name]),
                      f"images of the {'training' if name == 'train' else name} split")
  common.check_optimal_labels(config, splits["train"], splits["validation"])
  of_run = "trained" in tuple(config.sweeps) and not common.uses_hook(config)
  mesh = common.evaluation_mesh(common.read_run(config.run_dir).config if of_run else None)
  return make_setup(tr[0], tr[1], va[0], va[1], splits["train"].num_classes,
                    common.sigma_grid(config.sigmas, config.num_sigmas),
                    num_images=config.num_images, train_ids=tr[2], val_ids=va[2],
                    subset_seed=config.subset_seed, noise_seed=config.noise_seed,
                    batch_size=config.batch_size,
                    chunk_size=config.chunk_size, mesh=mesh)


def check_against_data(config, setup: Setup, sweeps) -> None:
  """The checks of the chosen sweeps that need the data, run before the first sweep (so no sweep
  runs, and nothing is written, for a config that a later sweep would refuse). Raises ConfigError
  naming the field."""
  if "granularity" in sweeps:
    g = config.granularity
    n = len(setup.train_all)
    too_many = [k for k in g.ks if k > n]
    if too_many:
      raise ConfigError(f"config.granularity.ks: {too_many} exceed the {n} training images that "
                        "k-means clusters (each k must be <= the number of points)")
    if g.features == "classifier":
      if g.classifier_params and not os.path.exists(os.path.expanduser(g.classifier_params)):
        raise ConfigError(f"config.granularity.classifier_params={g.classifier_params!r}: no such file")
      if not g.classifier_params and (setup.train_labels is None or setup.num_classes < 2):
        raise ConfigError("config.granularity.features='classifier' without "
                          "config.granularity.classifier_params needs class labels to train one "
                          f"(config.data.labels={config.data.labels!r})")
  if "receptive_field" in sweeps:
    check_crop_sizes(tuple(config.receptive_field.crop_sizes), setup.train_all.shape[1])


def _feature_fn(config, setup: Setup):
  g = config.granularity
  if g.features == "pixels":
    return features.pixel_features, {"features": "pixels"}
  if g.classifier_params:
    return features.load_classifier_features(g.classifier_params), {
        "features": "classifier", "classifier_params": g.classifier_params}
  if setup.train_labels is None or setup.num_classes < 2:
    raise ConfigError("config.granularity.features='classifier' without "
                      "config.granularity.classifier_params needs class labels to train one")
  # (A classifier trains on every image at once: the sets are read whole here.)
  params, acc = features.train_classifier(np.asarray(setup.train_all), setup.train_labels,
                                          setup.num_classes, g.classifier_steps, config.seed,
                                          val_images=np.asarray(setup.val_all),
                                          val_labels=setup.val_labels)
  logging.info("factors: trained a SmallCNN for the clustering features, val accuracy %.3f", acc)
  return features.classifier_features(params), {"features": "classifier",
                                                "classifier_val_accuracy": acc}


def run_sweep(name: str, config, setup: Setup, workdir: str,
              series: Optional[common.SnapshotSeries] = None) -> Dict[str, Any]:
  """One sweep's section; series: the trained sweep's snapshots (`trained_series`)."""
  d = config.model_error
  if name == "delta":
    return sweep_delta(setup, config.delta.deltas)
  if name == "granularity":
    fn, info = _feature_fn(config, setup)
    out = sweep_granularity(setup, config.granularity.ks, config.granularity.deltas,
                            include_classes=config.granularity.include_classes, feature_fn=fn,
                            seed=config.seed,
                            pseudo_label_dir=os.path.join(workdir, PSEUDO_LABEL_DIR))
    out.update(info)
    return out
  if name == "guidance":
    g = config.guidance
    return sweep_guidance(setup, g.ws, styles=tuple(g.styles), delta=d, delta_pos=g.delta_pos,
                          delta_neg=g.delta_neg)
  if name == "receptive_field":
    h = setup.train_all.shape[1]
    check_crop_sizes(tuple(config.receptive_field.crop_sizes), h)
    return sweep_receptive_field(setup, config.receptive_field.crop_sizes,
                                 config.receptive_field.deltas)
  if name == "gradient_score":
    g = config.gradient_score
    return sweep_gradient_score(setup, g.deltas, edm.gap_sigma_grid(g.num_sigmas), g.num_images)
  if name == "trained":
    return sweep_trained(config, setup, series or trained_series(config, setup), workdir)
  raise ConfigError(f"config.sweeps: unknown sweep {name!r}; allowed values {SWEEPS}")


def summarize(name: str, section: Dict[str, Any]) -> List[str]:
  """One line per curve: peak G and where (or, for the gradient score, its range over sigma)."""
  lines = []
  fmt = lambda v: "n/a" if v is None else f"{v:.4g}"
  for c in section["curves"] if name != "gradient_score" else ():
    interval = (f" (95% {fmt(c['peak_gap_low'])} to {fmt(c['peak_gap_high'])})"
                if "peak_gap_low" in c else "")
    lines.append(f"{name}: {c['label']}: peak G = {fmt(c['peak_gap'])}{interval} at sigma = "
                 f"{fmt(c['peak_sigma'])}")
  if name == "gradient_score" or "gradient_score" in section:
    curves = section["curves"] if name == "gradient_score" else section["gradient_score"]["curves"]
    for c in curves:
      s = np.asarray(c["score"], np.float64)
      lines.append(f"{name}: score {c['label']}: " + " ".join(
          "n/a" if not np.isfinite(v) else f"{v:.2f}" for v in s))
  return lines


def _settings(config, setup: Setup, train_split) -> Dict[str, Any]:
  return {"dataset": config.data.name, "subset_size": config.data.subset_size or 0,
          "labels": config.data.labels, "subset_seed": config.data.subset_seed,
          "training_set": common.training_set(config, train_split),
          "image_shape": list(setup.train_all.shape[1:]),
          "num_train_set": len(setup.train_all), "num_val_set": len(setup.val_all),
          "num_train_eval": len(setup.train_x), "num_val_eval": len(setup.val_x),
          "num_classes": setup.num_classes, "sigmas": setup.sigmas,
          "noise_seed_train": setup.noise_seed, "noise_seed_val": setup.noise_seed + 1,
          "evaluation_subset_seed": config.subset_seed,
          "model_error": config.model_error, "seed": config.seed,
          **common.devices_used(setup.mesh), "config": json.loads(config.to_json_best_effort())}


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the configured sweeps; writes WORKDIR/results.json (after every sweep) and PNGs."""
  sweeps = config_checks.entries(config.sweeps)
  splits = load_splits(config)
  if "trained" in sweeps and not common.uses_hook(config):  # the run trained on config.data's
    common.compare_with_run(  # images: checked before any sweep
        common.read_run(config.run_dir), config, splits["train"], fields=("data.",),
        remedy=f"The trained sweep measures the run in config.run_dir={config.run_dir!r} on "
               "config.data's images: use the run's data config (the saved values).")
  setup = load_setup(config, splits)
  check_against_data(config, setup, sweeps)
  # The trained sweep's snapshots (a hook: imported and checked on two images, and on the crop
  # sizes asked for) before any sweep.
  series = trained_series(config, setup) if "trained" in sweeps else None
  if series is not None and series.source == "hook" and config.trained.crop_sizes:
    _hook_crop_sizes(config, series.load(series.keys[0]).denoisers[common.HOOK_SET], setup)
  os.makedirs(workdir, exist_ok=True)  # after the data and run checks: a refusal leaves no workdir
  results = {"settings": _settings(config, setup, splits["train"]), "sweeps": {}}
  for name in sweeps:
    start = time.perf_counter()
    section = run_sweep(name, config, setup, workdir, series)
    section["wall_time_s"] = time.perf_counter() - start
    results["sweeps"][name] = jsonio.to_jsonable(section)
    results_lib.write(workdir, "factors", results)
    if config.make_plots:
      from diffgen_jax.plots import sweeps as sweep_plots  # matplotlib only when plotting
      sweep_plots.draw_sweep(name, results["sweeps"][name], workdir)
    console.progress(f"factors: {name} ({section['wall_time_s']:.1f} s)")
    for line in summarize(name, results["sweeps"][name]):
      console.progress("  " + line)
  console.summary(f"factors: results in {results_lib.path(workdir)}, plots in "
                  f"{os.path.abspath(workdir)}/")
  return results
