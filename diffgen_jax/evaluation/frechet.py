"""Frechet distance between Gaussian fits of two sets of feature vectors (float64 numpy).

    FD^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^(1/2) S2 S1^(1/2))^(1/2))

(the squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2), as in FID; like FID we report
this squared quantity and call it "FD"). The trace term uses the symmetric form: both matrix square
roots come from eigendecompositions of symmetric positive semi-definite matrices, with rounding-level
negative eigenvalues clipped to zero. Unlike `scipy.linalg.sqrtm(S1 @ S2)` this never returns complex
values and stays exact for singular (rank-deficient) covariances, e.g. fewer samples than feature
dimensions. Works for any feature dimension: 2-D toy points as well as image features.

With several processes (`gaussian_stats(..., mesh=...)` for a mesh across processes) the covariance,
the O(n d^2) part, is split over the processes by columns and gathered once: every process holds
the same (n, d) features (gathered sampler outputs) and gets the same (mu, cov); one process
computes exactly what it computes without a mesh.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffgen_jax.checks import check_number
from diffgen_jax.sharding import across_processes


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix; tiny negative eigenvalues (rounding) are clipped."""
  matrix = 0.5 * (matrix + matrix.T)
  eigvals, eigvecs = np.linalg.eigh(matrix)
  eigvals = np.clip(eigvals, 0.0, None)
  return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


def _check_stats(mu: np.ndarray, cov: np.ndarray, name: str) -> Tuple[np.ndarray, np.ndarray]:
  mu = np.asarray(mu, np.float64)
  cov = np.asarray(cov, np.float64)
  if mu.ndim != 1:
    raise ValueError(f"{name}: mean must be a 1-D vector, got shape {mu.shape}")
  if cov.shape != (mu.size, mu.size):
    raise ValueError(f"{name}: covariance must be ({mu.size}, {mu.size}), got {cov.shape}")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
    raise ValueError(f"{name}: mean and covariance must be finite")
  return mu, cov


def _gathered_columns(block: np.ndarray, d: int) -> np.ndarray:
  """The (m, d) float64 matrix whose columns [p w, (p + 1) w) are process p's (m, w) block (the
  last process's block padded to w columns), the same on every process; sent as raw bits, so
  nothing is rounded on the way (jax without x64 would round float64 to float32)."""
  m, w = block.shape
  bits = np.asarray(multihost_utils.process_allgather(
      np.ascontiguousarray(block, np.float64).view(np.uint32)))
  parts = np.ascontiguousarray(bits).view(np.float64).reshape(jax.process_count(), m, w)
  return np.concatenate(list(parts), axis=1)[:, :d]


def gaussian_stats(features, ddof: int = 1, *, mesh: Optional[Mesh] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of (n, d) features (rows are samples), float64; ddof=1 like FID's np.cov.

  ddof: the covariance's delta degrees of freedom, 0 (the sample's own moments) or 1 (unbiased).
  mesh: optional; a mesh across processes splits the covariance's columns over the processes
    (each computes d / P of them from the whole features, which every process must hold alike;
    every process holding the mesh must call), then gathers them once. Without one, or with one
    process, computed here whole.
  Raises ValueError for another ddof, features that are not a finite (n, d) array, or n <= ddof.
  """
  check_number(ddof, "ddof", low=0, high=1, integer=True)
  feats = np.asarray(features, np.float64)
  if feats.ndim != 2:
    raise ValueError(f"features must be (num_samples, dim), got shape {feats.shape}")
  if feats.shape[0] <= ddof:
    raise ValueError(f"need more than {ddof} samples for a covariance, got {feats.shape[0]}")
  if not np.all(np.isfinite(feats)):
    raise ValueError("features contain NaN or Inf")
  mu = feats.mean(axis=0)
  centred = feats - mu
  if not across_processes(mesh):
    return mu, centred.T @ centred / (feats.shape[0] - ddof)
  d = feats.shape[1]
  width = -(-d // jax.process_count())
  lo = min(jax.process_index() * width, d)
  block = np.zeros((d, width))
  block[:, :min(width, d - lo)] = centred.T @ centred[:, lo:lo + width] / (feats.shape[0] - ddof)
  return mu, _gathered_columns(block, d)


def gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
  """Frechet distance (squared W2) between N(mu1, cov1) and N(mu2, cov2); >= 0, symmetric."""
  mu1, cov1 = _check_stats(mu1, cov1, "first")
  mu2, cov2 = _check_stats(mu2, cov2, "second")
  if mu1.shape != mu2.shape:
    raise ValueError(f"feature dimensions differ: {mu1.size} vs {mu2.size}")
  root1 = _psd_sqrt(cov1)
  inner = root1 @ (0.5 * (cov2 + cov2.T)) @ root1
  inner = 0.5 * (inner + inner.T)
  eigvals = np.clip(np.linalg.eigvalsh(inner), 0.0, None)
  trace_cross = float(np.sum(np.sqrt(eigvals)))
  diff = mu1 - mu2
  value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_cross)
  return max(value, 0.0)


def frechet_distance(features1, features2, ddof: int = 1) -> float:
  """Frechet distance between Gaussian fits of two (n, d) feature sets (ddof: `gaussian_stats`)."""
  mu1, cov1 = gaussian_stats(features1, ddof)
  mu2, cov2 = gaussian_stats(features2, ddof)
  return gaussian_frechet(mu1, cov1, mu2, cov2)
