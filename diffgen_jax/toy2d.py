"""The 2D toy model of paper.md section 5: data on a circle, y_delta, the gap metric, experiments a-g.

Everything here is analytic: the "network" is the toy model's error-prone denoiser y_delta
(optimal.error_prone_denoiser of the exact empirical optimal denoiser), so its single parameter
delta plays the role of model error. The job `toy2d` (configs/toy2d.py) runs any subset of

  flow_field      (a) the field y*(x) - x at large, medium and small sigma
  relative_error  (b) the denoising error along the circle, relative to the training points
  gap_vs_delta    (c) the relative generalization gap G(sigma) as delta varies
  gap_vs_density  (d) G(sigma) as the number of training points varies
  guidance        (e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies
  trajectories    (f) Euler sampling with y* and with y_delta: where the endpoints land
  frechet         (g) 2D Frechet distance of samples to the train and validation sets vs delta

and writes WORKDIR/<experiment>/results.json (plain JSON, no NaN) with a PNG beside it.

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

import functools
import json
import math
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffgen_jax import config_checks, edm, jsonio, samplers
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.denoisers import Denoiser, guided
from diffgen_jax.evaluation import frechet
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser

EXPERIMENTS = ("flow_field", "relative_error", "gap_vs_delta", "gap_vs_density", "guidance",
               "trajectories", "frechet")
DATASETS = ("symmetric", "random")
GAP_EXPERIMENTS = ("gap_vs_delta", "gap_vs_density", "guidance")

# Random streams: every draw is fold_in(key(seed), stream), so experiments never share draws by
# accident and the gap experiments (c)-(e) deliberately share one draw set.
_STREAM_GAP_DRAWS = 1
_STREAM_RELATIVE_ERROR = 2
_STREAM_TRAJECTORIES = 3
_STREAM_FRECHET = 4
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Data on the circle.


class Split(NamedTuple):
  """Training and validation points (float64, (n, 2)) and their angles in radians."""
  train: np.ndarray
  val: np.ndarray
  train_angles: np.ndarray
  val_angles: np.ndarray


def circle_points(angles, radius: float) -> np.ndarray:
  angles = np.asarray(angles, np.float64)
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def symmetric_angles(num_points: int, offset: float) -> np.ndarray:
  """2 pi (k / N + offset), k = 0..N-1."""
  return 2.0 * np.pi * (np.arange(num_points) / num_points + offset)


def make_dataset(kind: str, num_points: int, radius: float = 10.0, offset: float = 0.01,
                 seed: int = 0) -> Split:
  """The toy data sets of paper.md section 5.

  "symmetric": N equally spaced angles 2 pi (k/N + offset); train = even k, validation = odd k.
  "random": N angles uniform in [0, 2 pi) from `seed`; the first half (N // 2) is validation, the
  rest training.
  """
  if kind not in DATASETS:
    raise ValueError(f"dataset kind must be one of {DATASETS}, got {kind!r}")
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2, got {num_points}")
  if kind == "symmetric":
    angles = symmetric_angles(num_points, offset)
    train_angles, val_angles = angles[0::2], angles[1::2]
  else:
    angles = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, num_points)
    val_angles, train_angles = angles[:num_points // 2], angles[num_points // 2:]
  return Split(circle_points(train_angles, radius), circle_points(val_angles, radius),
               train_angles, val_angles)


def _split_from(section, config) -> Split:
  return make_dataset(section.dataset, int(section.num_points), float(config.radius),
                      float(section.get("offset", config.offset)), int(config.seed))


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
  spacing <= 0 or radius <= spacing.
  """
  if not spacing > 0 or not radius > spacing:
    raise ValueError(f"lattice_rule needs spacing > 0 and radius > spacing, got spacing={spacing}, "
                     f"radius={radius}")
  half = int(math.ceil(radius / spacing))
  axis = spacing * (np.arange(-half, half, dtype=np.float64) + 0.5)
  nodes = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
  sq = np.sum(nodes * nodes, axis=-1)
  nodes, sq = nodes[sq <= radius * radius], sq[sq <= radius * radius]
  return NoiseRule(nodes, spacing * spacing * np.exp(-0.5 * sq) / (2.0 * np.pi))


def gauss_hermite_rule(num_nodes: int) -> NoiseRule:
  """Tensor Gauss-Hermite rule with num_nodes per axis (for comparison; see the section comment)."""
  if num_nodes < 1:
    raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
  x, w = np.polynomial.hermite.hermgauss(num_nodes)
  x, w = math.sqrt(2.0) * x, w / math.sqrt(math.pi)  # physicists' weight e^{-x^2} -> N(0, 1)
  nodes = np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)
  return NoiseRule(nodes, np.outer(w, w).reshape(-1))


