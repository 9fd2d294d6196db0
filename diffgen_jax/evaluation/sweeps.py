"""Factor sweeps: how each factor of paper.md section 6 moves the denoising gap G(sigma).

    G(sigma) = (E_val(sigma) - E_train(sigma)) / E_train(sigma)

on fixed subsets of the training and validation splits (`Setup`: `num_images` seeded rows of each),
one seeded noise draw per image (`gap`; seed `noise_seed` for train, `noise_seed + 1` for
validation, as in the evaluate job). Every sweep returns a section: a list of labelled curves, one
denoiser per factor value, all of them pure `denoise(x, sigma, labels)` functions evaluated by the
same `gap.denoising_errors`:
    {"factor", "sigmas", "value_name", "interval", "curves": [{"label", "group", "value",
     "e_train", "e_val", "gap", "gap_low", "gap_high", "peak_sigma", "peak_gap", "peak_gap_low",
     "peak_gap_high"}], ...}
Where E_train is 0 (y* recalls the noisy training images exactly at small sigma) G is infinite;
peaks are taken over the finite values.

Intervals: gap_low / gap_high are the 95% percentile bootstrap interval of G(sigma) over the
evaluation images (`gap.bootstrap_relative_gap`, the evaluate job's: each split's images resampled
independently, INTERVAL's seed and resample count, so they are reproducible); NaN (JSON null) where
G or its resamples are infinite. peak_gap_low / peak_gap_high are that interval at the peak's sigma
(the peak's location held fixed, as the evaluate job's summary reports it). The gradient score's
curves carry score_low / score_high, the same bootstrap of their mean over images. The section's
"interval" records the settings.

Analytic sweeps (the "network" is the exact optimal denoiser y* of the training set, or the toy
model's y_delta built on it; `optimal`):
  sweep_delta            y_delta for several model errors delta.
  sweep_granularity      y_delta conditioned on nothing, on the true classes, and on k-means
                         clusters of training features for each k (validation images get the label
                         of their nearest centroid, `kmeans.pseudo_labels`); optionally writes the
                         pseudo-label files the train job reads.
  sweep_guidance         `denoisers.guided` pairs: "cfg" (class-conditional y_delta vs unconditional
                         y_delta) and "autoguidance" (y_delta(delta_pos) vs y_delta(delta_neg)), vs w.
  sweep_receptive_field  `denoisers.crop_averaged(y_delta, s)`: the denoiser applied to a crop is the
                         optimal denoiser (or its y_delta) of the POOLED training crops, i.e. the
                         s x s crops of every training image at all four corner positions, so one
                         crop-sized denoiser serves every position (a local, translation-pooled
                         denoiser, as a convolutional network is). s = the full image is the
                         unwrapped full-image denoiser.
  sweep_gradient_score   the input-gradient correlation score vs sigma (`gradient_score`) of y* and
                         y_delta on a few training and validation images.
`gap_curve` and `score_curves` measure any other denoiser (a trained network, a guided pair) the
same way.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from diffgen_jax import edm, progress
from diffgen_jax.denoisers import crop_averaged, crop_offsets, guided
from diffgen_jax.evaluation import features, gap, kmeans, timescales
from diffgen_jax.evaluation.gradient_score import gradient_correlation_vs_sigma
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from diffgen_jax.data.splits import SUBSET_STREAMS, seeded_rows
from diffgen_jax.sharding import LazyRows

GUIDANCE_STYLES = ("cfg", "autoguidance")
# Every interval of the sweeps: 95% percentile bootstrap over the evaluation images, seeded.
INTERVAL = {"confidence": 0.95, "num_resamples": 1000, "seed": 0,
            "method": "percentile bootstrap over the evaluation images (each split resampled "
                      "independently for G)"}


class Setup(NamedTuple):
  """The data a sweep needs, as float32 images in [-1, 1].

  train_all / train_labels: the training set the analytic denoisers are built on (labels: true
  classes, or None when unlabelled); val_all / val_labels: the whole validation split; train_x,
  train_y, train_ids / val_x, val_y, val_ids: the fixed evaluation subsets (seeded uniform rows
  of the splits, `data.evaluation_subset`), at the rows train_rows / val_rows of the splits (any
  per-row array of a split, e.g. pseudo-labels, is taken at the subset as `a[train_rows]`). The
  images are numpy arrays, or sources read where they are used (`sharding.LazyRows`; see
  `make_setup`): y* and the gap evaluation then read on each process only the rows its devices
  hold; what needs every image at once (the k-means features, the pooled crops, a classifier) reads
  them whole.
  """
  train_all: np.ndarray
  train_labels: Optional[np.ndarray]
  val_all: np.ndarray
  val_labels: Optional[np.ndarray]
  num_classes: int
  train_x: np.ndarray
  train_y: Optional[np.ndarray]
  train_ids: np.ndarray
  val_x: np.ndarray
  val_y: Optional[np.ndarray]
  val_ids: np.ndarray
  train_rows: np.ndarray
  val_rows: np.ndarray
  sigmas: np.ndarray
  noise_seed: int = 0
  batch_size: int = 256
  chunk_size: int = 2048
  mesh: Optional[Mesh] = None  # batches split over its data axis; y* lays its training set out on it


def make_setup(train_images, train_labels, val_images, val_labels, num_classes: int, sigmas, *,
               num_images: int, train_ids=None, val_ids=None, subset_seed: int = 0,
               noise_seed: int = 0, batch_size: int = 256, chunk_size: int = 2048,
               mesh: Optional[Mesh] = None) -> Setup:
  """A Setup from float images in [-1, 1]: arrays (held as float32), or sources (len(), .shape,
  indexing by an int array returning numpy rows, e.g. `sharding.LazyRows` over a split) kept as
  they are; the evaluation subsets are num_images seeded uniform rows of each
  (`data.seeded_rows(n, num_images, subset_seed, data.SUBSET_STREAMS[split])`, as the evaluate
  job draws them; of a source: a `LazyRows` over it). train_ids / val_ids: the ids of every row
  of the splits (default the row numbers).
  mesh: optional; every gap curve's batches are split over its data axis (`gap.denoising_errors`)
  and the analytic denoisers lay their training set out over it (`optimal_denoiser`)."""
  is_array = lambda a: isinstance(a, (np.ndarray, jax.Array)) or not hasattr(a, "shape")
  whole = lambda a: np.asarray(a, np.float32) if is_array(a) else a
  train_all, val_all = whole(train_images), whole(val_images)
  lab = lambda a: None if a is None or num_classes == 0 else np.asarray(a, np.int32)
  train_labels, val_labels = lab(train_labels), lab(val_labels)
  rows = {name: seeded_rows(len(a), num_images, subset_seed, SUBSET_STREAMS[name])
          for name, a in (("train", train_all), ("validation", val_all))}
  ids = lambda given, r: r.copy() if given is None else np.asarray(given)[r]
  take = lambda a, r: None if a is None else a[r]
  subset = lambda a, r: a[r] if isinstance(a, np.ndarray) else LazyRows(a, r)
  tr, va = rows["train"], rows["validation"]
  return Setup(train_all, train_labels, val_all, val_labels, int(num_classes),
               subset(train_all, tr), take(train_labels, tr), ids(train_ids, tr),
               subset(val_all, va), take(val_labels, va), ids(val_ids, va), tr, va,
               np.asarray(sigmas, np.float64), noise_seed, batch_size, chunk_size, mesh)


# ------------------------------------------------------------------------------------------------
# One curve


def gap_curve(setup: Setup, denoise, label: str, value, group: str = "", *, conditional=False,
              train_y=None, val_y=None) -> Dict[str, Any]:
  """E_train, E_val, G and its peak for one denoiser on the setup's evaluation subsets, with G's
  95% bootstrap interval over the images (gap_low, gap_high; the peak's peak_gap_low,
  peak_gap_high: see the module docstring).

  conditional: pass labels to the denoiser (train_y / val_y, default the true classes).
  """
  if conditional:
    train_y = setup.train_y if train_y is None else train_y
    val_y = setup.val_y if val_y is None else val_y
  else:
    train_y = val_y = None
  c = gap.train_val_gap(denoise, (setup.train_x, train_y, setup.train_ids),
                        (setup.val_x, val_y, setup.val_ids), setup.sigmas,
                        noise_seeds=(setup.noise_seed, setup.noise_seed + 1),
                        batch_size=setup.batch_size, mesh=setup.mesh)
  return {"label": label, "group": group, "value": value,
          **{k: c[k] for k in ("e_train", "e_val", "gap", "gap_low", "gap_high")},
          **_finite_peak(setup.sigmas, c["gap"], c["gap_low"], c["gap_high"])}


def _finite_peak(sigmas, values, low, high) -> Dict[str, Optional[float]]:
  """peak_sigma, peak_gap: the curve's peak over its finite values (`edm.peak_index`; +-inf left
  out), and peak_gap_low, peak_gap_high: the interval (low, high) (S,) there; all None where no
  value is finite."""
  g = np.asarray(values, np.float64)
  if not np.any(np.isfinite(g)):
    return dict.fromkeys(("peak_sigma", "peak_gap", "peak_gap_low", "peak_gap_high"))
  i = edm.peak_index(np.where(np.isfinite(g), g, np.nan))
  return {"peak_sigma": float(np.asarray(sigmas, np.float64)[i]), "peak_gap": float(g[i]),
          "peak_gap_low": float(low[i]), "peak_gap_high": float(high[i])}


def sweep_section(factor: str, setup: Setup, curves: List[Dict], **extra) -> Dict[str, Any]:
  return dict({"factor": factor, "sigmas": setup.sigmas, "curves": curves,
               "interval": dict(INTERVAL)}, **extra)


def optimal_denoiser(setup: Setup, labels=None, images=None, *, differentiable: bool = False):
  """y* of the setup's training set (or of `images`), conditioned on `labels` (None: unconditional),
  laid out over the setup's mesh; differentiable=True: on one device of each process instead (the
  mesh's combination of the shards' statistics, a pmax, has no derivative; the gradient score
  differentiates y*)."""
  images = setup.train_all if images is None else images
  return empirical_optimal_denoiser(images, labels, chunk_size=setup.chunk_size,
                                    mesh=None if differentiable else setup.mesh)


def _curves(factor: str, items: Sequence, curve) -> List[Dict[str, Any]]:
  """[curve(item) for item in items], reporting progress (`progress.track`, one unit per curve)."""
  out = []
  with progress.track(f"factors: {factor}", len(items), "curves") as bar:
    for item in items:
      out.append(curve(item))
      bar.update(1)
  return out


# ------------------------------------------------------------------------------------------------
# Analytic sweeps


def sweep_delta(setup: Setup, deltas: Sequence[float]) -> Dict[str, Any]:
  """G of the unconditional y_delta for each delta (delta = 0: y*)."""
  opt = optimal_denoiser(setup)
  curves = _curves("delta", list(deltas), lambda d: gap_curve(
      setup, error_prone_denoiser(opt, float(d)), f"delta={d:g}", float(d)))
  return sweep_section("delta", setup, curves, value_name="model error delta")


def cluster_labels(setup: Setup, k: int, feature_fn=None, seed: int = 0):
  """k-means pseudo-labels of the whole training set and (nearest centroid) the validation split."""
  fn = features.pixel_features if feature_fn is None else feature_fn
  train_f = features.batched_features(fn, setup.train_all)
  val_f = features.batched_features(fn, setup.val_all)
  return kmeans.pseudo_labels(train_f, val_f, k, seed)


def sweep_granularity(setup: Setup, ks: Sequence[int], deltas: Sequence[float], *,
                      include_classes: bool = True, feature_fn=None, seed: int = 0,
                      pseudo_label_dir: Optional[str] = None) -> Dict[str, Any]:
  """G of y_delta conditioned on nothing, on the classes, and on k-means clusters (value: the
  number of conditions). Writes pseudo_label_dir/k{k}.npz for every k >= 1 when given."""
  conditions = [("none", 1, None, None)]  # (name, number of conditions, train labels, val labels)
  if include_classes and setup.num_classes > 0 and setup.train_labels is not None:
    conditions.append(("class", setup.num_classes, setup.train_labels, setup.val_labels))
  files = {}
  for k in ks:
    k = int(k)
    if k == 0:
      continue  # unconditional: the "none" curve
    train_c, val_c = cluster_labels(setup, k, feature_fn, seed)
    if pseudo_label_dir:
      files[str(k)] = kmeans.write_pseudo_labels(os.path.join(pseudo_label_dir, f"k{k}.npz"),
                                                 train_c, val_c)
    conditions.append((f"k={k}", k, train_c, val_c))
  optimal = {}  # one y* per condition, built when its first curve is measured

  def curve(item):
    (name, count, train_c, val_c), d = item
    if name not in optimal:
      optimal[name] = optimal_denoiser(setup, train_c)
    out = gap_curve(setup, error_prone_denoiser(optimal[name], float(d)), f"{name}, delta={d:g}",
                    count, f"delta={d:g}", conditional=train_c is not None,
                    # each condition at the evaluation subsets' own rows (seeded, not the first)
                    train_y=None if train_c is None else np.asarray(train_c)[setup.train_rows],
                    val_y=None if val_c is None else np.asarray(val_c)[setup.val_rows])
    out["condition"] = name
    return out

  curves = _curves("granularity", [(c, d) for c in conditions for d in deltas], curve)
  return sweep_section("granularity", setup, curves, value_name="number of conditions",
                  pseudo_label_files=files)


def sweep_guidance(setup: Setup, ws: Sequence[float], *, styles=GUIDANCE_STYLES, delta: float,
                   delta_pos: float, delta_neg: float) -> Dict[str, Any]:
  """G of guided y_delta pairs over the guidance weight w (w = 0: the positive denoiser)."""
  uncond = optimal_denoiser(setup)
  pairs = []  # (style, positive, negative, conditional)
  if "cfg" in styles and setup.num_classes > 0 and setup.train_labels is not None:
    pairs.append(("cfg", error_prone_denoiser(optimal_denoiser(setup, setup.train_labels), delta),
                  error_prone_denoiser(uncond, delta), True))
  if "autoguidance" in styles:
    pairs.append(("autoguidance", error_prone_denoiser(uncond, delta_pos),
                  error_prone_denoiser(uncond, delta_neg), False))
  curves = _curves("guidance", [(p, w) for p in pairs for w in ws], lambda item: gap_curve(
      setup, guided(item[0][1], item[0][2], item[1]), f"{item[0][0]}, w={item[1]:g}",
      float(item[1]), item[0][0], conditional=item[0][3]))
  return sweep_section("guidance", setup, curves, value_name="guidance weight w",
                  cfg_delta=delta, autoguidance_delta_pos=delta_pos,
                  autoguidance_delta_neg=delta_neg)


def pooled_crops(images, crop_size: int) -> np.ndarray:
  """The s x s crops of every image at the four corner positions of `factors.crop_offsets`."""
  images = np.asarray(images)
  s = crop_size
  return np.concatenate([images[:, i:i + s, j:j + s]
                         for i, j in crop_offsets(s, images.shape[1:3])])


def sweep_receptive_field(setup: Setup, crop_sizes: Sequence[int],
                          deltas: Sequence[float]) -> Dict[str, Any]:
  """G of crop_averaged(y_delta of the pooled training crops, s) for each crop size s."""
  hw = setup.train_all.shape[1:3]
  optimal = {}  # one y* per crop size (of the pooled crops), built for its first curve

  def curve(item):
    s, d = item
    if s not in optimal:
      full = s == hw[0] and s == hw[1]
      optimal[s] = (optimal_denoiser(setup) if full else
                    optimal_denoiser(setup, images=pooled_crops(setup.train_all, s)))
    return gap_curve(setup, crop_averaged(error_prone_denoiser(optimal[s], float(d)), s, hw),
                     f"s={s}, delta={d:g}", s, f"delta={d:g}")

  curves = _curves("receptive_field", [(int(s), d) for s in crop_sizes for d in deltas], curve)
  return sweep_section("receptive_field", setup, curves, value_name="crop size s",
                  crop_training="pooled corner crops of every training image")


def score_curves(denoise, setup: Setup, sigmas, num_images: int, label: str, *,
                 conditional=False) -> List[Dict[str, Any]]:
  """Gradient correlation score vs sigma on the first training and validation images."""
  out = []
  for split, x, y, ids, seed in (("train", setup.train_x, setup.train_y, setup.train_ids, 0),
                                 ("val", setup.val_x, setup.val_y, setup.val_ids, 1)):
    n = min(num_images, len(x))
    labels = y[:n] if conditional and y is not None else None
    per = gradient_correlation_vs_sigma(denoise, x[:n], sigmas, labels, ids=ids[:n],
                                                noise_seed=setup.noise_seed + seed)
    finite = np.isfinite(per)  # NaN where no output pixel depends on the input (y* at tiny sigma)
    mean = np.where(finite, per, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    mean = np.where(finite.any(axis=1), mean, np.nan)
    low, high = score_interval(per)
    out.append({"label": f"{label}, {split}", "group": split, "value": label,
                "score": mean, "score_low": low, "score_high": high, "per_image": per})
  return out


def score_interval(per_image) -> tuple:
  """(low (S,), high (S,)): INTERVAL's bootstrap over images of the mean over the finite entries
  of per_image (S, N), as `score_curves` averages them; NaN at a sigma where a resample has no
  finite entry."""
  per = np.asarray(per_image, np.float64)
  finite = np.isfinite(per)
  counts = timescales.resample_counts(per.shape[1], INTERVAL["num_resamples"], INTERVAL["seed"])
  with np.errstate(divide="ignore", invalid="ignore"):
    means = (timescales.resampled_means(np.where(finite, per, 0.0).T, counts)
             / timescales.resampled_means(finite.T.astype(np.float64), counts))  # (R, S)
    tail = 50.0 * (1.0 - INTERVAL["confidence"])
    return np.percentile(means, tail, axis=0), np.percentile(means, 100.0 - tail, axis=0)


def sweep_gradient_score(setup: Setup, deltas: Sequence[float], sigmas,
                         num_images: int) -> Dict[str, Any]:
  opt = optimal_denoiser(setup, differentiable=True)

  def pair(d):  # the training and validation curves of one delta
    name = "y*" if d == 0 else f"y_delta, delta={d:g}"
    out = score_curves(error_prone_denoiser(opt, float(d)), setup, sigmas, num_images, name)
    return [dict(c, delta=float(d)) for c in out]

  curves = [c for pair_ in _curves("gradient_score", list(deltas), pair) for c in pair_]
  return {"factor": "gradient_score", "sigmas": np.asarray(sigmas), "curves": curves,
          "value_name": "mean distance looked at (pixels)", "interval": dict(INTERVAL)}
