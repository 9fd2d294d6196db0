"""The `evaluate` job: the denoising gap of every snapshot of a training run, against the optimal denoiser.

For each snapshot (EMA parameters at some images seen) it measures, on fixed subsets of the training
and validation splits with one seeded noise draw per image (paper.md section 6):
  E_train(sigma), E_val(sigma), G(sigma) = (E_val - E_train) / E_train on the 64-point grid, and the
  mean squared distance between the network's prediction and the exact empirical optimal denoiser's
  (how close the network is to exact recall).
The optimal denoiser's own errors are computed once. Results are written to
WORKDIR/evaluation/results.json after every snapshot, so an interrupted evaluation resumes and a
new snapshot is evaluated without recomputing the old ones; plots are redrawn at the end.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffgen_jax import (checkpointing, config_checks, convert_job, data, edm, jsonio, optimal,
                         sample_evaluation, trainer, training)
from diffgen_jax.evaluation import gap
from diffgen_jax.plots import gap as gap_plots

RESULTS_DIR = "evaluation"
RESULTS_FILE = "results.json"


def validate_config(config) -> None:
  trainer.validate_config(config)
  if config.model.get("checkpoint"):
    convert_job.validate_config(config)
  e = config.evaluation
  config_checks.positive(config, "evaluation.num_images")
  config_checks.positive(config, "evaluation.batch_size")
  if e.sigmas:
    try:
      edm.validate_sigma_grid(e.sigmas, "config.evaluation.sigmas")
    except ValueError as err:
      raise config_checks.ConfigError(str(err)) from None
  else:
    config_checks.positive(config, "evaluation.num_sigmas")
  config_checks.choice(config, "evaluation.ema", ("first", "all"))
  sample_evaluation.validate_config(config)


def sigma_grid(config) -> np.ndarray:
  e = config.evaluation
  return np.sort(edm.validate_sigma_grid(e.sigmas)) if e.sigmas else edm.gap_sigma_grid(e.num_sigmas)


def _read_results(path: str, protocol: Dict[str, Any]) -> Dict[str, Any]:
  if not os.path.exists(path):
    return {"protocol": protocol, "snapshots": {}}
  with open(path) as f:
    results = json.load(f)
  saved = results.get("protocol", {})
  diff = sorted(k for k in set(saved) | set(protocol) if saved.get(k) != protocol.get(k))
  if diff:
    shown = {k: (saved.get(k), protocol.get(k)) if k != "sigmas" else "(grids differ)" for k in diff}
    raise config_checks.ConfigError(
        f"{path} was computed with another evaluation protocol (saved, now): {shown}. "
        "Use the same evaluation config, or delete the file to start over.")
  return results


def run(config, workdir: str) -> Dict[str, Any]:
  if config.model.get("checkpoint"):  # NVIDIA's networks: converted into the workdir first
    convert_job.run(config, workdir)
    config = convert_job.converted_config(config, workdir)
  e = config.evaluation
  steps = checkpointing.snapshot_steps(workdir)
  if not os.path.isdir(workdir) or not steps:
    raise FileNotFoundError(f"no training snapshots under {os.path.abspath(workdir)}/"
                            f"{checkpointing.SNAPSHOT_DIR}: train first (job 'train') or check --workdir")
  mesh = None
  train_split = trainer.load_split(config, "train")
  val_split = trainer.load_split(config, "validation")
  _check_matches_run(workdir, config, train_split)
  num_classes = train_split.num_classes
  if config.model.get("checkpoint"):  # the published network's own classes (0: unconditional)
    num_classes = config.model.num_classes
    if num_classes and num_classes != train_split.num_classes:
      raise config_checks.ConfigError(
          f"config.model.checkpoint is a network of {num_classes} classes, config.data "
          f"{config.data.name!r} has {train_split.num_classes}")
  network = trainer.build_network(config.model, num_classes, "float32")
  sigmas = sigma_grid(config)
  train_x, train_y, train_ids = data.first_images(train_split, e.num_images)
  val_x, val_y, val_ids = data.first_images(val_split, e.num_images)
  protocol = {"sigmas": sigmas.tolist(), "num_train": len(train_x), "num_val": len(val_x),
              "noise_seed": e.noise_seed, "dataset": config.data.name,
              "subset_size": config.data.subset_size or 0, "labels": config.data.labels}
  out_dir = os.path.join(workdir, RESULTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, RESULTS_FILE)
  results = _read_results(path, protocol)

  kwargs = dict(batch_size=e.batch_size, mesh=mesh)
  # Different seeds for the two splits: independent noise draws (ids overlap across splits).
  train_kw = dict(kwargs, ids=train_ids, noise_seed=e.noise_seed)
  val_kw = dict(kwargs, ids=val_ids, noise_seed=e.noise_seed + 1)
  # The exact optimal denoiser needs the whole training split in memory: optional (off for
  # ImageNet-scale sets, e.g. configs/nvidia.py), then there is no model-vs-optimal distance.
  use_optimal = e.get("optimal", True)
  exact = (optimal.empirical_optimal_denoiser(*data.first_images(train_split)[:2])
           if use_optimal else None)
  if use_optimal and "optimal" not in results:
    logging.info("Optimal denoiser errors on %d + %d images x %d sigmas ...", len(train_x),
                 len(val_x), len(sigmas))
    opt_train = gap.denoising_errors(exact, train_x, train_y, sigmas, **train_kw)
    opt_val = gap.denoising_errors(exact, val_x, val_y, sigmas, **val_kw)
    # (No gap for the optimal denoiser: its E_train is 0 where it recalls the training images.)
    results["optimal"] = {"e_train": opt_train.tolist(), "e_val": opt_val.tolist()}
    jsonio.write_json(path, results)

  def network_fn(params, x, sigma, labels):
    return training.network_denoiser(network, params, config.training.sigma_data)(x, sigma, labels)

  for step in steps:
    if str(step) in results["snapshots"]:
      continue
    ema_sets, meta = checkpointing.load_snapshot(workdir, step)
    names = sorted(ema_sets) if e.ema == "all" else sorted(ema_sets)[:1]
    entry = {"images_seen": meta["images_seen"], "ema": {}}
    for name in names:
      params = jax.tree.map(jnp.asarray, ema_sets[name])
      record = {}
      for split_name, x, y, kw in (("train", train_x, train_y, train_kw), ("val", val_x, val_y, val_kw)):
        if e.model_vs_optimal and use_optimal:
          errors, dist = gap.errors_and_distance(network_fn, exact, x, y, sigmas, params=params, **kw)
          record[f"to_optimal_{split_name}"] = dist.tolist()
        else:
          errors = gap.denoising_errors(network_fn, x, y, sigmas, params=params, **kw)
        record[f"e_{split_name}"] = errors.tolist()
      record["gap"] = gap.relative_gap(record["e_val"], record["e_train"]).tolist()
      entry["ema"][name] = record
    results["snapshots"][str(step)] = entry
    first = entry["ema"][names[0]]
    peak_sigma, peak_value = gap.peak(sigmas, first["gap"])
    logging.info("snapshot %d (%d images): peak G = %.4f at sigma = %.3g", step,
                 meta["images_seen"], peak_value, peak_sigma)
    jsonio.write_json(path, results)

  results["summary"] = summarize(results, sigmas, e.at_sigmas)
  jsonio.write_json(path, results)
  draw(results, sigmas, e.at_sigmas, out_dir)
  if sample_evaluation.settings_of(config).enabled:

    def save(section):
      results["samples"] = section
      jsonio.write_json(path, results)

    s = results["summary"]
    save(sample_evaluation.evaluate_samples(
        config, workdir, network, train_split, val_split, steps, results.get("samples"), save=save,
        gap_peaks=dict(zip(s["images_seen"], s["peak_gap"]))))
  s = results["summary"]
  samples = results.get("samples", {}).get("summary", {})
  print(f"Denoising gap of {workdir} (last snapshot, {s['images_seen'][-1]} images seen): "
        f"peak G = {s['peak_gap'][-1]:.4f} at sigma = {s['peak_sigma'][-1]:.3g}.")
  if samples:
    print(f"Samples: Frechet-distance gap G_FD = {samples['gap_fd_features'][-1]:.4f} "
          f"(classifier features), {samples['gap_fd_pixels'][-1]:.4f} (pixels); copies of "
          f"training images: {samples['copy_fraction'][-1]:.3f} (validation control "
          f"{samples['copy_fraction_validation_control'][-1]:.3f}).")
  print(f"Results and plots in {out_dir}/")
  return results


def _ordered(results):
  """(steps, images seen, first EMA's records) of the evaluated snapshots, in training order."""
  steps = sorted(int(k) for k in results["snapshots"])
  entries = [results["snapshots"][str(k)] for k in steps]
  records = [entry["ema"][sorted(entry["ema"])[0]] for entry in entries]
  return steps, [entry["images_seen"] for entry in entries], records


def summarize(results, sigmas, at_sigmas) -> Dict[str, Any]:
  steps, seen, records = _ordered(results)
  gaps = np.array([r["gap"] for r in records])
  e_val = np.array([r["e_val"] for r in records])
  peaks = [gap.peak(sigmas, g) for g in gaps]
  summary = {"steps": steps, "images_seen": seen,
             "peak_sigma": [p[0] for p in peaks], "peak_gap": [p[1] for p in peaks]}
  if len(steps) > 1:
    onset = gap.overfitting_onset(e_val, np.asarray(seen))
    summary["onset_images_seen"] = np.asarray(onset.images_seen).tolist()
    summary["onset_rises"] = np.asarray(onset.rises).tolist()
  at = [s for s in at_sigmas if sigmas[0] <= s <= sigmas[-1]]
  if at:
    _, values = gap.gap_vs_images(sigmas, gaps, seen, at)
    summary["gap_at_sigmas"] = {f"{s:g}": values[:, j].tolist() for j, s in enumerate(at)}
  return summary


def draw(results, sigmas, at_sigmas, out_dir: str) -> None:
  steps, seen, records = _ordered(results)
  s = results["summary"]
  gap_plots.gap_over_training(os.path.join(out_dir, "gap_over_training.png"), sigmas,
                              [r["gap"] for r in records], seen, onset_sigma=s["peak_sigma"][-1])
  opt = results.get("optimal", {})
  gap_plots.error_curves(os.path.join(out_dir, "errors.png"), sigmas, records[-1]["e_train"],
                         records[-1]["e_val"], opt.get("e_train"), opt.get("e_val"),
                         title=f"Denoising error after {seen[-1]} images")
  if "gap_at_sigmas" in s:
    at = [float(k) for k in s["gap_at_sigmas"]]
    values = np.stack([s["gap_at_sigmas"][k] for k in s["gap_at_sigmas"]], axis=1)
    onsets = None
    if "onset_images_seen" in s:
      nearest = [int(np.argmin(np.abs(np.log(sigmas) - np.log(a)))) for a in at]
      onsets = [s["onset_images_seen"][i] for i in nearest]
    gap_plots.gap_vs_images(os.path.join(out_dir, "gap_vs_images.png"), seen, values, at, onsets)


def _check_matches_run(workdir: str, config, train_split) -> None:
  """The config must describe the run that wrote the snapshots (dataset, subset, shapes)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = {"data.name": config.data.name, "data.subset_size": config.data.subset_size,
         "data.labels": config.data.labels, "model.family": config.model.family,
         "model.preset": config.model.preset}
  then = {"data.name": saved["data"]["name"], "data.subset_size": saved["data"]["subset_size"],
          "data.labels": saved["data"]["labels"], "model.family": saved["model"]["family"],
          "model.preset": saved["model"]["preset"]}
  diff = {k: (then[k], now[k]) for k in now if then[k] != now[k]}
  if diff:
    raise config_checks.ConfigError(
        f"the config does not match the run in {workdir} (saved, now): {diff}")
