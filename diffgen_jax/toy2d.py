"""The 2D toy model of paper.md section 5: data on a circle, y_delta, the gap metric, experiments a-g.

Everything here is analytic: the "network" is the toy model's error-prone denoiser y_delta
(optimal.error_prone_denoiser of the exact empirical optimal denoiser), so its single parameter
delta plays the role of model error. The job `toy2d` (jobs/toy2d.py, configs/toy2d.py; its
docstring lists the experiments (a)-(g)) runs them from a config.
This module holds the model, its gap metric and every number the experiments report (the last
section); the job maps its config to these calls and writes the results and figures.

The gap metric (paper.md section 5). For a denoiser D and points {y_p}:
  E_p(sigma) = E_{n ~ N(0, I_2)} || D(y_p + sigma n; sigma) - y_p ||  (Euclidean, not squared),
  G(sigma)   = (mean_{p in val} E_p - mean_{p in train} E_p) / mean_{p in train} E_p,
on the toy grid (edm.toy_sigma_grid()), every sigma in one denoiser call. The paper estimates E_p
from 50 draws per point, which leave the peak of G uncertain by about 40% of its height at
delta = 2.2 (one standard deviation) and can move it a grid step. Three estimates (config.estimate):
  expected     (default) the expectation itself, by a lattice cubature rule over the 2D noise
               (lattice_rule; h^3 convergence, see the gap-metric section), to better than 1e-3 of
               the peak of G; on a symmetric set one training and one validation point suffice. The
               spread of a 50-draw estimate (to first order) comes with it, drawn as a band.
  paper_draws  the authors' realization: numpy's legacy generator, np.random.seed(0), one
               (50, N, 2) standard normal array, the k-th point in angle order taking [:, k, :],
               reset for every curve and reused at every sigma (legacy_numpy_draws); with
               configs/toy2d.py:paper (float64) it reproduces their published numbers.
  draws        (ours, before the expected curve) jax draws shared by every point in its local
               (radial, tangential) frame, or independent per point.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import edm, samplers
from diffgen_jax.checks import check_number
from diffgen_jax.denoisers import Denoiser
from diffgen_jax.evaluation import frechet

DATASETS = ("symmetric", "random")
TEST_ANGLES = ("circle", "half_circle")
_HIGHEST = jax.lax.Precision.HIGHEST
_SEED_MAX = 2 ** 32 - 1  # numpy's legacy RandomState takes seeds in [0, 2^32)


def _check_seed(seed, name: str = "seed") -> int:
  return check_number(seed, name, low=0, high=_SEED_MAX, integer=True)


# ----------------------------------------------------------------------------------------------
# Data on the circle.


class Split(NamedTuple):
  """Training and validation points (float64, (n, 2)) and their angles in radians."""
  train: np.ndarray
  val: np.ndarray
  train_angles: np.ndarray
  val_angles: np.ndarray


def circle_points(angles, radius: float) -> np.ndarray:
  """(n, 2) float64 points at `angles` (radians, finite) on the circle of `radius` (finite, > 0)."""
  check_number(radius, "radius", low=0.0, low_open=True)
  angles = np.asarray(angles, np.float64)
  if not np.all(np.isfinite(angles)):
    raise ValueError("angles must be finite")
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def symmetric_angles(num_points: int, offset: float) -> np.ndarray:
  """2 pi (k / N + offset), k = 0..N-1; num_points an integer >= 1, offset finite."""
  check_number(num_points, "num_points", low=1, integer=True)
  check_number(offset, "offset")
  return 2.0 * np.pi * (np.arange(num_points) / num_points + offset)


def make_dataset(kind: str, num_points: int, radius: float = 10.0, offset: float = 0.01,
                 seed: int = 0) -> Split:
  """The toy data sets of paper.md section 5.

  "symmetric": N equally spaced angles 2 pi (k/N + offset); train = even k, validation = odd k.
  "random": N angles uniform in [0, 2 pi) from `seed`; the first half (N // 2) is validation, the
  rest training. Raises ValueError for an unknown kind, num_points not an integer >= 2, radius
  not finite and > 0, offset not finite, seed not an integer in [0, 2^32).
  """
  if kind not in DATASETS:
    raise ValueError(f"dataset kind must be one of {DATASETS}, got {kind!r}")
  check_number(num_points, "num_points", low=2, integer=True)
  check_number(radius, "radius", low=0.0, low_open=True)
  check_number(offset, "offset")
  _check_seed(seed)
  if kind == "symmetric":
    angles = symmetric_angles(num_points, offset)
    train_angles, val_angles = angles[0::2], angles[1::2]
  else:
    angles = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, num_points)
    val_angles, train_angles = angles[:num_points // 2], angles[num_points // 2:]
  return Split(circle_points(train_angles, radius), circle_points(val_angles, radius),
               train_angles, val_angles)


# ----------------------------------------------------------------------------------------------
# The gap metric: the expected errors by quadrature, or estimates from draws.
#
# For a denoiser D, a point y and a noise level sigma the quantity of interest is the expectation
#   E_y(sigma) = E_{n ~ N(0, I_2)} || D(y + sigma n; sigma) - y ||.
# Any finite set of draws estimates it with a Monte Carlo error; in 2D it can be computed instead.
#
# Why a lattice rule and not Gauss-Hermite: the integrand |e(n)|, e(n) = D(y + sigma n) - y, has a
# cone (a kink) wherever the error vector e vanishes, and it does vanish inside the Gaussian's mass
# (near n = 0 at small sigma, at one or three points near the peak of G). Tensor Gauss-Hermite
# converges only like Q^(-3/2) in the nodes per axis on such a cone (E|n| to 2.0e-4 with 142 x 142
# = 20,164 nodes), while the midpoint rule on the lattice h (Z + 1/2)^2 converges like h^3 (E|n| to
# 1.1e-5 with h = 0.1, 20,108 nodes; 8x smaller per halving of h). The half-step offset keeps nodes
# off the mirror lines of a symmetric set, where y* jumps as delta -> 0 and sigma -> 0.
# tests/test_toy2d.py shows both rates, and the convergence of G itself.


class NoiseRule(NamedTuple):
  """A cubature rule for E_{n ~ N(0, I_2)}[f(n)] ~= sum_q weights[q] f(nodes[q])."""
  nodes: np.ndarray  # (Q, 2) float64
  weights: np.ndarray  # (Q,) float64, summing to 1 up to the truncated tail


def lattice_rule(spacing: float = 0.1, radius: float = 8.0) -> NoiseRule:
  """The midpoint rule on the lattice spacing * (Z + 1/2)^2, truncated to the disk |n| <= radius.

  weights = spacing^2 phi(n), phi the standard 2D normal density. The error is O(spacing^3) for an
  integrand with a cone singularity (|e| at a zero of e), far smaller for smooth ones, and the
  tail beyond `radius` has mass exp(-radius^2 / 2) (1.3e-14 at 8). Raises ValueError for
  spacing <= 0 or radius <= spacing, or either not finite.
  """
  check_number(spacing, "spacing", low=0.0, low_open=True)
  check_number(radius, "radius", low=0.0, low_open=True)
  if not radius > spacing:
    raise ValueError(f"lattice_rule needs spacing > 0 and radius > spacing, got spacing={spacing}, "
                     f"radius={radius}")
  half = int(math.ceil(radius / spacing))
  axis = spacing * (np.arange(-half, half, dtype=np.float64) + 0.5)
  nodes = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
  sq = np.sum(nodes * nodes, axis=-1)
  nodes, sq = nodes[sq <= radius * radius], sq[sq <= radius * radius]
  return NoiseRule(nodes, spacing * spacing * np.exp(-0.5 * sq) / (2.0 * np.pi))


def local_frames(points) -> np.ndarray:
  """(P, 2, 2) rotations whose rows are each point's (radial, tangential) unit vectors.

  e_r = y / |y|, e_t = e_r rotated by +90 degrees; the identity for a point at the origin; NaN for
  a point with a NaN or infinite coordinate. A vector with local coordinates (a, b) is
  a e_r + b e_t = (a, b) @ frame in world coordinates. Raises ValueError unless points is (P, 2).
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f"points must be (P, 2), got shape {points.shape}")
  # Scaled by the larger coordinate first, so neither |y|^2 nor |y| underflows or overflows
  # anywhere in the float64 range (subnormals and 1.7e308 included).
  scale = np.max(np.abs(points), axis=1, keepdims=True)  # NaN for a NaN point
  unit = points / np.where(scale == 0, 1.0, scale)  # in [-1, 1]; inf / inf is NaN
  norm = np.hypot(unit[:, :1], unit[:, 1:])
  e_r = np.where(scale == 0, np.array([1.0, 0.0]), unit / np.where(scale == 0, 1.0, norm))
  e_t = np.stack([-e_r[:, 1], e_r[:, 0]], axis=-1)
  return np.stack([e_r, e_t], axis=1)


