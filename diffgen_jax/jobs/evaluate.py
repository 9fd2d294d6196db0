"""The `evaluate` job: the denoising gap of every snapshot of a training run, against the optimal
denoiser, and the sample-level measurements (a thin shell over `evaluation.gap` and
`evaluation.samples`).

For each snapshot (EMA parameters at some images seen) it measures, on fixed subsets of the training
and validation splits with one seeded noise draw per image (paper.md section 6):
  E_train(sigma), E_val(sigma), G(sigma) = (E_val - E_train) / E_train on the 64-point grid, and the
  mean squared distance between the network's prediction and the exact empirical optimal denoiser's
  (how close the network is to exact recall); and, from the same per-image errors, membership
  inference by sigma (evaluation/membership.py: AUC and TPR at 1% FPR of telling the training
  images from the validation images), drawn in membership.png. The per-image errors of each
  snapshot are kept in WORKDIR/evaluation/per_image/<step>.npz (for bootstrapped intervals; a
  hook's snapshot: its file name without the extension, `common.output_name`).
The optimal denoiser's own errors are computed once. Results go to WORKDIR/results.json (layout:
`jobs.results`) after every snapshot, so an interrupted evaluation resumes and a new snapshot is
evaluated without recomputing the old ones; figures go to WORKDIR/evaluation/.
Sample evaluation settings: config.evaluation.samples (`defaults.sample_evaluation_config`); the
feature space of the samples' measurements is a small classifier's, the pixels, or a feature hook's
(feature="hook", features=MODULE:FUNCTION: `hooks.load_features_factory`, checked on two images
at start-up; copies are then also tested in its space).

Which snapshots (`common.SnapshotSeries`): the run's in WORKDIR (keys: steps), NVIDIA's networks
converted into WORKDIR first (config.model.checkpoint), or a hook's (config.model.denoiser =
MODULE:FUNCTION called for each file under config.model.checkpoint, `common.hook_series`; keys:
file names, in the natural order of the names; WORKDIR then only receives the results). The hook is
imported at validation and checked on two images before anything is measured (a denoiser whose
errors or samples hold NaN or Inf, at any sigma, stops the job with jobs.MeasurementError naming
it, the sigmas and the measurement: `common.require_finite`); results.json's
protocol records it (`denoiser`) and each snapshot's file (`source`); the set name is "hook".

Where it runs: one mesh over every device of every process (`common.evaluation_mesh`: data x the
run's mesh.model). Every batch is split over it (each process reads and builds only its rows of
the evaluation subsets, `common.evaluation_rows`), the snapshots are restored onto the run's
parameter sharding over it (never gathered onto a host), y* streams the training split from where
it lives (each process its share) and the results are gathered once. results.json records
settings.evaluation_devices and settings.processes. Progress: one line per snapshot, and the
library's loops report with rate and ETA (`progress`). TensorBoard (config.tensorboard, process 0):
each newly evaluated snapshot's summary in WORKDIR/tensorboard with images seen as the step
(`write_snapshot_summary`: peak G and its sigma, G at evaluation.at_sigmas, the membership AUC
peak; `write_sample_summary`: G_FD and the copy fraction when the samples are evaluated) and
gap_over_training.png as the image evaluate/gap_over_training.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from diffgen_jax import (checkpointing, config_checks, data, defaults, edm, ema, hooks, jsonio,
                         optimal, progress)
from diffgen_jax.evaluation import features as features_lib
from diffgen_jax.evaluation import gap, membership, samples
from diffgen_jax import jobs
from diffgen_jax.jobs import common, console, convert, results as results_lib
from diffgen_jax.sharding import LazyRows

FIGURES_DIR = "evaluation"  # figures, the classifier and the sample grids, under the workdir
CLASSIFIER_FILE = "classifier.npz"
GRIDS_DIR = "sample_grids"
FEATURES = defaults.SAMPLES["feature"].choices
FEATURES_FIELD = "evaluation.samples.features"
PER_IMAGE_DIR = "per_image"  # <step>.npz: (N, S) per-image errors e_train, e_val of the first EMA
MEMBERSHIP_FPR = 0.01  # the false-positive rate at which the membership TPR is read


# ------------------------------------------------------------------------------------------------
# Config


def validate_config(config) -> None:
  """The rules of the config.evaluation fields the job reads (the train job runs this too before
  training; each field alone: `defaults.EVALUATION`)."""
  e = config.evaluation
  if not common.validate_hook(config) and config.model.get("checkpoint"):
    convert.validate_config(config)
  if "samples" in e:
    validate_sample_settings(e.samples)


def sample_settings(config) -> ml_collections.ConfigDict:
  """config.evaluation.samples, or the defaults when the config has no such section; a section
  written before a field existed (a saved run's config) gets that field's default."""
  e = config.evaluation
  return _with_defaults(e.samples if "samples" in e else None)


def _with_defaults(settings) -> ml_collections.ConfigDict:
  """Sample settings with every field: the defaults (`defaults.sample_evaluation_config`) for
  those `settings` (a ConfigDict, a dict or None) lacks; `settings` itself when it lacks none."""
  full = defaults.sample_evaluation_config()
  if settings is None:
    return full
  if all(k in settings for k in full):
    return settings
  full.update(settings.to_dict() if hasattr(settings, "to_dict") else dict(settings))
  return full


def validate_sample_settings(settings) -> None:
  """Each field of config.evaluation.samples (`defaults.SAMPLES`) and the rules between them;
  also run on a saved run's settings. Raises config_checks.ConfigError naming
  config.evaluation.samples.<field>."""
  s = _with_defaults(settings)
  s = ml_collections.ConfigDict(s.to_dict() if hasattr(s, "to_dict") else s)
  p = "evaluation.samples."
  config_checks.check_settings(s, config_checks.settings_of(defaults.SAMPLES), prefix=p[:-1])
  if s.reference_images and s.reference_images < 2 * s.num_train_subsets:
    raise config_checks.ConfigError(
        f"config.{p}reference_images={s.reference_images} must be 0 (every image) or >= 2 * "
        f"config.{p}num_train_subsets = {2 * s.num_train_subsets} (each FD reference subset "
        "needs 2 images)")
  spec = s.features
  if s.feature == "hook" and not spec:
    config_checks.fail(p + "feature", "hook", f"needs config.{FEATURES_FIELD}=MODULE:FUNCTION, a "
                       "factory f() -> features(images) -> (B, F)")
  if spec and s.feature != "hook":
    config_checks.fail(FEATURES_FIELD, spec, f"is read only with config.{p}feature='hook' (now "
                       f"{s.feature!r}): add --config.{p}feature=hook to measure in its features")
  if spec:
    hooks.load_factory(spec, field=FEATURES_FIELD)  # imported now: a bad hook fails in seconds
  if s.feature == "classifier" and not s.classifier_path and s.classifier_steps < 1:
    raise config_checks.ConfigError(f"config.{p}classifier_steps must be >= 1 when the "
                                    "classifier is trained (classifier_path='')")


def check_against_data(config, train_split, val_split) -> None:
  """The evaluation's checks that need the data or the disk, run before anything trains or compiles
  (the train job calls this at start-up when it will evaluate): evaluation.num_images larger than
  a split is said (`common.used_count`: all its images are used), every label y* is queried with
  has training images (`common.check_optimal_labels`; only when evaluation.optimal or the samples
  are on: nothing else queries y*), the sample evaluation's FD references can be drawn from
  the splits' sizes, an explicit classifier file exists, and a feature hook gives features of two
  images of the data's shape (`hooks.load_features_factory`).
  Raises config_checks.ConfigError naming the field."""
  s = sample_settings(config)
  if config.evaluation.get("optimal", True) or s.enabled:  # the runs that query y* (or its probes)
    common.check_optimal_labels(config, train_split, val_split)
  for which, split in (("training", train_split), ("validation", val_split)):  # said at start-up
    common.used_count("evaluation.num_images", config.evaluation.num_images, len(split),
                      f"images of the {which} split")
  if not s.enabled:
    return
  try:
    samples.reference_size(int(s.num_samples), len(train_split), len(val_split),
                           int(s.num_train_subsets))
  except ValueError as err:
    raise config_checks.ConfigError(f"config.evaluation.samples: {err}") from None
  path = s.classifier_path if s.feature == "classifier" else ""
  if path and not os.path.exists(os.path.expanduser(path)):
    raise config_checks.ConfigError(
        f"config.evaluation.samples.classifier_path={path!r}: no such file "
        f"(feature={s.feature!r})")
  if s.feature == "hook":
    hooks.load_features_factory(s.features, train_split.shape, field=FEATURES_FIELD)


# ------------------------------------------------------------------------------------------------
# The job


def _read_results(workdir: str, protocol: Dict[str, Any]) -> Dict[str, Any]:
  results = results_lib.read_if_exists(workdir)
  if "protocol" not in results:
    return dict(results, protocol=protocol, snapshots={})
  saved = results["protocol"]
  missing = [k for k in ("subset_seed", "training_set") if k not in saved]
  if missing:  # numbers that cannot be tied to the training images they were measured on
    raise config_checks.ConfigError(
        f"{results_lib.path(workdir)} was computed before its protocol recorded which training "
        f"images were evaluated (it has no {missing}): delete it to evaluate the snapshots again")
  shown = common.differences(saved, protocol)
  if shown:
    raise config_checks.ConfigError(
        f"{results_lib.path(workdir)} was computed with another evaluation protocol (saved vs "
        f"now): {shown}. Use the same evaluation config, or delete the file to start over.")
  return results


def snapshot_series(config, workdir: str, train_split, num_classes: int,
                    mesh) -> common.SnapshotSeries:
  """The snapshots the job measures: a hook's files (config.model.denoiser; imported and checked
  on two images of the data's shape now, `common.hook_series`) or the run's in workdir, each EMA
  set measured as the network config.model describes (for num_classes classes)."""
  if common.uses_hook(config):
    return common.hook_series(config.model.denoiser, config.model.checkpoint, train_split.shape,
                              train_split.num_classes)
  network = common.network_of(config, num_classes, "float32")
  return common.run_series(workdir, network, config.training.sigma_data, mesh)


def run(config, workdir: str, job: str = "evaluate") -> Dict[str, Any]:
  hook = common.uses_hook(config)
  if config.model.get("checkpoint") and not hook:  # NVIDIA's networks: converted first
    convert.run(config, workdir)
    config = convert.converted_config(config, workdir)
  e = config.evaluation
  if not hook and (not os.path.isdir(workdir) or not checkpointing.snapshot_steps(workdir)):
    raise FileNotFoundError(f"no training snapshots under {os.path.abspath(workdir)}/"
                            f"{checkpointing.SNAPSHOT_DIR}: train first (job 'train') or check --workdir")
  train_split = common.load_split(config, "train")
  val_split = common.load_split(config, "validation")
  if not hook:
    _check_matches_run(workdir, config, train_split)
  check_against_data(config, train_split, val_split)
  num_classes = train_split.num_classes
  if config.model.get("checkpoint") and not hook:  # the published network's own classes
    num_classes = config.model.num_classes
    if num_classes and num_classes != train_split.num_classes:
      raise config_checks.ConfigError(
          f"config.model.checkpoint is a network of {num_classes} classes, config.data "
          f"{config.data.name!r} has {train_split.num_classes}")
  # One mesh over every device of every process (data x the run's model axis): every batch is
  # split over it, and the snapshots are restored onto the run's parameter sharding over it.
  mesh = common.evaluation_mesh(None if hook else config)
  # The snapshots: a hook is checked here, before anything is measured.
  series = snapshot_series(config, workdir, train_split, num_classes, mesh)
  sigmas = common.sigma_grid(e.sigmas, e.num_sigmas)
  # The evaluation subsets and the training set are sources read where they are used: each
  # process reads only the rows its devices evaluate (or hold, for y*).
  # (a count larger than a split was said at start-up: `check_against_data`)
  train_x, train_y, train_ids = common.evaluation_rows(train_split, e.num_images, e.subset_seed)
  val_x, val_y, val_ids = common.evaluation_rows(val_split, e.num_images, e.subset_seed,
                                                 "validation")
  protocol = {"sigmas": sigmas.tolist(), "num_train": len(train_x), "num_val": len(val_x),
              "noise_seed": e.noise_seed, "evaluation_subset_seed": e.subset_seed,
              "dataset": config.data.name,
              "subset_size": config.data.subset_size or 0, "labels": config.data.labels,
              "subset_seed": config.data.subset_seed,
              "training_set": common.training_set(config, train_split)}
  if config.data.get("subset_side", 1) != 1:  # (side-1 protocols keep their earlier form)
    protocol["subset_side"] = config.data.subset_side
  if hook:
    protocol["denoiser"] = series.spec
  out_dir = os.path.join(workdir, FIGURES_DIR)
  os.makedirs(out_dir, exist_ok=True)
  results = _read_results(workdir, protocol)
  save = lambda: results_lib.write(workdir, job, results)

  results["settings"] = common.devices_used(mesh)
  splits = ((train_x, train_y, train_ids), (val_x, val_y, val_ids))
  # Different seeds for the two splits: independent noise draws (ids overlap across splits).
  gap_kw = dict(noise_seeds=(e.noise_seed, e.noise_seed + 1), batch_size=e.batch_size, mesh=mesh)
  todo = [key for key in series.keys if key not in results["snapshots"]]
  # The exact optimal denoiser streams the whole training split from where it lives, split over
  # the mesh (each process reads its share); evaluation.optimal=False skips it (and the
  # model-vs-optimal distance).
  use_optimal = e.get("optimal", True)
  exact = None
  if use_optimal and ("optimal" not in results or (e.model_vs_optimal and todo)):
    exact = optimal.empirical_optimal_denoiser(*common.evaluation_rows(train_split)[:2], mesh=mesh)
  if use_optimal and "optimal" not in results:
    console.progress(f"evaluate: optimal denoiser on {len(train_x)} + {len(val_x)} images x "
                     f"{len(sigmas)} sigmas")
    opt = gap.train_val_gap(exact, *splits, sigmas, interval=False, **gap_kw)
    for split_name in ("train", "val"):
      common.require_finite(opt[f"e_{split_name}"], denoiser="the empirical optimal denoiser y*",
                            sigmas=sigmas, measurement=f"its errors E_{split_name}")
    # (No gap for the optimal denoiser: its E_train is 0 where it recalls the training images.)
    results["optimal"] = {"e_train": opt["e_train"].tolist(), "e_val": opt["e_val"].tolist()}
  save()

  board = common.tensorboard_writer(config, workdir)
  try:
    with progress.track("evaluate: snapshots", len(todo), "snapshots") as bar:
      for key in todo:
        snapshot = series.load(key, e.ema)
        names = list(snapshot.denoisers)
        entry = {"images_seen": snapshot.meta["images_seen"], "ema": {}}
        if "source" in snapshot.meta:  # (a hook's file)
          entry["source"] = snapshot.meta["source"]
        for name in names:
          entry["ema"][name] = _measure_snapshot(
              snapshot.denoisers[name], exact if e.model_vs_optimal else None, sigmas, splits,
              gap_kw, per_image_path=(os.path.join(out_dir, PER_IMAGE_DIR,
                                           f"{common.output_name(key)}.npz")
                              if name == names[0] else None),
              denoiser=series.describe(key, name))
        results["snapshots"][key] = entry
        peak_sigma, peak_value = gap.peak(sigmas, entry["ema"][names[0]]["gap"])
        console.progress(f"evaluate: snapshot {key} ({entry['images_seen']} images): peak G = "
                         f"{peak_value:.4f} at sigma = {peak_sigma:.3g}")
        save()
        if board is not None:
          summary = summarize(results, sigmas, e.at_sigmas)
          write_snapshot_summary(board, summary, _summary_step(summary, results, key))
        bar.update(1)

    results["summary"] = summarize(results, sigmas, e.at_sigmas)
    save()
    if jax.process_index() == 0:  # (the figures: one writer)
      draw(results, sigmas, out_dir)
    if board is not None and todo:  # (a re-run that evaluated nothing new writes nothing)
      _board_figure(board, os.path.join(out_dir, "gap_over_training.png"),
                    results["summary"]["images_seen"][-1])
    settings = sample_settings(config)
    if settings.enabled:
      before = dict(results.get("samples", {}).get("snapshots", {}))

      def save_samples(section):
        results["samples"] = section
        save()
        if board is not None:
          write_sample_summary(board, section, before)

      s = results["summary"]
      save_samples(evaluate_samples(
          config, workdir, series, train_split, val_split, results.get("samples"),
          save=save_samples, gap_peaks=dict(zip(s["images_seen"], s["peak_gap"]))))
  finally:
    if board is not None:
      board.close()
  s = results["summary"]
  sample_summary = results.get("samples", {}).get("summary", {})
  interval = (f" (95% interval {s['peak_gap_low'][-1]:.4f} to {s['peak_gap_high'][-1]:.4f})"
              if s.get("peak_gap_low") and s["peak_gap_low"][-1] is not None else "")
  console.summary(f"Denoising gap of {workdir} (last snapshot, {s['images_seen'][-1]} images "
                  f"seen): peak G = {s['peak_gap'][-1]:.4f}{interval} at sigma = "
                  f"{s['peak_sigma'][-1]:.3g}.")
  if sample_summary:
    console.summary(sample_summary_line(results["samples"]))
    baselines = results["samples"].get("baselines") or {}
    scale = {k: baselines[k]["features"]["gap"] for k in ("real", "copier") if baselines.get(k)}
    if scale:  # G_FD's scale: a perfect generalizer's and a perfect memorizer's
      warning = baseline_warning(baselines)
      console.summary("G_FD's scale (features): " + ", ".join(
          f"{'fresh real images' if k == 'real' else 'a copier of training images'} {v:.4f}"
          for k, v in scale.items()) + "." + (f" Unreliable: {warning}." if warning else ""))
  console.summary(f"Results in {results_lib.path(workdir)}, figures in {out_dir}/")
  return results


def sample_summary_line(section: Mapping[str, Any]) -> str:
  """The final summary's line of a "samples" section: G_FD of the last snapshot in the feature
  space and in pixels (once when the feature space is the pixels), its copy fraction and control,
  each with its 95% interval where the summary keeps one."""
  summary, feature = section["summary"], feature_name(section["protocol"])

  def shown(key, digits):
    low, high = (summary.get(f"{key}_{end}", [None])[-1] for end in ("low", "high"))
    ends = f" [{low:.{digits}f}, {high:.{digits}f}]" if None not in (low, high) else ""
    return f"{summary[key][-1]:.{digits}f}{ends}"

  fd = f"{shown('gap_fd_features', 4)} ({feature} features), " if feature != "pixels" else ""
  return (f"Samples: Frechet-distance gap G_FD = {fd}{shown('gap_fd_pixels', 4)} (pixels); "
          f"copies of training images: {shown('copy_fraction', 3)} (validation control "
          f"{summary['copy_fraction_validation_control'][-1]:.3f}); [95%] over the samples.")


def _summary_step(summary, results, key: str):
  """The entry of summary["steps"] (`_ordered`) of the snapshot `key`."""
  return summary["steps"][checkpointing.snapshot_order(results["snapshots"]).index(key)]


def _measure_snapshot(denoise, exact, sigmas, splits, gap_kw, per_image_path: Optional[str],
                      denoiser: str = "the denoiser") -> Dict[str, Any]:
  """One EMA set's record: E_train, E_val, G, the distance to the optimal denoiser `exact` (when
  given; from the same pass of the network) and membership inference from the per-image errors
  (training images are members). splits: ((x, y, ids) of the training images, of the validation
  images); gap_kw: `gap.train_val_gap`'s keywords (noise seeds, batch size, mesh).
  per_image_path: where the (N, S) per-image errors are kept for bootstrapped intervals (None: not kept). denoiser: its name in
  words (`SnapshotSeries.describe`) for jobs.MeasurementError, raised when an error is not
  finite (`common.require_finite`)."""
  g = gap.train_val_gap(denoise, *splits, sigmas, reference=exact, **gap_kw)
  record, per_image = {}, {"train": g["per_image_train"], "val": g["per_image_val"]}
  for split_name, (x, _, _) in zip(("train", "val"), splits):
    images = f"{len(x)} {'training' if split_name == 'train' else 'validation'} images"
    common.require_finite(per_image[split_name], denoiser=denoiser, sigmas=sigmas,
                          measurement=f"the denoising gap and membership (E_{split_name} on "
                                      f"{images})")
    if exact is not None:
      common.require_finite(g[f"to_reference_per_image_{split_name}"], denoiser=denoiser,
                            sigmas=sigmas, measurement=f"the distance to y* on {images}")
      record[f"to_optimal_{split_name}"] = g[f"to_reference_{split_name}"].tolist()
    record[f"e_{split_name}"] = g[f"e_{split_name}"].tolist()
  # G with its 95% interval over the evaluation images (each split resampled independently).
  for k in ("gap", "gap_low", "gap_high"):
    record[k] = g[k].tolist()
  mi = membership.membership_by_sigma(per_image["train"], per_image["val"], fpr=MEMBERSHIP_FPR)
  record["membership"] = {k: mi[k].tolist() for k in ("auc", "auc_low", "auc_high", "tpr",
                                                      "tpr_low", "tpr_high")}
  record["membership"]["fpr"] = mi["fpr"]
  if per_image_path is not None and jax.process_index() == 0:
    with jsonio.atomic_open(per_image_path, "wb") as f:
      np.savez(f, e_train=per_image["train"].astype(np.float32),
               e_val=per_image["val"].astype(np.float32), sigmas=sigmas)
  return record


# ------------------------------------------------------------------------------------------------
# TensorBoard: each snapshot's summary, with images seen as the step (process 0's writer)

BOARD_PREFIX = "evaluate/"
# The sample-level scalars written per snapshot: results["samples"]["summary"] key -> tag.
SAMPLE_SCALARS = {"gap_fd_features": "gap_fd_features", "gap_fd_pixels": "gap_fd_pixels",
                  "copy_fraction": "copy_fraction"}


def write_snapshot_summary(board, summary: Mapping[str, Any], step: int) -> None:
  """The scalars of snapshot `step` from the evaluate job's summary (`summarize`), at its images
  seen: evaluate/peak_gap, evaluate/peak_sigma, evaluate/gap_at_sigma/<sigma> (each of
  evaluation.at_sigmas on the grid) and evaluate/membership_peak_auc."""
  i = list(summary["steps"]).index(step)
  seen = int(summary["images_seen"][i])
  scalars = {"peak_gap": summary["peak_gap"][i], "peak_sigma": summary["peak_sigma"][i]}
  for sigma, values in summary.get("gap_at_sigmas", {}).items():
    scalars[f"gap_at_sigma/{sigma}"] = values[i]
  if "membership_peak_auc" in summary:
    scalars["membership_peak_auc"] = summary["membership_peak_auc"][i]
  for tag, value in scalars.items():
    board.add_scalar(BOARD_PREFIX + tag, float(value), seen)
  board.flush()


def write_sample_summary(board, section: Mapping[str, Any], before: Mapping[str, Any]) -> None:
  """The sample-level scalars (G_FD in the feature space and in pixels, the copy fraction; keys of
  SAMPLE_SCALARS in section["summary"]) of every snapshot whose record differs from `before`
  (the records the job started with: those were written by an earlier run), at its images seen."""
  summary = section.get("summary") or {}
  for i, step in enumerate(summary.get("steps", [])):
    if section["snapshots"].get(str(step)) == before.get(str(step)):
      continue
    for key, tag in SAMPLE_SCALARS.items():
      if key in summary:
        board.add_scalar(BOARD_PREFIX + tag, float(summary[key][i]), int(summary["images_seen"][i]))
  board.flush()


def _board_figure(board, path: str, images_seen: int) -> None:
  """A PNG figure (e.g. gap_over_training.png) as the image evaluate/<its name> at images_seen."""
  import matplotlib.image  # pylint: disable=import-outside-toplevel
  picture = matplotlib.image.imread(path)[..., :3]  # RGBA in [0, 1] -> RGB
  board.add_image(BOARD_PREFIX + os.path.splitext(os.path.basename(path))[0], picture,
                  int(images_seen), dataformats="HWC")
  board.flush()


def _ordered(results):
  """(steps, images seen, first EMA set's records) of the evaluated snapshots, in training order
  (`samples.ordered`: a run's steps as ints, a hook's file names)."""
  steps, entries = samples.ordered(results)
  records = [entry["ema"][ema.pick(entry["ema"])[0]] for entry in entries]
  return steps, [entry["images_seen"] for entry in entries], records


def summarize(results, sigmas, at_sigmas) -> Dict[str, Any]:
  steps, seen, records = _ordered(results)
  gaps = np.array([r["gap"] for r in records])
  e_val = np.array([r["e_val"] for r in records])
  peaks = [gap.peak(sigmas, g) for g in gaps]
  summary = {"steps": steps, "images_seen": seen,
             "peak_sigma": [p[0] for p in peaks], "peak_gap": [p[1] for p in peaks]}
  if all("gap_low" in r for r in records):  # the peak's 95% interval, at the peak's sigma
    at = [edm.peak_index(g) for g in gaps]
    summary["peak_gap_low"] = [r["gap_low"][i] if i >= 0 else None for r, i in zip(records, at)]
    summary["peak_gap_high"] = [r["gap_high"][i] if i >= 0 else None for r, i in zip(records, at)]
  if len(steps) > 1:
    onset = gap.overfitting_onset(e_val, np.asarray(seen))
    summary["onset_images_seen"] = np.asarray(onset.images_seen).tolist()
    summary["onset_rises"] = np.asarray(onset.rises).tolist()
  if all("membership" in r for r in records):
    aucs = np.array([r["membership"]["auc"] for r in records])
    # A NaN AUC is never the peak; a snapshot whose AUCs are all NaN has peak AUC and sigma NaN.
    peaks = [edm.peak(sigmas, a) for a in aucs]
    summary["membership_peak_auc"] = [p[1] for p in peaks]
    summary["membership_peak_sigma"] = [p[0] for p in peaks]
    summary["membership_peak_tpr"] = [float(np.max(r["membership"]["tpr"])) for r in records]
  at = [s for s in at_sigmas if sigmas[0] <= s <= sigmas[-1]]
  if at:
    _, values = gap.gap_vs_images(sigmas, gaps, seen, at)
    summary["gap_at_sigmas"] = {f"{s:g}": values[:, j].tolist() for j, s in enumerate(at)}
  return summary


def draw(results, sigmas, out_dir: str) -> None:
  from diffgen_jax.plots import gap as gap_plots  # pylint: disable=import-outside-toplevel
  _, seen, records = _ordered(results)
  s = results["summary"]
  last = records[-1]
  gap_plots.gap_over_training(os.path.join(out_dir, "gap_over_training.png"), sigmas,
                              [r["gap"] for r in records], seen, onset_sigma=s["peak_sigma"][-1],
                              band=(last["gap_low"], last["gap_high"]) if "gap_low" in last
                              else None)
  opt = results.get("optimal", {})
  gap_plots.error_curves(os.path.join(out_dir, "errors.png"), sigmas, records[-1]["e_train"],
                         records[-1]["e_val"], opt.get("e_train"), opt.get("e_val"),
                         title=f"Denoising error after {seen[-1]} images")
  if all("membership" in r for r in records):
    from diffgen_jax.plots import membership as membership_plots  # pylint: disable=import-outside-toplevel
    last = records[-1]["membership"]
    membership_plots.membership_over_training(
        os.path.join(out_dir, "membership.png"), sigmas, [r["membership"]["auc"] for r in records],
        [r["membership"]["tpr"] for r in records], seen, fpr=last["fpr"],
        auc_band=(last["auc_low"], last["auc_high"]))
  if "gap_at_sigmas" in s:
    at = [float(k) for k in s["gap_at_sigmas"]]
    values = np.stack([s["gap_at_sigmas"][k] for k in s["gap_at_sigmas"]], axis=1)
    onsets = None
    if "onset_images_seen" in s:
      nearest = [int(np.argmin(np.abs(np.log(sigmas) - np.log(a)))) for a in at]
      onsets = [s["onset_images_seen"][i] for i in nearest]
    gap_plots.gap_vs_images(os.path.join(out_dir, "gap_vs_images.png"), seen, values, at, onsets)


def _check_matches_run(workdir: str, config, train_split) -> None:
  """The config must describe the run that wrote the snapshots: the same training images (data.*
  and the training set's fingerprint), network (model.*) and sigma_data (`common.READER_FIELDS`).
  Workdirs of converted NVIDIA networks have no run record (their config is the files').
  Raises config_checks.ConfigError naming each differing field (saved vs now)."""
  if not os.path.exists(os.path.join(workdir, common.RUN_FILE)) or config.model.get("checkpoint"):
    return
  common.compare_with_run(
      common.read_run(workdir), config, train_split,
      remedy=f"Evaluate the run in {workdir} with the values it was trained with (the saved ones; "
             "its training images, network and sigma_data), or use another --workdir.")


# ------------------------------------------------------------------------------------------------
# The sample-level side (config -> `evaluation.samples`)


def _feature_source(settings, workdir: str) -> Dict[str, Any]:
  if settings.feature == "pixels":
    return {"kind": "pixels"}
  if settings.feature == "hook":
    return {"kind": "hook", "spec": settings.features}
  path = settings.classifier_path or os.path.join(workdir, FIGURES_DIR, CLASSIFIER_FILE)
  return {"kind": "classifier", "path": os.path.abspath(os.path.expanduser(path))}


def feature_name(protocol: Mapping[str, Any]) -> str:
  """The feature space of a sample protocol in words: "classifier", "pixels" or the hook."""
  feature = protocol["feature"]
  return feature.get("spec") or feature["kind"]


def sample_protocol(settings, config, workdir: str, num_train: int, num_val: int) -> Dict[str, Any]:
  """What the recorded numbers depend on: a different protocol invalidates earlier results.
  "reference_images" records the cap, the seed of its subsets (`samples.reference_subset`) and
  the number of rows of each split featurized."""
  s = _with_defaults(settings)
  cap = int(s.reference_images)
  try:
    m = samples.reference_size(int(s.num_samples), num_train, num_val, int(s.num_train_subsets),
                               cap)
  except ValueError as err:
    raise config_checks.ConfigError(f"config.evaluation.samples: {err}") from None
  rows = {split: len(samples.reference_subset(size, cap, int(s.seed), split))
          for split, size in (("train", num_train), ("val", num_val))}
  probes = min(int(s.probe_size), int(s.num_samples), num_train, num_val)
  # (Recorded only when probe_size is clamped, so that earlier protocols stay equal.)
  used = {"probe_size_used": probes} if probes != int(s.probe_size) else {}
  return {"num_samples": int(s.num_samples), "num_steps": int(s.num_steps), "seed": int(s.seed),
          "feature": _feature_source(s, workdir), "num_train_subsets": int(s.num_train_subsets),
          "reference_size": m, "early_stop_every": int(s.early_stop_every),
          "overlap": bool(s.overlap), "nn_similarity": bool(s.nn_similarity),
          "probe_size": int(s.probe_size), "copy_ratio": float(s.copy_ratio),
          "grid_size": int(s.grid_size), "noise_seed": int(config.evaluation.noise_seed),
          "num_train": int(num_train), "num_val": int(num_val),
          "reference_images": {"cap": cap, "seed": int(s.seed), **rows}, **used}


def _classifier_labels(config, train_split):
  """Class labels of the training split (the run's own if it uses them, else read from the data)."""
  if config.data.labels == "class" and train_split.num_classes >= 2:
    return np.asarray(train_split.labels), train_split.num_classes
  try:
    split = data.load_split(config.data.name, "train", data_dir=config.data.data_dir or None,
                            subset_size=config.data.subset_size or None,
                            subset_seed=config.data.subset_seed,
                            subset_side=config.data.get("subset_side", 1), labels="class")
  except ValueError as err:
    raise config_checks.ConfigError(
        f"config.evaluation.samples.feature='classifier' trains a classifier on class labels, but "
        f"{config.data.name!r} has none ({err}). Set classifier_path to a trained one, or use "
        "feature='pixels' or 'hook'") from None
  return np.asarray(split.labels), split.num_classes


def _features_fn(settings, config, workdir, train_split, train_images, val_split, val_images,
                 feature_rows):
  """(features_fn, info) of the chosen feature space; trains and caches the classifier if needed,
  on the featurized rows of each split (`samples.reference_subset`: at most
  settings.reference_images images, read batch by batch from the sources train_images /
  val_images, never whole). Every process trains the same classifier (seeded, one device each);
  process 0 writes the cached file."""
  source = _feature_source(settings, workdir)
  if settings.feature == "pixels":
    return features_lib.pixel_features, source
  if settings.feature == "hook":  # (checked on two images; run on the host, outside jit)
    return features_lib.host_features(hooks.load_features_factory(
        settings.features, train_split.shape, field=FEATURES_FIELD)), source
  path = source["path"]
  if not os.path.exists(path):
    if settings.classifier_path:  # an explicit path must exist
      features_lib.load_params(path)  # raises FileNotFoundError naming it
    labels, num_classes = _classifier_labels(config, train_split)
    rows = feature_rows["train"]
    val_labels = None
    if config.data.labels == "class" and val_split.num_classes == num_classes:
      val_labels = np.asarray(val_split.labels[feature_rows["val"]])
    console.progress(f"evaluate: training the feature classifier on {len(rows)} images "
                     f"({settings.classifier_steps} steps)")
    params, accuracy = features_lib.train_classifier(
        LazyRows(train_images, rows), labels[rows], num_classes,
        steps=settings.classifier_steps, seed=settings.seed,
        val_images=LazyRows(val_images, feature_rows["val"]) if val_labels is not None else None,
        val_labels=val_labels)
    if jax.process_index() == 0:
      features_lib.save_params(path, params)
      logging.info("Feature classifier saved to %s (accuracy %.3f on %s)", path, accuracy,
                   "validation" if val_labels is not None else "training")
    source = dict(source, trained=True, accuracy=float(accuracy),
                  accuracy_on="validation" if val_labels is not None else "training")
    return features_lib.classifier_features(params), source
  try:
    return features_lib.load_classifier_features(path), source
  except jsonio.DamagedFileError as err:
    if settings.classifier_path:
      raise
    raise jsonio.DamagedFileError(f"{err}; it is this workdir's cached feature classifier: delete "
                                  "it and re-run, the evaluation then trains it again") from None


def _unit_images(split) -> LazyRows:
  """A split's images as a source of float32 images in [-1, 1] (`data.to_unit_range`), decoded
  only where rows are read."""
  return LazyRows(split.images, np.arange(len(split)), transform=data.to_unit_range)


def sample_setup(config, workdir: str, train_split, val_split, *, settings=None):
  """(samples.Setup, protocol, feature info) for a run's config: the splits as sources (never
  held whole), labels, feature extractor (trained and cached under WORKDIR/evaluation if needed,
  or a feature hook's, with copies then tested in its space too) and reference statistics, every
  batch split over `common.evaluation_mesh()`.

  Raises FileNotFoundError (naming the path) for a missing classifier file, ConfigError naming
  config.evaluation.samples.features for a feature hook that fails its check.
  """
  s = sample_settings(config) if settings is None else _with_defaults(settings)
  validate_sample_settings(s)
  protocol = sample_protocol(s, config, workdir, len(train_split), len(val_split))
  if s.overlap or s.nn_similarity:  # (the probes' only readers)
    common.used_count("evaluation.samples.probe_size", s.probe_size,
                      min(int(s.num_samples), len(train_split), len(val_split)),
                      "trajectories and images per split the probes can use (num_samples and "
                      "the splits' sizes)")
  train_images, val_images = _unit_images(train_split), _unit_images(val_split)
  cap, seed = int(s.reference_images), int(s.seed)
  feature_rows = {name: samples.reference_subset(len(split), cap, seed, name)
                  for name, split in (("train", train_split), ("val", val_split))}
  features_fn, info = _features_fn(s, config, workdir, train_split, train_images, val_split,
                                   val_images, feature_rows)
  setup = samples.prepare(
      train_images, val_images, features_fn, train_labels=train_split.labels,
      val_labels=val_split.labels, train_ids=train_split.ids, val_ids=val_split.ids,
      num_classes=train_split.num_classes, num_samples=int(s.num_samples),
      num_steps=int(s.num_steps), seed=seed, num_train_subsets=int(s.num_train_subsets),
      early_stop_every=int(s.early_stop_every), overlap=bool(s.overlap),
      nn_similarity=bool(s.nn_similarity), probe_size=int(s.probe_size),
      copy_ratio=float(s.copy_ratio), grid_size=int(s.grid_size),
      batch_size=int(config.evaluation.batch_size), noise_seed=int(config.evaluation.noise_seed),
      reference_images=cap, mesh=common.evaluation_mesh(), feature_copies=s.feature == "hook")
  return setup, protocol, info


def evaluate_samples(config, workdir: str, series: common.SnapshotSeries, train_split, val_split,
                     previous: Optional[Mapping[str, Any]] = None, *,
                     save: Optional[Callable[[Dict[str, Any]], None]] = None,
                     gap_peaks: Optional[Mapping[Any, float]] = None, plots: bool = True
                     ) -> Dict[str, Any]:
  """Sample-level evaluation of the snapshots of `series` (each one's first EMA set).

  Args:
    config: the run's config; settings from config.evaluation.samples (defaults if absent),
      batch size and noise seed from config.evaluation.
    series: the snapshots (`snapshot_series`: a run's, or a hook's); train_split, val_split:
      `common.load_split`. The classifier (feature="classifier") is cached under workdir.
    previous: the "samples" section of earlier results (or None): snapshots it holds with the same
      protocol are not recomputed, unless their record's G_FD interval is not
      `samples.FD_INTERVAL` (an older evaluation).
    save: called with the section after every newly evaluated snapshot (e.g. to write results.json).
    gap_peaks: optional {images_seen: peak denoising gap} drawn next to G_FD.
    plots: draw the figures into WORKDIR/evaluation at the end.

  Returns:
    The updated section {"protocol", "feature", "snapshots": {key: record}, "summary"}.
  """
  s = sample_settings(config)
  validate_sample_settings(s)
  previous = dict(previous or {})
  if not s.enabled:
    return previous
  protocol = sample_protocol(s, config, workdir, len(train_split), len(val_split))
  if previous and previous.get("protocol") != protocol:
    logging.warning("Sample evaluation settings changed (saved vs now: %s): evaluating every "
                    "snapshot afresh.", common.differences(previous.get("protocol") or {},
                                                           protocol))
    previous = {}
  section = {"protocol": protocol, "feature": previous.get("feature", {}),
             "snapshots": dict(previous.get("snapshots", {}))}
  if "baselines" in previous:
    section["baselines"] = previous["baselines"]
  keys = list(series.keys)
  chosen = keys if s.snapshots == "all" else keys[-1:]
  # A record whose "fd_interval" is not today's (none: older than the G_FD bootstrap) is measured
  # again (the same seed gives the same G_FD), so that every point of the curve carries the same
  # interval.
  todo = [key for key in chosen
          if section["snapshots"].get(key, {}).get("fd_interval") != samples.FD_INTERVAL]
  out_dir = os.path.join(workdir, FIGURES_DIR)
  if todo:
    ctx, _, info = sample_setup(config, workdir, train_split, val_split, settings=s)
    # (Keeps the accuracy recorded when the classifier was trained by an earlier call.)
    section["feature"] = {**section["feature"], **(info or {})}
    section["baselines"] = ctx.baselines  # G_FD's scale: fresh real images, a copier
    warning = baseline_warning(ctx.baselines)
    if warning:
      logging.warning("%s", warning)
    for key in todo:
      snapshot = series.load(key, "first")
      (name, denoise), = snapshot.denoisers.items()
      result = measure_samples(ctx, denoise, series.describe(key, name),
                               f"deterministic Heun, {s.num_steps} steps, no guidance")
      record = dict(result.record, images_seen=int(snapshot.meta["images_seen"]), ema=name)
      section["snapshots"][key] = record
      if result.grid and jax.process_index() == 0:  # every process holds the same numbers
        with jsonio.atomic_open(os.path.join(out_dir, GRIDS_DIR,
                                             f"{common.output_name(key)}.npz"), "wb") as f:
          np.savez(f, **result.grid)
      fd, copies = record["fd"], record["copy_fraction"]
      shown = lambda r: f"{r['gap']:.4f}" + (f" [{r['gap_low']:.4f}, {r['gap_high']:.4f}]"
                                             if "gap_low" in r else "")
      in_features = f"{shown(fd['features'])} (features), " if s.feature != "pixels" else ""
      console.progress(f"evaluate: samples of snapshot {key} ({record['images_seen']} images): "
                       f"G_FD = {in_features}{shown(fd['pixels'])} (pixels"
                       + ("; [95% over the samples]" if "gap_low" in fd["pixels"] else "")
                       + f"); copies {copies['samples']:.3f}"
                       + (f" (pixels), {copies['features']:.3f} (features)"
                          if "features" in copies else ""))
      section["summary"] = samples.summarize(section)
      if save is not None:
        save(section)
  section["summary"] = samples.summarize(section)
  if plots and section["snapshots"] and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    draw_samples(section, out_dir, gap_peaks)
  return section


def baseline_warning(baselines: Optional[Mapping[str, Any]]) -> str:
  """A line saying why G_FD's scale (`samples.fd_baselines`) is unreliable: a copier below fresh
  real images ("inverted") or fewer samples than feature dimensions ("note"); "" when neither."""
  if not baselines:
    return ""
  parts = []
  if baselines.get("inverted"):
    parts.append(f"G_FD's scale is inverted in {' and '.join(baselines['inverted'])} (a copier of "
                 "training images scores below fresh real images)")
  if baselines.get("note"):
    parts.append(baselines["note"])
  return ("; ".join(parts) + ": read G_FD against it with care (more samples, "
          "config.evaluation.samples.num_samples, narrow it)") if parts else ""


def measure_samples(ctx, denoise, denoiser: str, sampler: str):
  """`samples.evaluate_denoiser(ctx, denoise)`; samples that hold NaN or Inf (a diverged
  trajectory) raise jobs.MeasurementError naming `denoiser` (`SnapshotSeries.describe`) and the
  `sampler` (its solver, steps, guidance style and weight, in words)."""
  try:
    return samples.evaluate_denoiser(ctx, denoise)
  except samples.NonFiniteSamples as err:
    raise jobs.MeasurementError(
        f"the samples of {denoiser} ({sampler}, {ctx.num_samples} samples) are not finite: {err}. "
        "The sample-level measurements need finite samples (a diverged network, or guidance or "
        "a scale that drives the sampler out of range)") from None


def draw_samples(section, out_dir: str, gap_peaks: Optional[Mapping[Any, float]] = None) -> List[str]:
  """The figures of a "samples" section into out_dir; returns the paths written."""
  from diffgen_jax.plots import samples as plots  # matplotlib only when drawing
  steps, records = samples.ordered(section)
  if not records:
    return []
  summary = section.get("summary") or samples.summarize(section)
  seen = summary["images_seen"]
  feature = feature_name(section["protocol"])
  paths = []

  def out(name):
    paths.append(os.path.join(out_dir, name))
    return paths[-1]

  peaks = None if gap_peaks is None else {float(k): float(v) for k, v in gap_peaks.items()}
  baselines = section.get("baselines")
  plots.gap_fd_vs_images(out("sample_gap_fd.png"), seen, summary["gap_fd_features"],
                         summary["gap_fd_pixels"], feature, peaks, baselines,
                         {space: (summary.get(f"gap_fd_{space}_low"),
                                  summary.get(f"gap_fd_{space}_high"))
                          for space in ("features", "pixels")
                          if summary.get(f"gap_fd_{space}_low") is not None})
  plots.early_stop_gap(out("early_stop_gap_fd.png"), [r["early_stop"]["sigmas"] for r in records],
                       [r["early_stop"]["gap"] for r in records], seen, feature, baselines)
  last = records[-1]
  if "overlap" in last:
    plots.trajectory_overlap(out("trajectory_overlap.png"), last["overlap"],
                             title=f"Trajectory overlap after {seen[-1]} images")
  if "nn_similarity_mean_over_steps" in summary:
    plots.nn_similarity(out("nn_similarity.png"), seen, summary["nn_similarity_mean_over_steps"],
                        last["nn_similarity"], feature)
  plots.copy_fraction(out("copy_fraction.png"), seen, summary["copy_fraction"],
                      summary["copy_fraction_validation_control"],
                      section["protocol"]["copy_ratio"],
                      interval=(summary["copy_fraction_low"], summary["copy_fraction_high"])
                      if "copy_fraction_low" in summary else None)
  grid_path = os.path.join(out_dir, GRIDS_DIR, f"{common.output_name(str(steps[-1]))}.npz")
  if os.path.exists(grid_path):
    with np.load(grid_path) as g:
      plots.sample_grid(out("samples_vs_nearest_train.png"), g["samples"], g["nearest"],
                        g["distances"], float(g["copy_ratio"]),
                        title=f"Samples after {seen[-1]} images (step {steps[-1]})")
  return paths
