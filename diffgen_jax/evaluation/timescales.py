"""Memorization time scales: when a series of snapshots crosses a threshold, with intervals.

Bonnaire, Urfin, Biroli & Mezard (NeurIPS 2025) report two training time scales: tau_gen, when
samples become good (here: the sample FD falls below a target), which does not depend on the
training-set size N, and tau_mem, when samples start to copy training images (the copy fraction
crosses a threshold), which grows linearly with N. analytic.md section 2 adds tau_G, when the peak of
the denoising gap G(sigma) crosses a threshold, or the overfitting onset (the snapshot of minimal
E_val). This module turns snapshot series into those times and fits their log-log slope against N.

Crossing (`bootstrap_crossing`): the first snapshot k whose value is past the threshold (>= for
direction "up", <= for "down"); the time is interpolated linearly in log time (or linearly with
log_time=False) between snapshots k-1 and k. Censoring: a curve already past the threshold at the
first snapshot is left-censored (time = times[0]); one that never crosses is right-censored
(time = inf, JSON null).

Intervals (also `bootstrap_crossing`): percentile bootstrap over the items behind each point (samples for
the copy fraction and the FD, images for G). The SAME resampled rows are used at every snapshot,
because the items are the same at every snapshot (fixed sampler noise, fixed evaluation images and
noise); each resampled series gives one crossing time, and the interval is the (alpha/2, 1-alpha/2)
order statistics of those times (censored draws sort to either end).

A fraction of independent items at one snapshot (a copy fraction over samples): the Wilson score
interval (`wilson_interval`), which, unlike the bootstrap of 0/1 flags, is not empty at 0 or 1.

Slopes (`loglog_slope`): least squares of log tau against log N; the interval propagates each
tau's interval (read as a normal interval in log tau) by Monte Carlo, or, without intervals, is the
t-interval of the fit (3 or more points).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats

from diffgen_jax.checks import check_number, check_resamples
from diffgen_jax.evaluation import frechet
from diffgen_jax.evaluation.gap import relative_gap

DIRECTIONS = ("up", "down")


def _check_confidence(confidence: float) -> float:
  return float(check_number(confidence, "confidence", low=0.0, high=1.0, low_open=True,
                            high_open=True))


def _check_threshold(threshold: float, name: str = "threshold") -> float:
  # A NaN threshold is never crossed: every curve would silently come out right-censored.
  return float(check_number(threshold, name))


def resample_counts(num_items: int, num_resamples: int, seed: int) -> np.ndarray:
  """(R, M) multinomial counts: each row is one bootstrap resample of M items (rows sum to M).

  num_items M and num_resamples R: integers >= 1; seed: an integer >= 0 (ValueError otherwise).
  """
  check_number(num_items, "num_items (items to resample)", low=1, integer=True)
  check_number(num_resamples, "num_resamples", low=1, integer=True)
  check_number(seed, "seed", low=0, integer=True)
  rng = np.random.default_rng(seed)
  return rng.multinomial(num_items, np.full(num_items, 1.0 / num_items), size=num_resamples)


def resampled_means(per_item, counts) -> np.ndarray:
  """Means over items of (M, ...) values under each resample of `counts` (R, M): (R, ...)."""
  a = np.asarray(per_item, np.float64)
  m = a.shape[0]
  if counts.shape[1] != m:
    raise ValueError(f"counts resample {counts.shape[1]} items, values have {m}")
  return (counts @ a.reshape(m, -1) / m).reshape((counts.shape[0],) + a.shape[1:])


def bootstrap_mean_interval(per_item, *, num_resamples: int = 1000, seed: int = 0,
                            confidence: float = 0.95):
  """Percentile bootstrap interval of the mean over items (axis 0) of (M, ...) values.

  Returns (low, high), each of shape per_item.shape[1:] (floats for 1-D input). (A fraction of
  independent items takes `wilson_interval`: this one is [0, 0] when no item counts.) Raises
  ValueError for num_resamples below `checks.check_resamples` (40 at 95%), or a bad seed or
  confidence.
  """
  check_resamples(num_resamples, confidence)
  a = np.asarray(per_item, np.float64)
  means = resampled_means(a, resample_counts(a.shape[0], num_resamples, seed))
  tail = 50.0 * (1.0 - confidence)
  low, high = np.percentile(means, tail, axis=0), np.percentile(means, 100.0 - tail, axis=0)
  return (float(low), float(high)) if a.ndim == 1 else (low, high)


def wilson_interval(fraction: float, num_items: int, confidence: float = 0.95
                    ) -> Tuple[float, float]:
  """Wilson score interval (Wilson 1927) of a fraction of num_items independent items (a copy
  fraction over samples, the share of reproduced sample pairs): (low, high) in [0, 1]. Unlike a
  percentile bootstrap of the 0/1 flags it is not [0, 0] (or [1, 1]) when no item (every item)
  counts: 0 of n gives [0, z^2 / (n + z^2)], z the normal quantile (0.0148 for n = 256 at 95%).

  Raises ValueError for a fraction outside [0, 1], num_items not an integer >= 1 or confidence
  outside (0, 1), each named."""
  check_number(fraction, "fraction", low=0.0, high=1.0)
  check_number(num_items, "num_items", low=1, integer=True)
  z = float(scipy_stats.norm.ppf(0.5 + _check_confidence(confidence) / 2.0))
  n, p = float(num_items), float(fraction)
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))
  # (exact ends at 0 and 1: centre -/+ half rounds to a hair inside and would miss the fraction)
  return (0.0 if p == 0.0 else max(0.0, centre - half)), (1.0 if p == 1.0 else
                                                          min(1.0, centre + half))



# ------------------------------------------------------------------------------------------------
# Threshold crossings


def _check_times(times, log_time: bool) -> np.ndarray:
  t = np.asarray(times, np.float64)
  if t.ndim != 1 or t.size == 0:
    raise ValueError(f"times must be a non-empty 1-D array, got shape {t.shape}")
  if not np.all(np.isfinite(t)):
    raise ValueError(f"times must be finite, got {t.tolist()}")
  if np.any(np.diff(t) <= 0):
    raise ValueError("times must be strictly increasing (snapshots in training order)")
  if log_time and t[0] <= 0:
    raise ValueError(f"log_time interpolation needs times > 0, got times[0]={t[0]}")
  return t


def _crossings(t, values, threshold, direction, log_time):
  """Crossing times of each row of values (R, K) at times t (K,); -1 marks left-censored rows."""
  v = np.asarray(values, np.float64)
  past = v >= threshold if direction == "up" else v <= threshold
  any_past = past.any(axis=1)
  k = np.argmax(past, axis=1)  # first index past the threshold (0 if none)
  out = np.full(v.shape[0], np.inf)
  out[any_past & (k == 0)] = -1.0
  rows = np.flatnonzero(any_past & (k > 0))
  if rows.size:
    k = k[rows]
    v0, v1 = v[rows, k - 1], v[rows, k]
    frac = np.clip((threshold - v0) / (v1 - v0), 0.0, 1.0)
    x = np.log(t) if log_time else t
    xc = x[k - 1] + frac * (x[k] - x[k - 1])
    out[rows] = np.exp(xc) if log_time else xc
  return out


class Crossing(NamedTuple):
  time: float  # point estimate (times[0] if left-censored, inf if right-censored)
  low: float  # interval bounds, same conventions
  high: float
  censored: str  # "" | "left" | "right": of the point estimate
  resampled: np.ndarray  # (R,) crossing time of each resampled series (-inf: left, inf: right)


def bootstrap_crossing(times, values, resampled_values, threshold: float, *,
                       direction: str = "up", log_time: bool = True,
                       confidence: float = 0.95) -> Crossing:
  """Crossing time of `values` (K,) and its percentile interval over resampled series (R, K).

  threshold: finite; confidence: in (0, 1) (ValueError otherwise, naming the argument).
  """
  _check_threshold(threshold)
  _check_confidence(confidence)
  if direction not in DIRECTIONS:
    raise ValueError(f"direction={direction!r} must be one of {DIRECTIONS}")
  t = _check_times(times, log_time)
  v = np.asarray(values, np.float64)
  rv = np.asarray(resampled_values, np.float64)
  if v.shape != t.shape or rv.ndim != 2 or rv.shape[1] != t.size:
    raise ValueError(f"values must be ({t.size},) and resampled_values (R, {t.size}), got "
                     f"{v.shape} and {rv.shape}")
  point = _crossings(t, v[None], threshold, direction, log_time)[0]
  draws = _crossings(t, rv, threshold, direction, log_time)
  draws = np.where(draws == -1.0, -np.inf, draws)
  alpha = 1.0 - confidence
  low = float(np.quantile(draws, alpha / 2, method="lower"))
  high = float(np.quantile(draws, 1.0 - alpha / 2, method="higher"))
  censored = "left" if point == -1.0 else "right" if np.isinf(point) else ""
  first = float(t[0])  # a left-censored time is reported as the first snapshot's
  return Crossing(first if point == -1.0 else float(point), max(low, first), max(high, first),
                  censored, draws)


def crossing_of_mean(times, per_item, threshold: float, *, direction: str = "up",
                     log_time: bool = True, num_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> Crossing:
  """Crossing of the mean over items of per_item (K, M), bootstrapping the M items jointly.

  tau_mem: per_item = copy flags of the same M seed-paired samples at each of K snapshots.
  threshold finite, num_resamples >= 1, seed >= 0, confidence in (0, 1); ValueError otherwise.
  """
  _check_threshold(threshold)
  a = np.asarray(per_item, np.float64)
  if a.ndim != 2:
    raise ValueError(f"per_item must be (K snapshots, M items), got shape {a.shape}")
  counts = resample_counts(a.shape[1], num_resamples, seed)
  resampled = resampled_means(a.T, counts)  # (R, K)
  return bootstrap_crossing(times, a.mean(axis=1), resampled, threshold, direction=direction,
                            log_time=log_time, confidence=confidence)


def tau_mem(times, flags, threshold: float, **kwargs) -> Crossing:
  """When the copy fraction first reaches `threshold`; flags (K, M) copy flags per snapshot."""
  # A copy fraction lies in [0, 1]: a threshold above 1 would never be reached (censored).
  check_number(threshold, "threshold (a copy fraction)", low=0.0, high=1.0, low_open=True)
  return crossing_of_mean(times, flags, threshold, direction="up", **kwargs)


def tau_gen(times, sample_features, reference_features, target: float, *,
            log_time: bool = True, num_resamples: int = 200, seed: int = 0,
            confidence: float = 0.95) -> Crossing:
  """When the samples' Frechet distance to a reference first falls to `target`.

  sample_features: (K, M, F) features of the same M seed-paired samples at each snapshot;
  reference_features: (N, F) features of the reference set (e.g. validation images), held fixed.
  The bootstrap resamples the M samples jointly over snapshots (each resample costs K FDs).
  target: finite (an FD, so >= 0 to be reachable); ValueError otherwise.
  """
  check_number(target, "target", low=0.0)
  f = np.asarray(sample_features, np.float64)
  if f.ndim != 3:
    raise ValueError(f"sample_features must be (K, M, F), got shape {f.shape}")
  ref = frechet.gaussian_stats(np.asarray(reference_features, np.float64))
  fd = lambda feats: frechet.gaussian_frechet(*frechet.gaussian_stats(feats), *ref)
  values = np.array([fd(x) for x in f])
  counts = resample_counts(f.shape[1], num_resamples, seed)
  rows = [np.repeat(np.arange(f.shape[1]), c) for c in counts]
  resampled = np.array([[fd(x[r]) for x in f] for r in rows])
  return bootstrap_crossing(times, values, resampled, target, direction="down",
                            log_time=log_time, confidence=confidence)


def tau_gap(times, per_image_train, per_image_val, threshold: float, *, log_time: bool = True,
            num_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Crossing:
  """When the peak over sigma of G(sigma) first reaches `threshold`.

  per_image_train: (K, N_train, S), per_image_val: (K, N_val, S): each snapshot's per-image errors
  (`gap.denoising_errors(..., return_per_image=True)`) on the same fixed images and noise. Training
  and validation images are resampled independently, the same rows at every snapshot.
  threshold finite, num_resamples >= 1, seed >= 0, confidence in (0, 1); ValueError otherwise.
  """
  _check_threshold(threshold)
  tr = np.asarray(per_image_train, np.float64)
  va = np.asarray(per_image_val, np.float64)
  if tr.ndim != 3 or va.ndim != 3 or tr.shape[0] != va.shape[0] or tr.shape[2] != va.shape[2]:
    raise ValueError(f"per-image errors must be (K, N, S) with matching K and S, got {tr.shape} "
                     f"and {va.shape}")
  peak = relative_gap(va.mean(axis=1), tr.mean(axis=1)).max(axis=1)
  rt = np.stack([resampled_means(x, resample_counts(tr.shape[1], num_resamples, seed))
                 for x in tr], axis=1)  # (R, K, S)
  rv = np.stack([resampled_means(x, resample_counts(va.shape[1], num_resamples, seed + 1))
                 for x in va], axis=1)
  resampled = relative_gap(rv, rt).max(axis=2)
  return bootstrap_crossing(times, peak, resampled, threshold, direction="up",
                            log_time=log_time, confidence=confidence)


def onset_time(times, per_image_val, *, num_resamples: int = 1000, seed: int = 0,
               confidence: float = 0.95) -> Crossing:
  """The overfitting onset at one sigma: the snapshot time of minimal E_val (paper.md section 6).

  per_image_val: (K, N_val) per-image validation errors at one sigma. Right-censored (time of the
  last snapshot, censored="right") when the minimum is the last snapshot, i.e. no rise yet. The
  interval is the percentile interval of the argmin's time over resampled validation images.
  Snapshots whose mean error is not finite (NaN or +-inf: a diverged network) are never the
  minimum; raises ValueError when no snapshot's is finite.
  """
  t = _check_times(times, log_time=False)
  va = np.asarray(per_image_val, np.float64)
  if va.ndim != 2 or va.shape[0] != t.size:
    raise ValueError(f"per_image_val must be ({t.size}, N_val), got {va.shape}")
  _check_confidence(confidence)
  resampled = resampled_means(va.T, resample_counts(va.shape[1], num_resamples, seed))  # (R, K)
  mean = va.mean(axis=1)
  if not np.any(np.isfinite(mean)):
    raise ValueError("per_image_val: no snapshot's mean validation error is finite (all NaN/inf)")
  draws = t[np.argmin(np.where(np.isfinite(resampled), resampled, np.inf), axis=1)]
  k = int(np.argmin(np.where(np.isfinite(mean), mean, np.inf)))
  alpha = 1.0 - confidence
  return Crossing(float(t[k]), float(np.quantile(draws, alpha / 2, method="lower")),
                  float(np.quantile(draws, 1 - alpha / 2, method="higher")),
                  "right" if k == t.size - 1 else "", draws)


# ------------------------------------------------------------------------------------------------
# Scaling with the training-set size


class Slope(NamedTuple):
  slope: float  # d log tau / d log N
  intercept: float  # log tau at N = 1
  low: float
  high: float
  used: np.ndarray  # (P,) bool: points in the fit (finite tau > 0)
  method: str  # "intervals" (Monte Carlo over the taus' intervals) | "ols" (t-interval) | "none"


def loglog_slope(sizes, taus, lows=None, highs=None, *, confidence: float = 0.95,
                 num_draws: int = 4000, seed: int = 0) -> Slope:
  """Least-squares slope of log tau against log N (tau ~ N^slope), with an interval.

  Args:
    sizes: (P,) training-set sizes N > 0; taus: (P,) time scales (non-finite ones are left out).
    lows, highs: optional (P,) interval bounds of each tau (e.g. `Crossing.low/high`). Each is read
      as a normal interval in log tau (standard deviation from the finite side(s)); the slope's
      interval is the percentile interval of fits to Monte Carlo draws. Without them: the
      t-interval of the least-squares slope (needs 3 or more points; NaN bounds otherwise).

  Raises ValueError with fewer than 2 usable points or distinct sizes, or confidence not in
  (0, 1), num_draws not an integer >= 1, seed not an integer >= 0.
  """
  _check_confidence(confidence)
  check_number(num_draws, "num_draws", low=1, integer=True)
  check_number(seed, "seed", low=0, integer=True)
  n = np.asarray(sizes, np.float64)
  tau = np.asarray(taus, np.float64)
  if n.shape != tau.shape or n.ndim != 1:
    raise ValueError(f"sizes {n.shape} and taus {tau.shape} must be matching 1-D arrays")
  if not np.all(np.isfinite(n) & (n > 0)):
    raise ValueError(f"sizes must be finite and > 0 (training-set sizes N), got {n.tolist()}")
  used = np.isfinite(tau) & (tau > 0)
  if used.sum() < 2 or np.unique(n[used]).size < 2:
    raise ValueError(f"a slope needs finite taus at 2 or more distinct sizes; usable: "
                     f"{n[used].tolist()}")
  x, y = np.log(n[used]), np.log(tau[used])
  slope, intercept = np.polyfit(x, y, 1)
  alpha = 1.0 - confidence
  if lows is not None and highs is not None:
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    lo = np.log(np.asarray(lows, np.float64)[used])
    hi = np.log(np.asarray(highs, np.float64)[used])
    with np.errstate(invalid="ignore"):
      below = np.where(np.isfinite(lo), y - lo, np.nan)
      above = np.where(np.isfinite(hi), hi - y, np.nan)
    sd = np.nan_to_num(np.nanmean(np.stack([below, above]), axis=0), nan=0.0) / z
    draws = y[None] + np.random.default_rng(seed).standard_normal((num_draws, y.size)) * sd
    xc = x - x.mean()
    slopes = (draws - draws.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    low, high = np.quantile(slopes, [alpha / 2, 1 - alpha / 2])
    method = "intervals"
  elif used.sum() >= 3:
    residual = y - (slope * x + intercept)
    dof = x.size - 2
    se = np.sqrt(residual @ residual / dof / np.sum((x - x.mean()) ** 2))
    half = scipy_stats.t.ppf(1 - alpha / 2, dof) * se
    low, high, method = slope - half, slope + half, "ols"
  else:
    low, high, method = np.nan, np.nan, "none"
  return Slope(float(slope), float(intercept), float(low), float(high), used, method)


def scaling_table(sizes: Sequence[float], crossings: Sequence[Crossing],
                  **kwargs) -> Optional[Slope]:
  """`loglog_slope` of several Crossings against sizes; None when fewer than 2 finite taus."""
  taus = np.array([c.time if c.censored == "" else np.nan for c in crossings])
  if np.isfinite(taus).sum() < 2:
    return None
  return loglog_slope(sizes, taus, [c.low for c in crossings], [c.high for c in crossings],
                      **kwargs)