def noise_draws(key: jax.Array, points, num_draws: int, local_frame: bool = True) -> jax.Array:
  """Standard normal draws per point, (P, num_draws, 2) float32, in world coordinates.

  local_frame=True: one set of (radial, tangential) draws shared by every point, rotated into each
  point's local frame (local_frames). local_frame=False: independent draws for every point.
  num_draws: an integer >= 1 (ValueError otherwise).
  """
  check_number(num_draws, "num_draws", low=1, integer=True)
  points = np.asarray(points, np.float64)
  if not local_frame:
    return jax.random.normal(key, (points.shape[0], num_draws, 2), jnp.float32)
  base = np.asarray(jax.random.normal(key, (num_draws, 2), jnp.float32), np.float64)
  return jnp.asarray(np.einsum("dk,pkj->pdj", base, local_frames(points)), jnp.float32)


def legacy_numpy_draws(angles, num_draws: int, seed: int = 0) -> np.ndarray:
  """The authors' draws, (P, num_draws, 2) float64: numpy's legacy generator seeded with `seed`,
  one standard normal array of shape (num_draws, P, 2), and the point k-th in angle order (angles
  mod 2 pi, ascending) taking [:, k, :]. Equal to `np.random.seed(seed);
  np.random.standard_normal((num_draws, P, 2))`, without touching numpy's global state. On a
  symmetric set angle order is index order k; on a random set it is our reading of "point k".
  num_draws: an integer >= 1; seed: an integer in [0, 2^32) (ValueError otherwise).
  """
  check_number(num_draws, "num_draws", low=1, integer=True)
  _check_seed(seed)
  angles = np.mod(np.asarray(angles, np.float64), 2.0 * np.pi)
  rank = np.argsort(np.argsort(angles, kind="stable"), kind="stable")
  draws = np.random.RandomState(seed).standard_normal((num_draws, angles.size, 2))
  return np.transpose(draws, (1, 0, 2))[rank]