def local_frames(points) -> np.ndarray:
  """(P, 2, 2) rotations whose rows are each point's (radial, tangential) unit vectors.

  e_r = y / |y|, e_t = e_r rotated by +90 degrees; the identity for a point at the origin. A vector
  with local coordinates (a, b) is a e_r + b e_t = (a, b) @ frame in world coordinates.
  """
  points = np.asarray(points, np.float64)
  norm = np.linalg.norm(points, axis=-1, keepdims=True)
  e_r = np.where(norm > 0, points / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0]))
  e_t = np.stack([-e_r[:, 1], e_r[:, 0]], axis=-1)
  return np.stack([e_r, e_t], axis=1)


def noise_draws(key: jax.Array, points, num_draws: int, local_frame: bool = True) -> jax.Array:
  """Standard normal draws per point, (P, num_draws, 2) float32, in world coordinates.

  local_frame=True: one set of (radial, tangential) draws shared by every point, rotated into each
  point's local frame (local_frames). local_frame=False: independent draws for every point.
  """
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
  """
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
  (float64 needs jax_enable_x64). Returns (S, P) float64.
  """
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
  accumulated in float64.
  """
  points = np.asarray(points, np.float64)
  sigmas = np.asarray(sigmas, np.float64)
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
  """True if the points are n equally spaced angles on one circle about the origin (n >= 1)."""
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
  """
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


def peak(sigmas, values):
  """(max value, sigma at the max)."""
  i = int(np.argmax(values))
  return float(values[i]), float(sigmas[i])


def nearest_grid_sigma(grid, target: float) -> float:
  """The grid sigma nearest to `target` in log space."""
  grid = np.asarray(grid, np.float64)
  return float(grid[np.argmin(np.abs(np.log(grid) - math.log(target)))])


def nearest_distances(samples, points) -> np.ndarray:
  """Distance from every sample (B, 2) to its nearest point (P, 2)."""
  samples = np.asarray(samples, np.float64)
  points = np.asarray(points, np.float64)
  return np.min(np.linalg.norm(samples[:, None, :] - points[None, :, :], axis=-1), axis=1)


# ----------------------------------------------------------------------------------------------
# The experiments. Each returns (results, plot_data); results is what goes into results.json.

ESTIMATES = ("expected", "draws", "paper_draws")
DTYPES = ("float32", "float64")
TEST_ANGLES = ("circle", "half_circle")


def _dtype(config):
  return jnp.float64 if config.get("dtype", "float32") == "float64" else jnp.float32


def _in_config_precision(experiment):
  """Runs an experiment with jax's 64-bit mode on when config.dtype is float64 (and only then)."""

  @functools.wraps(experiment)
  def wrapped(config):
    if config.get("dtype", "float32") != "float64":
      return experiment(config)
    with jax.enable_x64(True):
      return experiment(config)

  return wrapped


def _optimal(split: Split, config):
  return empirical_optimal_denoiser(split.train, dtype=_dtype(config))


def _rule(config) -> NoiseRule:
  return lattice_rule(float(config.quadrature.spacing), float(config.quadrature.radius))


def _protocol(config, section=None, **extra) -> Dict:
  proto = dict(seed=int(config.seed), radius=float(config.radius),
               dtype=config.get("dtype", "float32"))
  if section is not None:
    proto.update(dataset=section.dataset)
    if "num_points" in section:
      proto["num_points"] = section.num_points
    if section.dataset == "symmetric":
      proto["offset"] = float(section.get("offset", config.offset))
      proto["split"] = "angles 2 pi (k/N + offset); train = even k, validation = odd k"
    else:
      proto["split"] = "angles uniform in [0, 2 pi) (numpy default_rng(seed)); first half validation"
    if section.get("all_training", False):
      proto["split"] = "all points are training points (no validation points)"
  proto.update(extra)
  return proto


def _estimate_protocol(config, draws: int, legacy_seed: int, shared_world_draws=False,
                       estimate=None) -> Dict:
  """How the expectation over the noise was taken, for results.json."""
  estimate = estimate or config.estimate
  if estimate == "expected":
    rule = _rule(config)
    return dict(estimate="expected", quadrature=dict(
        rule="midpoint rule on the lattice spacing * (Z + 1/2)^2 within |n| <= radius "
             "(lattice_rule), nodes rotated into each point's (radial, tangential) frame",
        spacing=float(config.quadrature.spacing), radius=float(config.quadrature.radius),
        nodes=int(rule.weights.size)))
  if estimate == "paper_draws":
    how = (f"np.random.seed({legacy_seed}); one standard normal ({draws}, 2) array shared by every "
           "point in world coordinates" if shared_world_draws else
           f"np.random.seed({legacy_seed}); one standard normal ({draws}, N, 2) array, the k-th "
           "point in angle order taking [:, k, :]; reset for every curve, the same at every sigma")
    return dict(estimate="paper_draws", draws=draws, legacy_seed=legacy_seed, draws_note=how)
  return dict(estimate="draws", draws=draws, local_frame_draws=bool(config.local_frame_draws))


