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
  * Every finite sigma > 0, in float32 and float64: the running maximum is kept on the unscaled
    score s_i = x.y_i - ||y_i||^2 / 2 and only differences s_i - max <= 0 are divided by sigma^2
    (as ((s_i - max) / sigma) / sigma), so 1/sigma^2 never overflows: below sigma ~ 1e-19 in
    float32 the weights simply become one-hot (the sigma -> 0 limit) instead of inf - inf = NaN.
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

from diffgen_jax.checks import check_float_dtype, check_number
from diffgen_jax.denoisers import (Denoiser, check_label_domain, check_query, per_example,
                                   training_labels)
# The analytic ladder's patch machines and Gaussian denoiser live beside this module (they import
# nothing from it); re-exported here so `optimal.local_denoiser` etc. work.
from diffgen_jax.optimal_patches import (  # noqa: F401  pylint: disable=unused-import
    equivariant_local_denoiser, gaussian_denoiser, local_denoiser, patch_composite_denoiser)
from diffgen_jax.sharding import DATA_AXIS

_NO_LABEL = -1  # label of padding rows: never equal to a query's label.
_ANY_LABEL = -2  # query label meaning "sum over every training point".
_HIGHEST = lax.Precision.HIGHEST
# The per-training-point arrays, in the order the streaming functions take them.
_TRAIN_ARRAYS = ("train_centred", "half_sq_norms", "train", "train_labels")


class _TrainingSet(NamedTuple):
  """A training set laid out for streaming: centred, padded to whole chunks (per shard)."""
  arrays: dict  # _TRAIN_ARRAYS (numpy) and "centre"
  item_shape: tuple
  classes: Optional[frozenset]  # None: unconditional
  chunk_size: int


# NHWC training images beyond this magnitude are on another scale (data.convention.SAMPLE_LIMIT).
_IMAGE_LIMIT = 10.0


