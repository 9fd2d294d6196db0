"""Frechet distance between Gaussian fits of two sets of feature vectors (float64 numpy).

    FD^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^(1/2) S2 S1^(1/2))^(1/2))

(the squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2), as in FID; like FID we report
this squared quantity and call it "FD"). The trace term uses the symmetric form: both matrix square
roots come from eigendecompositions of symmetric positive semi-definite matrices, with rounding-level
negative eigenvalues clipped to zero. Unlike `scipy.linalg.sqrtm(S1 @ S2)` this never returns complex
values and stays exact for singular (rank-deficient) covariances, e.g. fewer samples than feature
dimensions. Works for any feature dimension: 2-D toy points as well as image features.

Published reference statistics (`load_reference_stats`), so that an FD or G_FD can be put beside the
field's numbers: EDM's `.npz` (arrays mu and sigma of Inception features; clean-fid and
torch-fidelity write the same) and EDM2's `dataset-refs/*.pkl` (a pickled dict {"fid": {"mu",
"sigma"}, "fd_dinov2": {"mu", "sigma"}, "num_images": n}), read without executing anything.

Fewer vectors than dimensions (`gaussian_fit`; e.g. 512 samples of ImageNet-64 pixels, d = 12,288):
the covariance is then kept as its factor B (n, d) with S = B^T B (`CovarianceFactor`), in O(n d)
memory instead of O(d^2) (1.2 GB per float64 covariance at d = 12,288), and the trace term comes
from n x n matrices: the nonzero eigenvalues of S1^(1/2) S2 S1^(1/2) are those of B1 S2 B1^T, and
with both factored tr((.)^(1/2)) is the sum of the singular values of B1 B2^T. The same number,
computed in O(n^2 d) instead of O(d^3) (an eigendecomposition of a 12,288 x 12,288 matrix takes
minutes on a CPU, and the evaluation needs several per snapshot).

With several processes (`gaussian_stats(..., mesh=...)` for a mesh across processes) the covariance,
the O(n d^2) part, is split over the processes by columns and gathered once: every process holds
the same (n, d) features (gathered sampler outputs) and gets the same (mu, cov); one process
computes exactly what it computes without a mesh.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from typing import Dict, NamedTuple, Optional, Tuple, Union

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffgen_jax.checks import check_number
from diffgen_jax.data.files import DataFileError, npy_header, read_capped, read_zip_member
from diffgen_jax.models import nvidia_pickle
from diffgen_jax.sharding import across_processes


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix; tiny negative eigenvalues (rounding) are clipped."""
  matrix = 0.5 * (matrix + matrix.T)
  eigvals, eigvecs = np.linalg.eigh(matrix)
  eigvals = np.clip(eigvals, 0.0, None)
  return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


class CovarianceFactor(NamedTuple):
  """A covariance S held as its factor: rows B (n, d) float64 with S = B^T B (rank <= n), what
  `gaussian_fit` returns for fewer vectors than dimensions; `gaussian_frechet` takes it wherever
  it takes a (d, d) covariance."""
  rows: np.ndarray

  def covariance(self) -> np.ndarray:
    """The (d, d) matrix B^T B (O(d^2) memory: for tests and small d)."""
    return self.rows.T @ self.rows


Covariance = Union[np.ndarray, CovarianceFactor]


def _check_stats(mu: np.ndarray, cov: Covariance, name: str) -> Tuple[np.ndarray, Covariance]:
  mu = np.asarray(mu, np.float64)
  if mu.ndim != 1:
    raise ValueError(f"{name}: mean must be a 1-D vector, got shape {mu.shape}")
  if isinstance(cov, CovarianceFactor):
    rows = np.asarray(cov.rows, np.float64)
    if rows.ndim != 2 or rows.shape[1] != mu.size:
      raise ValueError(f"{name}: covariance factor must be (n, {mu.size}), got {rows.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(rows))):
      raise ValueError(f"{name}: mean and covariance must be finite")
    return mu, CovarianceFactor(rows)
  cov = np.asarray(cov, np.float64)
  if cov.shape != (mu.size, mu.size):
    raise ValueError(f"{name}: covariance must be ({mu.size}, {mu.size}), got {cov.shape}")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
    raise ValueError(f"{name}: mean and covariance must be finite")
  return mu, cov


def gathered_columns(block: np.ndarray, d: int) -> np.ndarray:
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
  return mu, gathered_columns(block, d)


def gaussian_fit(features, ddof: int = 1, *, mesh: Optional[Mesh] = None
                 ) -> Tuple[np.ndarray, Covariance]:
  """The Gaussian fit of (n, d) features for `gaussian_frechet`: `gaussian_stats` (mu, cov) when
  n >= d; (mu, CovarianceFactor(B)) with B = (features - mu) / sqrt(n - ddof) when n < d, the
  same covariance B^T B in O(n d) memory (nothing to split over processes then: mesh is unused).
  Raises ValueError as `gaussian_stats`."""
  feats = np.asarray(features)
  if feats.ndim != 2 or feats.shape[0] >= feats.shape[1]:
    return gaussian_stats(features, ddof, mesh=mesh)
  check_number(ddof, "ddof", low=0, high=1, integer=True)
  feats = feats.astype(np.float64)
  if feats.shape[0] <= ddof:
    raise ValueError(f"need more than {ddof} samples for a covariance, got {feats.shape[0]}")
  if not np.all(np.isfinite(feats)):
    raise ValueError("features contain NaN or Inf")
  mu = feats.mean(axis=0)
  return mu, CovarianceFactor((feats - mu) / math.sqrt(feats.shape[0] - ddof))


def _trace(cov: Covariance) -> float:
  if isinstance(cov, CovarianceFactor):
    return float(np.sum(cov.rows * cov.rows))
  return float(np.trace(cov))


def _sqrt_eigenvalue_sum(matrix: np.ndarray) -> float:
  """sum sqrt(eigenvalues) of a symmetric PSD matrix (rounding-level negatives clipped)."""
  matrix = 0.5 * (matrix + matrix.T)
  return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(matrix), 0.0, None))))