def _errors(denoise: Denoiser, points, sigmas, noise, dtype):
  """||D(y_p + sigma_s n_pd; sigma_s) - y_p||, (S, P, D) in `dtype`, in one denoiser call."""
  points = jnp.asarray(points, dtype)
  sigmas = jnp.asarray(sigmas, dtype)
  noise = jnp.asarray(noise, dtype)
  num_p, num_d = noise.shape[:2]
  clean = jnp.broadcast_to(points[None, :, None, :], (sigmas.size, num_p, num_d, 2))
  sigma_q = jnp.broadcast_to(sigmas[:, None, None], (sigmas.size, num_p, num_d))
  noisy = clean + sigma_q[..., None] * noise[None]
  out = denoise(noisy.reshape(-1, 2), sigma_q.reshape(-1))
  return jnp.linalg.norm(out.reshape(clean.shape) - clean, axis=-1)


def denoising_errors(denoise: Denoiser, points, sigmas, noise, dtype=jnp.float32) -> np.ndarray:
  """Estimates from draws: E[s, p] = mean_d || D(y_p + sigma_s n_pd; sigma_s) - y_p ||.

  points (P, 2), sigmas (S,), noise (P, draws, 2) in world coordinates; computed in `dtype`
  (float64 needs jax_enable_x64). Returns (S, P) float64. Raises ValueError unless sigmas are
  finite and > 0.
  """
  edm.validate_sigma_grid(sigmas, "sigmas")
  return np.asarray(jnp.mean(_errors(denoise, points, sigmas, noise, dtype), axis=-1), np.float64)


