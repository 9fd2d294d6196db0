"""The 2D toy model of paper.md section 5: data on a circle, y_delta, the gap metric, experiments a-g.

Everything here is analytic: the "network" is the toy model's error-prone denoiser y_delta
(optimal.error_prone_denoiser of the exact empirical optimal denoiser), so its single parameter
delta plays the role of model error. The job `toy2d` (jobs/toy2d.py, configs/toy2d.py) runs any subset of

  flow_field      (a) the field y*(x) - x at large, medium and small sigma
  relative_error  (b) the denoising error along the circle, relative to the training points
  gap_vs_delta    (c) the relative generalization gap G(sigma) as delta varies
  gap_vs_density  (d) G(sigma) as the number of training points varies
  guidance        (e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies
  trajectories    (f) Euler sampling with y* and with y_delta: where the endpoints land
  frechet         (g) 2D Frechet distance of samples to the train and validation sets vs delta

and writes their results into WORKDIR/results.json (`jobs.results`) with a PNG per experiment.
This module holds the model and its gap metric; the experiments are in the job.

The gap metric. For a denoiser D, points {y_p} and one fixed set of draws {n_pd} (d = 1..draws):
  E_p(sigma) = mean_d || D(y_p + sigma n_pd; sigma) - y_p ||   (Euclidean norm, not squared),
  G(sigma)   = (mean_{p in val} E_p - mean_{p in train} E_p) / mean_{p in train} E_p,
evaluated for every sigma of the toy grid (edm.toy_sigma_grid()) in a single denoiser call with
one sigma per query. By default (ours) the draws are one set of (radial, tangential) vectors shared
by every point and expressed in that point's local frame: on a symmetric set every training point
(and every validation point) then has exactly the same error, and G -> 0 exactly where y_delta -> x.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.denoisers import Denoiser

DATASETS = ("symmetric", "random")


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


# ----------------------------------------------------------------------------------------------
# The gap metric.


def noise_draws(key: jax.Array, points, num_draws: int, local_frame: bool = True) -> jax.Array:
  """Standard normal draws per point, (P, num_draws, 2) float32, in world coordinates.

  local_frame=True: one set of (radial, tangential) draws shared by every point, rotated into each
  point's local frame (e_r = y / |y|, e_t = e_r rotated by +90 degrees). local_frame=False:
  independent draws for every point.
  """
  points = np.asarray(points, np.float64)
  if not local_frame:
    return jax.random.normal(key, (points.shape[0], num_draws, 2), jnp.float32)
  base = np.asarray(jax.random.normal(key, (num_draws, 2), jnp.float32), np.float64)
  e_r = points / np.linalg.norm(points, axis=-1, keepdims=True)
  e_t = np.stack([-e_r[:, 1], e_r[:, 0]], axis=-1)
  world = base[None, :, 0:1] * e_r[:, None, :] + base[None, :, 1:2] * e_t[:, None, :]
  return jnp.asarray(world, jnp.float32)


def denoising_errors(denoise: Denoiser, points, sigmas, noise) -> np.ndarray:
  """E[s, p] = mean_d || D(y_p + sigma_s n_pd; sigma_s) - y_p ||, all in one denoiser call.

  points (P, 2), sigmas (S,), noise (P, draws, 2). Returns (S, P) float64.
  """
  points = jnp.asarray(points, jnp.float32)
  sigmas = jnp.asarray(sigmas, jnp.float32)
  noise = jnp.asarray(noise, jnp.float32)
  num_p, num_d = noise.shape[:2]
  clean = jnp.broadcast_to(points[None, :, None, :], (sigmas.size, num_p, num_d, 2))
  sigma_q = jnp.broadcast_to(sigmas[:, None, None], (sigmas.size, num_p, num_d))
  noisy = clean + sigma_q[..., None] * noise[None]
  out = denoise(noisy.reshape(-1, 2), sigma_q.reshape(-1))
  err = jnp.linalg.norm(out.reshape(clean.shape) - clean, axis=-1)
  return np.asarray(jnp.mean(err, axis=-1), np.float64)


class Gap(NamedTuple):
  sigmas: np.ndarray  # (S,)
  gap: np.ndarray  # (S,) G = (E_val - E_train) / E_train
  error_train: np.ndarray  # (S,) mean over training points
  error_val: np.ndarray  # (S,) mean over validation points


def relative_gap(denoise: Denoiser, split: Split, sigmas, key: jax.Array, num_draws: int,
                 local_frame: bool = True) -> Gap:
  """The toy model's relative generalization gap G(sigma) (paper.md section 5)."""
  points = np.concatenate([split.train, split.val])
  noise = noise_draws(key, points, num_draws, local_frame)
  errors = denoising_errors(denoise, points, sigmas, noise)
  n_train = split.train.shape[0]
  e_train = errors[:, :n_train].mean(axis=1)
  e_val = errors[:, n_train:].mean(axis=1)
  with np.errstate(divide="ignore", invalid="ignore"):  # delta = 0: E_train -> 0 at small sigma
    gap = (e_val - e_train) / e_train
  return Gap(np.asarray(sigmas, np.float64), gap, e_train, e_val)


def peak(sigmas, values):
  """(sigma, value) at the maximum of a gap curve (the order of `evaluation.gap.peak`)."""
  i = int(np.argmax(values))
  return float(sigmas[i]), float(values[i])


def nearest_grid_sigma(grid, target: float) -> float:
  """The grid sigma nearest to `target` in log space."""
  grid = np.asarray(grid, np.float64)
  return float(grid[np.argmin(np.abs(np.log(grid) - math.log(target)))])


def nearest_distances(samples, points) -> np.ndarray:
  """Distance from every sample (B, 2) to its nearest point (P, 2)."""
  samples = np.asarray(samples, np.float64)
  points = np.asarray(points, np.float64)
  return np.min(np.linalg.norm(samples[:, None, :] - points[None, :, :], axis=-1), axis=1)