def _prepare(train_images, train_labels, chunk_size: int, shards: int, dtype) -> _TrainingSet:
  chunk_size = check_number(chunk_size, "chunk_size", low=1, integer=True)
  host = np.asarray(train_images)
  if host.ndim < 2 or host.shape[0] == 0:
    raise ValueError(f"train_images must be a non-empty (N, ...) array, got shape {host.shape}")
  if not np.all(np.isfinite(host)):
    raise ValueError("train_images contains NaN or Inf")
  # The image convention (data.convention, not imported here: the math layer stands alone):
  # integer pixels and the 0..255 float scale would give a posterior mean on the wrong scale.
  if not np.issubdtype(host.dtype, np.floating):
    raise ValueError(f"train_images must be floating point (images in [-1, 1]: uint8 pixels p map "
                     f"to p / 127.5 - 1), got dtype {host.dtype}")
  if host.ndim == 4 and np.abs(host).max() > _IMAGE_LIMIT:
    raise ValueError(f"train_images of shape {host.shape} are NHWC images, which must lie in "
                     f"[-1, 1]; got values in [{host.min():g}, {host.max():g}] (0..255 pixels?)")
  n = host.shape[0]
  flat = host.reshape(n, -1).astype(np.float64)
  centre = flat.mean(axis=0)
  labels, classes = training_labels(train_labels, n)
  chunk_size = min(chunk_size, -(-n // shards))
  pad = -n % (chunk_size * shards)
  padded = lambda a, fill: np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
  centred = flat - centre
  arrays = dict(
      train_centred=padded(centred, 0.0).astype(dtype),
      half_sq_norms=padded(0.5 * np.einsum("nd,nd->n", centred, centred), 0.0).astype(dtype),
      train=padded(flat, 0.0).astype(dtype),
      train_labels=padded(labels, _NO_LABEL),
      centre=centre.astype(dtype))
  return _TrainingSet(arrays, host.shape[1:], classes, chunk_size)


def _query_inputs(x, sigma, labels, item_shape, classes, dtype):
  """Flattened queries, per-query sigma and per-query labels (_ANY_LABEL when unconditional)."""
  x = jnp.asarray(x)
  if x.shape[1:] != item_shape:
    raise ValueError(f"x has item shape {x.shape[1:]} but the training points have {item_shape}")
  # y* is defined for every sigma > 0 (the nearest point as sigma -> 0); labels only matter
  # (and are only checked) for a class-conditional y*.
  b = check_query(x, sigma, labels if classes is not None else None)
  if classes is not None and labels is not None:
    query_labels = jnp.asarray(labels, jnp.int32).reshape(b)
    _check_labels(query_labels, classes)
  else:
    query_labels = jnp.full((b,), _ANY_LABEL, jnp.int32)
  sigma_b = jnp.broadcast_to(jnp.asarray(sigma, dtype), (b,))
  return x.reshape(b, -1).astype(dtype), sigma_b, query_labels


def _scores(x_centred, query_labels, train_centred, half_sq_norms, train_labels):
  """sigma^2 times the logit -||x - y_i||^2 / (2 sigma^2), up to a per-query constant; -inf
  outside the query's class.

  The one place the softmax's scores are computed: x.y_i - ||y_i||^2 / 2 on centred data with
  full-precision matmuls (see the module docstring); `_scaled` divides differences of scores by
  sigma^2. Shapes (B, D) x (C, D) -> (B, C).
  """
  dots = jnp.matmul(x_centred, train_centred.T, precision=_HIGHEST)
  scores = dots - half_sq_norms[None, :]
  valid = (train_labels[None, :] != _NO_LABEL) & (
      (query_labels[:, None] == _ANY_LABEL) | (train_labels[None, :] == query_labels[:, None]))
  return jnp.where(valid, scores, -jnp.inf)


def _scaled(differences, inv_sigma):
  """(score - max) / sigma^2 without forming 1/sigma^2 (which overflows float32 below ~1e-19).

  differences <= 0 (or -inf), inv_sigma (B,) or broadcastable. A difference of exactly 0 is the
  maximum itself: 0 also when 1/sigma is inf (sigma in float32's subnormal range), not 0 * inf.
  """
  inv = inv_sigma.reshape(inv_sigma.shape + (1,) * (differences.ndim - inv_sigma.ndim))
  return jnp.where(differences == 0, 0.0, differences * inv * inv)


def _chunked(a, chunk_size):
  return a.reshape((a.shape[0] // chunk_size, chunk_size) + a.shape[1:])


def _streaming_posterior_mean(x_centred, inv_sigma, query_labels, train_centred, half_sq_norms,
                              train, train_labels, chunk_size, axis_name=None):
  """Partial statistics (max score, sum of exp, weighted sum) over one training shard.

  x_centred: (B, D) queries minus the centre; inv_sigma: (B,) = 1 / sigma (the 1/2 lives in
  half_sq_norms); query_labels: (B,), _ANY_LABEL for an unconditional query. Training arrays:
  (N, D) centred and uncentred points, (N,) half squared norms, (N,) labels (-1 on padding); N is
  a multiple of chunk_size. axis_name: inside shard_map, the mesh axis the training shard varies
  over (the running statistics then vary over it too, and the scan carry must say so from the start).
  """
  b, d = x_centred.shape

  def step(carry, chunk):
    run_max, run_sum, run_acc = carry
    yc, half_sq, y, labels = chunk
    scores = _scores(x_centred, query_labels, yc, half_sq, labels)
    new_max = jnp.maximum(run_max, jnp.max(scores, axis=1))
    # Until a query has seen one valid point its max is -inf; shift by 0 then (everything is 0).
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    weights = jnp.exp(_scaled(scores - shift[:, None], inv_sigma))
    rescale = jnp.exp(_scaled(run_max - shift, inv_sigma))
    run_sum = run_sum * rescale + jnp.sum(weights, axis=1)
    run_acc = run_acc * rescale[:, None] + jnp.matmul(weights, y, precision=_HIGHEST)
    return (new_max, run_sum, run_acc), None

  dtype = x_centred.dtype
  init = (jnp.full((b,), -jnp.inf, dtype), jnp.zeros((b,), dtype), jnp.zeros((b, d), dtype))
  if axis_name is not None:
    init = lax.pcast(init, axis_name, to="varying")
  xs = tuple(_chunked(a, chunk_size) for a in (train_centred, half_sq_norms, train, train_labels))
  (run_max, run_sum, run_acc), _ = lax.scan(step, init, xs)
  return run_max, run_sum, run_acc


def _combine_shards(run_max, run_sum, run_acc, inv_sigma, axis_name):
  """Exact log-sum-exp merge of per-device partial statistics."""
  global_max = lax.pmax(run_max, axis_name)
  shift = jnp.where(jnp.isfinite(global_max), global_max, 0.0)
  rescale = jnp.exp(_scaled(run_max - shift, inv_sigma))
  total = lax.psum(run_sum * rescale, axis_name)
  acc = lax.psum(run_acc * rescale[:, None], axis_name)
  return total, acc


# Default chunk per backend: on CPU 2048 points (the measured optimum on 2 cores, unchanged); on an
# accelerator the whole shard in one chunk up to 65,536 points (H200, N = 50,000, D = 3,072, 2,048
# queries: 1.00x torch.cdist+softmax+matmul in one chunk vs 0.91x at 2,048; benchmarks/results/gpu_h200).
_CPU_CHUNK, _ACCELERATOR_CHUNK = 2048, 65536


def default_chunk_size(backend: Optional[str] = None) -> int:
  """Training points per streaming step when chunk_size=None: 2048 on CPU, 65,536 on GPU/TPU."""
  backend = backend or jax.default_backend()
  return _CPU_CHUNK if backend == "cpu" else _ACCELERATOR_CHUNK


def empirical_optimal_denoiser(train_images, train_labels=None, *, chunk_size: Optional[int] = None,
                               dtype=jnp.float32, mesh: Optional[Mesh] = None,
                               axis: str = DATA_AXIS) -> Denoiser:
  """Returns the exact posterior-mean denoiser of a finite training set.

  Args:
    train_images: (N, ...) array of training points (images of any shape, or vectors).
    train_labels: optional (N,) integer labels. When given, `denoise(x, sigma, labels)` sums over the
      training points whose label equals each query's label (labels=None then uses all points).
    chunk_size: training points per streaming step; memory is O(queries x chunk_size). None: the
      backend's default (`default_chunk_size`: 2048 on CPU, 65,536 on GPU/TPU, capped at N).
    dtype: jnp.float32 (default) or jnp.float64 (needs `jax.config.update("jax_enable_x64", True)`).
    mesh: optional mesh; the training set is then sharded over its `axis` and the per-device
      statistics are combined exactly. Queries are replicated.

  Returns:
    denoise(x, sigma, labels=None) -> x_hat with x of shape (B, ...) matching the training points,
    sigma a scalar or (B,) vector of noise levels > 0. Pure and jittable; vmap over sigma works.
    It is a pytree (jax.tree_util.Partial) whose leaves are the training arrays, so passing it
    through jit (as samplers.sample does) feeds them as arguments instead of baking them into
    the compiled program as constants.
  """
  dtype = check_float_dtype(dtype)
  shards = 1 if mesh is None else mesh.shape[axis]
  if chunk_size is None:
    chunk_size = default_chunk_size(mesh.devices.flat[0].platform if mesh is not None else None)
  data = _prepare(train_images, train_labels, chunk_size, shards, dtype)
  arrays = dict(data.arrays)
  centre = jnp.asarray(arrays.pop("centre"))
  if mesh is None:
    arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
  else:
    arrays = {k: jax.device_put(v, NamedSharding(mesh, P(axis))) for k, v in arrays.items()}

  def statistics(x_centred, inv_sigma, query_labels, *train_arrays):
    stats = _streaming_posterior_mean(x_centred, inv_sigma, query_labels, *train_arrays,
                                      data.chunk_size, axis_name=None if mesh is None else axis)
    if mesh is None:
      return stats[1], stats[2]
    return _combine_shards(*stats, inv_sigma, axis_name=axis)

  if mesh is not None:
    statistics = jax.shard_map(statistics, mesh=mesh,
                               in_specs=(P(), P(), P()) + (P(axis),) * len(_TRAIN_ARRAYS),
                               out_specs=(P(), P()))
  static = functools.partial(_denoise, jax.jit(statistics), data.item_shape, data.classes, dtype)
  denoiser = jax.tree_util.Partial(static, dict(arrays, centre=centre))
  # Read by denoisers.check_labels, which samplers and evaluations call while labels are concrete.
  denoiser.label_domain = data.classes
  return denoiser


def _denoise(statistics, item_shape, classes, dtype, arrays, x, sigma, labels=None):
  flat_x, sigma_b, query_labels = _query_inputs(x, sigma, labels, item_shape, classes, dtype)
  # Positional: shard_map'd functions take no keyword arguments.
  total, acc = statistics(flat_x - arrays["centre"], 1.0 / sigma_b, query_labels,
                          *(arrays[k] for k in _TRAIN_ARRAYS))
  return (acc / total[:, None]).reshape(jnp.shape(x)).astype(jnp.asarray(x).dtype)


def _check_labels(labels, classes) -> None:
  if not isinstance(labels, jax.core.Tracer):
    check_label_domain(classes, labels)


def error_prone_denoiser(optimal: Denoiser, delta: float) -> Denoiser:
  """The toy model's y_delta: the posterior mean when every training point is a Gaussian of std delta.

  y_delta(x; sigma) = (delta^2 x + sigma^2 y*(x; s)) / (sigma^2 + delta^2), s = sqrt(sigma^2 + delta^2)
  (paper.md section 4). delta = 0 gives back the optimal denoiser. Raises ValueError unless delta
  is a finite number >= 0.
  """
  check_number(delta, "delta", low=0.0)
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

  The weights are those of `empirical_optimal_denoiser` (the same `_scores`, class-conditional
  when labels are given), streamed over chunks of the training set with a running maximum m and
  the sums S0 = sum e^(l-m), S1 = sum e^(l-m) (l-m), S2 = sum e^(2(l-m)), each rescaled exactly
  when m grows. Then H = log S0 - S1 / S0 (no difference of large logits), 1/sum w^2 = S0^2 / S2
  and max w = 1 / S0. float32, unsharded (x: (B, ...) queries, sigma scalar or (B,)).
  """
  data = _prepare(train_images, train_labels, chunk_size, 1, jnp.float32)
  arrays = {k: jnp.asarray(v) for k, v in data.arrays.items()}
  chunk = data.chunk_size

  @jax.jit
  def statistics(x_centred, inv_sigma, query_labels, train_centred, half_sq_norms, train_labels):
    b = x_centred.shape[0]

    def step(carry, xs):
      run_max, s0, s1, s2 = carry
      scores = _scores(x_centred, query_labels, *xs)
      new_max = jnp.maximum(run_max, jnp.max(scores, axis=1))
      shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
      u = _scaled(scores - shift[:, None], inv_sigma)
      e = jnp.exp(u)
      # e u -> 0 as u -> -inf; -inf (invalid points, or overflow at tiny sigma) must not give 0 * inf.
      u = jnp.where(e > 0, u, 0.0)
      seen = s0 > 0
      delta = jnp.where(seen, _scaled(run_max - shift, inv_sigma), 0.0)
      r = jnp.exp(delta)
      delta = jnp.where(r > 0, delta, 0.0)  # r = 0: the old sums vanish, and so does their shift
      r = jnp.where(seen, r, 0.0)
      s1 = r * (s1 + delta * s0) + jnp.sum(e * u, axis=1)
      s0 = r * s0 + jnp.sum(e, axis=1)
      s2 = r * r * s2 + jnp.sum(e * e, axis=1)
      return (new_max, s0, s1, s2), None

    zeros = jnp.zeros((b,), jnp.float32)
    init = (jnp.full((b,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    xs = tuple(_chunked(a, chunk) for a in (train_centred, half_sq_norms, train_labels))
    (_, s0, s1, s2), _ = lax.scan(step, init, xs)
    entropy = jnp.maximum(jnp.log(s0) - s1 / s0, 0.0)
    return PosteriorStatistics(entropy, jnp.exp(entropy), s0 * s0 / s2, 1.0 / s0)

  def stats(x, sigma, labels=None) -> PosteriorStatistics:
    flat_x, sigma_b, query_labels = _query_inputs(x, sigma, labels, data.item_shape, data.classes,
                                                  jnp.float32)
    return statistics(flat_x - arrays["centre"], 1.0 / sigma_b, query_labels,
                      arrays["train_centred"], arrays["half_sq_norms"], arrays["train_labels"])

  return stats