def _gap_protocol(config, section, **extra) -> Dict:
  proto = _protocol(
      config, section,
      sigma_grid=f"edm.toy_sigma_grid({config.sigma_grid_steps}): the EDM schedule, ascending",
      error="per point the expectation (or mean over draws) of ||y(y_p + sigma n) - y_p|| "
            "(not squared)",
      gap="G = (mean_val - mean_train) / mean_train",
      **_estimate_protocol(config, int(config.draws), int(config.legacy_seed)), **extra)
  if config.estimate == "expected":
    proto["spread_draws"] = int(config.draws)
    proto["spread"] = (f"the standard deviation of G from {int(config.draws)} independent draws "
                       "per point (the authors' scheme), to first order (expected_gap)")
  elif config.get("compare_expected", False):
    proto["compare_expected"] = dict(
        _estimate_protocol(config, 0, 0, estimate="expected"), spread_draws=int(config.draws),
        note="each curve's 'expected': the expected curve and the spread of a draws-draw "
             "estimate, as with estimate='expected'")
  if config.estimate == "draws":
    proto["draws_note"] = (
        "(ours) one draw set of (radial, tangential) vectors shared by all points in each point's "
        "local frame, reused at every sigma" if config.local_frame_draws else
        "independent draws per point, reused at every sigma")
  return proto


def _expected_gap(denoise: Denoiser, split: Split, section, config) -> Gap:
  # Every toy denoiser is built from the training set, so it commutes with the rotations that map
  # a symmetric set with even N onto itself: one point per half suffices.
  symmetric = section.dataset == "symmetric" and split.train.shape[0] == split.val.shape[0]
  return expected_gap(denoise, split, edm.toy_sigma_grid(config.sigma_grid_steps), _rule(config),
                      by_symmetry=symmetric, spread_draws=int(config.draws), dtype=_dtype(config))


def _gap(denoise: Denoiser, split: Split, section, config):
  """(G(sigma) by config.estimate, the expected G(sigma) beside it if config.compare_expected)."""
  if config.estimate == "expected":
    return _expected_gap(denoise, split, section, config), None
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  if config.estimate == "paper_draws":
    noise = legacy_numpy_draws(np.concatenate([split.train_angles, split.val_angles]),
                               int(config.draws), int(config.legacy_seed))
  else:
    noise = noise_draws(_gap_key(config), np.concatenate([split.train, split.val]),
                        int(config.draws), bool(config.local_frame_draws))
  estimate = sampled_gap(denoise, split, sigmas, noise, _dtype(config))
  expected = (_expected_gap(denoise, split, section, config)
              if config.get("compare_expected", False) else None)
  return estimate, expected


def _gap_curve(label: str, name: str, value, gaps) -> Dict:
  gap, expected = gaps
  peak_value, peak_sigma = peak(gap.sigmas, gap.gap)
  curve = dict(label=label, parameter={name: value}, values=gap.gap, error_train=gap.error_train,
               error_val=gap.error_val, peak_value=peak_value, peak_sigma=peak_sigma)
  if gap.spread is not None:
    curve["spread"] = gap.spread
    curve["spread_at_peak"] = float(gap.spread[int(np.argmax(gap.gap))])
  if expected is not None:  # the expected curve beside an estimate (config.compare_expected)
    e_peak, e_sigma = peak(expected.sigmas, expected.gap)
    curve["expected"] = dict(values=expected.gap, spread=expected.spread, peak_value=e_peak,
                             peak_sigma=e_sigma,
                             spread_at_peak=float(expected.spread[int(np.argmax(expected.gap))]))
  logging.info("toy2d   %s: peak G=%.4g at sigma=%.4g", label, peak_value, peak_sigma)
  return curve


