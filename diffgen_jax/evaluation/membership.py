"""Membership inference by noise level: can a denoiser's error tell its training images apart?

From the per-image denoising errors that the gap evaluation computes (`gap.denoising_errors(...,
return_per_image=True)`: (N, S) per-pixel MSEs on fixed images and noise), the attack "member when
the error is small" is scored per sigma (analytic.md section 2; the loss-threshold attack of Yeom et
al. 2018, per noise level as in Carlini et al. 2023's diffusion attacks):

* AUC = P(e_val > e_train) + P(e_val = e_train) / 2 over all (training, validation) pairs (the
  Mann-Whitney statistic, from average ranks); 0.5 = no information, 1 = every training image has a
  smaller error than every validation image. Interval: AUC +- z SE with Hanley & McNeil's (1982)
  standard error, which at AUC = 0.5 equals the exact null standard deviation of the Mann-Whitney
  statistic, sqrt((n_t + n_v + 1) / (12 n_t n_v)).
* TPR at a fixed FPR (1% by default): the largest fraction of training images flagged by any
  threshold that flags at most floor(FPR n_v) validation images (flag: error strictly below the
  (floor(FPR n_v)+1)-th smallest validation error). Interval: Clopper-Pearson over the n_t training
  images (the threshold itself is taken as given).
The empirical optimal denoiser at small sigma returns each training image exactly (error 0 < any
validation error): AUC = 1 and TPR = 1. A denoiser that never saw the data, on exchangeable sets,
gives AUC = 0.5 within its interval and TPR about FPR.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
from scipy import stats as scipy_stats

from diffgen_jax.checks import check_number


def _per_sigma(errors, name: str) -> np.ndarray:
  a = np.asarray(errors, np.float64)
  if a.ndim == 1:
    a = a[:, None]
  if a.ndim != 2 or a.shape[0] < 1:
    raise ValueError(f"{name} must be (N,) or (N, S) per-image errors with N >= 1, got shape "
                     f"{np.shape(errors)}")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} holds non-finite errors")
  return a


def auc(train_errors, val_errors) -> np.ndarray:
  """(S,) AUC of the attack 'member when the error is small' (see the module docstring).

  train_errors: (N_t,) or (N_t, S); val_errors: (N_v,) or (N_v, S) per-image errors.
  """
  tr = _per_sigma(train_errors, "train_errors")
  va = _per_sigma(val_errors, "val_errors")
  if tr.shape[1] != va.shape[1]:
    raise ValueError(f"train_errors has {tr.shape[1]} sigmas, val_errors {va.shape[1]}")
  nt, nv = tr.shape[0], va.shape[0]
  ranks = scipy_stats.rankdata(np.concatenate([tr, va]), axis=0)  # average ranks for ties
  rank_sum_val = ranks[nt:].sum(axis=0)
  return (rank_sum_val - nv * (nv + 1) / 2.0) / (nt * nv)


def auc_standard_error(value, num_train: int, num_val: int) -> np.ndarray:
  """Hanley & McNeil (1982) standard error of an AUC from num_train and num_val scores.

  value: AUC(s) in [0, 1]; num_train, num_val: integers >= 1 (ValueError otherwise).
  """
  check_number(num_train, "num_train", low=1, integer=True)
  check_number(num_val, "num_val", low=1, integer=True)
  a = np.asarray(value, np.float64)
  if not np.all((a >= 0.0) & (a <= 1.0)):  # also refuses NaN
    raise ValueError(f"value (an AUC) must be in [0, 1], got {a.ravel()[:5].tolist()}")
  q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
  var = (a * (1 - a) + (num_train - 1) * (q1 - a * a) + (num_val - 1) * (q2 - a * a))
  return np.sqrt(np.maximum(var, 0.0) / (num_train * num_val))


def tpr_at_fpr(train_errors, val_errors, fpr: float = 0.01) -> np.ndarray:
  """(S,) largest true-positive rate of an error threshold whose false-positive rate is <= fpr."""
  check_number(fpr, "fpr", low=0.0, high=1.0, high_open=True)
  tr = _per_sigma(train_errors, "train_errors")
  va = _per_sigma(val_errors, "val_errors")
  if tr.shape[1] != va.shape[1]:
    raise ValueError(f"train_errors has {tr.shape[1]} sigmas, val_errors {va.shape[1]}")
  allowed = int(np.floor(fpr * va.shape[0] + 1e-9))  # validation images that may be flagged
  cutoff = np.sort(va, axis=0)[allowed]  # flagging anything >= this would exceed the budget
  return np.mean(tr < cutoff[None, :], axis=0)


def clopper_pearson(successes, trials: int, confidence: float = 0.95):
  """Exact binomial interval (low, high) for successes out of trials (arrays broadcast).

  successes: integers in [0, trials]; trials: an integer >= 1; confidence in (0, 1). Raises
  ValueError naming the argument otherwise.
  """
  check_number(trials, "trials", low=1, integer=True)
  check_number(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
  k = np.asarray(successes, np.float64)
  if not np.all((k >= 0) & (k <= trials) & (k == np.round(k))):  # also refuses NaN
    raise ValueError(f"successes must be integers in [0, trials={trials}], got "
                     f"{k.ravel()[:5].tolist()}")
  alpha = 1.0 - confidence
  low = np.where(k > 0, scipy_stats.beta.ppf(alpha / 2, k, trials - k + 1), 0.0)
  high = np.where(k < trials, scipy_stats.beta.ppf(1 - alpha / 2, k + 1, trials - k), 1.0)
  return low, high


def membership_by_sigma(train_errors, val_errors, *, fpr: float = 0.01,
                        confidence: float = 0.95) -> Dict[str, np.ndarray]:
  """AUC and TPR at `fpr` per sigma, with intervals.

  Args:
    train_errors: (N_t, S) per-image errors of training images (members), e.g. the gap
      evaluation's per-image E_train; val_errors: (N_v, S) of validation images (non-members).
    fpr: the false-positive rate at which the TPR is read (default 1%).
    confidence: of the intervals, in (0, 1).

  Returns:
    dict of (S,) float64 arrays "auc", "auc_low", "auc_high", "tpr", "tpr_low", "tpr_high", plus
    "fpr", "num_train", "num_val" (floats/ints). Raises ValueError for bad shapes or values.
  """
  check_number(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
  check_number(fpr, "fpr", low=0.0, high=1.0, high_open=True)
  tr = _per_sigma(train_errors, "train_errors")
  va = _per_sigma(val_errors, "val_errors")
  a = auc(tr, va)
  half = scipy_stats.norm.ppf(1 - (1 - confidence) / 2) * auc_standard_error(a, len(tr), len(va))
  tpr = tpr_at_fpr(tr, va, fpr)
  tpr_low, tpr_high = clopper_pearson(np.round(tpr * len(tr)), len(tr), confidence)
  return {"auc": a, "auc_low": np.clip(a - half, 0.0, 1.0), "auc_high": np.clip(a + half, 0.0, 1.0),
          "tpr": tpr, "tpr_low": tpr_low, "tpr_high": tpr_high, "fpr": float(fpr),
          "num_train": int(len(tr)), "num_val": int(len(va))}
