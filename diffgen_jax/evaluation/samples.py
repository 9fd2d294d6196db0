"""Sample-level measurements of a denoiser: the Frechet-distance gap, copies, early stopping and
trajectory probes from one sampler run (paper.md section 6). Denoisers and arrays in, numbers out.

    setup = prepare(train_images, val_images, features_fn, ...)   # once: references, noise, labels
    result = evaluate_denoiser(setup, denoise)                     # per denoiser (snapshot, guided pair)

For a denoiser, ONE deterministic Heun run of `num_samples` samples with `return_trajectory=True`
(fixed noise and labels, the same for every denoiser) gives everything below:
  * G_FD = (FD_val - FD_train) / FD_train of the samples, FD_train averaged over
    `num_train_subsets` disjoint training subsets (each reported too), in the given feature space
    and in raw pixels. Every reference set (each training subset and the validation reference) has
    the same size m = `reference_size(...)`, so the finite-sample bias of FD is the same in
    FD_train and FD_val.
  * Copy fraction (`copies`, Gu et al. 2023) against the whole training set; the control is the copy
    fraction of validation images.
  * Early-stopped sampling: the output of sampling stopped at step i is D(x_i; sigma_i) =
    `trajectory.denoised[i]`, so the same run gives G_FD(sigma_i) in feature space at every
    `early_stop_every`-th step (and the last one).
  * Trajectory overlap (`probes.trajectory_overlap`) and 1-NN cosine similarity in feature space
    (`probes.nn_similarity_probe`) on the first `probe_size` trajectories, against `probe_size`
    training and validation images noised with the gap evaluation's per-image noise.
Conditional denoisers sample with labels cycling over the classes, unconditional ones with None.

Compilation: pass a pytree denoiser (`models.network.network_denoiser`, or any
`jax.tree_util.Partial` over arrays with a fixed function), so the sampler, the probes and the
feature extractors compile once for all denoisers of one network.

Record layout (`evaluate_denoiser(...).record`, plain floats; the "samples" section of the evaluate
job's results.json holds one per snapshot, `summarize` makes the per-snapshot series):
    {"fd": {"features" | "pixels": {"train", "train_subsets", "val", "gap"}},
     "copy_fraction": {"samples", "validation_control"},
     "early_stop": {"steps", "sigmas", "fd_train", "fd_val", "gap"},
     "overlap": {"sigmas", group: {stat: (T,)}}, "nn_similarity": {"sigmas", "source/ref": (T,)}}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffgen_jax import samplers
from diffgen_jax.checks import check_number
from diffgen_jax.sharding import batch_multiple, put_batch
from diffgen_jax.evaluation import features as features_lib
from diffgen_jax.evaluation import frechet, probes
from diffgen_jax.evaluation.copies import copy_fraction, nearest_distinct


# ------------------------------------------------------------------------------------------------
# The Frechet-distance gap


def fd_record(features, references: Mapping[str, Any]) -> Dict[str, Any]:
  """FD of (n, F) features to each training reference (and their mean), to the validation
  reference, and G_FD = (FD_val - FD_train) / FD_train; plain floats.

  references: {"train": [(mu, cov) of each training subset], "val": (mu, cov)}
  (`frechet.gaussian_stats`).
  """
  mu, cov = frechet.gaussian_stats(np.asarray(features).reshape(len(features), -1))
  subsets = [frechet.gaussian_frechet(mu, cov, *ref) for ref in references["train"]]
  fd_train = float(np.mean(subsets))
  fd_val = frechet.gaussian_frechet(mu, cov, *references["val"])
  return {"train": fd_train, "train_subsets": [float(v) for v in subsets], "val": float(fd_val),
          "gap": float((fd_val - fd_train) / fd_train) if fd_train > 0 else float("nan")}


def sample_gap_fd(features, train_feature_subsets: Sequence, val_features
                  ) -> Tuple[float, float, float]:
  """(FD to training, averaged over the disjoint subsets; FD to validation; G_FD) of (n, F)
  features against raw reference feature sets (`fd_record` on their Gaussian fits)."""
  references = {"train": [frechet.gaussian_stats(np.asarray(t).reshape(len(t), -1))
                          for t in train_feature_subsets],
                "val": frechet.gaussian_stats(np.asarray(val_features).reshape(len(val_features), -1))}
  r = fd_record(features, references)
  return r["train"], r["val"], r["gap"]


def early_stop_gap_fd(features_fn, outputs_per_step, train_feature_subsets: Sequence,
                      val_features, *, batch_size: int = 256) -> Dict[str, np.ndarray]:
  """G_FD of early-stopped outputs (`probes.early_stopped_outputs`) at every step: dict of (T,)
  'fd_train', 'fd_val', 'gap'."""
  rows = [sample_gap_fd(features_lib.batched_features(features_fn, np.asarray(out), batch_size),
                        train_feature_subsets, val_features) for out in outputs_per_step]
  fd_train, fd_val, gap = (np.asarray(v) for v in zip(*rows))
  return {"fd_train": fd_train, "fd_val": fd_val, "gap": gap}


# ------------------------------------------------------------------------------------------------
# What is fixed across denoisers


@dataclasses.dataclass
class Setup:
  """Everything computed once and shared by the denoisers evaluated (see `prepare`)."""
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
  mesh: Optional[Mesh] = None  # the sampler's and probes' batches are split over its data axis


def reference_size(num_samples: int, num_train: int, num_val: int, num_train_subsets: int) -> int:
  """m = min(num_samples, num_train // num_train_subsets, num_val): the size of every FD reference.

  Raises ValueError when m < 2 (a covariance needs two images).
  """
  m = min(num_samples, num_train // num_train_subsets, num_val)
  if m < 2:
    raise ValueError(
        f"FD references would hold {m} images: the training split ({num_train} images) must give "
        f"num_train_subsets={num_train_subsets} disjoint subsets of at least 2 images and the "
        f"validation split ({num_val}) at least 2")
  return m


def prepare(train_images, val_images, features_fn, *, train_labels=None, val_labels=None,
            train_ids=None, val_ids=None, num_classes: int = 0, num_samples: int = 512,
            num_steps: int = 18, seed: int = 0, num_train_subsets: int = 2,
            early_stop_every: int = 1, overlap: bool = True, nn_similarity: bool = True,
            probe_size: int = 128, copy_ratio: float = 1.0 / 3.0, grid_size: int = 32,
            batch_size: int = 256, noise_seed: int = 0, mesh: Optional[Mesh] = None) -> Setup:
  """The denoiser-independent part: noise, labels, features and reference statistics.

  Args:
    train_images, val_images: (N, H, W, C) float images in [-1, 1] (whole splits).
    features_fn: images -> (B, F) feature extractor (`features`).
    train_labels, val_labels: (N,) int labels of conditional runs (num_classes > 0), else None.
    train_ids, val_ids: (N,) image ids seeding the probes' noise (default 0..N-1).
    num_classes: 0 for unconditional sampling, else samples' labels cycle over the classes.
    num_samples, num_steps, seed: the Heun run (noise from `seed`); the FD reference subsets are
      drawn with numpy default_rng([seed, 7]).
    num_train_subsets, early_stop_every, overlap, nn_similarity, probe_size, copy_ratio,
      grid_size: see the module docstring. batch_size: images per compiled call.
    noise_seed: the gap evaluation's noise seed (the probes' noisy training / validation images).
    mesh: optional; the sampler's and the probes' batches are split over its data axis (batch_size
      rounded up to a multiple of it). The numbers do not depend on it beyond float rounding.

  Raises:
    ValueError: num_samples, num_steps, batch_size, early_stop_every, num_train_subsets or
      probe_size not an integer >= 1 (grid_size >= 0), or fewer than 2 images per FD reference.
  """
  for name, value, low in (("num_samples", num_samples, 1), ("num_steps", num_steps, 1),
                           ("batch_size", batch_size, 1), ("early_stop_every", early_stop_every, 1),
                           ("num_train_subsets", num_train_subsets, 1),
                           ("probe_size", probe_size, 1), ("grid_size", grid_size, 0)):
    check_number(value, name, low=low, integer=True)
  train_images = np.asarray(train_images, np.float32)
  val_images = np.asarray(val_images, np.float32)
  batch = batch_multiple(int(batch_size), mesh)
  conditional = num_classes > 0
  n = int(num_samples)
  item = tuple(train_images.shape[1:])
  noise = np.asarray(jax.random.normal(jax.random.key(seed), (n,) + item, jnp.float32))
  labels = (np.arange(n) % num_classes).astype(np.int32) if conditional else None

  train_features = features_lib.batched_features(features_fn, train_images, batch)
  val_features = features_lib.batched_features(features_fn, val_images, batch)
  m = reference_size(n, len(train_images), len(val_images), num_train_subsets)
  rng = np.random.default_rng([seed, 7])
  train_perm = rng.permutation(len(train_images))
  subsets = [np.sort(train_perm[j * m:(j + 1) * m]) for j in range(num_train_subsets)]
  val_rows = np.sort(rng.permutation(len(val_images))[:m])
  flat = lambda a: a.reshape(len(a), -1)
  references = {}
  for space, tr, va in (("features", train_features, val_features),
                        ("pixels", flat(train_images), flat(val_images))):
    references[space] = {"train": [frechet.gaussian_stats(tr[rows]) for rows in subsets],
                         "val": frechet.gaussian_stats(va[val_rows])}
  steps = int(num_steps)
  stop_steps = np.unique(np.r_[np.arange(0, steps, early_stop_every), steps - 1])
  control = copy_fraction(val_images[:n], train_images, copy_ratio)
  probe_size = min(int(probe_size), n, len(train_images), len(val_images))
  ids = lambda given, a: np.arange(len(a)) if given is None else np.asarray(given)
  lab = lambda a: np.asarray(a, np.int32) if conditional and a is not None else None
  return Setup(
      features_fn=features_fn, num_steps=steps, batch_size=batch, copy_ratio=float(copy_ratio),
      noise_seed=int(noise_seed), noise=noise, labels=labels, train_images=train_images,
      train_labels=lab(train_labels), train_ids=ids(train_ids, train_images),
      val_images=val_images, val_labels=lab(val_labels), val_ids=ids(val_ids, val_images),
      train_features=train_features, val_features=val_features,
      reference_rows={"train": subsets, "val": val_rows}, references=references,
      stop_steps=stop_steps, probe_size=probe_size, overlap=bool(overlap),
      nn_similarity=bool(nn_similarity), grid_size=min(int(grid_size), n),
      validation_copy_fraction=float(control), mesh=mesh)


# ------------------------------------------------------------------------------------------------
# One denoiser


class SampleRun(NamedTuple):
  samples: np.ndarray  # (n, ...)
  features: np.ndarray  # (n, F) their features
  sigmas: np.ndarray  # (T,) the noise level of each step
  stop_features: np.ndarray  # (S, n, F) features of D(x_i; sigma_i) at the S stop steps
  states: np.ndarray  # (T, P, ...) trajectory states of the first P samples
  denoised: np.ndarray  # (T, P, ...) their predictions


def run_sampler(ctx: Setup, denoise) -> SampleRun:
  """The one Heun run per snapshot, in fixed-size batches (the last padded): one compilation.

  The early-stopped outputs are reduced to features batch by batch (one extractor pass over all
  stop steps), so host memory holds (S, n, F) features, never (S, n, H, W, C) images.
  """
  n = len(ctx.noise)
  batch = batch_multiple(min(ctx.batch_size, n), ctx.mesh)
  samples, feats, stop_feats, states, denoised = [], [], [], [], []
  kept, sigmas = 0, None
  stop = jnp.asarray(ctx.stop_steps)
  s = len(ctx.stop_steps)
  for start in range(0, n, batch):
    rows = np.minimum(np.arange(start, start + batch), n - 1)
    keep = min(batch, n - start)
    out = samplers.sample(denoise, put_batch(ctx.noise[rows], ctx.mesh),
                          None if ctx.labels is None else put_batch(ctx.labels[rows], ctx.mesh),
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


def evaluate_denoiser(ctx: Setup, denoise) -> SnapshotResult:
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
      "copy_fraction": {"samples": copy_fraction(run.samples, ctx.train_images,
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
        mesh=ctx.mesh, **probe_kw)
    record["nn_similarity"] = {"sigmas": _floats(run.sigmas)}
    record["nn_similarity"].update({k: _floats(v) for k, v in sims.items()})
  g = ctx.grid_size
  grid = {}
  if g > 0:
    # Second neighbour: the nearest *distinct* training image, as in the copy test.
    idx, dist, _ = nearest_distinct(run.samples[:g], ctx.train_images)
    grid = {"samples": run.samples[:g], "nearest": ctx.train_images[idx[:, 0]],
            "nearest_ids": ctx.train_ids[idx[:, 0]], "distances": dist,
            "copy_ratio": np.float32(ctx.copy_ratio)}
  return SnapshotResult(record, grid)


# ------------------------------------------------------------------------------------------------
# Over the snapshots of a run


# ------------------------------------------------------------------------------------------------
# Over snapshots


def ordered(section):
  """(steps, records) of a section's snapshots in training order."""
  steps = sorted(int(k) for k in section["snapshots"])
  return steps, [section["snapshots"][str(k)] for k in steps]


def summarize(section) -> Dict[str, Any]:
  """Per-snapshot scalars in training order (the series the figures plot against images seen)."""
  steps, records = ordered(section)
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
