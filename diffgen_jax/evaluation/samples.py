"""Inference-side evaluation of a training run's snapshots: samples, the Frechet-distance gap,
memorization and trajectory probes (paper.md section 6).

For each evaluated snapshot (its first EMA set), ONE deterministic Heun run of `num_samples`
samples with `return_trajectory=True` (fixed noise and labels, the same for every snapshot) gives
everything below:
  * G_FD = (FD_val - FD_train) / FD_train of the samples, FD_train averaged over
    `num_train_subsets` disjoint training subsets (each reported too), in the chosen feature space
    and in raw pixels. Every reference set (each training subset and the validation reference) has
    the same size m = min(num_samples, N_train // num_train_subsets, N_val), so the finite-sample
    bias of FD is the same in FD_train and FD_val.
  * Copy fraction (Gu et al. 2023: nearest training image closer than `copy_ratio` times the
    second nearest), in pixels, against the whole training set; the control is the copy fraction of
    validation images.
  * Early-stopped sampling: the output of sampling stopped at step i is D(x_i; sigma_i) =
    `trajectory.denoised[i]`, so the same run gives G_FD(sigma_i) in feature space at every
    `early_stop_every`-th step (and the last one).
  * Trajectory overlap (`probes.trajectory_overlap`) and 1-NN cosine similarity in feature space
    (`probes.nn_similarity_probe`) on the first `probe_size` trajectories, against `probe_size`
    training and validation images noised with the gap evaluation's per-image noise.
Conditional models sample with labels cycling over the classes, unconditional ones with None.

Compilation: the network denoiser is a `jax.tree_util.Partial` over the parameters with one fixed
function, so the sampler, the probes and the feature extractors compile once for all snapshots.
The reference statistics (features of every split, Gaussian fits of the reference sets, the
validation copy control) are computed once per call.

Results: `evaluate_samples` returns the "samples" section of WORKDIR/evaluation/results.json:
    {"protocol": {...}, "feature": {...}, "snapshots": {str(step): record}, "summary": {...}}
It is incremental (snapshots already in `previous` with the same protocol are skipped; another
protocol starts the section afresh) and calls `save(section)` after every snapshot. For each
evaluated snapshot the first `grid_size` samples and their two nearest training images go to
WORKDIR/evaluation/sample_grids/<step>.npz; `draw` makes the figures (plots/samples.py).
Settings: `sample_evaluation_config()`, meant to live at config.evaluation.samples.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffgen_jax import checkpointing, config_checks, data, samplers, training
from diffgen_jax.evaluation import features as features_lib
from diffgen_jax.evaluation import frechet, probes
from diffgen_jax.evaluation.kmeans import nearest_neighbours

RESULTS_DIR = "evaluation"  # the evaluate job's output directory under the workdir
CLASSIFIER_FILE = "classifier.npz"
GRIDS_DIR = "sample_grids"
FEATURES = ("classifier", "pixels", "external")
SNAPSHOTS = ("all", "last")


def sample_evaluation_config() -> ml_collections.ConfigDict:
  """Settings of the sample evaluation (to be attached as config.evaluation.samples)."""
  return ml_collections.ConfigDict({
      "enabled": True,
      "num_samples": 512,  # samples per snapshot (deterministic Heun, fixed noise and labels)
      "num_steps": 18,  # Heun steps (noise levels of the Karras schedule)
      "seed": 0,  # the samples' noise and the choice of the FD reference subsets
      "feature": "classifier",  # "classifier" | "pixels" | "external"
      "classifier_steps": 2000,  # training steps of the SmallCNN when it must be trained
      "classifier_path": "",  # "" = WORKDIR/evaluation/classifier.npz, trained once and cached
      "external_kind": "inception_v3",  # feature="external": "inception_v3" | "dinov2" ...
      "external_path": "",  # ... with its weights at this local path (never downloaded)
      "num_train_subsets": 2,  # disjoint training subsets for FD_train (averaged)
      "early_stop_every": 1,  # early-stopped G_FD at every k-th sampling step (and the last)
      "overlap": True,  # trajectory overlap probe
      "nn_similarity": True,  # 1-NN cosine similarity probe
      "probe_size": 128,  # trajectories and training / validation images in the two probes
      "copy_ratio": 1.0 / 3.0,  # Gu et al.: a copy when d(1st NN) < ratio * d(2nd NN)
      "grid_size": 32,  # samples shown next to their nearest training images
      "snapshots": "all",  # "all" | "last"
  })


def settings_of(config) -> ml_collections.ConfigDict:
  """config.evaluation.samples, or the defaults when the config has no such section."""
  e = config.evaluation
  return e.samples if "samples" in e else sample_evaluation_config()


def validate_settings(settings) -> None:
  """Raises config_checks.ConfigError naming config.evaluation.samples.<field>."""
  root = ml_collections.ConfigDict({"evaluation": {"samples": settings.to_dict()
                                                   if hasattr(settings, "to_dict") else settings}})
  p = "evaluation.samples."
  for field in ("num_samples", "num_steps", "num_train_subsets", "early_stop_every", "probe_size"):
    config_checks.positive(root, p + field)
  for field in ("classifier_steps", "grid_size"):
    config_checks.positive(root, p + field, allow_zero=True)
  config_checks.choice(root, p + "feature", FEATURES)
  config_checks.choice(root, p + "snapshots", SNAPSHOTS)
  s = root.evaluation.samples
  if s.num_samples < 2:
    raise config_checks.ConfigError(f"config.{p}num_samples={s.num_samples} must be >= 2 "
                                    "(a covariance needs two samples)")
  if not 0 < s.copy_ratio < 1:
    raise config_checks.ConfigError(f"config.{p}copy_ratio={s.copy_ratio} must be in (0, 1)")
  if s.feature == "external":
    config_checks.choice(root, p + "external_kind", features_lib.EXTERNAL_KINDS)
    if not s.external_path:
      raise config_checks.ConfigError(f"config.{p}external_path is empty: feature='external' "
                                      "needs the local path of the extractor's weights")
  if s.feature == "classifier" and not s.classifier_path and s.classifier_steps < 1:
    raise config_checks.ConfigError(f"config.{p}classifier_steps must be >= 1 when the "
                                    "classifier is trained (classifier_path='')")


def validate_config(config) -> None:
  """Checks config.evaluation.samples (if the config has the section)."""
  if "samples" in config.evaluation:
    validate_settings(config.evaluation.samples)


# ------------------------------------------------------------------------------------------------
# What is fixed across snapshots


@dataclasses.dataclass
class Context:
  """Everything computed once per call and shared by the snapshots (see `prepare`)."""
  protocol: Dict[str, Any]
  feature_info: Dict[str, Any]
  features_fn: Callable
  num_steps: int
  batch_size: int
  copy_ratio: float
  noise_seed: int
  noise: np.ndarray  # (num_samples, H, W, C) standard normal
  labels: Optional[np.ndarray]  # (num_samples,) cycling over classes; None if unconditional
  train_images: np.ndarray  # (N, H, W, C) in [-1, 1]
  train_labels: Optional[np.ndarray]  # None if unconditional
  train_ids: np.ndarray
  val_images: np.ndarray
  val_labels: Optional[np.ndarray]
  val_ids: np.ndarray
  train_features: np.ndarray  # (N, F) features of the whole training split
  val_features: np.ndarray  # (N_val, F)
  reference_rows: Dict[str, Any]  # {"train": [rows of each subset], "val": rows}
  references: Dict[str, Dict[str, Any]]  # space -> {"train": [(mu, cov)], "val": (mu, cov)}
  stop_steps: np.ndarray  # early-stop steps evaluated
  probe_size: int
  overlap: bool
  nn_similarity: bool
  grid_size: int
  validation_copy_fraction: float


def _as_float_images(split) -> np.ndarray:
  return data.first_images(split)[0]


def _reference_size(settings, num_train: int, num_val: int) -> int:
  m = min(settings.num_samples, num_train // settings.num_train_subsets, num_val)
  if m < 2:
    raise config_checks.ConfigError(
        f"FD references would hold {m} images: the training split ({num_train} images) must give "
        f"config.evaluation.samples.num_train_subsets={settings.num_train_subsets} disjoint "
        f"subsets of at least 2 images and the validation split ({num_val}) at least 2")
  return m


def _feature_source(settings, workdir: str) -> Dict[str, Any]:
  if settings.feature == "pixels":
    return {"kind": "pixels"}
  if settings.feature == "external":
    return {"kind": settings.external_kind, "path": os.path.abspath(
        os.path.expanduser(settings.external_path))}
  path = settings.classifier_path or os.path.join(workdir, RESULTS_DIR, CLASSIFIER_FILE)
  return {"kind": "classifier", "path": os.path.abspath(os.path.expanduser(path))}


def protocol_of(settings, config, workdir: str, num_train: int, num_val: int) -> Dict[str, Any]:
  """What the recorded numbers depend on: a different protocol invalidates earlier results."""
  s = settings
  return {"num_samples": int(s.num_samples), "num_steps": int(s.num_steps), "seed": int(s.seed),
          "feature": _feature_source(s, workdir), "num_train_subsets": int(s.num_train_subsets),
          "reference_size": _reference_size(s, num_train, num_val),
          "early_stop_every": int(s.early_stop_every), "overlap": bool(s.overlap),
          "nn_similarity": bool(s.nn_similarity), "probe_size": int(s.probe_size),
          "copy_ratio": float(s.copy_ratio), "grid_size": int(s.grid_size),
          "noise_seed": int(config.evaluation.noise_seed), "num_train": int(num_train),
          "num_val": int(num_val)}


def _classifier_labels(config, train_split):
  """Class labels of the training split (the run's own if it uses them, else read from the data)."""
  if config.data.labels == "class" and train_split.num_classes >= 2:
    return np.asarray(train_split.labels), train_split.num_classes
  try:
    split = data.load_split(config.data.name, "train", data_dir=config.data.data_dir or None,
                            subset_size=config.data.subset_size or None,
                            subset_seed=config.data.subset_seed, labels="class")
  except ValueError as err:
    raise config_checks.ConfigError(
        f"config.evaluation.samples.feature='classifier' trains a classifier on class labels, but "
        f"{config.data.name!r} has none ({err}). Set classifier_path to a trained one, or use "
        "feature='pixels' or 'external'") from None
  return np.asarray(split.labels), split.num_classes


def _features_fn(settings, config, workdir, train_split, train_images, val_split, val_images,
                 external_apply_fn):
  """(features_fn, info) of the chosen feature space; trains and caches the classifier if needed."""
  source = _feature_source(settings, workdir)
  if settings.feature == "pixels":
    return features_lib.pixel_features, source
  if settings.feature == "external":
    return features_lib.load_external_extractor(settings.external_kind, source["path"],
                                                external_apply_fn), source
  path = source["path"]
  if not os.path.exists(path):
    if settings.classifier_path:  # an explicit path must exist
      features_lib.load_params(path)  # raises FileNotFoundError naming it
    labels, num_classes = _classifier_labels(config, train_split)
    val_labels = None
    if config.data.labels == "class" and val_split.num_classes == num_classes:
      val_labels = np.asarray(val_split.labels)
    logging.info("Training the feature classifier on %d images (%d steps) ...", len(labels),
                 settings.classifier_steps)
    params, accuracy = features_lib.train_classifier(
        train_images, labels, num_classes, steps=settings.classifier_steps, seed=settings.seed,
        val_images=val_images if val_labels is not None else None, val_labels=val_labels)
    features_lib.save_params(path, params)
    logging.info("Feature classifier saved to %s (accuracy %.3f on %s)", path, accuracy,
                 "validation" if val_labels is not None else "training")
    source = dict(source, trained=True, accuracy=float(accuracy),
                  accuracy_on="validation" if val_labels is not None else "training")
  return features_lib.load_classifier_features(path), source


def prepare(config, workdir: str, train_split, val_split, *, settings=None,
            external_apply_fn: Optional[Callable] = None) -> Context:
  """The snapshot-independent part: images, noise, labels, feature extractor, reference statistics.

  Raises FileNotFoundError (naming the path) for a missing external extractor or classifier file.
  """
  s = settings_of(config) if settings is None else settings
  validate_settings(s)
  protocol = protocol_of(s, config, workdir, len(train_split), len(val_split))
  batch = int(config.evaluation.batch_size)
  train_images = _as_float_images(train_split)
  val_images = _as_float_images(val_split)
  features_fn, info = _features_fn(s, config, workdir, train_split, train_images, val_split,
                                   val_images, external_apply_fn)
  conditional = train_split.num_classes > 0
  n = int(s.num_samples)
  item = tuple(train_images.shape[1:])
  noise = np.asarray(jax.random.normal(jax.random.key(s.seed), (n,) + item, jnp.float32))
  labels = (np.arange(n) % train_split.num_classes).astype(np.int32) if conditional else None

  train_features = features_lib.batched_features(features_fn, train_images, batch)
  val_features = features_lib.batched_features(features_fn, val_images, batch)
  m = protocol["reference_size"]
  rng = np.random.default_rng([s.seed, 7])
  train_perm = rng.permutation(len(train_images))
  subsets = [np.sort(train_perm[j * m:(j + 1) * m]) for j in range(s.num_train_subsets)]
  val_rows = np.sort(rng.permutation(len(val_images))[:m])
  flat = lambda a: a.reshape(len(a), -1)
  references = {}
  for space, tr, va in (("features", train_features, val_features),
                        ("pixels", flat(train_images), flat(val_images))):
    references[space] = {"train": [frechet.gaussian_stats(tr[rows]) for rows in subsets],
                         "val": frechet.gaussian_stats(va[val_rows])}
  steps = int(s.num_steps)
  stop_steps = np.unique(np.r_[np.arange(0, steps, s.early_stop_every), steps - 1])
  control = probes.copy_fraction(val_images[:n], train_images, s.copy_ratio)
  probe_size = min(int(s.probe_size), n, len(train_images), len(val_images))
  return Context(
      protocol=protocol, feature_info=info, features_fn=features_fn, num_steps=steps,
      batch_size=batch, copy_ratio=float(s.copy_ratio),
      noise_seed=int(config.evaluation.noise_seed), noise=noise, labels=labels,
      train_images=train_images,
      train_labels=np.asarray(train_split.labels, np.int32) if conditional else None,
      train_ids=np.asarray(train_split.ids), val_images=val_images,
      val_labels=np.asarray(val_split.labels, np.int32) if conditional else None,
      val_ids=np.asarray(val_split.ids), train_features=train_features, val_features=val_features,
      reference_rows={"train": subsets, "val": val_rows}, references=references,
      stop_steps=stop_steps, probe_size=probe_size, overlap=bool(s.overlap),
      nn_similarity=bool(s.nn_similarity), grid_size=min(int(s.grid_size), n),
      validation_copy_fraction=float(control))


# ------------------------------------------------------------------------------------------------
# One snapshot


def fd_record(features, references: Mapping[str, Any]) -> Dict[str, Any]:
  """FD of (n, F) features to each training reference (and their mean), to the validation
  reference, and G_FD = (FD_val - FD_train) / FD_train; plain floats."""
  mu, cov = frechet.gaussian_stats(np.asarray(features).reshape(len(features), -1))
  subsets = [frechet.gaussian_frechet(mu, cov, *ref) for ref in references["train"]]
  fd_train = float(np.mean(subsets))
  fd_val = frechet.gaussian_frechet(mu, cov, *references["val"])
  return {"train": fd_train, "train_subsets": [float(v) for v in subsets], "val": float(fd_val),
          "gap": float((fd_val - fd_train) / fd_train) if fd_train > 0 else float("nan")}


class SampleRun(NamedTuple):
  samples: np.ndarray  # (n, ...)
  features: np.ndarray  # (n, F) their features
  sigmas: np.ndarray  # (T,) the noise level of each step
  stop_features: np.ndarray  # (S, n, F) features of D(x_i; sigma_i) at the S stop steps
  states: np.ndarray  # (T, P, ...) trajectory states of the first P samples
  denoised: np.ndarray  # (T, P, ...) their predictions


def run_sampler(ctx: Context, denoise) -> SampleRun:
  """The one Heun run per snapshot, in fixed-size batches (the last padded): one compilation.

  The early-stopped outputs are reduced to features batch by batch (one extractor pass over all
  stop steps), so host memory holds (S, n, F) features, never (S, n, H, W, C) images.
  """
  n = len(ctx.noise)
  batch = min(ctx.batch_size, n)
  samples, feats, stop_feats, states, denoised = [], [], [], [], []
  kept, sigmas = 0, None
  stop = jnp.asarray(ctx.stop_steps)
  s = len(ctx.stop_steps)
  for start in range(0, n, batch):
    rows = np.minimum(np.arange(start, start + batch), n - 1)
    keep = min(batch, n - start)
    out = samplers.sample(denoise, jnp.asarray(ctx.noise[rows]),
                          None if ctx.labels is None else jnp.asarray(ctx.labels[rows]),
                          num_steps=ctx.num_steps, return_trajectory=True)
    traj = out.trajectory
    sigmas = np.asarray(traj.sigmas)
    samples.append(np.asarray(out.samples)[:keep])
    feats.append(features_lib.batched_features(ctx.features_fn, samples[-1], batch))
    stopped = np.asarray(traj.denoised[stop])[:, :keep]
    stop_feats.append(features_lib.batched_features(
        ctx.features_fn, stopped.reshape((s * keep,) + stopped.shape[2:]), batch
    ).reshape(s, keep, -1))
    take = min(ctx.probe_size - kept, keep)
    if take > 0:
      states.append(np.asarray(traj.x[:, :take]))
      denoised.append(np.asarray(traj.denoised[:, :take]))
      kept += take
  return SampleRun(np.concatenate(samples), np.concatenate(feats), sigmas,
                   np.concatenate(stop_feats, axis=1), np.concatenate(states, axis=1),
                   np.concatenate(denoised, axis=1))


def _floats(a) -> List[float]:
  return [float(v) for v in np.asarray(a, np.float64).ravel()]


class SnapshotResult(NamedTuple):
  record: Dict[str, Any]  # JSON-serializable (plain floats)
  grid: Dict[str, np.ndarray]  # samples, nearest training images, distances (for the figure)


def evaluate_denoiser(ctx: Context, denoise) -> SnapshotResult:
  """Every measurement of the module for one denoiser (a snapshot's network, or any other).

  `denoise` should be a pytree denoiser (`jax.tree_util.Partial` over arrays with a fixed
  function) so that it is compiled once for all snapshots; a plain function works too.
  """
  run = run_sampler(ctx, denoise)
  n = len(run.samples)
  bs = ctx.batch_size
  record: Dict[str, Any] = {
      "fd": {"features": fd_record(run.features, ctx.references["features"]),
             "pixels": fd_record(run.samples.reshape(n, -1), ctx.references["pixels"])},
      "copy_fraction": {"samples": probes.copy_fraction(run.samples, ctx.train_images,
                                                        ctx.copy_ratio),
                        "validation_control": ctx.validation_copy_fraction},
  }
  rows = [fd_record(f, ctx.references["features"]) for f in run.stop_features]
  record["early_stop"] = {"steps": [int(i) for i in ctx.stop_steps],
                          "sigmas": _floats(run.sigmas[ctx.stop_steps]),
                          "fd_train": [r["train"] for r in rows],
                          "fd_val": [r["val"] for r in rows], "gap": [r["gap"] for r in rows]}
  p = run.states.shape[1]
  probe_kw = dict(train_probe_ids=ctx.train_ids[:p], val_probe_ids=ctx.val_ids[:p],
                  noise_seed=ctx.noise_seed, batch_size=bs)
  label = lambda a: None if a is None else a[:p]
  if ctx.overlap:
    overlap = probes.trajectory_overlap(
        run.states, run.sigmas, ctx.train_images, ctx.train_images[:p], ctx.val_images[:p],
        train_labels=ctx.train_labels, state_labels=label(ctx.labels),
        train_probe_labels=label(ctx.train_labels), val_probe_labels=label(ctx.val_labels),
        **probe_kw)
    record["overlap"] = {"sigmas": _floats(run.sigmas)}
    for group, stats in overlap.items():
      record["overlap"][group] = {k: _floats(np.mean(v, axis=1)) for k, v in stats.items()}
  if ctx.nn_similarity:
    sims = probes.nn_similarity_probe(
        denoise, ctx.features_fn, run.sigmas, run.denoised, ctx.train_images[:p],
        ctx.val_images[:p], ctx.train_features, ctx.val_features,
        train_probe_labels=label(ctx.train_labels), val_probe_labels=label(ctx.val_labels),
        **probe_kw)
    record["nn_similarity"] = {"sigmas": _floats(run.sigmas)}
    record["nn_similarity"].update({k: _floats(v) for k, v in sims.items()})
  g = ctx.grid_size
  grid = {}
  if g > 0:
    idx, dist = nearest_neighbours(run.samples[:g], ctx.train_images, 2)
    grid = {"samples": run.samples[:g], "nearest": ctx.train_images[idx[:, 0]],
            "nearest_ids": ctx.train_ids[idx[:, 0]], "distances": dist,
            "copy_ratio": np.float32(ctx.copy_ratio)}
  return SnapshotResult(record, grid)


# ------------------------------------------------------------------------------------------------
# Over the snapshots of a run


def _network_apply(network, sigma_data, params, x, sigma, labels=None):
  return training.network_denoiser(network, params, sigma_data)(x, sigma, labels)


def evaluate_samples(config, workdir: str, network, train_split, val_split, steps: Sequence[int],
                     previous: Optional[Mapping[str, Any]] = None, *,
                     save: Optional[Callable[[Dict[str, Any]], None]] = None,
                     gap_peaks: Optional[Mapping[Any, float]] = None, plots: bool = True,
                     external_apply_fn: Optional[Callable] = None) -> Dict[str, Any]:
  """Sample-based evaluation of the snapshots `steps` of the run in `workdir`.

  Args:
    config: the run's config; settings from config.evaluation.samples (defaults if absent),
      batch size and noise seed from config.evaluation, sigma_data from config.training.
    network: `trainer.build_network(...)` of the run; train_split, val_split: `trainer.load_split`.
    steps: snapshot steps (ascending), e.g. `checkpointing.snapshot_steps(workdir)`.
    previous: the "samples" section of earlier results (or None): snapshots it holds with the same
      protocol are not recomputed.
    save: called with the section after every newly evaluated snapshot (e.g. to write results.json).
    gap_peaks: optional {images_seen: peak denoising gap} drawn next to G_FD.
    plots: draw the figures (`draw`) into WORKDIR/evaluation at the end.
    external_apply_fn: for feature='external', `apply_fn(params, images) -> (B, F)`.

  Returns:
    The updated section {"protocol", "feature", "snapshots": {str(step): record}, "summary"}.
  """
  s = settings_of(config)
  validate_settings(s)
  previous = dict(previous or {})
  if not s.enabled:
    return previous
  protocol = protocol_of(s, config, workdir, len(train_split), len(val_split))
  if previous and previous.get("protocol") != protocol:
    logging.warning("Sample evaluation settings changed (was %s, now %s): evaluating every "
                    "snapshot afresh.", previous.get("protocol"), protocol)
    previous = {}
  section = {"protocol": protocol, "feature": previous.get("feature", {}),
             "snapshots": dict(previous.get("snapshots", {}))}
  chosen = list(steps) if s.snapshots == "all" else list(steps)[-1:]
  todo = [step for step in chosen if str(step) not in section["snapshots"]]
  out_dir = os.path.join(workdir, RESULTS_DIR)
  if todo:
    ctx = prepare(config, workdir, train_split, val_split, settings=s,
                  external_apply_fn=external_apply_fn)
    # (Keeps the accuracy recorded when the classifier was trained by an earlier call.)
    section["feature"] = {**section["feature"], **(ctx.feature_info or {})}
    apply = functools.partial(_network_apply, network, config.training.sigma_data)  # one function
    for step in todo:
      ema_sets, meta = checkpointing.load_snapshot(workdir, step)
      name = sorted(ema_sets)[0]
      params = jax.tree.map(jnp.asarray, ema_sets[name])
      result = evaluate_denoiser(ctx, jax.tree_util.Partial(apply, params))
      record = dict(result.record, images_seen=int(meta["images_seen"]), ema=name)
      section["snapshots"][str(step)] = record
      if result.grid:
        grid_dir = os.path.join(out_dir, GRIDS_DIR)
        os.makedirs(grid_dir, exist_ok=True)
        np.savez(os.path.join(grid_dir, f"{step}.npz"), **result.grid)
      fd = record["fd"]
      logging.info("snapshot %d (%d images): G_FD = %.4f (features), %.4f (pixels); copies %.3f",
                   step, record["images_seen"], fd["features"]["gap"], fd["pixels"]["gap"],
                   record["copy_fraction"]["samples"])
      section["summary"] = summarize(section)
      if save is not None:
        save(section)
  section["summary"] = summarize(section)
  if plots and section["snapshots"]:
    os.makedirs(out_dir, exist_ok=True)
    draw(section, out_dir, gap_peaks)
  return section


def _ordered(section):
  steps = sorted(int(k) for k in section["snapshots"])
  return steps, [section["snapshots"][str(k)] for k in steps]


def summarize(section) -> Dict[str, Any]:
  """Per-snapshot scalars in training order (the series the figures plot against images seen)."""
  steps, records = _ordered(section)
  summary = {"steps": steps, "images_seen": [r["images_seen"] for r in records]}
  for space in ("features", "pixels"):
    summary[f"gap_fd_{space}"] = [r["fd"][space]["gap"] for r in records]
    summary[f"fd_train_{space}"] = [r["fd"][space]["train"] for r in records]
    summary[f"fd_val_{space}"] = [r["fd"][space]["val"] for r in records]
  summary["copy_fraction"] = [r["copy_fraction"]["samples"] for r in records]
  summary["copy_fraction_validation_control"] = [r["copy_fraction"]["validation_control"]
                                                 for r in records]
  if records and all("nn_similarity" in r for r in records):
    keys = [k for k in records[0]["nn_similarity"] if k != "sigmas"]
    summary["nn_similarity_mean_over_steps"] = {
        k: [float(np.mean(r["nn_similarity"][k])) for r in records] for k in keys}
  return summary


def draw(section, out_dir: str, gap_peaks: Optional[Mapping[Any, float]] = None) -> List[str]:
  """The figures of a "samples" section into out_dir; returns the paths written."""
  from diffgen_jax.plots import samples as plots  # matplotlib only when drawing
  steps, records = _ordered(section)
  if not records:
    return []
  summary = section.get("summary") or summarize(section)
  seen = summary["images_seen"]
  feature = section["protocol"]["feature"]["kind"]
  paths = []

  def out(name):
    paths.append(os.path.join(out_dir, name))
    return paths[-1]

  peaks = None if gap_peaks is None else {float(k): float(v) for k, v in gap_peaks.items()}
  plots.gap_fd_vs_images(out("sample_gap_fd.png"), seen, summary["gap_fd_features"],
                         summary["gap_fd_pixels"], feature, peaks)
  plots.early_stop_gap(out("early_stop_gap_fd.png"), [r["early_stop"]["sigmas"] for r in records],
                       [r["early_stop"]["gap"] for r in records], seen, feature)
  last = records[-1]
  if "overlap" in last:
    plots.trajectory_overlap(out("trajectory_overlap.png"), last["overlap"],
                             title=f"Trajectory overlap after {seen[-1]} images")
  if "nn_similarity_mean_over_steps" in summary:
    plots.nn_similarity(out("nn_similarity.png"), seen, summary["nn_similarity_mean_over_steps"],
                        last["nn_similarity"], feature)
  plots.copy_fraction(out("copy_fraction.png"), seen, summary["copy_fraction"],
                      summary["copy_fraction_validation_control"],
                      section["protocol"]["copy_ratio"])
  grid_path = os.path.join(out_dir, GRIDS_DIR, f"{steps[-1]}.npz")
  if os.path.exists(grid_path):
    with np.load(grid_path) as g:
      plots.sample_grid(out("samples_vs_nearest_train.png"), g["samples"], g["nearest"],
                        g["distances"], float(g["copy_ratio"]),
                        title=f"Samples after {seen[-1]} images (step {steps[-1]})")
  return paths