@_in_config_precision
def experiment_flow_field(config):
  section = config.flow_field
  split = _split_from(section, config)
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  indices = tuple(section.get("sigma_indices", ()))
  if indices:
    sigmas = [float(grid[i]) for i in indices]
    requested = [None] * len(indices)
  else:
    requested = [float(s) for s in section.sigmas]
    sigmas = [nearest_grid_sigma(grid, s) for s in requested]
  optimal = _optimal(split, config)
  dtype = _dtype(config)
  axis = np.linspace(-section.extent, section.extent, section.grid_size)
  xx, yy = np.meshgrid(axis, axis)
  queries = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  q = queries.shape[0]
  x_all = jnp.asarray(np.tile(queries, (len(sigmas), 1)), dtype)
  sigma_all = jnp.asarray(np.repeat(sigmas, q), dtype)
  pred = np.asarray(optimal(x_all, sigma_all), np.float64).reshape(len(sigmas), q, 2)
  field = pred - queries[None]
  magnitude = np.linalg.norm(field, axis=-1)
  centre = split.train.mean(axis=0)
  fields = []
  for i, used in enumerate(sigmas):
    to_point = nearest_distances(pred[i], split.train)
    entry = {"sigma": used}
    if indices:
      entry["sigma_index"] = int(indices[i])
    else:
      entry["sigma_requested"] = requested[i]
    entry.update({
        "mean_distance_prediction_to_train_mean":
            float(np.mean(np.linalg.norm(pred[i] - centre, axis=-1))),
        "mean_distance_prediction_to_nearest_train_point": float(np.mean(to_point)),
        "fraction_predictions_within_1e-2_of_train": float(np.mean(to_point < 1e-2)),
        "max_magnitude": float(magnitude[i].max())})
    fields.append(entry)
  sigma_note = (f"sigmas: indices {list(indices)} of the ascending toy grid (the sigmas the "
                "authors plot)" if indices else
                "sigmas: the toy-grid values nearest (in log) to the requested ones")
  results = dict(
      experiment="flow_field",
      description="(a) the flow field y*(x) - x of the empirical optimal denoiser (delta = 0)",
      protocol=_protocol(config, section, grid_size=int(section.grid_size),
                         extent=float(section.extent), delta=0.0,
                         notes=["10 training points: the train half (even k) of the symmetric "
                                "N=20 set with offset 0.001", sigma_note,
                                "the fields themselves are in fields.npz (axis, sigmas, field)"]),
      train_points=split.train, val_points=split.val, fields=fields)
  plot_data = dict(axis=axis, sigmas=np.asarray(sigmas), field=field.reshape(
      len(sigmas), section.grid_size, section.grid_size, 2), train=split.train, val=split.val)
  return results, plot_data


def relative_error_angles(kind: str, num_angles: int, offset: float) -> np.ndarray:
  """Angles of the relative-error experiment: "circle", 2 pi (k / M + offset), k < M (they contain
  the training angles of a symmetric set with the same offset); "half_circle", pi k / M, k < M
  (the authors': np.linspace(0, pi, M, endpoint=False))."""
  if kind == "circle":
    return symmetric_angles(num_angles, offset)
  if kind == "half_circle":
    return np.pi * np.arange(num_angles) / num_angles
  raise ValueError(f"test angles must be one of {TEST_ANGLES}, got {kind!r}")


def legacy_numpy_shared_draws(num_points: int, num_draws: int, seed: int) -> np.ndarray:
  """The authors' draws for the relative error, (num_points, num_draws, 2) float64: numpy's legacy
  generator seeded with `seed`, one (num_draws, 2) standard normal array shared by every point in
  world coordinates."""
  draws = np.random.RandomState(seed).standard_normal((num_draws, 2))
  return np.broadcast_to(draws, (num_points, num_draws, 2))


@_in_config_precision
def experiment_relative_error(config):
  section = config.relative_error
  split = _split_from(section, config)
  if section.get("all_training", False):  # the authors' setup: no validation points
    angles = np.concatenate([split.train_angles, split.val_angles])
    order = np.argsort(np.mod(angles, 2.0 * np.pi), kind="stable")
    split = Split(circle_points(angles[order], config.radius), np.zeros((0, 2)), angles[order],
                  np.zeros((0,)))
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  sigma = nearest_grid_sigma(grid, section.sigma)
  offset = float(section.get("offset", config.offset))
  kind = section.get("test_angles", "circle")
  angles = relative_error_angles(kind, int(section.num_angles), offset)
  test_points = circle_points(angles, config.radius)
  points = np.concatenate([test_points, split.train])
  dtype = _dtype(config)
  if config.estimate == "paper_draws":
    noise = legacy_numpy_shared_draws(points.shape[0], int(section.draws),
                                      int(section.legacy_seed))
  elif config.estimate == "draws":
    # The same (radial, tangential) draws at every angle and training point.
    key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_RELATIVE_ERROR)
    noise = noise_draws(key, points, section.draws, local_frame=True)
  optimal = _optimal(split, config)
  n_test = angles.size
  train_index = _matching_angles(angles, split.train_angles)
  val_index = _matching_angles(angles, split.val_angles)
  curves = []
  for delta in section.deltas:
    denoise = error_prone_denoiser(optimal, float(delta))
    if config.estimate == "expected":
      errors = expected_errors(denoise, points, [sigma], _rule(config), dtype)[0][0]
    else:
      errors = denoising_errors(denoise, points, [sigma], noise, dtype)[0]
    e_theta, e_train = errors[:n_test], errors[n_test:].mean()
    rel = (e_theta - e_train) / e_train
    i = int(np.argmax(rel))
    curve = dict(label=f"delta={delta:g}", parameter={"delta": float(delta)}, values=rel,
                 error=e_theta, error_train=float(e_train), max_value=float(rel[i]),
                 angle_at_max=float(angles[i]))
    if train_index.size:
      curve["max_abs_at_train_angles"] = float(np.max(np.abs(rel[train_index])))
    if val_index.size:
      curve["mean_at_val_angles"] = float(np.mean(rel[val_index]))
    curves.append(curve)
  estimate_note = {
      "expected": "E(theta) and each training point's E are expectations over the noise "
                  "(lattice_rule in each point's local frame), so the curve is 0 at training "
                  "angles up to rounding",
      "draws": "(ours) one set of draws in the local (radial, tangential) frame of each angle, so "
               "every training point has the same error and the curve is 0 at training angles",
      "paper_draws": "the authors' draws: one set shared by every angle and training point in "
                     "world coordinates, so training points differ slightly in error"}
  angles_note = {"circle": "test angles 2 pi (k / num_angles + offset): they contain the training "
                           "angles",
                 "half_circle": "test angles pi k / num_angles on [0, pi) (the authors')"}
  results = dict(
      experiment="relative_error",
      description="(b) relative denoising error along the circle at sigma ~ 1",
      protocol=_protocol(
          config, section, sigma_requested=float(section.sigma), sigma=sigma,
          num_angles=int(section.num_angles), test_angles=kind, angle_offset=offset,
          **_estimate_protocol(config, int(section.draws), int(section.get("legacy_seed", 1)),
                               shared_world_draws=True),
          notes=["relative error (E(theta) - E_train) / E_train, E(theta) the expected (or mean "
                 "over draws) ||y_delta(y_theta + sigma n) - y_theta||, E_train the mean of E over "
                 "the training points", estimate_note[config.estimate], angles_note[kind]]),
      axis=dict(name="angle", unit="radians", values=angles),
      train_angles=split.train_angles, val_angles=split.val_angles, curves=curves)
  return results, dict(angles=angles, curves=curves, train_angles=split.train_angles,
                       val_angles=split.val_angles, sigma=sigma)