def _trace_cross(cov1: Covariance, cov2: Covariance) -> float:
  """tr((S1^(1/2) S2 S1^(1/2))^(1/2)), through n x n matrices where a side is factored."""
  f1, f2 = isinstance(cov1, CovarianceFactor), isinstance(cov2, CovarianceFactor)
  if f1 and f2:
    return float(np.sum(np.linalg.svd(cov1.rows @ cov2.rows.T, compute_uv=False)))
  if f1 or f2:
    factor, full = (cov1, cov2) if f1 else (cov2, cov1)
    return _sqrt_eigenvalue_sum(factor.rows @ (0.5 * (full + full.T)) @ factor.rows.T)
  root1 = _psd_sqrt(cov1)
  return _sqrt_eigenvalue_sum(root1 @ (0.5 * (cov2 + cov2.T)) @ root1)


def gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
  """Frechet distance (squared W2) between N(mu1, cov1) and N(mu2, cov2); >= 0, symmetric.
  Each covariance is a (d, d) matrix or a `CovarianceFactor` (`gaussian_fit`)."""
  mu1, cov1 = _check_stats(mu1, cov1, "first")
  mu2, cov2 = _check_stats(mu2, cov2, "second")
  if mu1.shape != mu2.shape:
    raise ValueError(f"feature dimensions differ: {mu1.size} vs {mu2.size}")
  trace_cross = _trace_cross(cov1, cov2)
  diff = mu1 - mu2
  value = float(diff @ diff + _trace(cov1) + _trace(cov2) - 2.0 * trace_cross)
  return max(value, 0.0)


def frechet_distance(features1, features2, ddof: int = 1) -> float:
  """Frechet distance between Gaussian fits of two (n, d) feature sets (ddof: `gaussian_stats`)."""
  mu1, cov1 = gaussian_stats(features1, ddof)
  mu2, cov2 = gaussian_stats(features2, ddof)
  return gaussian_frechet(mu1, cov1, mu2, cov2)


# ------------------------------------------------------------------------------------------------
# Published reference statistics

NPZ_SPACE = "fid"  # the feature space of an EDM .npz (Inception-V3 pool features), as EDM2 names it
MAX_FEATURE_DIM = 16384  # Inception-V3: 2048, DINOv2 ViT-L/14: 1024, ViT-g/14: 1536
MAX_REFERENCE_BYTES = 4 << 30  # a file, or an .npz member: two spaces of the largest dimension
_MIN_PICKLE_PROTOCOL, _MAX_PICKLE_PROTOCOL = 3, 4  # what EDM2's Python (3.8 - 3.13) writes


