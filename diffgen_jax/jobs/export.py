"""The `export` job: a snapshot's samples (and D(x; sigma) of noised training images) as EDM
dataset zips, for the field's own scorers (EDM2's calculate_metrics.py, torch-fidelity, clean-fid).

For one snapshot of a train job's run (config.run_dir; the last snapshot or config.step; EMA set
config.ema), or of a hook's network (config.model.denoiser = MODULE:FUNCTION on the last file under
config.model.checkpoint, `common.hook_series`, with config.data's image shape, classes and
training images; checked on two images first), it writes, under WORKDIR/export/<step, or the
file's name without its extension>/:
  samples.zip                num_samples samples of the network: deterministic Heun over
                             num_steps noise levels of the Karras schedule (`samplers.sample`);
                             sample i starts from normal(fold_in(key(seed), i))
                             (`gap.image_noise`: the same sample whatever num_samples and
                             batch_size) and, for a conditional network, has the label
                             i mod num_classes;
  images.zip                 with denoised.sigmas: denoised.num_images images of the run's training
                             split (or subset), with their labels: the evaluate job's seeded rows
                             (`data.evaluation_subset`, seed denoised.subset_seed);
  denoised_sigma<s>.zip      D(y + s n_y; s) of each of those images y at each s of denoised.sigmas,
                             n_y the gap evaluation's per-image noise (seed denoised.noise_seed);
each as dataset_tool.py writes a dataset (`data.edm_zip`: PNGs in image order, labels in
dataset.json, null for an unconditional network), pixels quantized as EDM writes samples
(`data.to_pixels`; outputs clipped to [-1, 1]). Read back with `edm_zip.read_images`, or as
"edm_zip:TRAIN.zip,VALIDATION.zip".

`export_denoiser(denoise, out_dir, ...)` does this for any denoiser; the job hands it the run's
network at the snapshot (or the hook's). WORKDIR/results.json (`jobs.results`):
    {"job": "export", "schema_version": 1,
     "exports": {str(step) or file name: {"run_dir" (null for a hook), "step" (a hook's: the file
                             name), "denoiser" and "snapshot" (a hook's), "images_seen", "ema",
                             "image_shape",
                             "num_classes", "samples": {"file", "num_images", "num_steps", "seed",
                                                        "labels", "sha256"} (absent when none),
                             "denoised": {"images": {"file", "num_images", "sha256"},
                                          "noise_seed", "training_set",
                                          "sigmas": [...],
                                          "files": {"<s>": {"file", "sigma", "sha256"}}}}}}
(files relative to the workdir; "labels": "cycling" or null; one entry per exported step, so a
workdir gathers the exports of several snapshots of one run).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from diffgen_jax import checkpointing, config_checks, data, denoisers, jsonio, samplers
from diffgen_jax.config_checks import ConfigError, fail
from diffgen_jax.data import edm_zip
from diffgen_jax.evaluation import gap
from diffgen_jax.evaluation.ladder import noised_inputs
from diffgen_jax.jobs import common, console, results as results_lib
from diffgen_jax.sharding import batch_multiple, fetch, put_batch

JOB = "export"
EXPORT_DIR = "export"  # WORKDIR/export/<step or file name without extension: common.output_name>/
SAMPLES_FILE = "samples.zip"
IMAGES_FILE = "images.zip"


def denoised_file(sigma: float) -> str:
  return f"denoised_sigma{sigma:g}.zip"


# ------------------------------------------------------------------------------------------------
# Config


def validate_config(config) -> None:
  """The rules between the fields the job reads (each field alone: `defaults.EXPORT`);
  ConfigError names the field."""
  config_checks.choice(config, "job", (JOB,))
  common.validate_snapshot_source(config)  # run_dir, step, ema, data_dir; or the hook, data
  if config.num_samples == 0 and not config_checks.entries(config.denoised.sigmas):
    fail("num_samples", 0, "with config.denoised.sigmas=() exports nothing: ask for samples or "
         "for D(x; sigma) at some sigmas")


# ------------------------------------------------------------------------------------------------
# Any denoiser


class _Discard:
  """The writer of a process that does not write (multi-process runs: process 0 writes)."""
  count = 0

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def add(self, images, labels=None):
    self.count += len(images)


def _writer(path: str, write: bool):
  return edm_zip.ZipWriter(path) if write else _Discard()


def _file_record(out_dir: str, name: str, relative_to: str, write: bool) -> Dict[str, Any]:
  path = os.path.join(out_dir, name)
  return {"file": os.path.relpath(path, relative_to),
          "sha256": checkpointing.file_sha256(path) if write else ""}


def export_denoiser(denoise, out_dir: str, *, image_shape: Sequence[int], num_classes: int,
                    num_samples: int, num_steps: int = 18, seed: int = 0, batch_size: int = 256,
                    mesh=None, clean: Optional[Tuple[np.ndarray, Optional[np.ndarray],
                                                     np.ndarray]] = None,
                    sigmas: Sequence[float] = (), noise_seed: int = 0,
                    relative_to: Optional[str] = None,
                    denoiser: str = "the denoiser") -> Dict[str, Any]:
  """Writes the zips of the module docstring for `denoise` into out_dir; returns their record.

  denoise: any denoiser denoise(x, sigma, labels) of images of image_shape (H, W, C) (a pytree
    denoiser, e.g. `network_denoiser`, compiles once for every batch). num_classes: 0 for an
    unconditional denoiser, else samples are labelled i mod num_classes.
  num_samples >= 0 (0: no samples.zip), num_steps >= 1, seed >= 0, batch_size >= 1: the sampler
    runs in batches of batch_size rounded up to the mesh's data axis (the last one padded); mesh:
    optional, the batches are split over its data axis.
  clean: (images (N, H, W, C) float in [-1, 1], labels (N,) int or None, ids (N,)) for
    D(x; sigma) at each of `sigmas` (> 0), the images noised with `gap.image_noise(noise_seed,
    ids)`; None or sigmas () for none.
  relative_to: the directory the record's file names are relative to (default out_dir).
  In a multi-process run every process computes and process 0 writes.
  Raises ValueError naming the argument; jobs.MeasurementError naming `denoiser` (its name in
  words) when a sample or an output D(x; sigma) holds NaN or Inf (`common.require_finite`).
  """
  image_shape = tuple(int(s) for s in image_shape)
  for name, value, low in (("num_samples", num_samples, 0), ("num_steps", num_steps, 1),
                           ("seed", seed, 0), ("batch_size", batch_size, 1),
                           ("noise_seed", noise_seed, 0), ("num_classes", num_classes, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  sigmas = [float(s) for s in sigmas]
  if any(not np.isfinite(s) or s <= 0 for s in sigmas):
    raise ValueError(f"sigmas must be finite and > 0, got {sigmas}")
  if sigmas and clean is None:
    raise ValueError("sigmas given without the clean images to noise (clean=(images, labels, ids))")
  write = jax.process_index() == 0
  relative_to = out_dir if relative_to is None else relative_to
  if write:
    os.makedirs(out_dir, exist_ok=True)
  record: Dict[str, Any] = {"image_shape": list(image_shape), "num_classes": int(num_classes)}
  if num_samples:
    n = int(num_samples)
    batch = batch_multiple(min(int(batch_size), n), mesh)
    console.progress(f"export: {n} samples ({num_steps} Heun steps) -> {out_dir}/{SAMPLES_FILE}")
    with _writer(os.path.join(out_dir, SAMPLES_FILE), write) as out:
      for start in range(0, n, batch):
        rows = np.minimum(np.arange(start, start + batch), n - 1)
        keep = min(batch, n - start)
        noise = np.asarray(gap.image_noise(seed, rows, image_shape))
        labels = (rows % num_classes).astype(np.int32) if num_classes else None
        samples = samplers.sample(denoise, put_batch(noise, mesh),
                                  None if labels is None else put_batch(labels, mesh),
                                  num_steps=int(num_steps)).samples
        samples = fetch(samples)[:keep]
        common.require_finite(samples, denoiser=denoiser, measurement=(
            f"the samples of {SAMPLES_FILE} (deterministic Heun, {num_steps} steps, no guidance; "
            f"samples {start} to {start + keep - 1})"))
        out.add(data.to_pixels(np.clip(samples, -1.0, 1.0)),
                None if labels is None else labels[:keep])
    record["samples"] = dict(_file_record(out_dir, SAMPLES_FILE, relative_to, write),
                             num_images=n, num_steps=int(num_steps), seed=int(seed),
                             labels="cycling" if num_classes else None)
  if sigmas:
    images, labels, ids = clean
    images = np.asarray(images, np.float32)
    n = len(images)
    labels = None if labels is None else np.asarray(labels, np.int32)
    ids = np.asarray(ids)
    batch = batch_multiple(min(int(batch_size), n), mesh)
    console.progress(f"export: D(x; sigma) of {n} training images at sigmas {sigmas}")
    with _writer(os.path.join(out_dir, IMAGES_FILE), write) as out:
      out.add(data.to_pixels(images), labels)
    section = {"images": dict(_file_record(out_dir, IMAGES_FILE, relative_to, write),
                              num_images=n),
               "noise_seed": int(noise_seed), "sigmas": sigmas, "files": {}}
    call = denoisers.caller(denoise)
    for sigma in sigmas:
      name = denoised_file(sigma)
      with _writer(os.path.join(out_dir, name), write) as out:
        for start in range(0, n, batch):
          rows = np.minimum(np.arange(start, start + batch), n - 1)
          keep = min(batch, n - start)
          x = noised_inputs(images[rows], [sigma], ids=ids[rows], noise_seed=int(noise_seed))[0]
          lab = None if labels is None else put_batch(labels[rows], mesh)
          d = fetch(call(put_batch(x, mesh), np.float32(sigma), lab))[:keep]
          common.require_finite(d[..., None], denoiser=denoiser, sigmas=[sigma],
                                measurement=f"D(x; sigma) of {name}")
          out.add(data.to_pixels(np.clip(d, -1.0, 1.0)), None if labels is None else
                  labels[rows][:keep])
      section["files"][f"{sigma:g}"] = dict(_file_record(out_dir, name, relative_to, write),
                                            sigma=sigma)
    record["denoised"] = section
  return record


# ------------------------------------------------------------------------------------------------
# The job


def run(config, workdir: str) -> Dict[str, Any]:
  """Exports the snapshot; writes WORKDIR/export/<key>/ and records it in WORKDIR/results.json."""
  run_record, run_config = common.snapshot_source(config)
  hook = run_record is None
  if not hook:
    common.run_snapshot_step(config)  # (no snapshot: refused before anything is read)
  results = results_lib.read_if_exists(workdir)
  if results.get(results_lib.JOB_KEY) not in (None, JOB):
    raise ConfigError(f"{results_lib.path(workdir)} holds the results of job "
                      f"{results[results_lib.JOB_KEY]!r}: give the export job its own --workdir "
                      "(not the run's)")
  d = config.denoised
  sigmas = tuple(config_checks.entries(config.denoised.sigmas))
  train_split = None
  if hook or sigmas:  # (a hook's images: the data's shape and classes)
    train_split = common.load_split(run_config, "train")
    common.check_run_data(run_record, run_config, train_split)
  if hook:
    num_classes, image_shape = train_split.num_classes, train_split.shape
  else:
    model = run_config.model
    num_classes = int(model.num_classes)
    image_shape = (int(model.img_resolution), int(model.img_resolution), int(model.img_channels))
  # (The run's parameters replicated over every device, as the samples' batches are split.)
  series, key = common.one_snapshot(config, run_record, run_config, image_shape, num_classes,
                                    None)
  snapshot = series.load(key, config.ema)
  ema_name, denoise = next(iter(snapshot.denoisers.items()))
  meta = snapshot.meta
  clean, training_set = None, None
  if sigmas:
    # The evaluate job's draw of the training split (seeded rows: the first ones are not random).
    clean = common.evaluation_rows(train_split, int(d.num_images), int(d.subset_seed), "train",
                                   field="denoised.num_images")
    training_set = common.training_set(run_config, train_split)
  out_dir = os.path.join(workdir, EXPORT_DIR, common.output_name(key))
  record = {"run_dir": None if hook else os.path.abspath(config.run_dir),
            "step": key if hook else int(key),
            **common.hook_record(series, meta),
            "images_seen": meta.get("images_seen"), "ema": ema_name}
  record.update(export_denoiser(
      denoise, out_dir, image_shape=image_shape, num_classes=num_classes,
      num_samples=int(config.num_samples), num_steps=int(config.num_steps), seed=int(config.seed),
      batch_size=int(config.batch_size), mesh=common.evaluation_mesh(), clean=clean,
      sigmas=sigmas, noise_seed=int(d.noise_seed), relative_to=workdir,
      denoiser=series.describe(key, ema_name)))
  if training_set is not None:
    record["denoised"]["training_set"] = training_set
  results.setdefault("exports", {})[key] = record
  if jax.process_index() == 0:
    results_lib.write(workdir, JOB, jsonio.to_jsonable(results))
  written = [s["file"] for s in [record.get("samples")] if s] + (
      [record["denoised"]["images"]["file"]] + [f["file"] for f in
                                                record["denoised"]["files"].values()]
      if "denoised" in record else [])
  console.summary(f"export: snapshot {key} ({record['images_seen']} images seen) -> "
                  + ", ".join(os.path.join(workdir, f) for f in written))
  return results
