"""The exact empirical optimal denoiser and the toy model's error-prone denoiser y_delta.

For a training set {y_i}, the minimizer of the denoising loss is the posterior mean

    y*(x; sigma) = sum_i w_i y_i,   w = softmax_i(-||x - y_i||^2 / (2 sigma^2)),

the class-conditional form summing over the query's class only (paper.md section 3). This module is
the single home of that softmax over the training set.

How it is computed, and why:
  * Exact: every training point contributes; no top-k, no random subset.
  * Streaming: the training set is visited in chunks under `lax.scan` with a running log-sum-exp
    (max, sum of exponentials, weighted sum), so memory is O(queries x chunk), never O(queries x N).
  * Distances as matrix products, without the cancellation of the expanded form: the softmax is
    invariant to per-query constants, so ||x||^2 is dropped and the logit is
    (x.y_i - ||y_i||^2 / 2) / sigma^2, computed on data centred at the training mean (which shrinks
    every magnitude that rounding errors scale with) and with full-precision matmuls (TF32 or bf16
    passes, the GPU/TPU defaults, would otherwise lose the logits at small sigma).
  * The weighted sum uses the uncentred training points, so sigma -> 0 returns the nearest training
    point bit for bit.
  * Sharded: given a mesh, the training set is split over the data axis; each device streams its
    shard and the partial statistics are combined exactly (pmax of the maxima, rescaled psums).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax.denoisers import Denoiser, per_example
from diffgen_jax.sharding import DATA_AXIS

_NO_LABEL = -1  # label of padding rows: never equal to a query's label.
_ANY_LABEL = -2  # query label meaning "sum over every training point".
_HIGHEST = lax.Precision.HIGHEST
# The per-training-point arrays, in the order `statistics` takes them.
_TRAIN_ARRAYS = ("train_centred", "half_sq_norms", "train", "train_labels")


def _streaming_posterior_mean(x_centred, inv_two_var, query_labels, train_centred, half_sq_norms,
                              train, train_labels, chunk_size, axis_name=None):
  """Partial statistics (max logit, sum of exp, weighted sum) over one training shard.

  x_centred: (B, D) queries minus the centre; inv_two_var: (B,) = 1 / sigma^2 (the 1/2 lives in
  half_sq_norms); query_labels: (B,), _ANY_LABEL for an unconditional query. Training arrays: (N, D) centred and uncentred points,
  (N,) half squared norms, (N,) labels (-1 on padding). N is a multiple of chunk_size.
  axis_name: inside shard_map, the mesh axis the training shard varies over (the running statistics
  then vary over it too, and the scan carry must say so from the start).
  """
  n, d = train.shape
  b = x_centred.shape[0]
  chunks = lambda a: a.reshape((n // chunk_size, chunk_size) + a.shape[1:])

  def step(carry, chunk):
    run_max, run_sum, run_acc = carry
    yc, half_sq, y, labels = chunk
    dots = jnp.matmul(x_centred, yc.T, precision=_HIGHEST)  # (B, C)
    logits = (dots - half_sq[None, :]) * inv_two_var[:, None]
    valid = (labels[None, :] != _NO_LABEL) & (
        (query_labels[:, None] == _ANY_LABEL) | (labels[None, :] == query_labels[:, None]))
    logits = jnp.where(valid, logits, -jnp.inf)
    new_max = jnp.maximum(run_max, jnp.max(logits, axis=1))
    # Until a query has seen one valid point its max is -inf; shift by 0 then (everything is 0).
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    weights = jnp.exp(logits - shift[:, None])
    rescale = jnp.exp(run_max - shift)
    run_sum = run_sum * rescale + jnp.sum(weights, axis=1)
    run_acc = run_acc * rescale[:, None] + jnp.matmul(weights, y, precision=_HIGHEST)
    return (new_max, run_sum, run_acc), None

  dtype = x_centred.dtype
  init = (jnp.full((b,), -jnp.inf, dtype), jnp.zeros((b,), dtype), jnp.zeros((b, d), dtype))
  if axis_name is not None:
    init = lax.pcast(init, axis_name, to="varying")
  xs = (chunks(train_centred), chunks(half_sq_norms), chunks(train), chunks(train_labels))
  (run_max, run_sum, run_acc), _ = lax.scan(step, init, xs)
  return run_max, run_sum, run_acc


def _combine_shards(run_max, run_sum, run_acc, axis_name):
  """Exact log-sum-exp merge of per-device partial statistics."""
  global_max = lax.pmax(run_max, axis_name)
  shift = jnp.where(jnp.isfinite(global_max), global_max, 0.0)
  rescale = jnp.exp(run_max - shift)
  total = lax.psum(run_sum * rescale, axis_name)
  acc = lax.psum(run_acc * rescale[:, None], axis_name)
  return total, acc


def empirical_optimal_denoiser(train_images, train_labels=None, *, chunk_size: int = 2048,
                               dtype=jnp.float32, mesh: Optional[Mesh] = None,
                               axis: str = DATA_AXIS) -> Denoiser:
  """Returns the exact posterior-mean denoiser of a finite training set.

  Args:
    train_images: (N, ...) array of training points (images of any shape, or vectors).
    train_labels: optional (N,) integer labels. When given, `denoise(x, sigma, labels)` sums over the
      training points whose label equals each query's label (labels=None then uses all points).
    chunk_size: training points per streaming step; memory is O(queries x chunk_size).
    dtype: jnp.float32 (default) or jnp.float64 (needs `jax.config.update("jax_enable_x64", True)`).
    mesh: optional mesh; the training set is then sharded over its `axis` and the per-device
      statistics are combined exactly. Queries are replicated.

  Returns:
    denoise(x, sigma, labels=None) -> x_hat with x of shape (B, ...) matching the training points,
    sigma a scalar or (B,) vector of noise levels > 0. Pure and jittable; vmap over sigma works.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.float64):
    raise ValueError(f"dtype must be float32 or float64, got {dtype}")
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError('dtype=float64 needs jax.config.update("jax_enable_x64", True) first')
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

  host = np.asarray(train_images)
  if host.ndim < 2 or host.shape[0] == 0:
    raise ValueError(f"train_images must be a non-empty (N, ...) array, got shape {host.shape}")
  if not np.all(np.isfinite(host)):
    raise ValueError("train_images contains NaN or Inf")
  item_shape = host.shape[1:]
  n = host.shape[0]
  flat = host.reshape(n, -1).astype(np.float64)
  centre = flat.mean(axis=0)

  if train_labels is None:
    labels_host = np.zeros((n,), np.int32)
    classes = None
  else:
    labels_host = np.asarray(train_labels)
    if labels_host.shape != (n,) or not np.issubdtype(labels_host.dtype, np.integer):
      raise ValueError(f"train_labels must be ({n},) integers, got {labels_host.shape} "
                       f"{labels_host.dtype}")
    if np.any(labels_host < 0):
      raise ValueError("train_labels must be >= 0")
    labels_host = labels_host.astype(np.int32)
    classes = frozenset(np.unique(labels_host).tolist())

  shards = 1 if mesh is None else mesh.shape[axis]
  chunk_size = min(chunk_size, -(-n // shards))
  padded = -(-n // (chunk_size * shards)) * chunk_size * shards
  pad = padded - n

  def padded_array(a, fill):
    return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a

  centred = flat - centre
  arrays = dict(
      train_centred=padded_array(centred, 0.0).astype(dtype),
      half_sq_norms=padded_array(0.5 * np.einsum("nd,nd->n", centred, centred), 0.0).astype(dtype),
      train=padded_array(flat, 0.0).astype(dtype),
      train_labels=padded_array(labels_host, _NO_LABEL),
  )
  if mesh is None:
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
  else:
    arrays = {k: jax.device_put(v, NamedSharding(mesh, P(axis))) for k, v in arrays.items()}
  centre = jnp.asarray(centre, dtype)

  def statistics(x_centred, inv_two_var, query_labels, train_centred, half_sq_norms, train,
                 train_labels):
    stats = _streaming_posterior_mean(x_centred, inv_two_var, query_labels, train_centred,
                                      half_sq_norms, train, train_labels, chunk_size,
                                      axis_name=None if mesh is None else axis)
    if mesh is None:
      return stats[1], stats[2]
    return _combine_shards(*stats, axis_name=axis)

  if mesh is not None:
    shard_spec = P(axis)
    statistics = jax.shard_map(
        statistics, mesh=mesh,
        in_specs=(P(), P(), P(), shard_spec, shard_spec, shard_spec, shard_spec),
        out_specs=(P(), P()))
  statistics = jax.jit(statistics)

  # A pytree (jax.tree_util.Partial): the training arrays are leaves, so passing the denoiser
  # through jit (as samplers.sample does) feeds them as arguments instead of baking them into the
  # compiled program as constants.
  static = functools.partial(_denoise, statistics, item_shape, classes, dtype)
  return jax.tree_util.Partial(static, dict(arrays, centre=centre))


def _denoise(statistics, item_shape, classes, dtype, arrays, x, sigma, labels=None):
  x = jnp.asarray(x)
  if x.shape[1:] != item_shape:
    raise ValueError(f"x has item shape {x.shape[1:]} but the training points have {item_shape}")
  _check_sigma(sigma)
  b = x.shape[0]
  if classes is not None and labels is not None:
    query_labels = jnp.asarray(labels, jnp.int32).reshape(b)
    _check_labels(query_labels, classes)
  else:
    query_labels = jnp.full((b,), _ANY_LABEL, jnp.int32)
  flat_x = x.reshape(b, -1).astype(dtype)
  sigma_b = jnp.broadcast_to(jnp.asarray(sigma, dtype), (b,))
  # Positional: shard_map'd functions take no keyword arguments.
  total, acc = statistics(flat_x - arrays["centre"], 1.0 / sigma_b ** 2, query_labels,
                          *(arrays[k] for k in _TRAIN_ARRAYS))
  return (acc / total[:, None]).reshape(x.shape).astype(x.dtype)


def _is_concrete(a) -> bool:
  return not isinstance(a, jax.core.Tracer)


def _check_sigma(sigma) -> None:
  if _is_concrete(sigma):
    s = np.asarray(sigma)
    if not np.all(s > 0):
      raise ValueError(f"sigma must be > 0, got {s.min()}")


def _check_labels(labels, classes) -> None:
  if _is_concrete(labels):
    missing = sorted(set(np.asarray(labels).tolist()) - classes)
    if missing:
      raise ValueError(f"labels {missing} have no training points; known classes: {sorted(classes)}")


def error_prone_denoiser(optimal: Denoiser, delta: float) -> Denoiser:
  """The toy model's y_delta: the posterior mean when every training point is a Gaussian of std delta.

  y_delta(x; sigma) = (delta^2 x + sigma^2 y*(x; s)) / (sigma^2 + delta^2), s = sqrt(sigma^2 + delta^2)
  (paper.md section 4). delta = 0 gives back the optimal denoiser.
  """
  if delta < 0:
    raise ValueError(f"delta must be >= 0, got {delta}")
  if delta == 0:
    return optimal
  return jax.tree_util.Partial(_error_prone, optimal, float(delta))


def _error_prone(optimal, delta, x, sigma, labels=None):
  var = jnp.asarray(sigma, x.dtype) ** 2
  var_b = per_example(var, x)
  return (delta ** 2 * x + var_b * optimal(x, jnp.sqrt(var + delta ** 2), labels)) / (var_b + delta ** 2)


class PosteriorStatistics(NamedTuple):
  """Statistics of the optimal denoiser's posterior weights w over the training set, per query."""
  entropy: jax.Array  # (B,) H(w) = -sum_i w_i log w_i, in nats
  effective_number: jax.Array  # (B,) exp(H): 1 when w is one-hot, N when uniform over N points
  participation: jax.Array  # (B,) 1 / sum_i w_i^2 (inverse participation ratio), also in [1, N]
  max_weight: jax.Array  # (B,) max_i w_i


def posterior_statistics(train_images, train_labels=None, *, chunk_size: int = 2048):
  """Returns stats(x, sigma, labels=None) -> PosteriorStatistics of the weights of y*(x; sigma).

  The weights are those of `empirical_optimal_denoiser` (the same logits, class-conditional when
  labels are given), streamed over chunks of the training set with a running maximum m and the
  sums S0 = sum e^(l-m), S1 = sum e^(l-m) (l-m), S2 = sum e^(2(l-m)), each rescaled exactly when
  m grows. Then H = log S0 - S1 / S0 (no difference of large logits), 1/sum w^2 = S0^2 / S2 and
  max w = max e^(l-m) / S0. float32, unsharded (x: (B, ...) queries, sigma scalar or (B,)).
  """
  host = np.asarray(train_images)
  if host.ndim < 2 or host.shape[0] == 0:
    raise ValueError(f"train_images must be a non-empty (N, ...) array, got shape {host.shape}")
  n = host.shape[0]
  item_shape = host.shape[1:]
  flat = host.reshape(n, -1).astype(np.float64)
  centre = flat.mean(axis=0)
  centred = flat - centre
  if train_labels is None:
    labels_host, classes = np.zeros((n,), np.int32), None
  else:
    labels_host = np.asarray(train_labels).astype(np.int32)
    if labels_host.shape != (n,) or np.any(labels_host < 0):
      raise ValueError(f"train_labels must be ({n},) non-negative integers")
    classes = frozenset(np.unique(labels_host).tolist())
  chunk = min(chunk_size, n)
  pad = -n % chunk
  pad_rows = lambda a, fill: np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
  train_c = jnp.asarray(pad_rows(centred, 0.0), jnp.float32)
  half_sq = jnp.asarray(pad_rows(0.5 * np.einsum("nd,nd->n", centred, centred), 0.0), jnp.float32)
  labels_dev = jnp.asarray(pad_rows(labels_host, _NO_LABEL))
  centre = jnp.asarray(centre, jnp.float32)
  chunks = lambda a: a.reshape((-1, chunk) + a.shape[1:])

  @jax.jit
  def statistics(x_centred, inv_var, query_labels):
    b = x_centred.shape[0]

    def step(carry, xs):
      run_max, s0, s1, s2, top = carry
      yc, h, lab = xs
      logits = (jnp.matmul(x_centred, yc.T, precision=_HIGHEST) - h[None, :]) * inv_var[:, None]
      valid = (lab[None, :] != _NO_LABEL) & (
          (query_labels[:, None] == _ANY_LABEL) | (lab[None, :] == query_labels[:, None]))
      new_max = jnp.maximum(run_max, jnp.max(jnp.where(valid, logits, -jnp.inf), axis=1))
      shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
      u = jnp.where(valid, logits - shift[:, None], 0.0)
      e = jnp.where(valid, jnp.exp(u), 0.0)
      seen = s0 > 0
      delta = jnp.where(seen, run_max - shift, 0.0)
      r = jnp.where(seen, jnp.exp(delta), 0.0)
      s1 = r * (s1 + delta * s0) + jnp.sum(e * u, axis=1)
      s0 = r * s0 + jnp.sum(e, axis=1)
      s2 = r * r * s2 + jnp.sum(e * e, axis=1)
      top = jnp.maximum(r * top, jnp.max(e, axis=1))
      return (new_max, s0, s1, s2, top), None

    zeros = jnp.zeros((b,), jnp.float32)
    init = (jnp.full((b,), -jnp.inf, jnp.float32), zeros, zeros, zeros, zeros)
    (_, s0, s1, s2, top), _ = lax.scan(step, init, (chunks(train_c), chunks(half_sq),
                                               chunks(labels_dev)))
    entropy = jnp.maximum(jnp.log(s0) - s1 / s0, 0.0)
    return PosteriorStatistics(entropy, jnp.exp(entropy), s0 * s0 / s2, top / s0)

  def stats(x, sigma, labels=None) -> PosteriorStatistics:
    x = jnp.asarray(x)
    if x.shape[1:] != item_shape:
      raise ValueError(f"x has item shape {x.shape[1:]} but the training points have {item_shape}")
    _check_sigma(sigma)
    b = x.shape[0]
    if classes is not None and labels is not None:
      query_labels = jnp.asarray(labels, jnp.int32).reshape(b)
      _check_labels(query_labels, classes)
    else:
      query_labels = jnp.full((b,), _ANY_LABEL, jnp.int32)
    sigma_b = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b,))
    return statistics(x.reshape(b, -1).astype(jnp.float32) - centre, 1.0 / sigma_b ** 2,
                      query_labels)

  return stats
