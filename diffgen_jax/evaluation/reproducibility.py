"""Disjoint-subset reproducibility: do two models trained on disjoint data become one function?

Kadkhodaie, Guth, Simoncelli & Mallat (ICLR 2024) and Zhang et al. (ICML 2024) train two models on
disjoint training sets S1, S2 of the same size N (same seeds, same schedule). In the memorizing
regime each reproduces its own training set; as N grows both converge to the same denoiser and, from
the same initial noise, generate the same samples. Three measurements (analytic.md section 2):

* Model variance, the variance counterpart of the denoising gap G(sigma), on the gap evaluation's
  fixed images and per-image noise (`evaluation.gap`: x = y + sigma n_y, n_y seeded by the image id):

      V(sigma) = E ||D1(x; sigma) - D2(x; sigma)||^2 / E ||D1(x; sigma) - y||^2       (`model_variance`)

  Both expectations are per-pixel means over the images (the gap module's convention), so the ratio
  is dimensionless; the numerator alone is returned too. Known answers with the empirical optimal
  denoisers y*_1, y*_2 of S1, S2: as sigma -> inf the numerator tends to ||mean(S1) - mean(S2)||^2 / D;
  as sigma -> 0 to the mean over queries of ||nn_1(y) - nn_2(y)||^2 / D (each query's nearest points
  in S1 and S2); two equal data-independent denoisers give V = 0.
* Same-noise sample similarity (`sample_similarity`): cosine similarity between the two models'
  samples from the same initial noise (seed-paired), in pixels and in a feature space, and the
  fraction of pairs above a threshold (Zhang et al.'s reproducibility score). Pixel cosines of images
  in [-1, 1] are dominated by the shared background; pass `centre` (e.g. the training mean) to
  compare deviations from it instead.
* Copies against the own and the other training set (`cross_copy_fractions`): Gu et al.'s copy
  criterion (`copies.copy_flags`), each with its Wilson interval over samples.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import numpy as np
from jax.sharding import Mesh

from diffgen_jax import samplers
from diffgen_jax.checks import check_number, check_resamples
from diffgen_jax.data.convention import check_images
from diffgen_jax.evaluation import gap
from diffgen_jax.evaluation.features import batched_features
from diffgen_jax.evaluation.copies import copy_flags
from diffgen_jax.evaluation.timescales import resample_counts, resampled_means, wilson_interval


class ModelVariance(NamedTuple):
  variance: np.ndarray  # (S,) V(sigma) = numerator / denominator
  numerator: np.ndarray  # (S,) per-pixel mean of ||D1 - D2||^2 over the images
  denominator: np.ndarray  # (S,) per-pixel mean of ||D1 - y||^2 over the images (D1's E(sigma))
  per_image_numerator: Optional[np.ndarray] = None  # (N, S) when return_per_image
  per_image_denominator: Optional[np.ndarray] = None  # (N, S)
  variance_low: Optional[np.ndarray] = None  # (S,) with num_resamples: the interval of V
  variance_high: Optional[np.ndarray] = None  # (S,)


def bootstrap_ratio_of_means(per_item_numerator, per_item_denominator, *,
                             num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95):
  """Percentile bootstrap interval of mean(numerator) / mean(denominator) over items (axis 0),
  both resampled with the SAME items (paired: both are measured on each item).

  Inputs: (M, ...) finite floats, M >= 2 items, the denominators >= 0 (errors); a resample whose
  denominators are all 0 gives an inf ratio (NaN with a zero numerator), which the percentiles
  carry. Returns (low, high), each of shape (...). Raises ValueError for mismatched shapes, fewer
  than 2 items, non-finite values, a negative denominator, num_resamples below
  `checks.check_resamples` (40 at 95%), seed not an integer >= 0 or confidence outside
  (0, 1), each named."""
  a = np.asarray(per_item_numerator, np.float64)
  b = np.asarray(per_item_denominator, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"numerator {a.shape} and denominator {b.shape} must match")
  if a.ndim == 0 or a.shape[0] < 2:
    raise ValueError(f"the ratio's interval needs per-item values (M, ...) with M >= 2 items, "
                     f"got shape {a.shape}")
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("per_item_numerator and per_item_denominator must be finite")
  if np.any(b < 0):
    raise ValueError("per_item_denominator must be >= 0 (errors)")
  check_resamples(num_resamples, confidence)
  counts = resample_counts(a.shape[0], num_resamples, seed)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = resampled_means(a, counts) / resampled_means(b, counts)
  tail = 50.0 * (1.0 - confidence)
  return np.percentile(ratios, tail, axis=0), np.percentile(ratios, 100.0 - tail, axis=0)


def model_variance(denoise_1, denoise_2, images, labels=None, sigmas=None, *, ids=None,
                   noise_seed: int = 0, batch_size: int = 128, sigma_chunk: Optional[int] = 8,
                   mesh: Optional[Mesh] = None, return_per_image: bool = False,
                   num_resamples: int = 0, seed: int = 0) -> ModelVariance:
  """V(sigma) of two denoisers on fixed noisy images (one pass of each denoiser per input).

  Args:
    denoise_1, denoise_2: denoisers `denoise(x, sigma, labels)` (pytree denoisers compile once for
      all calls of the same shapes; see `evaluation.gap`). V is normalised by denoise_1's error.
    images: (N, ...) float images in [-1, 1], e.g. a fixed subset of the validation split.
    labels: (N,) int labels passed to both denoisers, or None.
    sigmas: (S,) positive noise levels; default `edm.gap_sigma_grid()`.
    ids, noise_seed, batch_size, sigma_chunk, mesh: as in `gap.denoising_errors` (same noise n_y).
    return_per_image: also return the (N, S) per-image numerators and denominators.
    num_resamples: > 0 also returns V's 95% interval over the images (variance_low, variance_high;
      `bootstrap_ratio_of_means`, seeded by `seed`, which names its errors); 0 (default) none.

  Returns:
    ModelVariance of float64 arrays. Raises ValueError for non-float images or a bad sigma grid.
  """
  (err, err_per), (dist, dist_per) = gap.errors_and_distance(
      denoise_1, denoise_2, images, labels, sigmas, ids=ids, noise_seed=noise_seed,
      batch_size=batch_size, sigma_chunk=sigma_chunk, mesh=mesh, return_per_image=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    variance = dist / err
  low = high = None
  if num_resamples:
    low, high = bootstrap_ratio_of_means(dist_per, err_per, num_resamples=num_resamples, seed=seed)
  if return_per_image:
    return ModelVariance(variance, dist, err, dist_per, err_per, low, high)
  return ModelVariance(variance, dist, err, variance_low=low, variance_high=high)


def paired_samples(denoise_1, denoise_2, noise, labels=None, **sampler_kwargs):
  """Samples of two denoisers from the same initial noise: (samples_1, samples_2), each (B, ...).

  noise: (B, ...) standard normal; sampler_kwargs go to `samplers.sample` (num_steps, solver...).
  """
  one = samplers.sample(denoise_1, noise, labels, **sampler_kwargs).samples
  two = samplers.sample(denoise_2, noise, labels, **sampler_kwargs).samples
  return np.asarray(one), np.asarray(two)


def pair_cosines(a, b, centre=None) -> np.ndarray:
  """(B,) cosine similarity of row i of a with row i of b (flattened); 0 for an all-zero row, NaN
  for a row holding a NaN.

  centre: optional array broadcastable to one row, subtracted from both first.
  """
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  if a.shape != b.shape:
    raise ValueError(f"paired arrays must have the same shape, got {a.shape} and {b.shape}")
  if centre is not None:
    c = np.asarray(centre, np.float64).reshape(1, -1)
    a, b = a - c, b - c
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  dots = np.einsum("bd,bd->b", a, b)
  # norms == 0 (not `> 0`) picks the all-zero rows, so a NaN row stays NaN instead of reading 0.
  return np.where(norms == 0, 0.0, dots / np.where(norms == 0, 1.0, norms))


def sample_similarity(samples_1, samples_2, *, features_fn: Optional[Callable] = None,
                      threshold: float = 0.9, feature_threshold: Optional[float] = None,
                      centre=None, batch_size: int = 256, confidence: float = 0.95
                      ) -> Dict[str, Dict]:
  """Seed-paired similarity of two models' samples (row i of each came from the same noise).

  Args:
    samples_1, samples_2: (B, H, W, C) float samples in [-1, 1] (overshoot up to the sampler
      limit allowed; data/convention.py), paired by row; other (B, ...) float arrays (points) are
      taken without a pixel scale. Integer pixels, 0..255 floats and NaN or Inf are refused.
    features_fn: optional extractor images -> (B, F) (`evaluation.features`).
    threshold: a pair counts as reproduced when its pixel cosine exceeds it, in (-1, 1).
    feature_threshold: the same in feature space (default: `threshold`).
    centre: optional image subtracted before the pixel cosine (e.g. the training mean).
    confidence: of the fractions' Wilson intervals over pairs (`timescales.wilson_interval`).

  Returns:
    {"pixels": {...}, "features": {...} (only with features_fn)}, each with "cosine" (B,),
    "mean_cosine", "fraction_above", "fraction_low", "fraction_high", "threshold". A NaN cosine
    (features_fn returned NaN for a row, or `centre` holds NaN) is neither above nor below the
    threshold: mean_cosine and the three fractions of that space are then NaN.

  Raises:
    ValueError: samples not float images (as above; named samples_1 / samples_2), a threshold not
      in (-1, 1), batch_size not an integer >= 1, confidence not in (0, 1) (each named).
  """
  for name, samples in (("samples_1", samples_1), ("samples_2", samples_2)):
    check_images(samples, name, lenient=True, nhwc=False, check_range=np.ndim(samples) == 4)
  cosine = dict(low=-1.0, high=1.0, low_open=True, high_open=True)  # thresholds of a cosine
  check_number(threshold, "threshold", **cosine)
  feature_threshold = threshold if feature_threshold is None else feature_threshold
  check_number(feature_threshold, "feature_threshold", **cosine)
  check_number(batch_size, "batch_size", low=1, integer=True)
  spaces = {"pixels": (pair_cosines(samples_1, samples_2, centre), threshold)}
  if features_fn is not None:
    f1 = batched_features(features_fn, samples_1, batch_size)
    f2 = batched_features(features_fn, samples_2, batch_size)
    spaces["features"] = (pair_cosines(f1, f2), feature_threshold)
  out = {}
  for name, (cos, thr) in spaces.items():
    above = cos > thr
    fraction = float(above.mean())
    low, high = wilson_interval(fraction, len(above), confidence)
    if np.isnan(cos).any():  # `NaN > thr` is False: the pair would count as not reproduced
      fraction = low = high = np.nan
    out[name] = {"cosine": cos, "mean_cosine": float(cos.mean()),
                 "fraction_above": fraction, "fraction_low": float(low),
                 "fraction_high": float(high), "threshold": float(thr)}
  return out


def cross_copy_fractions(samples_1, samples_2, train_1, train_2, ratio: float = 1.0 / 3.0, *,
                         confidence: float = 0.95, chunk_size: int = 2048
                         ) -> Dict[str, Dict[str, float]]:
  """Each model's copy fraction against its own and the other model's training set.

  samples_k: (B, ...) samples of model k; train_k: (N_k, ...) its training set (at least 2 images);
  float images in [-1, 1] (samples may overshoot; data/convention.py), or other (N, ...) float
  arrays taken without a pixel scale; integer pixels, 0..255 floats, NaN or Inf are refused.
  Returns {"1/own", "1/other", "2/own", "2/other": {"fraction", "low", "high"}} (the Wilson
  interval over samples, `timescales.wilson_interval`). Raises ValueError for images off the
  convention, ratio not in (0, 1), chunk_size not an integer >= 1 or confidence not in (0, 1), each
  named.
  """
  images = all(np.ndim(a) == 4 for a in (samples_1, samples_2, train_1, train_2))
  for name, a, lenient in (("samples_1", samples_1, True), ("samples_2", samples_2, True),
                           ("train_1", train_1, False), ("train_2", train_2, False)):
    check_images(a, name, lenient=lenient, nhwc=False, check_range=images)  # named here
  check_number(ratio, "ratio", low=0.0, high=1.0, low_open=True, high_open=True)
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  out = {}
  for name, samples, train in (("1/own", samples_1, train_1), ("1/other", samples_1, train_2),
                               ("2/own", samples_2, train_2), ("2/other", samples_2, train_1)):
    flags = copy_flags(samples, train, ratio, chunk_size=chunk_size)
    low, high = wilson_interval(float(flags.mean()), len(flags), confidence)
    out[name] = {"fraction": float(flags.mean()), "low": low, "high": high}
  return out