def _npz_stats(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """{NPZ_SPACE: (mu, sigma)} of an EDM .npz, each member's .npy header checked before any
  allocation (exactly shape x itemsize bytes after it, a float dtype, at most MAX_FEATURE_DIM)."""
  arrays = {}
  try:
    with zipfile.ZipFile(path) as z:
      for key in ("mu", "sigma"):
        member = f"{key}.npy"
        if member not in z.namelist():
          raise DataFileError(f"{path} has no array {key!r} (it holds "
                              f"{sorted(n[:-4] for n in z.namelist() if n.endswith('.npy'))}); "
                              "EDM's reference statistics hold 'mu' and 'sigma'")
        raw = read_zip_member(z, path, member, MAX_REFERENCE_BYTES, "MAX_REFERENCE_BYTES")
        where = f"{path}:{member}"
        shape, fortran, dtype, offset = npy_header(raw, where)
        ndim = 1 if key == "mu" else 2
        if dtype.kind != "f" or len(shape) != ndim or max(shape, default=0) > MAX_FEATURE_DIM:
          raise DataFileError(
              f"{where} holds an array of dtype {dtype} and shape {shape}; {key} is a {ndim}-D "
              f"float array of at most MAX_FEATURE_DIM={MAX_FEATURE_DIM} features per side")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != len(raw) - offset:
          raise DataFileError(
              f"{where}: the header declares shape {shape} of {dtype} ({nbytes} bytes) but "
              f"{len(raw) - offset} bytes follow it: the file is damaged")
        arrays[key] = np.frombuffer(raw, dtype, offset=offset).reshape(
            shape, order="F" if fortran else "C")
  except zipfile.BadZipFile as err:
    raise DataFileError(f"{path} is not a readable .npz ({err})") from None
  return {NPZ_SPACE: (arrays["mu"], arrays["sigma"])}


def _pickle_stats(path: str, data: bytes) -> dict:
  """The dict of an EDM2 reference pickle, unpickled with numpy's globals only (nothing runs)."""
  if not _MIN_PICKLE_PROTOCOL <= data[1] <= _MAX_PICKLE_PROTOCOL:
    raise DataFileError(
        f"{path} is a pickle of protocol {data[1]}; reference statistics are read from protocols "
        f"{_MIN_PICKLE_PROTOCOL}-{_MAX_PICKLE_PROTOCOL} (EDM2's; write it again with "
        "pickle.dump(stats, f, protocol=4))")
  try:
    top = nvidia_pickle.restricted_load(data, allowed=nvidia_pickle.NUMPY_GLOBALS)
  except nvidia_pickle.UnsafePickleError as err:
    raise nvidia_pickle.UnsafePickleError(f"{path}: {err}") from None
  except (nvidia_pickle.NetworkPickleError, pickle.UnpicklingError, EOFError, ValueError,
          TypeError, LookupError, AttributeError, ArithmeticError, RecursionError) as err:
    raise DataFileError(f"{path} is not a readable reference-statistics pickle ("
                        f"{type(err).__name__}: {str(err)[:300]}); fetch or write it again"
                        ) from None
  if not isinstance(top, dict):
    raise DataFileError(f"{path} holds a pickled {type(top).__name__}; EDM2's reference "
                        'statistics are a dict {"fid": {"mu", "sigma"}, "fd_dinov2": {...}}')
  return top


def load_reference_stats(path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Published reference statistics as {feature space: (mu (F,), sigma (F, F))}, float64.

  path: EDM's `.npz` (arrays mu and sigma: returned as space NPZ_SPACE = "fid") or EDM2's
  `dataset-refs/*.pkl` (a pickled dict whose entries {"mu": array, "sigma": array} are the spaces,
  e.g. "fid" and "fd_dinov2"; other entries such as "num_images" are skipped). The kind is told by
  the file's first bytes. Nothing is executed: the pickle is read by the restricted unpickler of
  `models.nvidia_pickle` admitting numpy's array, dtype and scalar globals only (protocols 3-4), and
  every size is bounded before it is allocated (the file at most MAX_REFERENCE_BYTES; an .npz
  member's header against the bytes that follow it; a pickled array's data must be in the file).

  Raises FileNotFoundError; nvidia_pickle.UnsafePickleError naming the file and the global when a
  pickle reaches outside numpy's data (it would run code); data.DataFileError (a ValueError)
  naming the file for anything else: neither an .npz nor a pickle, too large, damaged, no mu or
  sigma, a mean that is not 1-D or a covariance not (F, F), F > MAX_FEATURE_DIM, non-finite values.
  """
  path = os.path.expanduser(os.fspath(path))
  size = os.path.getsize(path)
  if size > MAX_REFERENCE_BYTES:
    raise DataFileError(f"{path} has {size} bytes, more than MAX_REFERENCE_BYTES="
                        f"{MAX_REFERENCE_BYTES} for reference statistics")
  with open(path, "rb") as f:
    head = f.read(4)
    if head[:2] == b"PK":
      spaces = _npz_stats(path)
    elif len(head) >= 2 and head[0] == pickle.PROTO[0]:
      f.seek(0)
      top = _pickle_stats(path, read_capped(f, size, path))  # (read(n) allocates n first)
      spaces = {}
      for key, value in top.items():
        if isinstance(value, dict) and ("mu" in value or "sigma" in value):
          if not isinstance(key, str):
            raise DataFileError(f"{path}: a feature space named {key!r}, not a string")
          spaces[key] = (value.get("mu"), value.get("sigma"))
      if not spaces:
        raise DataFileError(f"{path} holds no feature statistics (entries {{'mu', 'sigma'}}); its "
                            f"keys are {[str(k)[:40] for k in list(top)[:20]]}")
    else:
      raise DataFileError(f"{path} is neither an .npz (EDM) nor a pickle (EDM2) of reference "
                          f"statistics (it starts with {head!r})")
  out = {}
  for space, (mu, sigma) in spaces.items():
    for name, value, ndim in (("mu", mu, 1), ("sigma", sigma, 2)):
      if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim != ndim:
        what = (f"a {value.ndim}-D {value.dtype} array" if isinstance(value, np.ndarray)
                else f"a {type(value).__name__}")
        raise DataFileError(f"{path}: {space}.{name} is {what}; it must be a {ndim}-D float array")
    if mu.size > MAX_FEATURE_DIM:
      raise DataFileError(f"{path}: {space} has {mu.size} features, more than MAX_FEATURE_DIM="
                          f"{MAX_FEATURE_DIM}")
    try:
      out[space] = tuple(np.array(a, np.float64) for a in _check_stats(mu, sigma, space))
    except ValueError as err:
      raise DataFileError(f"{path}: {err}") from None
  return out
