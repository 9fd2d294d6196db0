"""k-means in JAX and pseudo-labels for the data pipeline.

Assignment uses `neighbours.nearest_neighbours` (chunked exact search). k-means: seeded k-means++ initialisation, Lloyd iterations with chunked assignment, and empty
clusters re-seeded at the point farthest from its centroid. `pseudo_labels` runs it on training
features and labels validation features by their nearest centroid; `write_pseudo_labels` writes the
.npz file that `diffgen_jax.data.read_pseudo_labels` reads (integer arrays 'train', 'validation').
"""

from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from diffgen_jax import jsonio
from diffgen_jax.checks import check_number
from diffgen_jax.evaluation.neighbours import nearest_neighbours

# ------------------------------------------------------------------------------------------------
# k-means


def _kmeans_pp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
  """k-means++ seeding: each next centre drawn with probability proportional to D(x)^2."""
  rng = np.random.default_rng(seed)
  n = x.shape[0]
  centres = [int(rng.integers(n))]
  min_sq = np.sum((x - x[centres[0]]) ** 2, axis=1)
  for _ in range(1, k):
    total = min_sq.sum()
    if total <= 0:  # fewer distinct points than k: take any not yet chosen
      nxt = int(np.setdiff1d(np.arange(n), centres)[0])
    else:
      nxt = int(rng.choice(n, p=min_sq / total))
    centres.append(nxt)
    min_sq = np.minimum(min_sq, np.sum((x - x[nxt]) ** 2, axis=1))
  return x[np.asarray(centres)].copy()


def kmeans(features, k: int, seed: int = 0, iters: int = 100, *,
           chunk_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with k-means++ seeding (deterministic for a seed).

  Args:
    features: (N, F) points (e.g. classifier features of the training images).
    k: number of clusters. k = 0 means unconditional: no centroids, every label 0. k = 1: the mean.
    seed: seeds the k-means++ draws (an integer >= 0).
    iters: maximum Lloyd iterations, >= 1 (stops earlier when the assignment no longer changes).
    chunk_size: centroids per streaming step of the assignment (`nearest_neighbours`), >= 1.

  Returns:
    (centroids (k, F) float32, labels (N,) int32 in [0, k)). Empty clusters are re-seeded at the
    point farthest from its current centroid, so every cluster keeps at least one point when there
    are at least k distinct points.

  Raises:
    ValueError: features not a finite (N, F) array; k, seed, iters or chunk_size not an integer
      in its range (named in the message).
  """
  check_number(k, "k", low=0, integer=True)
  check_number(seed, "seed", low=0, integer=True)
  check_number(iters, "iters", low=1, integer=True)
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f"features must be (N, F), got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("features contain NaN or Inf")
  n = x.shape[0]
  if k > n:
    raise ValueError(f"k must be in [0, {n}] (the number of points), got {k}")
  if k == 0:
    return np.zeros((0, x.shape[1]), np.float32), np.zeros((n,), np.int32)
  if k == 1:
    return x.mean(axis=0, keepdims=True).astype(np.float32), np.zeros((n,), np.int32)
  centroids = _kmeans_pp(x, k, seed)
  labels = None
  for _ in range(iters):
    idx, dist = nearest_neighbours(x, centroids, 1, chunk_size=chunk_size)
    new_labels = idx[:, 0].astype(np.int32)
    counts = np.bincount(new_labels, minlength=k)
    far = iter(np.argsort(-dist[:, 0], kind="stable"))
    for c in np.flatnonzero(counts == 0):
      # Re-seed an empty cluster at the farthest point whose cluster keeps another member.
      i = next(i for i in far if counts[new_labels[i]] > 1)
      counts[new_labels[i]] -= 1
      counts[c] += 1
      new_labels[i] = c
    if labels is not None and np.array_equal(new_labels, labels):
      break
    labels = new_labels
    sums = np.zeros_like(centroids)
    np.add.at(sums, labels, x)
    centroids = sums / np.bincount(labels, minlength=k)[:, None]
  return centroids.astype(np.float32), labels


def assign(features, centroids, *, chunk_size: int = 1024) -> np.ndarray:
  """Label of the nearest centroid for each row of features; all 0 when there are no centroids.

  chunk_size: centroids per streaming step, an integer >= 1 (ValueError otherwise).
  """
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  features = np.asarray(features)
  centroids = np.asarray(centroids)
  if centroids.shape[0] == 0:
    return np.zeros((features.shape[0],), np.int32)
  idx, _ = nearest_neighbours(features, centroids, 1, chunk_size=chunk_size)
  return idx[:, 0].astype(np.int32)


def pseudo_labels(train_features, val_features, k: int, seed: int = 0,
                  iters: int = 100) -> Tuple[np.ndarray, np.ndarray]:
  """k-means on training features; validation images get the label of their nearest centroid."""
  centroids, train_labels = kmeans(train_features, k, seed, iters)
  return train_labels, assign(val_features, centroids)


def write_pseudo_labels(path: str, train_labels, val_labels) -> str:
  """Writes the .npz read by `diffgen_jax.data.read_pseudo_labels` (arrays 'train', 'validation').

  Written atomically (temporary file, then rename). Returns the path written.
  """
  arrays = {}
  for name, labels in (("train", train_labels), ("validation", val_labels)):
    a = np.asarray(labels)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
      raise ValueError(f"{name} pseudo-labels must be a 1-D array of non-negative integers, got "
                       f"shape {a.shape} dtype {a.dtype}")
    arrays[name] = a.astype(np.int32)
  path = os.path.expanduser(path)
  with jsonio.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)
  return path
