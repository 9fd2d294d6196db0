"""Sample-level measurements of a denoiser: the Frechet-distance gap, copies, early stopping and
trajectory probes from one sampler run (paper.md section 6). Denoisers and images in, numbers out.

    setup = prepare(train_images, val_images, features_fn, ...)   # once: references, labels
    result = evaluate_denoiser(setup, denoise)                     # per denoiser (snapshot, guided pair)

For a denoiser, ONE deterministic Heun run of `num_samples` samples with `return_trajectory=True`
(fixed noise and labels, the same for every denoiser) gives everything below:
  * G_FD = (FD_val - FD_train) / FD_train of the samples, FD_train averaged over
    `num_train_subsets` disjoint training subsets (each reported too), in the given feature space
    and in raw pixels, with its 95% bootstrap interval over the samples (`fd_gap_interval`). Every
    reference set (each training subset and the validation reference) has the same size
    m = `reference_size(...)`, so the finite-sample bias of FD is the same in FD_train and FD_val.
  * Its scale (`fd_baselines`, once per setup, `Setup.baselines`): G_FD of fresh real images
    (validation images outside the validation reference: the floor a perfect generalizer reaches)
    and of a copier (training images drawn uniformly: the ceiling of a perfect memorizer).
  * Copy fraction (`copies`, Gu et al. 2023) against the whole training set; the control is the copy
    fraction of validation images. With `feature_copies`, also in the feature space (as Somepalli
    et al. do with SSCD): the samples' features against the featurized training rows, the control
    the features of the same validation images.
  * Early-stopped sampling: the output of sampling stopped at step i is D(x_i; sigma_i) =
    `trajectory.denoised[i]`, so the same run gives G_FD(sigma_i) in feature space at every
    `early_stop_every`-th step (and the last one).
  * Trajectory overlap (`probes.trajectory_overlap`) and 1-NN cosine similarity in feature space
    (`probes.nn_similarity_probe`) on the first `probe_size` trajectories, against `probe_size`
    training and validation images (seeded rows of each split) noised with the gap evaluation's
    per-image noise; a prediction made from a probe image is never matched with that image.
Conditional denoisers sample with labels cycling over the classes, unconditional ones with None.

References, bounded (`reference_subset`): the features computed of the training and validation
splits (the FD references' subsets are drawn from them, and they are the 1-NN probe's reference
sets) are those of at most `reference_images` rows of each split, a seeded random subset; all rows
in order when the cap does not bind (0 = no cap). The copy test and its validation control search
the WHOLE training set (the memorization test), streamed from where it lives.

Scale: the splits are sources (numpy arrays, or `sharding.LazyRows` over a lazily decoded split),
never held whole. Given a mesh (every device of every process) every batch is split over its data
axis and each process builds only its rows: the samples' initial noise is drawn on the devices
that hold each row (partitionable threefry: the values of one whole draw), the sampler, the
feature extractor (references, samples, early-stopped outputs), the probes' denoiser calls; the
training set is split over the same axis for the copy test, the nearest neighbours and the
posterior weights (each process reads its share); the FD covariances are split over processes by
columns. Results are gathered once (`sharding.fetch`); every process returns the same numbers.

Compilation: pass a pytree denoiser (`models.network.network_denoiser`, or any
`jax.tree_util.Partial` over arrays with a fixed function), so the sampler, the probes and the
feature extractors compile once for all denoisers of one network.

Record layout (`evaluate_denoiser(...).record`, plain floats; the "samples" section of the evaluate
job's results.json holds one per snapshot, `summarize` makes the per-snapshot series):
    {"fd": {"features" | "pixels": {"train", "train_subsets", "val", "gap", "gap_low",
                                    "gap_high"}}, "fd_interval": FD_INTERVAL (the bootstrap),
     "copy_fraction": {"samples", "validation_control"[, "features",
                       "features_validation_control"]},
     "early_stop": {"steps", "sigmas", "fd_train", "fd_val", "gap"},
     "overlap": {"sigmas", group: {stat: (T,)}}, "nn_similarity": {"sigmas", "source/ref": (T,)}}
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax import progress, samplers
from diffgen_jax.checkpointing import snapshot_order
from diffgen_jax.checks import check_number, check_resamples
from diffgen_jax.data.splits import seeded_rows
from diffgen_jax.sharding import (DATA_AXIS, LazyRows, across_processes, batch_multiple, fetch,
                                  process_span, put_batch, rows_built, training_source)
from diffgen_jax.evaluation import features as features_lib
from diffgen_jax.evaluation import frechet, probes
from diffgen_jax.evaluation.copies import copy_fraction, nearest_distinct
from diffgen_jax.evaluation.timescales import wilson_interval


# ------------------------------------------------------------------------------------------------
# The Frechet-distance gap


def fd_record(features, references: Mapping[str, Any], mesh: Optional[Mesh] = None
              ) -> Dict[str, Any]:
  """FD of (n, F) features to each training reference (and their mean), to the validation
  reference, and G_FD = (FD_val - FD_train) / FD_train; plain floats.

  references: {"train": [(mu, cov) of each training subset], "val": (mu, cov)}
  (`frechet.gaussian_fit`: cov a (F, F) matrix, or its factor when a set has fewer than F
  vectors). mesh: optional, splits the features' covariance over processes
  (`frechet.gaussian_stats`).
  """
  mu, cov = frechet.gaussian_fit(np.asarray(features).reshape(len(features), -1), mesh=mesh)
  subsets = [frechet.gaussian_frechet(mu, cov, *ref) for ref in references["train"]]
  fd_train = float(np.mean(subsets))
  fd_val = frechet.gaussian_frechet(mu, cov, *references["val"])
  return {"train": fd_train, "train_subsets": [float(v) for v in subsets], "val": float(fd_val),
          "gap": float((fd_val - fd_train) / fd_train) if fd_train > 0 else float("nan")}


# The bootstrap of G_FD over the samples (`fd_gap_interval`), as every record carries it.
FD_INTERVAL = {"num_resamples": 200, "confidence": 0.95, "seed": 0,
               "over": "the samples (rows drawn with replacement); the reference sets fixed",
               "method": "percentile bootstrap about its median, placed on the estimate"}


def fd_gap_interval(features, references: Mapping[str, Any], *,
                    num_resamples: int = FD_INTERVAL["num_resamples"],
                    confidence: float = FD_INTERVAL["confidence"],
                    seed: int = FD_INTERVAL["seed"], mesh: Optional[Mesh] = None,
                    estimate: Optional[float] = None) -> Tuple[float, float]:
  """Bootstrap interval of G_FD over the samples: the `fd_record` gap of `num_resamples`
  resamples of the (n, F) features' rows, drawn with replacement (numpy default_rng(seed)), the
  references fixed; (low, high) = the estimate + (the resamples' percentiles - their median).

  Why about the median: a resample repeats about a third of its rows, which shrinks its covariance
  and adds to both FDs; G_FD = (FD_val - FD_train) / FD_train then falls, by much where FD_train
  is small (samples near the training set). The plain percentile interval of a copying U-Net's
  samples lay wholly below its own estimate (pixels: 0.71 against 0.29-0.67). The shift belongs to
  the resampling, not to the estimator, so only the spread of the resamples is kept.
  Calibration (tests/test_samples.py): in 8 dimensions with 300 samples its width is about 0.9x
  the spread of G_FD over independent sample sets; for samples that copy training images (64
  dimensions, 256 samples) about two thirds, covering the mean over sets in about 80% of sets
  (the plain percentile interval: 43%). Read it as a lower bound of the noise there.
  It measures the noise of the n samples only. The reference sets have their own noise (fresh real
  images' G_FD, `fd_baselines`, shows it as a floor away from 0).
  Cost: num_resamples Gaussian fits and FDs of the F-dimensional features (O(n F^2 + F^3) each).
  mesh: optional; a mesh across processes splits the resamples over the processes (each holding
  the whole features, as `fd_record` needs), which gather the gaps once: every process returns
  the same numbers, those of one process. Every process holding the mesh must call.
  estimate: the features' G_FD (`fd_record(features, references)["gap"]`) when the caller has it;
  computed when None.
  Raises ValueError for num_resamples below `checks.check_resamples` (40 at 95%), seed not
  an integer >= 0, confidence outside (0, 1), or features as `frechet.gaussian_fit` refuses them
  (at least 2 rows, finite); each named. The interval is clipped at G_FD's floor of -1.
  """
  check_resamples(num_resamples, confidence)
  check_number(seed, "seed", low=0, integer=True)
  feats = np.asarray(features).reshape(len(features), -1)
  n = len(feats)
  rows = np.random.default_rng(seed).integers(0, n, (num_resamples, n))  # the same on every process
  gap_of = lambda r: fd_record(feats[rows[r]], references)["gap"]
  if across_processes(mesh):
    width = -(-num_resamples // jax.process_count())
    lo = min(jax.process_index() * width, num_resamples)
    block = np.zeros((1, width))
    block[0, :min(width, num_resamples - lo)] = [gap_of(r) for r in
                                                  range(lo, min(lo + width, num_resamples))]
    gaps = frechet.gathered_columns(block, num_resamples)[0]
  else:
    gaps = np.asarray([gap_of(r) for r in range(num_resamples)], np.float64)
  tail = 50.0 * (1.0 - confidence)
  low, median, high = np.percentile(gaps, [tail, 50.0, 100.0 - tail])
  if estimate is None:
    estimate = fd_record(feats, references)["gap"]
  # G_FD >= -1 (FD_val >= 0): the shifted spread may not cross it
  return (float(max(-1.0, estimate + low - median)), float(max(-1.0, estimate + high - median)))


def sample_gap_fd(features, train_feature_subsets: Sequence, val_features
                  ) -> Tuple[float, float, float]:
  """(FD to training, averaged over the disjoint subsets; FD to validation; G_FD) of (n, F)
  features against raw reference feature sets (`fd_record` on their Gaussian fits)."""
  references = {"train": [frechet.gaussian_fit(np.asarray(t).reshape(len(t), -1))
                          for t in train_feature_subsets],
                "val": frechet.gaussian_fit(np.asarray(val_features).reshape(len(val_features),
                                                                              -1))}
  r = fd_record(features, references)
  return r["train"], r["val"], r["gap"]


def fd_baselines(references: Mapping[str, Any], num_samples: int, *, rng: np.random.Generator,
                 copier: Tuple[np.ndarray, Callable], fresh: Tuple[np.ndarray, Callable],
                 used_val: np.ndarray, mesh: Optional[Mesh] = None) -> Dict[str, Any]:
  """The scale of G_FD: the `fd_record` (per space) of two generators that need no network.

  "copier": a perfect memorizer, num_samples images drawn uniformly from the featurized training
    rows (without replacement when there are enough, else with): its G_FD is the ceiling a
    network that only reproduces training images reaches.
  "real": a perfect generalizer, fresh real images: up to num_samples featurized validation rows
    that are not in the validation reference (positions `used_val`); None when fewer than 2 are
    left. Its G_FD (about zero, up to the split's own shift and sampling noise) is the floor.
  copier / fresh: (features (R, F) of the featurized rows of the split, pixels(positions) -> the
  pixel features of those rows); references: {space: {"train": [...], "val": ...}} (`prepare`).
  Returns {"copier": {"num_images", space: fd_record}, "real": {...} or None}, and, only when
  they apply, "inverted": [the spaces where the copier's G_FD is below fresh real images': the
  scale is then noise, not a floor and a ceiling] and "note": a line saying in which spaces
  num_samples is below the feature dimension (FD's covariances are then rank-deficient and its
  scale is unreliable, e.g. 16 samples against the 64 pixels of an 8x8 image)."""
  def record(pos, feats, pixels):
    return {"num_images": int(len(pos)),
            "features": fd_record(feats[pos], references["features"], mesh=mesh),
            "pixels": fd_record(pixels(pos), references["pixels"], mesh=mesh)}

  train_features, train_pixels = copier
  r = len(train_features)
  copied = np.sort(rng.choice(r, num_samples, replace=num_samples > r))
  val_features, val_pixels = fresh
  left = np.setdiff1d(np.arange(len(val_features)), used_val)
  chosen = np.sort(rng.permutation(left)[:num_samples])
  out = {"copier": record(copied, train_features, train_pixels),
         "real": record(chosen, val_features, val_pixels) if len(chosen) >= 2 else None}
  spaces = ("features", "pixels")
  if out["real"] is not None:
    inverted = [sp for sp in spaces if out["copier"][sp]["gap"] < out["real"][sp]["gap"]]
    if inverted:
      out["inverted"] = inverted
  dims = {sp: int(np.size(references[sp]["val"][0])) for sp in spaces}
  few = [sp for sp in spaces if num_samples < dims[sp]]
  if few:
    against = " and ".join(f"the {dims[sp]}{' dimensions' if i == 0 else ''} of the {sp}"
                           for i, sp in enumerate(few))
    out["note"] = (f"{num_samples} samples against {against}: FD's covariances are "
                   "rank-deficient and G_FD's scale (fresh real images, a copier) is unreliable")
  return out


# ------------------------------------------------------------------------------------------------
# What is fixed across denoisers

# The numpy streams (default_rng([seed, stream])) of the seeded reference subsets of each split.
_SUBSET_STREAMS = {"train": 11, "val": 12}


def reference_subset(num_rows: int, reference_images: int, seed: int, split: str) -> np.ndarray:
  """The rows (ascending, int64) of a split of num_rows images whose features the sample-level
  references use: every row 0..num_rows-1 when reference_images is 0 (no cap) or >= num_rows;
  else `data.seeded_rows` (uniform without replacement) with stream 11 for split "train", 12 for
  "val" (the same rows for a seed, whatever the mesh). Raises ValueError for a split other than
  "train" / "val" or reference_images not an integer >= 0."""
  if split not in _SUBSET_STREAMS:
    raise ValueError(f"split must be one of {sorted(_SUBSET_STREAMS)}, got {split!r}")
  check_number(reference_images, "reference_images", low=0, integer=True)
  return seeded_rows(num_rows, int(reference_images), seed, _SUBSET_STREAMS[split])


def _capped(num_rows: int, reference_images: int) -> int:
  return num_rows if not reference_images else min(num_rows, int(reference_images))


@dataclasses.dataclass
class Setup:
  """Everything computed once and shared by the denoisers evaluated (see `prepare`)."""
  features_fn: Callable
  num_steps: int
  batch_size: int
  copy_ratio: float
  noise_seed: int
  seed: int  # the samples' noise: normal(key(seed), (num_samples,) + item_shape), see `noise`
  num_samples: int
  item_shape: Tuple[int, ...]  # (H, W, C)
  labels: Optional[np.ndarray]  # (num_samples,) cycling over classes; None if unconditional
  train_images: Any  # (N, H, W, C) float in [-1, 1]: an array or a source, read where needed
  train_labels: Optional[np.ndarray]  # (N,); None if unconditional
  train_ids: np.ndarray
  val_images: Any  # (N_val, H, W, C), as train_images
  val_labels: Optional[np.ndarray]
  val_ids: np.ndarray
  feature_rows: Dict[str, np.ndarray]  # {"train", "val"}: the rows featurized (`reference_subset`)
  train_features: np.ndarray  # (R_train, F) features of the training rows feature_rows["train"]
  val_features: np.ndarray  # (R_val, F)
  reference_rows: Dict[str, Any]  # {"train": [rows of each subset], "val": rows} (split rows)
  # space -> {"train": [(mu, cov)], "val": (mu, cov)}; cov a matrix or a factor (gaussian_fit)
  references: Dict[str, Dict[str, Any]]
  stop_steps: np.ndarray  # early-stop steps evaluated
  probe_size: int
  overlap: bool
  nn_similarity: bool
  grid_size: int
  validation_copy_fraction: float
  mesh: Optional[Mesh] = None  # every batch is split over its data axis
  baselines: Optional[Dict[str, Any]] = None  # `fd_baselines`: G_FD of fresh real images, a copier
  # {"train", "val"}: the probes' images, probe_size seeded rows of each split (`prepare`)
  probe_rows: Optional[Dict[str, np.ndarray]] = None
  # The copy fraction of validation features (the feature-space copy test's control); None: the
  # copy test runs in pixels only.
  validation_feature_copy_fraction: Optional[float] = None

  @property
  def noise(self) -> np.ndarray:
    """(num_samples, H, W, C) float32 standard normal: the samples' initial noise, drawn whole
    here (the sampler draws each process's rows on its devices: the same values)."""
    return np.asarray(jax.random.normal(jax.random.key(self.seed),
                                        (self.num_samples,) + tuple(self.item_shape), jnp.float32))


def reference_size(num_samples: int, num_train: int, num_val: int, num_train_subsets: int,
                   reference_images: int = 0) -> int:
  """m = min(num_samples, R_train // num_train_subsets, R_val): the size of every FD reference,
  with R the split's size capped at reference_images (0: no cap; `reference_subset`).

  Raises ValueError when m < 2 (a covariance needs two images).
  """
  r_train, r_val = _capped(num_train, reference_images), _capped(num_val, reference_images)
  m = min(num_samples, r_train // num_train_subsets, r_val)
  if m < 2:
    cap = (f" (at most reference_images={reference_images} of each)"
           if reference_images and reference_images < max(num_train, num_val) else "")
    raise ValueError(
        f"FD references would hold {m} images: the training split ({num_train} images) must give "
        f"num_train_subsets={num_train_subsets} disjoint subsets of at least 2 images and the "
        f"validation split ({num_val}) at least 2{cap}")
  return m


def _source(images, name: str):
  """An array as float32 numpy (held as given), a source kept as it is (read where needed)."""
  if isinstance(images, (np.ndarray, jax.Array)) or not hasattr(images, "shape"):
    return np.asarray(images, np.float32)
  return training_source(images, name, ndim=4, layout="(N, H, W, C) float images")[0]


def prepare(train_images, val_images, features_fn, *, train_labels=None, val_labels=None,
            train_ids=None, val_ids=None, num_classes: int = 0, num_samples: int = 512,
            num_steps: int = 18, seed: int = 0, num_train_subsets: int = 2,
            early_stop_every: int = 1, overlap: bool = True, nn_similarity: bool = True,
            probe_size: int = 128, copy_ratio: float = 1.0 / 3.0, grid_size: int = 32,
            batch_size: int = 256, noise_seed: int = 0, reference_images: int = 0,
            mesh: Optional[Mesh] = None, feature_copies: bool = False) -> Setup:
  """The denoiser-independent part: labels, features and reference statistics.

  Args:
    train_images, val_images: (N, H, W, C) float images in [-1, 1] (whole splits): numpy arrays,
      or sources (len(), .shape, indexing by a slice or an int array returning numpy rows, e.g.
      `sharding.LazyRows(split.images, rows, transform=data.to_unit_range)`), read where needed,
      never held whole.
    features_fn: images -> (B, F) feature extractor (`features`).
    train_labels, val_labels: (N,) int labels of conditional runs (num_classes > 0), else None.
    train_ids, val_ids: (N,) image ids seeding the probes' noise (default 0..N-1).
    num_classes: 0 for unconditional sampling, else samples' labels cycle over the classes.
    num_samples, num_steps, seed: the Heun run (noise from `seed`); the FD reference subsets are
      drawn with numpy default_rng([seed, 7]) from the featurized rows.
    num_train_subsets, early_stop_every, overlap, nn_similarity, probe_size, copy_ratio,
      grid_size: see the module docstring. batch_size: images per compiled call.
    noise_seed: the gap evaluation's noise seed (the probes' noisy training / validation images).
    reference_images: at most this many rows of each split are featurized (a seeded subset,
      `reference_subset`; 0 = every row): the FD references, the 1-NN probe's reference sets.
    mesh: optional (every device of every process); every batch is split over its data axis
      (batch_size rounded up to a multiple of it) and each process builds only its rows; the
      training set is split over it for the copy test. The numbers do not depend on it beyond
      float rounding.
    feature_copies: also test copies in the feature space (the module docstring).

  Raises:
    ValueError: num_samples, num_steps, batch_size, early_stop_every, num_train_subsets or
      probe_size not an integer >= 1 (grid_size, reference_images >= 0), or fewer than 2 images
      per FD reference.
  """
  for name, value, low in (("num_samples", num_samples, 1), ("num_steps", num_steps, 1),
                           ("batch_size", batch_size, 1), ("early_stop_every", early_stop_every, 1),
                           ("num_train_subsets", num_train_subsets, 1),
                           ("probe_size", probe_size, 1), ("grid_size", grid_size, 0),
                           ("reference_images", reference_images, 0)):
    check_number(value, name, low=low, integer=True)
  train_images = _source(train_images, "train_images")
  val_images = _source(val_images, "val_images")
  batch = batch_multiple(int(batch_size), mesh)
  conditional = num_classes > 0
  n = int(num_samples)
  n_train, n_val = len(train_images), len(val_images)
  m = reference_size(n, n_train, n_val, num_train_subsets, reference_images)
  labels = (np.arange(n) % num_classes).astype(np.int32) if conditional else None

  feature_rows = {split: reference_subset(size, reference_images, seed, split)
                  for split, size in (("train", n_train), ("val", n_val))}
  featurize = lambda fn, images, rows: features_lib.batched_features(
      fn, LazyRows(images, rows), batch, mesh=mesh)
  train_features = featurize(features_fn, train_images, feature_rows["train"])
  val_features = featurize(features_fn, val_images, feature_rows["val"])
  rng = np.random.default_rng([seed, 7])
  train_perm = rng.permutation(len(feature_rows["train"]))
  # Positions in the featurized rows of each disjoint training subset, and of the validation one.
  subsets = [np.sort(train_perm[j * m:(j + 1) * m]) for j in range(num_train_subsets)]
  val_pos = np.sort(rng.permutation(len(feature_rows["val"]))[:m])
  references = {"features": {
      "train": [frechet.gaussian_fit(train_features[pos], mesh=mesh) for pos in subsets],
      "val": frechet.gaussian_fit(val_features[val_pos], mesh=mesh)}}
  # (Pixels of a 64x64 RGB image: 12,288 values, more than the m images of a reference; their
  # fits are then factors of (m, 12,288), not 1.2 GB covariances: `frechet.gaussian_fit`.)
  pixels = lambda images, rows: frechet.gaussian_fit(
      featurize(features_lib.pixel_features, images, rows), mesh=mesh)
  references["pixels"] = {
      "train": [pixels(train_images, feature_rows["train"][pos]) for pos in subsets],
      "val": pixels(val_images, feature_rows["val"][val_pos])}
  baselines = fd_baselines(
      references, n, rng=np.random.default_rng([seed, 8]),
      copier=(train_features, lambda pos: featurize(features_lib.pixel_features, train_images,
                                                     feature_rows["train"][pos])),
      fresh=(val_features, lambda pos: featurize(features_lib.pixel_features, val_images,
                                                  feature_rows["val"][pos])),
      used_val=val_pos, mesh=mesh)
  steps = int(num_steps)
  stop_steps = np.unique(np.r_[np.arange(0, steps, early_stop_every), steps - 1])
  # The control: num_samples validation images (seeded rows) against the WHOLE training set,
  # read where it lives; in feature space, their features against the featurized training rows.
  control_rows = seeded_rows(n_val, n, seed, 15)
  control = copy_fraction(np.asarray(val_images[control_rows], np.float32),
                          train_images, copy_ratio, mesh=mesh)
  feature_control = (copy_fraction(featurize(features_fn, val_images, control_rows),
                                   train_features, copy_ratio, mesh=mesh)
                     if feature_copies else None)
  probe_size = min(int(probe_size), n, n_train, n_val)
  # The probes' images: a seeded uniform draw of each split (not its first rows, issue 26).
  probe_rows = {name: seeded_rows(size, probe_size, seed, stream) for name, size, stream in
                (("train", n_train, 13), ("val", n_val, 14))}
  ids = lambda given, size: np.arange(size) if given is None else np.asarray(given)
  lab = lambda a: np.asarray(a, np.int32) if conditional and a is not None else None
  return Setup(
      features_fn=features_fn, num_steps=steps, batch_size=batch, copy_ratio=float(copy_ratio),
      noise_seed=int(noise_seed), seed=int(seed), num_samples=n,
      item_shape=tuple(train_images.shape[1:]), labels=labels, train_images=train_images,
      train_labels=lab(train_labels), train_ids=ids(train_ids, n_train), val_images=val_images,
      val_labels=lab(val_labels), val_ids=ids(val_ids, n_val), feature_rows=feature_rows,
      train_features=train_features, val_features=val_features,
      reference_rows={"train": [feature_rows["train"][pos] for pos in subsets],
                      "val": feature_rows["val"][val_pos]},
      references=references, stop_steps=stop_steps, probe_size=probe_size, overlap=bool(overlap),
      nn_similarity=bool(nn_similarity), grid_size=min(int(grid_size), n),
      validation_copy_fraction=float(control), mesh=mesh, baselines=baselines,
      probe_rows=probe_rows,
      validation_feature_copy_fraction=None if feature_control is None else float(feature_control))


# ------------------------------------------------------------------------------------------------
# One denoiser


class SampleRun(NamedTuple):
  samples: np.ndarray  # (n, ...)
  features: np.ndarray  # (n, F) their features
  sigmas: np.ndarray  # (T,) the noise level of each step
  stop_features: np.ndarray  # (S, n, F) features of D(x_i; sigma_i) at the S stop steps
  states: np.ndarray  # (T, P, ...) trajectory states of the first P samples
  denoised: np.ndarray  # (T, P, ...) their predictions


@functools.lru_cache(maxsize=16)
def _noise_draw(seed: int, shape: Tuple[int, ...], sharding):
  """normal(key(seed), shape) compiled with its rows laid out by `sharding` (None: the default
  device); with partitionable threefry each device draws only the values it holds."""
  return jax.jit(lambda: jax.random.normal(jax.random.key(seed), shape, jnp.float32),
                 out_shardings=sharding)


@functools.lru_cache(maxsize=16)
def _take_batch(sharding):
  return jax.jit(lambda noise, j: noise[j], out_shardings=sharding)


def _noise_batches(seed: int, n: int, item_shape, batch: int, mesh: Optional[Mesh]):
  """j -> the (batch, ...) initial noise of batch j: rows j * batch + k of the samples' noise
  normal(key(seed), (n,) + item_shape) (rows n and beyond pad the last batch), on the devices as
  the sampler takes it (split over the mesh's data axis).

  With partitionable threefry (JAX's default) the flat draw's values depend only on the flat
  index, so one draw of shape (batches, batch) + item_shape, its batch axis split over the data
  axis, holds the same values, each device drawing only its rows. Otherwise the whole (n, ...)
  draw is made on the host and each process puts its rows (`put_batch`)."""
  item_shape = tuple(item_shape)
  nb = -(-n // batch)
  span = process_span(batch, mesh)
  if not jax.config.jax_threefry_partitionable:
    noise = np.asarray(jax.random.normal(jax.random.key(seed), (n,) + item_shape, jnp.float32))
    return lambda j: put_batch(LazyRows(noise, np.minimum(np.arange(j * batch, (j + 1) * batch),
                                                          n - 1)), mesh)
  on_mesh = lambda spec: None if mesh is None else NamedSharding(mesh, spec)
  noise = _noise_draw(int(seed), (nb, batch) + item_shape, on_mesh(P(None, DATA_AXIS)))()
  take = _take_batch(on_mesh(P(DATA_AXIS)))

  def batch_noise(j):
    rows_built["batch"] += span.stop - span.start  # this process's rows of the batch
    return take(noise, j)

  return batch_noise


def run_sampler(ctx: Setup, denoise) -> SampleRun:
  """The one Heun run per snapshot, in fixed-size batches (the last padded): one compilation.

  Each batch is split over the mesh's data axis (each process draws the noise of, and builds, only
  its rows: counted in `sharding.rows_built["batch"]`, as `put_batch` counts the labels); the
  samples, their features (extracted where they were made) and the features of the early-stopped
  outputs are gathered once per batch, so host memory holds (S, n, F) features, never
  (S, n, H, W, C) images. Progress: `progress.track("samples: Heun sampler", n, "samples")`.
  Raises NonFiniteSamples when a batch's samples hold NaN or Inf (checked on the host).
  """
  n = ctx.num_samples
  batch = batch_multiple(min(ctx.batch_size, n), ctx.mesh)
  noise = _noise_batches(ctx.seed, n, ctx.item_shape, batch, ctx.mesh)
  samples, feats, stop_feats, states, denoised = [], [], [], [], []
  kept, sigmas = 0, None
  with progress.track("samples: Heun sampler", n, "samples") as bar:
    for j, start in enumerate(range(0, n, batch)):
      rows = np.minimum(np.arange(start, start + batch), n - 1)
      keep = min(batch, n - start)
      out = samplers.sample(denoise, noise(j),
                            None if ctx.labels is None else put_batch(ctx.labels[rows], ctx.mesh),
                            num_steps=ctx.num_steps, return_trajectory=True)
      traj = out.trajectory
      sigmas = fetch(traj.sigmas)
      samples.append(fetch(out.samples)[:keep])
      _check_batch(samples[-1], traj, start, n)  # (before their features: finite images only)
      feats.append(features_lib.batch_features(ctx.features_fn, out.samples)[:keep])
      stopped = [ctx.features_fn(traj.denoised[int(i)]) for i in ctx.stop_steps]
      stop_feats.append(fetch(jnp.stack(stopped))[:, :keep].reshape(len(stopped), keep, -1))
      take = min(ctx.probe_size - kept, keep)
      if take > 0:
        states.append(fetch(traj.x[:, :take]))
        denoised.append(fetch(traj.denoised[:, :take]))
        kept += take
      bar.update(keep)
  return SampleRun(np.concatenate(samples), np.concatenate(feats), sigmas,
                   np.concatenate(stop_feats, axis=1).astype(np.float32),
                   np.concatenate(states, axis=1), np.concatenate(denoised, axis=1))


class NonFiniteSamples(ValueError):
  """The sampler's samples (or their features) hold NaN or Inf: the denoiser diverged along the
  trajectory, or the feature extractor fails on the samples."""


def _first_non_finite(finite_steps, steps, sigmas) -> str:
  """"; the denoiser's outputs are first non-finite at step i (sigma s)" of the first of `steps`
  whose `finite_steps` entry is False ("" when all are True)."""
  finite_steps = np.asarray(finite_steps, bool)
  if finite_steps.all():
    return ""
  i = int(np.asarray(steps)[np.argmin(finite_steps)])
  return f"; the denoiser's outputs are first non-finite at step {i} (sigma {float(sigmas[i]):.4g})"


def _check_batch(samples: np.ndarray, trajectory, start: int, n: int) -> None:
  """Raises NonFiniteSamples when a batch of samples (host, the rows start, start + 1, ... of n)
  holds NaN or Inf, naming how many and the first step whose denoiser outputs (all of the batch's
  trajectories, reduced on the devices only then) are not finite."""
  keep = len(samples)
  bad = int((~np.isfinite(samples.reshape(keep, -1)).all(axis=1)).sum())
  if not bad:
    return
  d = trajectory.denoised
  finite = fetch(jnp.isfinite(d).reshape(d.shape[0], -1).all(axis=1))
  which = f"{n} samples" if keep == n else f"the samples {start} to {start + keep - 1} (of {n})"
  raise NonFiniteSamples(f"{bad} of {which} hold NaN or Inf"
                         + _first_non_finite(finite, np.arange(len(finite)),
                                             fetch(trajectory.sigmas)))


def check_finite_features(run: SampleRun, stop_steps) -> None:
  """Raises NonFiniteSamples when the features of run's (finite) samples hold NaN or Inf (the
  feature extractor fails on them), naming how many and the first early-stop step whose outputs'
  features are not finite."""
  n = len(run.features)
  bad = int((~np.isfinite(run.features.reshape(n, -1)).all(axis=1)).sum())
  if bad:
    finite = np.isfinite(run.stop_features.reshape(len(run.stop_features), -1)).all(axis=1)
    raise NonFiniteSamples(f"the features of {bad} of {n} samples hold NaN or Inf"
                           + _first_non_finite(finite, stop_steps, run.sigmas))


def _positions(sorted_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """The position of each of `rows` in the ascending `sorted_rows` (-1 where absent)."""
  pos = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
  return np.where(sorted_rows[pos] == rows, pos, -1)


def _floats(a) -> List[float]:
  return [float(v) for v in np.asarray(a, np.float64).ravel()]


class SnapshotResult(NamedTuple):
  record: Dict[str, Any]  # JSON-serializable (plain floats)
  grid: Dict[str, np.ndarray]  # samples, nearest training images, distances (for the figure)


def evaluate_denoiser(ctx: Setup, denoise) -> SnapshotResult:
  """Every measurement of the module for one denoiser (a snapshot's network, or any other).

  `denoise` should be a pytree denoiser (`jax.tree_util.Partial` over arrays with a fixed
  function) so that it is compiled once for all snapshots; a plain function works too. With a
  mesh across processes every process must call it (the same numbers on each).
  Raises NonFiniteSamples when the samples (`run_sampler`) or their features hold NaN or Inf.
  """
  run = run_sampler(ctx, denoise)
  check_finite_features(run, ctx.stop_steps)
  n = len(run.samples)
  bs = ctx.batch_size
  mesh = ctx.mesh
  spaces = {"features": run.features, "pixels": run.samples.reshape(n, -1)}
  fd = {space: fd_record(x, ctx.references[space], mesh) for space, x in spaces.items()}
  for space, x in spaces.items():
    fd[space]["gap_low"], fd[space]["gap_high"] = fd_gap_interval(
        x, ctx.references[space], mesh=mesh, estimate=fd[space]["gap"])
  record: Dict[str, Any] = {
      "fd": fd, "fd_interval": dict(FD_INTERVAL),
      "copy_fraction": {"samples": copy_fraction(run.samples, ctx.train_images, ctx.copy_ratio,
                                                 mesh=mesh),
                        "validation_control": ctx.validation_copy_fraction},
  }
  if ctx.validation_feature_copy_fraction is not None:
    record["copy_fraction"]["features"] = copy_fraction(run.features, ctx.train_features,
                                                        ctx.copy_ratio, mesh=mesh)
    record["copy_fraction"]["features_validation_control"] = ctx.validation_feature_copy_fraction
  rows = [fd_record(f, ctx.references["features"], mesh) for f in run.stop_features]
  record["early_stop"] = {"steps": [int(i) for i in ctx.stop_steps],
                          "sigmas": _floats(run.sigmas[ctx.stop_steps]),
                          "fd_train": [r["train"] for r in rows],
                          "fd_val": [r["val"] for r in rows], "gap": [r["gap"] for r in rows]}
  p = run.states.shape[1]
  rows = ctx.probe_rows
  probe_kw = dict(train_probe_ids=ctx.train_ids[rows["train"]],
                  val_probe_ids=ctx.val_ids[rows["val"]], noise_seed=ctx.noise_seed,
                  batch_size=bs, mesh=mesh)
  at = lambda a, r: None if a is None else a[r]
  train_probe = np.asarray(ctx.train_images[rows["train"]], np.float32)
  val_probe = np.asarray(ctx.val_images[rows["val"]], np.float32)
  if ctx.overlap:
    overlap = probes.trajectory_overlap(
        run.states, run.sigmas, ctx.train_images, train_probe, val_probe,
        train_labels=ctx.train_labels, state_labels=at(ctx.labels, slice(p)),
        train_probe_labels=at(ctx.train_labels, rows["train"]),
        val_probe_labels=at(ctx.val_labels, rows["val"]), **probe_kw)
    record["overlap"] = {"sigmas": _floats(run.sigmas)}
    for group, stats in overlap.items():
      record["overlap"][group] = {k: _floats(np.mean(v, axis=1)) for k, v in stats.items()}
  if ctx.nn_similarity:
    sims = probes.nn_similarity_probe(
        denoise, ctx.features_fn, run.sigmas, run.denoised, train_probe, val_probe,
        ctx.train_features, ctx.val_features,
        train_probe_labels=at(ctx.train_labels, rows["train"]),
        val_probe_labels=at(ctx.val_labels, rows["val"]),
        train_probe_rows=_positions(ctx.feature_rows["train"], rows["train"]),
        val_probe_rows=_positions(ctx.feature_rows["val"], rows["val"]), **probe_kw)
    record["nn_similarity"] = {"sigmas": _floats(run.sigmas)}
    record["nn_similarity"].update({k: _floats(v) for k, v in sims.items()})
  g = ctx.grid_size
  grid = {}
  if g > 0:
    # Second neighbour: the nearest *distinct* training image, as in the copy test.
    idx, dist, _ = nearest_distinct(run.samples[:g], ctx.train_images, mesh=mesh)
    grid = {"samples": run.samples[:g], "nearest": np.asarray(ctx.train_images[idx[:, 0]]),
            "nearest_ids": ctx.train_ids[idx[:, 0]], "distances": dist,
            "copy_ratio": np.float32(ctx.copy_ratio)}
  return SnapshotResult(record, grid)


# ------------------------------------------------------------------------------------------------
# Over the snapshots of a run


def ordered(section):
  """(keys, records) of a section's snapshots in training order (`checkpointing.snapshot_order`);
  the keys of a run's snapshots as int steps, a hook's as file names."""
  keys = snapshot_order(section["snapshots"])
  return ([int(k) if k.isdigit() else k for k in keys],
          [section["snapshots"][k] for k in keys])


def summarize(section) -> Dict[str, Any]:
  """Per-snapshot scalars in training order (the series the figures plot against images seen);
  G_FD with its interval where the records keep one (gap_fd_<space>_low / _high), the copy
  fractions with their 95% Wilson interval over protocol["num_samples"] samples
  (copy_fraction[_features]_low / _high)."""
  steps, records = ordered(section)
  summary = {"steps": steps, "images_seen": [r["images_seen"] for r in records]}
  for space in ("features", "pixels"):
    summary[f"gap_fd_{space}"] = [r["fd"][space]["gap"] for r in records]
    for end in ("low", "high"):  # (None for a snapshot measured before the interval was kept)
      summary[f"gap_fd_{space}_{end}"] = [r["fd"][space].get(f"gap_{end}") for r in records]
    summary[f"fd_train_{space}"] = [r["fd"][space]["train"] for r in records]
    summary[f"fd_val_{space}"] = [r["fd"][space]["val"] for r in records]
  summary["copy_fraction"] = [r["copy_fraction"]["samples"] for r in records]
  summary["copy_fraction_validation_control"] = [r["copy_fraction"]["validation_control"]
                                                 for r in records]
  if records and all("features" in r["copy_fraction"] for r in records):
    summary["copy_fraction_features"] = [r["copy_fraction"]["features"] for r in records]
    summary["copy_fraction_features_validation_control"] = [
        r["copy_fraction"]["features_validation_control"] for r in records]
  n = section.get("protocol", {}).get("num_samples")
  for key in ("copy_fraction", "copy_fraction_features"):  # 95% Wilson interval over the samples
    if n and key in summary:
      ends = [wilson_interval(f, n) for f in summary[key]]
      summary[f"{key}_low"], summary[f"{key}_high"] = [a for a, _ in ends], [b for _, b in ends]
  if records and all("nn_similarity" in r for r in records):
    keys = [k for k in records[0]["nn_similarity"] if k != "sigmas"]
    summary["nn_similarity_mean_over_steps"] = {
        k: [float(np.mean(r["nn_similarity"][k])) for r in records] for k in keys}
  return summary