def expected_errors(denoise: Denoiser, points, sigmas, rule: NoiseRule, dtype=jnp.float32,
                    max_queries: int = 1 << 16):
  """The expected errors by the cubature `rule`: (mean, mean square), each (S, P) float64.

  mean[s, p] = E_n || D(y_p + sigma_s n; sigma_s) - y_p ||, mean_square the same of the squared
  norm (for the spread of draw estimates). The rule's nodes are rotated into each point's local
  frame (local_frames), so points that a rotation symmetry of D maps onto each other get the same
  value to rounding. The nodes are visited in equal chunks (the last one padded with zero
  weights, so one compilation serves all) of at most max_queries denoiser queries (small chunks
  stay in cache: 2^16 ran 3x faster than 2^21 on a CPU); each chunk's weighted sums are
  accumulated in float64. Raises ValueError unless sigmas are finite and > 0 and max_queries is
  an integer >= 1.
  """
  check_number(max_queries, "max_queries", low=1, integer=True)
  points = np.asarray(points, np.float64)
  sigmas = edm.validate_sigma_grid(sigmas, "sigmas")
  frames = local_frames(points)
  chunk = min(rule.weights.size, max(1, max_queries // max(1, sigmas.size * points.shape[0])))
  pad = -rule.weights.size % chunk
  all_nodes = np.concatenate([rule.nodes, np.zeros((pad, 2))])
  all_weights = np.concatenate([rule.weights, np.zeros((pad,))])
  mean = np.zeros((sigmas.size, points.shape[0]))
  mean_square = np.zeros_like(mean)
  for start in range(0, all_weights.size, chunk):
    nodes = all_nodes[start:start + chunk]
    weights = jnp.asarray(all_weights[start:start + chunk], dtype)
    noise = np.einsum("dk,pkj->pdj", nodes, frames)
    err = _errors(denoise, points, sigmas, noise, dtype)
    mean += np.asarray(jnp.einsum("spd,d->sp", err, weights, precision=_HIGHEST), np.float64)
    mean_square += np.asarray(jnp.einsum("spd,d->sp", err * err, weights, precision=_HIGHEST),
                              np.float64)
  return mean, mean_square


class Gap(NamedTuple):
  """G(sigma) and the mean errors it is made of; all (S,) float64."""
  sigmas: np.ndarray
  gap: np.ndarray  # G = (E_val - E_train) / E_train
  error_train: np.ndarray  # mean over training points
  error_val: np.ndarray  # mean over validation points
  # Expected curves only: the standard deviation of G estimated from `spread_draws` independent
  # draws per point (the Monte Carlo spread of such an estimate, to first order); else None.
  spread: Optional[np.ndarray] = None


def _ratio_gap(e_train, e_val):
  with np.errstate(divide="ignore", invalid="ignore"):  # delta = 0: E_train -> 0 at small sigma
    return (e_val - e_train) / e_train


def sampled_gap(denoise: Denoiser, split: Split, sigmas, noise, dtype=jnp.float32) -> Gap:
  """G(sigma) estimated from draws (paper.md section 5): noise (P_train + P_val, draws, 2) in
  world coordinates, the training points' draws first (as np.concatenate([train, val]))."""
  points = np.concatenate([split.train, split.val])
  if np.shape(noise)[0] != points.shape[0] or np.shape(noise)[-1] != 2:
    raise ValueError(f"noise must have shape ({points.shape[0]}, draws, 2) (training points "
                     f"first), got {np.shape(noise)}")
  errors = denoising_errors(denoise, points, sigmas, noise, dtype)
  n_train = split.train.shape[0]
  e_train, e_val = errors[:, :n_train].mean(axis=1), errors[:, n_train:].mean(axis=1)
  return Gap(np.asarray(sigmas, np.float64), _ratio_gap(e_train, e_val), e_train, e_val)


def is_rotation_orbit(points, tol: float = 1e-9) -> bool:
  """True if the points are n equally spaced angles on one circle about the origin (n >= 1).

  tol: finite and >= 0 (ValueError otherwise).
  """
  check_number(tol, "tol", low=0.0)
  points = np.asarray(points, np.float64)
  radius = np.linalg.norm(points, axis=-1)
  if radius.size == 0 or np.ptp(radius) > tol * max(1.0, radius.max()) or radius.min() <= 0:
    return False
  angles = np.sort(np.mod(np.arctan2(points[:, 1], points[:, 0]), 2.0 * np.pi))
  gaps = np.diff(np.concatenate([angles, angles[:1] + 2.0 * np.pi]))
  return bool(np.all(np.abs(gaps - 2.0 * np.pi / angles.size) < tol))


def expected_gap(denoise: Denoiser, split: Split, sigmas, rule: NoiseRule, *,
                 by_symmetry: bool = False, spread_draws: int = 50, dtype=jnp.float32) -> Gap:
  """The expected G(sigma): E_train and E_val as expectations over the noise (expected_errors).

  by_symmetry=True evaluates one training and one validation point: valid when the training and
  the validation points are each one orbit of the same rotation group (a symmetric set with even
  N: both halves N/2 equally spaced angles) and D commutes with those rotations (y*, y_delta and
  guided combinations of them do; a network need not). Raises ValueError if the split is not such
  a set.

  spread: the standard deviation of the estimate from `spread_draws` independent draws per point
  (the authors' scheme), by the delta method: Var(mean over n points and d draws) =
  sum_p Var_p / (n^2 d), Var_p = E|e|^2 - (E|e|)^2, and Var(G) = (E_val / E_train)^2
  (Var(E_val) / E_val^2 + Var(E_train) / E_train^2), the two halves' draws being independent.
  spread_draws: an integer >= 1 (ValueError otherwise).
  """
  check_number(spread_draws, "spread_draws", low=1, integer=True)
  n_train, n_val = split.train.shape[0], split.val.shape[0]
  if by_symmetry:
    if not (n_train == n_val and is_rotation_orbit(split.train) and is_rotation_orbit(split.val)):
      raise ValueError("by_symmetry=True needs training and validation points that are each n "
                       "equally spaced angles on one circle (a symmetric set with even N)")
    points, counts = np.stack([split.train[0], split.val[0]]), (n_train, n_val)
  else:
    points, counts = np.concatenate([split.train, split.val]), (1,) * (n_train + n_val)
  mean, mean_square = expected_errors(denoise, points, sigmas, rule, dtype)
  variance = np.maximum(mean_square - mean * mean, 0.0)
  counts = np.asarray(counts, np.float64)
  mean, variance = mean * counts, variance * counts  # orbit sums
  k = 1 if by_symmetry else n_train
  e_train, e_val = mean[:, :k].sum(1) / n_train, mean[:, k:].sum(1) / n_val
  var_train = variance[:, :k].sum(1) / (n_train ** 2 * spread_draws)
  var_val = variance[:, k:].sum(1) / (n_val ** 2 * spread_draws)
  gap = _ratio_gap(e_train, e_val)
  with np.errstate(divide="ignore", invalid="ignore"):
    spread = (e_val / e_train) * np.sqrt(var_val / e_val ** 2 + var_train / e_train ** 2)
  return Gap(np.asarray(sigmas, np.float64), gap, e_train, e_val, spread)


# The peak of a curve over sigma lives in edm (shared with evaluation.gap).
peak_index, peak = edm.peak_index, edm.peak


def nearest_grid_sigma(grid, target: float) -> float:
  """The grid sigma nearest to `target` in log space; target finite and > 0, the grid as
  `edm.validate_sigma_grid` (ValueError otherwise)."""
  check_number(target, "target", low=0.0, low_open=True)
  grid = edm.validate_sigma_grid(grid, "grid")
  return float(grid[np.argmin(np.abs(np.log(grid) - math.log(target)))])


def nearest_distances(samples, points) -> np.ndarray:
  """Distance from every sample (B, 2) to its nearest point (P, 2)."""
  samples = np.asarray(samples, np.float64)
  points = np.asarray(points, np.float64)
  return np.min(np.linalg.norm(samples[:, None, :] - points[None, :, :], axis=-1), axis=1)


def relative_error_angles(kind: str, num_angles: int, offset: float) -> np.ndarray:
  """Angles of the relative-error experiment: "circle", 2 pi (k / M + offset), k < M (they contain
  the training angles of a symmetric set with the same offset); "half_circle", pi k / M, k < M
  (the authors': np.linspace(0, pi, M, endpoint=False)). num_angles: an integer >= 1; offset:
  finite (ValueError otherwise)."""
  check_number(num_angles, "num_angles", low=1, integer=True)
  check_number(offset, "offset")
  if kind == "circle":
    return symmetric_angles(num_angles, offset)
  if kind == "half_circle":
    return np.pi * np.arange(num_angles) / num_angles
  raise ValueError(f"test angles must be one of {TEST_ANGLES}, got {kind!r}")


def legacy_numpy_shared_draws(num_points: int, num_draws: int, seed: int) -> np.ndarray:
  """The authors' draws for the relative error, (num_points, num_draws, 2) float64: numpy's legacy
  generator seeded with `seed`, one (num_draws, 2) standard normal array shared by every point in
  world coordinates. num_points, num_draws: integers >= 1; seed: an integer in [0, 2^32)."""
  check_number(num_points, "num_points", low=1, integer=True)
  check_number(num_draws, "num_draws", low=1, integer=True)
  _check_seed(seed)
  draws = np.random.RandomState(seed).standard_normal((num_draws, 2))
  return np.broadcast_to(draws, (num_points, num_draws, 2))


# ----------------------------------------------------------------------------------------------
# The experiments' numbers. The job `toy2d` maps its config to these calls and writes the results.

ESTIMATES = ("expected", "draws", "paper_draws")


def _check_estimate(estimate: str, allowed=ESTIMATES[1:]) -> str:
  if estimate not in allowed:
    raise ValueError(f"estimate must be one of {allowed}, got {estimate!r}")
  return estimate


def gap_noise(estimate: str, split: Split, num_draws: int, *, key: Optional[jax.Array] = None,
              legacy_seed: int = 0, local_frame: bool = True):
  """The draws `sampled_gap` takes for an estimate from draws, (P_train + P_val, num_draws, 2),
  the training points first.

  "paper_draws": the authors' (`legacy_numpy_draws` of the training then the validation angles,
  seeded with legacy_seed), float64; "draws": `noise_draws(key, points, num_draws, local_frame)`,
  float32. Raises ValueError for another estimate ("expected" takes no draws), for "draws"
  without a key, or for num_draws / legacy_seed as `legacy_numpy_draws` and `noise_draws` do.
  """
  if _check_estimate(estimate) == "paper_draws":
    return legacy_numpy_draws(np.concatenate([split.train_angles, split.val_angles]), num_draws,
                              legacy_seed)
  if key is None:
    raise ValueError("gap_noise: estimate 'draws' needs a key")
  return noise_draws(key, np.concatenate([split.train, split.val]), num_draws, local_frame)


def value_at_peak(values, other) -> float:
  """other[i] at the peak i of `values`, as `peak` finds it (NaNs ignored); NaN for an all-NaN
  curve. values: 1-D, non-empty (ValueError otherwise); other: indexable like values."""
  i = peak_index(values)
  return float(other[i]) if i >= 0 else float("nan")


def curve_summary(gap: Gap) -> dict:
  """A gap curve for results.json: values (G), error_train, error_val, peak_value, peak_sigma
  (`peak`), and with a spread (expected curves) spread and spread_at_peak (`value_at_peak`)."""
  peak_sigma, peak_value = peak(gap.sigmas, gap.gap)
  out = dict(values=gap.gap, error_train=gap.error_train, error_val=gap.error_val,
             peak_value=peak_value, peak_sigma=peak_sigma)
  if gap.spread is not None:
    out["spread"] = gap.spread
    out["spread_at_peak"] = value_at_peak(gap.gap, gap.spread)
  return out


class FlowField(NamedTuple):
  """A denoiser's field D(x; sigma) - x on a square grid of queries, for each sigma (float64)."""
  axis: np.ndarray  # (G,): the grid's coordinates along x and along y
  predictions: np.ndarray  # (S, G * G, 2): D at the queries, np.meshgrid(axis, axis) order
  field: np.ndarray  # (S, G, G, 2): predictions - queries


def flow_field(denoise: Denoiser, sigmas, extent: float, grid_size: int,
               dtype=jnp.float32) -> FlowField:
  """D(x; sigma) - x on the grid_size x grid_size grid spanning [-extent, extent]^2, every sigma
  (S,) in one denoiser call computed in `dtype`. Raises ValueError unless extent is finite and
  > 0 and grid_size is an integer >= 2."""
  check_number(extent, "extent", low=0.0, low_open=True)
  check_number(grid_size, "grid_size", low=2, integer=True)
  axis = np.linspace(-extent, extent, grid_size)
  xx, yy = np.meshgrid(axis, axis)
  queries = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  q, s = queries.shape[0], len(sigmas)
  x_all = jnp.asarray(np.tile(queries, (s, 1)), dtype)
  sigma_all = jnp.asarray(np.repeat(sigmas, q), dtype)
  pred = np.asarray(denoise(x_all, sigma_all), np.float64).reshape(s, q, 2)
  field = pred - queries[None]
  return FlowField(axis, pred, field.reshape(s, grid_size, grid_size, 2))


def flow_field_statistics(flow: FlowField, train) -> list:
  """Per sigma: the mean distance of the predictions to the training points' mean and to the
  nearest training point, the fraction of predictions within 1e-2 of a training point, and the
  largest |D(x) - x|; train (P, 2)."""
  train = np.asarray(train, np.float64)
  centre = train.mean(axis=0)
  magnitude = np.linalg.norm(flow.field.reshape(flow.predictions.shape), axis=-1)
  stats = []
  for i, pred in enumerate(flow.predictions):
    to_point = nearest_distances(pred, train)
    stats.append({
        "mean_distance_prediction_to_train_mean":
            float(np.mean(np.linalg.norm(pred - centre, axis=-1))),
        "mean_distance_prediction_to_nearest_train_point": float(np.mean(to_point)),
        "fraction_predictions_within_1e-2_of_train": float(np.mean(to_point < 1e-2)),
        "max_magnitude": float(magnitude[i].max())})
  return stats


def all_training(split: Split, radius: float) -> Split:
  """The authors' relative-error setup: every point of the split a training point, in angle order
  (angles mod 2 pi, ascending), no validation points."""
  angles = np.concatenate([split.train_angles, split.val_angles])
  order = np.argsort(np.mod(angles, 2.0 * np.pi), kind="stable")
  return Split(circle_points(angles[order], radius), np.zeros((0, 2)), angles[order],
               np.zeros((0,)))


def matching_angles(angles, targets, tol: float = 1e-9) -> np.ndarray:
  """Indices i with angles[i] equal (mod 2 pi, within tol radians) to one of targets."""
  diff = np.angle(np.exp(1j * (np.asarray(angles)[:, None] - np.asarray(targets)[None, :])))
  return np.nonzero(np.any(np.abs(diff) < tol, axis=1))[0]


def relative_error_noise(estimate: str, test_points, train_points, num_draws: int, *,
                         key: Optional[jax.Array] = None, legacy_seed: int = 1):
  """The draws `relative_errors` takes for an estimate from draws, (M + P, num_draws, 2), the M
  test points first: "paper_draws", the authors' (`legacy_numpy_shared_draws`: one set shared by
  every point in world coordinates); "draws", `noise_draws(key, points, num_draws)` in each
  point's local frame (so every training point has the same error). Raises ValueError for another
  estimate or for "draws" without a key."""
  points = np.concatenate([test_points, train_points])
  if _check_estimate(estimate) == "paper_draws":
    return legacy_numpy_shared_draws(points.shape[0], num_draws, legacy_seed)
  if key is None:
    raise ValueError("relative_error_noise: estimate 'draws' needs a key")
  return noise_draws(key, points, num_draws, local_frame=True)


class RelativeError(NamedTuple):
  """(E(theta) - E_train) / E_train at M test points, E = E_n || D(y + sigma n) - y ||."""
  values: np.ndarray  # (M,) float64
  error: np.ndarray  # (M,) E(theta) at the test points
  error_train: float  # the mean of E over the training points


def relative_errors(denoise: Denoiser, test_points, train_points, sigma: float, *,
                    rule: Optional[NoiseRule] = None, noise=None,
                    dtype=jnp.float32) -> RelativeError:
  """The denoising error at test points (M, 2) relative to the training points' (P, 2), at one
  sigma: by the cubature `rule` (`expected_errors`) or from `noise` (M + P, draws, 2), the test
  points first (`relative_error_noise`). Raises ValueError unless exactly one of rule and noise
  is given, or for sigma as `expected_errors` / `denoising_errors`."""
  if (rule is None) == (noise is None):
    raise ValueError("relative_errors needs exactly one of rule (expected) and noise (draws)")
  points = np.concatenate([test_points, train_points])
  if rule is not None:
    errors = expected_errors(denoise, points, [sigma], rule, dtype)[0][0]
  else:
    errors = denoising_errors(denoise, points, [sigma], noise, dtype)[0]
  n_test = np.shape(test_points)[0]
  e_theta, e_train = errors[:n_test], errors[n_test:].mean()
  return RelativeError((e_theta - e_train) / e_train, e_theta, float(e_train))


def relative_error_summary(result: RelativeError, angles, train_angles, val_angles) -> dict:
  """A relative-error curve for results.json: values, error, error_train, the maximum and its
  angle (`value_at_peak`), and where the test angles include them, the largest |value| at the
  training angles and the mean value at the validation angles (`matching_angles`)."""
  out = dict(values=result.values, error=result.error, error_train=result.error_train,
             max_value=value_at_peak(result.values, result.values),
             angle_at_max=value_at_peak(result.values, angles))
  train_index = matching_angles(angles, train_angles)
  val_index = matching_angles(angles, val_angles)
  if train_index.size:
    out["max_abs_at_train_angles"] = float(np.max(np.abs(result.values[train_index])))
  if val_index.size:
    out["mean_at_val_angles"] = float(np.mean(result.values[val_index]))
  return out


def sampler_noise(key: jax.Array, num_samples: int, dtype=jnp.float32) -> jax.Array:
  """(num_samples, 2) standard normal starting noise (drawn in float32, then cast to dtype)."""
  check_number(num_samples, "num_samples", low=1, integer=True)
  return jax.random.normal(key, (num_samples, 2), jnp.float32).astype(dtype)


def sample(denoise: Denoiser, noise, num_steps: int, solver: str, num_plotted: Optional[int] = None):
  """Probability-flow samples from `noise` (B, 2) (`samplers.sample`), float64 (B, 2); with
  num_plotted, also the paths of the first num_plotted samples, (num_plotted, num_steps + 1, 2):
  the states the sampler visited, the endpoint appended. Raises ValueError as `samplers.sample`."""
  if num_plotted is None:
    out = samplers.sample(denoise, noise, num_steps=int(num_steps), solver=solver)
    return np.asarray(out.samples, np.float64)
  out = samplers.sample(denoise, noise, num_steps=int(num_steps), solver=solver,
                        return_trajectory=True)
  samples = np.asarray(out.samples, np.float64)
  k = int(num_plotted)
  paths = np.concatenate([np.asarray(out.trajectory.x[:, :k], np.float64), samples[None, :k]])
  return samples, np.transpose(paths, (1, 0, 2))


def endpoint_statistics(samples, train, val, tolerance: float) -> dict:
  """Where samples (B, 2) land: the fraction within `tolerance` of a training and of a validation
  point, the mean distance to the nearest of each, and the mean radius."""
  to_train = nearest_distances(samples, train)
  to_val = nearest_distances(samples, val)
  return dict(fraction_within_tol_of_train=float(np.mean(to_train < tolerance)),
              fraction_within_tol_of_val=float(np.mean(to_val < tolerance)),
              mean_distance_to_nearest_train=float(np.mean(to_train)),
              mean_distance_to_nearest_val=float(np.mean(to_val)),
              mean_radius=float(np.mean(np.linalg.norm(np.asarray(samples), axis=-1))))


def frechet_curves(samples, train, val, ddof: int = 0) -> dict:
  """2D Frechet distances of each sample set in `samples` (a sequence of (B, 2)) to the training
  and validation points (`frechet.frechet_distance` with ddof), G_FD = (FD_val - FD_train) /
  FD_train, the fraction of samples within 1e-2 of a training point, and FD between the two
  point sets themselves; the curves are (len(samples),) float64."""
  fd_train = np.asarray([frechet.frechet_distance(s, train, ddof=ddof) for s in samples])
  fd_val = np.asarray([frechet.frechet_distance(s, val, ddof=ddof) for s in samples])
  copies = np.asarray([float(np.mean(nearest_distances(s, train) < 1e-2)) for s in samples])
  return dict(fd_train=fd_train, fd_val=fd_val, g_fd=(fd_val - fd_train) / fd_train,
              copies=copies, fd_sets=frechet.frechet_distance(train, val, ddof=ddof))