def _matching_angles(angles, targets, tol: float = 1e-9) -> np.ndarray:
  """Indices i with angles[i] equal (mod 2 pi) to one of targets."""
  diff = np.angle(np.exp(1j * (np.asarray(angles)[:, None] - np.asarray(targets)[None, :])))
  return np.nonzero(np.any(np.abs(diff) < tol, axis=1))[0]


def _gap_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), _STREAM_GAP_DRAWS)


def _gap_plot_data(sigmas, curves, name, title, config):
  shown = ", ".join(f"{curves[i]['parameter'][name]:g}"
                    for i in sorted({0, len(curves) // 2, len(curves) - 1}))
  symbol = {"delta": "delta", "w": "w", "num_train": "training points"}[name]
  if config.estimate == "expected":
    band = (f"expected curves; bands: ±1 std of a {int(config.draws)}-draw estimate "
            f"({symbol} = {shown})")
  else:
    band = ("the authors' draws" if config.estimate == "paper_draws" else
            f"{int(config.draws)} draws per point")
    if config.get("compare_expected", False):
      band = (f"solid: {band}; dashed: expected ± 1 std of {int(config.draws)} draws "
              f"({symbol} = {shown})")
  return dict(sigmas=sigmas, curves=curves, name=name, title=title, note=band)


@_in_config_precision
def experiment_gap_vs_delta(config):
  section = config.gap_vs_delta
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = _optimal(split, config)
  curves = []
  for delta in section.deltas:
    gap = _gap(error_prone_denoiser(optimal, float(delta)), split, section, config)
    curves.append(_gap_curve(f"delta={delta:g}", "delta", float(delta), gap))
  results = dict(experiment="gap_vs_delta", description="(c) G(sigma) of y_delta as delta varies",
                 protocol=_gap_protocol(config, section), axis=dict(name="sigma", values=sigmas),
                 curves=curves)
  return results, _gap_plot_data(sigmas, curves, "delta", "G(sigma) vs model error", config)


@_in_config_precision
def experiment_gap_vs_density(config):
  section = config.gap_vs_density
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  curves = []
  for n in section.num_points:
    split = make_dataset(section.dataset, int(n), config.radius,
                         float(section.get("offset", config.offset)), config.seed)
    denoise = error_prone_denoiser(_optimal(split, config), float(section.delta))
    gap = _gap(denoise, split, section, config)
    curve = _gap_curve(f"{split.train.shape[0]} train (N={n})", "num_train",
                       int(split.train.shape[0]), gap)
    curve["parameter"]["num_points"] = int(n)
    curves.append(curve)
  results = dict(experiment="gap_vs_density",
                 description="(d) G(sigma) as the number of points on the circle varies",
                 protocol=_gap_protocol(config, section, delta=float(section.delta)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, _gap_plot_data(sigmas, curves, "num_train",
                                 f"G(sigma) vs data density (delta={section.delta:g})", config)


@_in_config_precision
def experiment_guidance(config):
  section = config.guidance
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = _optimal(split, config)
  positive = error_prone_denoiser(optimal, float(section.delta_pos))
  negative = error_prone_denoiser(optimal, float(section.delta_neg))
  curves = []
  for w in section.weights:
    gap = _gap(guided(positive, negative, float(w)), split, section, config)
    curves.append(_gap_curve(f"w={w:g}", "w", float(w), gap))
  results = dict(experiment="guidance",
                 description="(e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies",
                 protocol=_gap_protocol(config, section, delta_pos=float(section.delta_pos),
                                        delta_neg=float(section.delta_neg)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, _gap_plot_data(
      sigmas, curves, "w", f"G(sigma) with guidance (delta_pos={section.delta_pos:g}, "
                           f"delta_neg={section.delta_neg:g})", config)


def _sample(optimal, delta, noise, section):
  denoise = error_prone_denoiser(optimal, float(delta))
  return samplers.sample(denoise, noise, num_steps=int(section.num_steps), solver=section.solver,
                         return_trajectory=True)


@_in_config_precision
def experiment_trajectories(config):
  section = config.trajectories
  split = _split_from(section, config)
  optimal = _optimal(split, config)
  key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_TRAJECTORIES)
  noise = jax.random.normal(key, (section.num_samples, 2), jnp.float32).astype(_dtype(config))
  k = int(section.num_plotted)
  runs = []
  for delta in section.deltas:
    out = _sample(optimal, delta, noise, section)
    samples = np.asarray(out.samples, np.float64)
    to_train = nearest_distances(samples, split.train)
    to_val = nearest_distances(samples, split.val)
    paths = np.concatenate([np.asarray(out.trajectory.x[:, :k], np.float64), samples[None, :k]])
    runs.append(dict(
        label=f"delta={delta:g}", parameter={"delta": float(delta)},
        fraction_within_tol_of_train=float(np.mean(to_train < section.tolerance)),
        fraction_within_tol_of_val=float(np.mean(to_val < section.tolerance)),
        mean_distance_to_nearest_train=float(np.mean(to_train)),
        mean_distance_to_nearest_val=float(np.mean(to_val)),
        mean_radius=float(np.mean(np.linalg.norm(samples, axis=-1))),
        plotted_trajectories=np.transpose(paths, (1, 0, 2)),  # (k, steps + 1, 2)
        endpoints=samples))
  sigmas = edm.karras_sigmas(int(section.num_steps))
  results = dict(
      experiment="trajectories",
      description="(f) probability-flow sampling with y* (delta = 0) and y_delta",
      protocol=_protocol(config, section, solver=section.solver, num_steps=int(section.num_steps),
                         num_samples=int(section.num_samples), tolerance=float(section.tolerance),
                         initial_noise="N(0, sigma_max^2 I), sigma_max = 80",
                         notes=["(ours) the EDM schedule with num_steps steps, a final step into 0",
                                "plotted_trajectories: the states the sampler visited (first "
                                "num_plotted samples), the endpoint appended"]),
      sampler_sigmas=sigmas, train_points=split.train, val_points=split.val, runs=runs)
  return results, dict(runs=runs, train=split.train, val=split.val, radius=config.radius)


@_in_config_precision
def experiment_frechet(config):
  section = config.frechet
  split = _split_from(section, config)
  optimal = _optimal(split, config)
  key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_FRECHET)
  noise = jax.random.normal(key, (section.num_samples, 2), jnp.float32).astype(_dtype(config))
  fd_train, fd_val, copies = [], [], []
  for delta in section.deltas:
    denoise = error_prone_denoiser(optimal, float(delta))
    samples = np.asarray(samplers.sample(denoise, noise, num_steps=int(section.num_steps),
                                         solver=section.solver).samples, np.float64)
    fd_train.append(frechet.frechet_distance(samples, split.train, ddof=section.ddof))
    fd_val.append(frechet.frechet_distance(samples, split.val, ddof=section.ddof))
    copies.append(float(np.mean(nearest_distances(samples, split.train) < 1e-2)))
  fd_train, fd_val = np.asarray(fd_train), np.asarray(fd_val)
  g_fd = (fd_val - fd_train) / fd_train
  fd_sets = frechet.frechet_distance(split.train, split.val, ddof=section.ddof)
  deltas = np.asarray(section.deltas, np.float64)
  results = dict(
      experiment="frechet",
      description="(g) 2D Frechet distance of samples to the train and validation sets vs delta",
      protocol=_protocol(
          config, section, solver=section.solver, num_steps=int(section.num_steps),
          num_samples=int(section.num_samples),
          ddof=int(section.ddof),
          notes=["FD: squared 2-Wasserstein distance between Gaussian fits (mean, covariance) of "
                 "the samples and of each set, as in FID",
                 "(ours) ddof=0: the moments of each point set's empirical distribution; with "
                 "ddof=1 a 10-point set's covariance is inflated by 10/9, and that mismatch alone "
                 "would dominate FD_train of exact copies",
                 "(ours) the random data set: on a symmetric set both halves have mean 0 and "
                 "covariance r^2/2 I, so FD_train == FD_val for any samples"]),
      axis=dict(name="delta", values=deltas),
      curves=[dict(label="FD_train", values=fd_train), dict(label="FD_val", values=fd_val),
              dict(label="G_FD", values=g_fd),
              dict(label="fraction_within_1e-2_of_train", values=np.asarray(copies))],
      fd_train_set_to_val_set=fd_sets, train_points=split.train, val_points=split.val)
  return results, dict(deltas=deltas, fd_train=fd_train, fd_val=fd_val, g_fd=g_fd, fd_sets=fd_sets,
                       dataset=section.dataset)


_RUNNERS: Dict[str, Callable] = {
    "flow_field": experiment_flow_field,
    "relative_error": experiment_relative_error,
    "gap_vs_delta": experiment_gap_vs_delta,
    "gap_vs_density": experiment_gap_vs_density,
    "guidance": experiment_guidance,
    "trajectories": experiment_trajectories,
    "frechet": experiment_frechet,
}


# ----------------------------------------------------------------------------------------------
# Results, summaries, config validation and the job entry point.


def summarize(results: Dict) -> List[str]:
  """A few human-readable lines per experiment."""
  name = results["experiment"]
  lines = []
  if name == "flow_field":
    for f in results["fields"]:
      lines.append(f"sigma={f['sigma']:.3g}: mean |y* - train mean|="
                   f"{f['mean_distance_prediction_to_train_mean']:.3g}, fraction of predictions on a "
                   f"training point={f['fraction_predictions_within_1e-2_of_train']:.3f}")
  elif name == "relative_error":
    for c in results["curves"]:
      at_train = (f", max |rel| at train angles {c['max_abs_at_train_angles']:.2g}"
                  if "max_abs_at_train_angles" in c else "")
      lines.append(f"{c['label']}: max rel. error {c['max_value']:.4g} at "
                   f"{np.degrees(c['angle_at_max']):.1f} deg{at_train}")
  elif name in GAP_EXPERIMENTS:
    for c in results["curves"]:
      spread = (f" (+-{c['spread_at_peak']:.2g} for {results['protocol']['spread_draws']} draws)"
                if "spread_at_peak" in c else "")
      if "expected" in c:
        spread = (f" (expected {c['expected']['peak_value']:.4g} at sigma="
                  f"{c['expected']['peak_sigma']:.4g} +-{c['expected']['spread_at_peak']:.2g})")
      lines.append(f"{c['label']}: peak G={c['peak_value']:.4g} at sigma={c['peak_sigma']:.4g}"
                   f"{spread}")
  elif name == "trajectories":
    for r in results["runs"]:
      lines.append(f"{r['label']}: endpoints within tol of train={r['fraction_within_tol_of_train']:.3f}"
                   f", of val={r['fraction_within_tol_of_val']:.3f}, mean dist to nearest train="
                   f"{r['mean_distance_to_nearest_train']:.3g}")
  elif name == "frechet":
    deltas = results["axis"]["values"]
    curves = {c["label"]: c["values"] for c in results["curves"]}
    for i, d in enumerate(deltas):
      lines.append(f"delta={d:g}: FD_train={curves['FD_train'][i]:.4g} FD_val={curves['FD_val'][i]:.4g}"
                   f" G_FD={curves['G_FD'][i]:.4g}")
  return lines


def _fail(field: str, value, requirement: str):
  raise ConfigError(f"config.{field}={value!r} {requirement}")


def _int(config, field: str, minimum: int):
  value = config_checks.get(config, field)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    _fail(field, value, f"must be an integer >= {minimum}")
  return int(value)


def _number(config, field: str, minimum: float = 0.0, strict: bool = True):
  value = config_checks.get(config, field)
  ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
  if not ok or not math.isfinite(value) or (value <= minimum if strict else value < minimum):
    _fail(field, value, f"must be a finite number {'>' if strict else '>='} {minimum}")
  return float(value)


def _numbers(config, field: str, minimum: float = 0.0, strict: bool = True, integer=False):
  values = config_checks.get(config, field)
  if isinstance(values, (int, float)) and not isinstance(values, bool):
    values = (values,)
  if not isinstance(values, (tuple, list)) or not values:
    _fail(field, values, "must be a non-empty tuple of numbers")
  for v in values:
    ok = isinstance(v, (int, np.integer) if integer else (int, float, np.integer, np.floating))
    if not ok or isinstance(v, bool) or not math.isfinite(v) or (v <= minimum if strict else v < minimum):
      kind = "integers" if integer else "finite numbers"
      _fail(field, tuple(values), f"must contain only {kind} {'>' if strict else '>='} {minimum}")
  return tuple(values)


def validate_config(config) -> None:
  """Checks every field the chosen experiments read; raises ConfigError naming field and values."""
  config_checks.choice(config, "job", ("toy2d",))
  experiments = config_checks.subset(config, "experiments", EXPERIMENTS)
  _int(config, "seed", 0)
  _number(config, "radius")
  _number(config, "offset", 0.0, strict=False)
  _int(config, "draws", 1)
  _int(config, "sigma_grid_steps", 2)
  if not isinstance(config_checks.get(config, "local_frame_draws"), bool):
    _fail("local_frame_draws", config.local_frame_draws, "must be True or False")
  estimate = config_checks.choice(config, "estimate", ESTIMATES)
  if not isinstance(config.get("compare_expected", False), bool):
    _fail("compare_expected", config.compare_expected, "must be True or False")
  config_checks.choice(config, "dtype", DTYPES)
  _int(config, "legacy_seed", 0)
  if estimate == "expected" or config.get("compare_expected", False):
    spacing = _number(config, "quadrature.spacing")
    radius = _number(config, "quadrature.radius")
    if radius <= spacing:
      _fail("quadrature.radius", radius, f"must be > quadrature.spacing={spacing}")
  for name in experiments:
    config_checks.get(config, name)
    config_checks.choice(config, f"{name}.dataset", DATASETS)
    if "offset" in config[name]:
      _number(config, f"{name}.offset", 0.0, strict=False)
    if name == "gap_vs_density":
      _numbers(config, f"{name}.num_points", 2, strict=False, integer=True)
    else:
      _int(config, f"{name}.num_points", 2)
  if "flow_field" in experiments:
    indices = tuple(config.flow_field.get("sigma_indices", ()))
    if indices:
      _numbers(config, "flow_field.sigma_indices", 0, strict=False, integer=True)
      if max(indices) >= config.sigma_grid_steps:
        _fail("flow_field.sigma_indices", indices,
              f"must be indices into the {config.sigma_grid_steps}-step grid (< sigma_grid_steps)")
    else:
      _numbers(config, "flow_field.sigmas")
    _int(config, "flow_field.grid_size", 2)
    _number(config, "flow_field.extent")
  if "relative_error" in experiments:
    _int(config, "relative_error.num_angles", 1)
    _int(config, "relative_error.draws", 1)
    _number(config, "relative_error.sigma")
    config_checks.choice(config, "relative_error.test_angles", TEST_ANGLES)
    if not isinstance(config_checks.get(config, "relative_error.all_training"), bool):
      _fail("relative_error.all_training", config.relative_error.all_training,
            "must be True or False")
    if estimate == "paper_draws":
      _int(config, "relative_error.legacy_seed", 0)
    _numbers(config, "relative_error.deltas", strict=False)
  if "gap_vs_delta" in experiments:
    _numbers(config, "gap_vs_delta.deltas")  # > 0: with delta = 0 the train error vanishes
  if "gap_vs_density" in experiments:
    _number(config, "gap_vs_density.delta")
  if "guidance" in experiments:
    _number(config, "guidance.delta_pos")
    _number(config, "guidance.delta_neg")
    _numbers(config, "guidance.weights", strict=False)
  for name, min_samples in (("trajectories", 1), ("frechet", 2)):
    if name in experiments:
      _numbers(config, f"{name}.deltas", strict=False)
      _int(config, f"{name}.num_samples", min_samples)
      _int(config, f"{name}.num_steps", 1)
      if name == "frechet":
        config_checks.choice(config, "frechet.ddof", (0, 1))
      config_checks.choice(config, f"{name}.solver", samplers.SOLVERS)
  if "trajectories" in experiments:
    plotted = _int(config, "trajectories.num_plotted", 0)
    if plotted > config.trajectories.num_samples:
      _fail("trajectories.num_plotted", plotted,
            f"must be <= trajectories.num_samples={config.trajectories.num_samples}")
    _number(config, "trajectories.tolerance")


def run(config, workdir: str) -> Dict[str, Dict]:
  """Runs the configured experiments; writes WORKDIR/<experiment>/results.json (+ PNGs)."""
  validate_config(config)
  experiments = config_checks.subset(config, "experiments", EXPERIMENTS)
  make_plots = bool(config.get("make_plots", True))
  if make_plots:
    from diffgen_jax.plots import toy2d as toy_plots  # matplotlib only when plotting
  all_results = {}
  for name in experiments:
    start = time.perf_counter()
    results, plot_data = _RUNNERS[name](config)
    results["wall_time_s"] = time.perf_counter() - start
    out_dir = os.path.join(workdir, name)
    jsonio.write_json(os.path.join(out_dir, "results.json"), results)
    if name == "flow_field":
      np.savez_compressed(os.path.join(out_dir, "fields.npz"), axis=plot_data["axis"],
                          sigmas=plot_data["sigmas"], field=plot_data["field"])
    if make_plots:
      toy_plots.plot_experiment(name, plot_data, os.path.join(out_dir, f"{name}.png"))
    logging.info("toy2d %s (%.1f s) -> %s", name, results["wall_time_s"], out_dir)
    for line in summarize(results):
      logging.info("  %s: %s", name, line)
    all_results[name] = results
  return all_results
