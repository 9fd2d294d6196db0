"""Nearest neighbours: chunked exact Euclidean search in JAX (the one home of squared distances
between two point sets: k-means assignment, 1-NN probes and copy detection all call
`nearest_neighbours`).

  * as matrix products ||q||^2 - 2 q.r + ||r||^2 (the ||q||^2 term dropped for the ranking), on data
    centred at the reference mean and with full-precision matmuls;
  * streamed over chunks of the reference set with a running top-k under `lax.scan`, so memory is
    O(queries x chunk), never O(queries x N x D);
  * the distances of the k neighbours found are then recomputed directly as ||q - r||^2 (no
    cancellation: an exact copy has distance exactly 0).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax.checks import check_number

_HIGHEST = lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _knn(queries, reference, half_sq, valid, *, k, chunk):
  """Top-k nearest reference rows (indices, squared distances) for every query row."""
  q = queries.shape[0]
  n = reference.shape[0]
  ids = jnp.arange(n, dtype=jnp.int32)
  split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])

  def step(carry, xs):
    best_score, best_idx = carry
    ref, h, v, idx = xs
    # Larger score = nearer: q.r - ||r||^2 / 2 = (||q||^2 - ||q - r||^2) / 2.
    score = jnp.matmul(queries, ref.T, precision=_HIGHEST) - h[None, :]
    score = jnp.where(v[None, :], score, -jnp.inf)
    all_score = jnp.concatenate([best_score, score], axis=1)
    all_idx = jnp.concatenate([best_idx, jnp.broadcast_to(idx[None, :], score.shape)], axis=1)
    top, pos = lax.top_k(all_score, k)
    return (top, jnp.take_along_axis(all_idx, pos, axis=1)), None

  init = (jnp.full((q, k), -jnp.inf, queries.dtype), jnp.zeros((q, k), jnp.int32))
  (_, best_idx), _ = lax.scan(step, init, (split(reference), split(half_sq), split(valid),
                                           split(ids)))
  diff = queries[:, None, :] - reference[best_idx]  # (Q, k, D): k is small
  return best_idx, jnp.sum(diff * diff, axis=-1)


def nearest_neighbours(queries, reference, k: int = 1, *, chunk_size: int = 1024,
                       query_batch: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
  """The k nearest reference rows of every query row (Euclidean).

  Args:
    queries: (Q, ...) points (flattened to (Q, D)).
    reference: (N, ...) points with the same item size.
    k: neighbours per query, 1 <= k <= N.
    chunk_size: reference rows per streaming step; query_batch: queries per compiled call (both
      integers >= 1).

  Returns:
    (indices (Q, k) int, distances (Q, k) float32), nearest first; distances are ||q - r||.

  Raises:
    ValueError: mismatched item sizes, or k / chunk_size / query_batch not an integer in range.
  """
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  check_number(query_batch, "query_batch", low=1, integer=True)
  ref = np.asarray(reference, np.float32)
  qs = np.asarray(queries, np.float32)
  n = ref.shape[0]
  ref = ref.reshape(n, -1)
  qs = qs.reshape(qs.shape[0], -1)
  if ref.shape[1] != qs.shape[1]:
    raise ValueError(f"queries have {qs.shape[1]} features, the reference {ref.shape[1]}")
  check_number(k, "k", low=1, integer=True)
  if k > n:
    raise ValueError(f"k={k} must be in [1, {n}] (the reference size)")
  centre = ref.astype(np.float64).mean(axis=0)
  ref_c = (ref - centre).astype(np.float32)
  chunk = min(chunk_size, n)
  pad = -n % chunk
  valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
  ref_c = np.concatenate([ref_c, np.zeros((pad, ref_c.shape[1]), np.float32)])
  half_sq = 0.5 * np.einsum("nd,nd->n", ref_c.astype(np.float64), ref_c.astype(np.float64))
  ref_j, half_j, valid_j = jnp.asarray(ref_c), jnp.asarray(half_sq, jnp.float32), jnp.asarray(valid)
  num_q = qs.shape[0]
  batch = max(1, min(query_batch, num_q))
  idx_out, dist_out = [], []
  for start in range(0, num_q, batch):
    rows = np.minimum(np.arange(start, start + batch), num_q - 1)
    idx, sq = _knn(jnp.asarray((qs[rows] - centre).astype(np.float32)), ref_j, half_j, valid_j,
                   k=k, chunk=chunk)
    keep = min(batch, num_q - start)
    idx_out.append(np.asarray(idx)[:keep])
    dist_out.append(np.sqrt(np.maximum(np.asarray(sq)[:keep], 0.0)))
  if not idx_out:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  return np.concatenate(idx_out), np.concatenate(dist_out)
