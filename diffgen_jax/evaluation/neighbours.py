"""Nearest neighbours: chunked exact Euclidean search in JAX (the one home of squared distances
between two point sets: k-means assignment, 1-NN probes and copy detection all call
`nearest_neighbours`).

  * as matrix products ||q||^2 - 2 q.r + ||r||^2 (the ||q||^2 term dropped for the ranking), on data
    centred at the reference mean and with full-precision matmuls;
  * streamed over chunks of the reference set with a running top-k under `lax.scan`, so memory is
    O(queries x chunk), never O(queries x N x D);
  * the distances of the k neighbours found are then recomputed directly as ||q - r||^2 (no
    cancellation: an exact copy has distance exactly 0);
  * with a mesh, the reference set (a source, read where it lives) is split over the mesh's data
    axis, each process building only its shards: every device keeps a running top-k of its shard
    and recomputes its candidates' distances from the rows it holds; the candidates (score, index,
    distance) of all devices are then gathered and merged by one top-k, so the result is the
    single-device one (ties: the lowest index first, as `lax.top_k` orders equal scores).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from diffgen_jax.checks import check_number
# The squared norms as y* computes them, block by block (the mathematics: one home).
from diffgen_jax.optimal import half_squared_norms
from diffgen_jax.sharding import (DATA_AXIS, blocks, counted_rows, fetch, host_block, host_zeros,
                                  padded_rows, read_rows, replicated, rows_on_mesh, streamed_sum,
                                  sum_counted, training_source)

_HIGHEST = lax.Precision.HIGHEST


def _knn_shard(queries, reference, half_sq, valid, ids, *, k, chunk):
  """Top-k nearest rows of one reference shard for every query row: (scores, ids, squared
  distances), each (Q, k), best first. ids: the shard's (consecutive) row numbers."""
  q = queries.shape[0]
  n = reference.shape[0]
  split = lambda a: a.reshape((n // chunk, chunk) + a.shape[1:])

  def step(carry, xs):
    best_score, best_idx = carry
    ref, h, v, idx = xs
    # Larger score = nearer: q.r - ||r||^2 / 2 = (||q||^2 - ||q - r||^2) / 2.
    score = jnp.matmul(queries, ref.T, precision=_HIGHEST) - h[None, :]
    score = jnp.where(v[None, :], score, -jnp.inf)
    all_score = jnp.concatenate([best_score, score], axis=1)
    all_idx = jnp.concatenate([best_idx, jnp.broadcast_to(idx[None, :], score.shape)], axis=1)
    # lax.top_k puts the lower position first among equal scores: earlier rows win ties.
    top, pos = lax.top_k(all_score, k)
    return (top, jnp.take_along_axis(all_idx, pos, axis=1)), None

  # Placeholders until k rows are seen: -inf, at the shard's first row (a row it holds).
  init = (jnp.full((q, k), -jnp.inf, queries.dtype), jnp.full((q, k), ids[0], jnp.int32))
  (best_score, best_idx), _ = lax.scan(step, init, (split(reference), split(half_sq),
                                                    split(valid), split(ids)))
  diff = queries[:, None, :] - reference[best_idx - ids[0]]  # (Q, k, D): k is small
  return best_score, best_idx, jnp.sum(diff * diff, axis=-1)


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _knn(queries, reference, half_sq, valid, ids, *, k, chunk):
  """Top-k nearest reference rows (indices, squared distances) for every query row."""
  _, best_idx, sq = _knn_shard(queries, reference, half_sq, valid, ids, k=k, chunk=chunk)
  return best_idx, sq


@functools.lru_cache(maxsize=64)
def _sharded_knn(mesh: Mesh, axis: str, k: int, chunk: int):
  """_knn over a reference split over the mesh's `axis` (queries replicated): each device's top-k
  candidates with their exact distances, gathered in device order (= row order) and merged by
  one top-k, which keeps the lowest index first among equal scores."""

  def merged(queries, reference, half_sq, valid, ids):
    score, idx, sq = _knn_shard(queries, reference, half_sq, valid, ids, k=k, chunk=chunk)
    score, idx, sq = (lax.all_gather(a, axis, axis=1, tiled=True) for a in (score, idx, sq))
    _, pos = lax.top_k(score, k)
    return jnp.take_along_axis(idx, pos, axis=1), jnp.take_along_axis(sq, pos, axis=1)

  return jax.jit(jax.shard_map(merged, mesh=mesh, in_specs=(P(),) + (P(axis),) * 4,
                               out_specs=(P(), P()), check_vma=False))


def _reference_on_mesh(reference, chunk_size: int, mesh: Optional[Mesh], axis: str):
  """(arrays {reference, half_sq, valid, ids}, centre (D,) float64, chunk): the reference
  source as float32, centred at its float64 mean (summed block by block over this process's rows
  and added over processes: `sharding.streamed_sum`, `sharding.sum_counted`; one process:
  bit-identical to the mean of the whole), padded to whole chunks per shard and laid out over the
  mesh's `axis` by `sharding.rows_on_mesh` (each shard built from its rows on the process that
  holds it). Without a mesh: one device, as before."""
  source, n, item_shape = training_source(reference, "reference")
  d = int(np.prod(item_shape))
  chunk, total = padded_rows(n, chunk_size, mesh, axis)
  block = host_block(chunk, d)
  as_float32 = lambda raw: np.asarray(raw, np.float32).reshape(len(raw), d)
  rows = counted_rows(np.arange(n), n, total, mesh, axis)
  centre = sum_counted(streamed_sum(source, rows, d, as_float32, block, "reference"), mesh) / n

  def build(lo, hi):
    ref = host_zeros((hi - lo, d), np.float32)
    half = host_zeros((hi - lo,), np.float32)
    for piece in blocks(np.arange(lo, min(hi, n)), block):
      centred = (as_float32(read_rows(source, piece, "reference")) - centre).astype(np.float32)
      at = slice(piece[0] - lo, piece[-1] + 1 - lo)
      ref[at] = centred
      half[at] = half_squared_norms(centred.astype(np.float64), total).astype(np.float32)
    return {"reference": ref, "half_sq": half, "valid": np.arange(lo, hi) < n,
            "ids": np.arange(lo, hi, dtype=np.int32)}

  return rows_on_mesh(total, build, mesh, axis), centre, chunk


def nearest_neighbours(queries, reference, k: int = 1, *, chunk_size: int = 1024,
                       query_batch: int = 1024, mesh: Optional[Mesh] = None,
                       axis: str = DATA_AXIS) -> Tuple[np.ndarray, np.ndarray]:
  """The k nearest reference rows of every query row (Euclidean).

  Args:
    queries: (Q, ...) points (flattened to (Q, D)), held whole on every process.
    reference: (N, ...) points with the same item size: a numpy array or a source (len(), .shape,
      indexing by a slice or an int array returning numpy rows, e.g. `sharding.LazyRows`), read
      block by block; with a mesh each process reads only the rows its devices hold.
    k: neighbours per query, 1 <= k <= N.
    chunk_size: reference rows per streaming step; query_batch: queries per compiled call (both
      integers >= 1).
    mesh: optional mesh (one or several processes): the reference is split over its `axis` and
      the per-device top-k merged exactly; every process gets the whole result.

  Returns:
    (indices (Q, k) int, distances (Q, k) float32), nearest first (the lowest index first among
    equal distances); distances are ||q - r||.

  Raises:
    ValueError: mismatched item sizes, or k / chunk_size / query_batch not an integer in range.
  """
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  check_number(query_batch, "query_batch", low=1, integer=True)
  qs = np.asarray(queries, np.float32)
  qs = qs.reshape(qs.shape[0], -1)
  if isinstance(reference, (np.ndarray, list, tuple)) and np.ndim(reference) == 1:
    reference = np.asarray(reference)[:, None]  # N scalars: N points of one feature
  source, n, item_shape = training_source(reference, "reference")
  if int(np.prod(item_shape)) != qs.shape[1]:
    raise ValueError(f"queries have {qs.shape[1]} features, the reference {int(np.prod(item_shape))}")
  check_number(k, "k", low=1, integer=True)
  if k > n:
    raise ValueError(f"k={k} must be in [1, {n}] (the reference size)")
  arrays, centre, chunk = _reference_on_mesh(source, chunk_size, mesh, axis)
  train = tuple(arrays[name] for name in ("reference", "half_sq", "valid", "ids"))
  if mesh is None:
    search = functools.partial(_knn, k=k, chunk=chunk)
    put = jnp.asarray
  else:
    search = _sharded_knn(mesh, axis, k, chunk)
    put = functools.partial(jax.device_put, device=replicated(mesh))
  num_q = qs.shape[0]
  batch = max(1, min(query_batch, num_q))
  idx_out, dist_out = [], []
  for start in range(0, num_q, batch):
    rows = np.minimum(np.arange(start, start + batch), num_q - 1)
    idx, sq = search(put((qs[rows] - centre).astype(np.float32)), *train)
    keep = min(batch, num_q - start)
    idx_out.append(fetch(idx)[:keep])
    dist_out.append(np.sqrt(np.maximum(fetch(sq)[:keep], 0.0)))
  if not idx_out:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  return np.concatenate(idx_out), np.concatenate(dist_out)
