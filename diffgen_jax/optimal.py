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
  * From where it lives: the training set may be a source (a lazily decoded split), read block by
    block, each process only the rows its devices hold; the float64 centre is summed over those
    rows and added over processes, and each shard is built on its process (`_prepare`). No float64
    copy of the set and no process holding it whole; one process gives the bits of the array.
  * A class-conditional y* reads only the queries' classes: the rows are laid out by label and a
    chunk holding none of them is skipped (`_over_chunks`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from diffgen_jax.checks import check_float_dtype, check_number
from diffgen_jax.denoisers import (ANY_LABEL, NO_LABEL, Denoiser, analytic_query_labels,
                                   check_query, per_example, training_labels)
# The analytic ladder's patch machines and Gaussian denoiser live beside this module (they import
# nothing from it); re-exported here so `optimal.local_denoiser` etc. work.
from diffgen_jax.optimal_patches import (  # noqa: F401  pylint: disable=unused-import
    equivariant_local_denoiser, gaussian_denoiser, local_denoiser, patch_composite_denoiser)
from diffgen_jax.sharding import (DATA_AXIS, across_processes, blocks, counted_rows, host_block,
                                  host_zeros, padded_rows, read_rows, replicated, rows_on_mesh,
                                  streamed_sum, sum_counted, training_source)

_HIGHEST = lax.Precision.HIGHEST
# The per-training-point arrays, in the order the streaming functions take them.
_TRAIN_ARRAYS = ("train_centred", "half_sq_norms", "train", "train_labels")


class _TrainingSet(NamedTuple):
  """A training set laid out for streaming: centred, padded to whole chunks per shard, split over
  the mesh's axis (global arrays), rows ordered by label when class-conditional."""
  arrays: dict  # the names in _TRAIN_ARRAYS (jax arrays, (N_padded, ...))
  centre: jax.Array  # (D,) the training mean, replicated over a mesh across processes
  item_shape: tuple
  classes: Optional[frozenset]  # None: unconditional
  chunk_size: int


# NHWC training images beyond this magnitude are on another scale (data.convention.SAMPLE_LIMIT).
_IMAGE_LIMIT = 10.0


# ------------------------------------------------------------------------------------------------
# Training sets as sources, laid out for streaming: read block by block where they live, each
# process only its own rows (the reading and layout helpers are sharding's, section "Training sets
# laid out over a mesh from where they live"; here only what is particular to y*'s numbers).


def half_squared_norms(rows, whole_rows: int) -> np.ndarray:
  """0.5 ||y||^2 of float64 rows (m, D), as np.einsum("nd,nd->n") gives it for the whole
  (whole_rows, D) set: numpy sums the D values of a lone row (m = 1) in buffered pieces when
  D > 8192, but row by row in a several-row array, so a one-row block of a larger set is
  computed inside a two-row array."""
  if len(rows) == 1 and whole_rows > 1:
    pair = np.concatenate([rows, rows])
    return 0.5 * np.einsum("nd,nd->n", pair, pair)[:1]
  return 0.5 * np.einsum("nd,nd->n", rows, rows)


class _ValueChecks:
  """The value checks of training images, accumulated over the rows this process reads and agreed
  on by every process (one ValueError everywhere, never a process left waiting in a collective).
  With one process: the verdict and message of checking the whole array at once."""

  def __init__(self, shape, dtype):
    self.shape, self.dtype = shape, dtype
    self.finite, self.floating, self.lo, self.hi = True, True, np.inf, -np.inf

  def __call__(self, raw):
    self.dtype = raw.dtype
    self.finite = self.finite and bool(np.all(np.isfinite(raw)))
    self.floating = self.floating and bool(np.issubdtype(raw.dtype, np.floating))
    if raw.size:
      self.lo, self.hi = min(self.lo, float(raw.min())), max(self.hi, float(raw.max()))
    return raw

  def packed(self, across: bool) -> np.ndarray:
    """[not finite, not floating, (lo, hi) in this process's slot]: summed over processes when
    `across` (one slot per process), else this process's own verdict (one slot)."""
    slot = jax.process_index() if across else 0
    slots = np.zeros(2 * (jax.process_count() if across else 1))
    slots[2 * slot:2 * slot + 2] = self.lo, self.hi
    return np.concatenate([[float(not self.finite), float(not self.floating)], slots])

  def raise_if_failed(self, summed) -> None:
    if summed[0]:
      raise ValueError("train_images contains NaN or Inf")
    if summed[1]:
      raise ValueError(f"train_images must be floating point (images in [-1, 1]: uint8 pixels p "
                       f"map to p / 127.5 - 1), got dtype {self.dtype}")
    lo, hi = np.min(summed[2::2]), np.max(summed[3::2])
    # The image convention (data.convention, not imported here: the math layer stands alone):
    # the 0..255 float scale would give a posterior mean on the wrong scale.
    if len(self.shape) == 4 and max(abs(lo), abs(hi)) > _IMAGE_LIMIT:
      raise ValueError(f"train_images of shape {self.shape} are NHWC images, which must lie in "
                       f"[-1, 1]; got values in [{lo:g}, {hi:g}] (0..255 pixels?)")


def _prepare(train_images, train_labels, chunk_size: int, mesh: Optional[Mesh], axis: str,
             dtype, with_train: bool = True) -> _TrainingSet:
  """Lays a training source out over the mesh's `axis` for streaming, in two passes over the rows
  of this process (`sharding.counted_rows`): (1) their float64 sum, block by block, added over
  processes (`sharding.streamed_sum`, `sharding.sum_counted`) -> the centre (one process:
  bit-identical to np.mean of the whole set), with the value checks; (2) `sharding.rows_on_mesh` builds each shard on the process that holds it, from its
  rows centred in float64 block by block and then cast to `dtype` (as the whole set once was).
  Labels (N ints) are held whole; a class-conditional set is laid out by label (stable, so each
  class keeps its order), so a chunk holds few classes and a query's class few chunks. Padding rows
  (zeros, label NO_LABEL) fill every shard to whole chunks. Host memory: one shard of `dtype`
  rows plus one block of float64 rows at a time; nothing of size N in float64.
  """
  chunk_size = check_number(chunk_size, "chunk_size", low=1, integer=True)
  source, n, item_shape = training_source(train_images)
  d = int(np.prod(item_shape))
  labels, classes = training_labels(train_labels, n)
  chunk, total = padded_rows(n, chunk_size, mesh, axis)
  order = np.arange(n) if classes is None else np.argsort(labels, kind="stable")
  block = host_block(chunk, d)
  checks = _ValueChecks(tuple(source.shape), getattr(source, "dtype", None))
  to_float64 = lambda raw: checks(raw).reshape(len(raw), d).astype(np.float64)
  rows = counted_rows(order, n, total, mesh, axis)
  across = across_processes(mesh)
  summed = sum_counted(np.concatenate([streamed_sum(source, rows, d, to_float64, block),
                                       checks.packed(across)]), mesh)
  checks.raise_if_failed(summed[d:])
  centre = summed[:d] / n
  sorted_labels = labels[order]

  def build(lo, hi):
    out = dict(train_centred=host_zeros((hi - lo, d), dtype),
               half_sq_norms=host_zeros((hi - lo,), dtype),
               train=host_zeros((hi - lo, d), dtype) if with_train else None,
               train_labels=host_zeros((hi - lo,), np.int32, fill=NO_LABEL))
    for piece in blocks(np.arange(lo, min(hi, n)), block):
      flat = read_rows(source, order[piece]).reshape(len(piece), d).astype(np.float64)
      centred = flat - centre
      at = slice(piece[0] - lo, piece[-1] + 1 - lo)
      out["train_centred"][at] = centred.astype(dtype)
      out["half_sq_norms"][at] = half_squared_norms(centred, n).astype(dtype)
      if with_train:
        out["train"][at] = flat.astype(dtype)
      out["train_labels"][at] = sorted_labels[piece]
    return {k: v for k, v in out.items() if v is not None}

  arrays = rows_on_mesh(total, build, mesh, axis)
  centre = centre.astype(dtype)
  centre = jax.device_put(centre, replicated(mesh)) if across else jnp.asarray(centre)
  return _TrainingSet(arrays, centre, item_shape, classes, chunk)


def _query_inputs(x, sigma, labels, item_shape, classes, dtype):
  """Flattened queries, per-query sigma and per-query labels (ANY_LABEL when unconditional)."""
  x = jnp.asarray(x)
  if x.shape[1:] != item_shape:
    raise ValueError(f"x has item shape {x.shape[1:]} but the training points have {item_shape}")
  # y* is defined for every sigma > 0 (the nearest point as sigma -> 0); labels only matter
  # (and are only checked) for a class-conditional y*.
  b = check_query(x, sigma, labels if classes is not None else None)
  sigma_b = jnp.broadcast_to(jnp.asarray(sigma, dtype), (b,))
  return x.reshape(b, -1).astype(dtype), sigma_b, analytic_query_labels(labels, classes, b)


def _scores(x_centred, query_labels, train_centred, half_sq_norms, train_labels):
  """sigma^2 times the logit -||x - y_i||^2 / (2 sigma^2), up to a per-query constant; -inf
  outside the query's class.

  The one place the softmax's scores are computed: x.y_i - ||y_i||^2 / 2 on centred data with
  full-precision matmuls (see the module docstring); `_scaled` divides differences of scores by
  sigma^2. Shapes (B, D) x (C, D) -> (B, C).
  """
  dots = jnp.matmul(x_centred, train_centred.T, precision=_HIGHEST)
  scores = dots - half_sq_norms[None, :]
  valid = (train_labels[None, :] != NO_LABEL) & (
      (query_labels[:, None] == ANY_LABEL) | (train_labels[None, :] == query_labels[:, None]))
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


def _chunk_needed(query_labels, labels):
  """Whether a chunk of training labels (C,) holds a point any query sums over: a valid row
  (label != NO_LABEL) when some query is unconditional (ANY_LABEL), else a row of some query's
  class. The rows are laid out by label, so the chunk's classes are the range [min, max] of its
  valid labels and a range test is exact (and merely conservative for any other layout)."""
  valid = labels != NO_LABEL
  lo = jnp.min(jnp.where(valid, labels, jnp.iinfo(labels.dtype).max))
  hi = jnp.max(jnp.where(valid, labels, NO_LABEL))
  wanted = (query_labels == ANY_LABEL) | ((query_labels >= lo) & (query_labels <= hi))
  return (hi != NO_LABEL) & jnp.any(wanted)


def _over_chunks(update, init, arrays, chunk_size: int, query_labels, by_class: bool):
  """The final carry of update(carry, chunk) over the training set in chunks of chunk_size rows
  (lax.scan; arrays: the (N, ...) training arrays, labels last; chunk: their rows of one chunk).

  by_class (a class-conditional set): a chunk with no point of any query's class is skipped
  (lax.cond), so a batch of one class reads only that class's chunks. The scan then runs over the
  chunks' labels only and a needed chunk's rows are sliced inside the branch: slicing every chunk
  before the test would copy the rows of every skipped chunk too. Skipping is exact: such a
  chunk's scores are all -inf, and its update leaves every statistic as it was.
  """
  if not by_class:
    xs = tuple(_chunked(a, chunk_size) for a in arrays)
    return lax.scan(lambda carry, chunk: (update(carry, chunk), None), init, xs)[0]
  labels = _chunked(arrays[-1], chunk_size)

  def step(carry, xs):
    i, chunk_labels = xs
    rows = lambda c: update(c, tuple(lax.dynamic_slice_in_dim(a, i * chunk_size, chunk_size)
                                     for a in arrays))
    return lax.cond(_chunk_needed(query_labels, chunk_labels), rows, lambda c: c, carry), None

  return lax.scan(step, init, (jnp.arange(labels.shape[0]), labels))[0]


def _streaming_posterior_mean(x_centred, inv_sigma, query_labels, train_centred, half_sq_norms,
                              train, train_labels, chunk_size, axis_name=None, by_class=False):
  """Partial statistics (max score, sum of exp, weighted sum) over one training shard.

  x_centred: (B, D) queries minus the centre; inv_sigma: (B,) = 1 / sigma (the 1/2 lives in
  half_sq_norms); query_labels: (B,), ANY_LABEL for an unconditional query. Training arrays:
  (N, D) centred and uncentred points, (N,) half squared norms, (N,) labels (-1 on padding); N is
  a multiple of chunk_size. axis_name: inside shard_map, the mesh axis the training shard varies
  over (the running statistics then vary over it too, and the scan carry must say so from the start).
  by_class: skip chunks without a point of the queries' classes (`_over_chunks`).
  """
  b, d = x_centred.shape

  def update(carry, chunk):
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
    return new_max, run_sum, run_acc

  dtype = x_centred.dtype
  init = (jnp.full((b,), -jnp.inf, dtype), jnp.zeros((b,), dtype), jnp.zeros((b, d), dtype))
  if axis_name is not None:
    init = lax.pcast(init, axis_name, to="varying")
  return _over_chunks(update, init, (train_centred, half_sq_norms, train, train_labels), chunk_size,
                      query_labels, by_class)


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


def _is_global(a) -> bool:
  return isinstance(a, jax.Array) and not a.is_fully_addressable


def _queries_on_mesh(mesh: Optional[Mesh], *values):
  """(values, from_host): with a mesh over several processes, every concrete query value that is
  not already a global array is put on the mesh replicated (all processes pass the same queries:
  an eager call with host numpy); traced values and global arrays (a batch split over the data axis
  inside jit) pass as they are. from_host: the queries came from the host, so the (replicated)
  result goes back as this process's local copy. Without such a mesh: unchanged, False."""
  if mesh is None or isinstance(values[0], jax.core.Tracer) or _is_global(values[0]):
    return values, False
  return tuple(v if isinstance(v, jax.core.Tracer) or _is_global(v) else
               jax.device_put(np.asarray(v), replicated(mesh)) for v in values), True


def empirical_optimal_denoiser(train_images, train_labels=None, *, chunk_size: Optional[int] = None,
                               dtype=jnp.float32, mesh: Optional[Mesh] = None,
                               axis: str = DATA_AXIS) -> Denoiser:
  """Returns the exact posterior-mean denoiser of a finite training set.

  Args:
    train_images: (N, ...) training points (images of any shape, or vectors), floating point
      (NHWC images in [-1, 1]): a numpy array or a source (len(), .shape, indexing by a slice or
      an int array returning numpy rows, e.g. `sharding.LazyRows` over a lazily decoded split),
      read block by block, each process only the rows its devices hold (`_prepare`).
    train_labels: optional (N,) integer labels >= 0 (held whole). When given,
      `denoise(x, sigma, labels)` sums over the training points whose label equals each query's
      label (labels=None is refused: ValueError naming labels), and reads only the chunks that hold the queries'
      classes (the rows are laid out by label).
    chunk_size: training points per streaming step; memory is O(queries x chunk_size). None: the
      backend's default (`default_chunk_size`: 2048 on CPU, 65,536 on GPU/TPU, capped at N / shards).
    dtype: jnp.float32 (default) or jnp.float64 (needs `jax.config.update("jax_enable_x64", True)`).
    mesh: optional mesh, of one or several processes; the training set is then split over its
      `axis` (each process builds only its shards) and the per-device statistics are combined
      exactly. Queries are replicated: inside jit any sharding works (a batch split over the data
      axis is gathered); an eager call with host arrays on several processes (all passing the same
      queries) returns this process's copy of the result.

  Returns:
    denoise(x, sigma, labels=None) -> x_hat with x of shape (B, ...) matching the training points,
    sigma a scalar or (B,) vector of noise levels > 0. Pure and jittable; vmap over sigma works.
    It is a pytree (jax.tree_util.Partial) whose leaves are the training arrays, so passing it
    through jit (as samplers.sample does) feeds them as arguments instead of baking them into
    the compiled program as constants.

  Raises:
    ValueError: an empty or 1-D training set, values not finite, not floating point, or NHWC
      images beyond the [-1, 1] scale; train_labels not (N,) integers >= 0; bad chunk_size/dtype.
  """
  dtype = check_float_dtype(dtype)
  if chunk_size is None:
    chunk_size = default_chunk_size(mesh.devices.flat[0].platform if mesh is not None else None)
  data = _prepare(train_images, train_labels, chunk_size, mesh, axis, dtype)
  by_class = data.classes is not None

  def statistics(x_centred, inv_sigma, query_labels, *train_arrays):
    stats = _streaming_posterior_mean(x_centred, inv_sigma, query_labels, *train_arrays,
                                      data.chunk_size, axis_name=None if mesh is None else axis,
                                      by_class=by_class)
    if mesh is None:
      return stats[1], stats[2]
    return _combine_shards(*stats, inv_sigma, axis_name=axis)

  if mesh is not None:
    statistics = jax.shard_map(statistics, mesh=mesh,
                               in_specs=(P(), P(), P()) + (P(axis),) * len(_TRAIN_ARRAYS),
                               out_specs=(P(), P()))
  static = functools.partial(_denoise, jax.jit(statistics), data.item_shape, data.classes, dtype,
                             mesh if across_processes(mesh) else None)
  denoiser = jax.tree_util.Partial(static, dict(data.arrays, centre=data.centre))
  # Read by denoisers.check_labels, which samplers and evaluations call while labels are concrete.
  denoiser.label_domain = data.classes
  return denoiser


def _denoise(statistics, item_shape, classes, dtype, mesh, arrays, x, sigma, labels=None):
  flat_x, sigma_b, query_labels = _query_inputs(x, sigma, labels, item_shape, classes, dtype)
  (flat_x, sigma_b, query_labels), from_host = _queries_on_mesh(mesh, flat_x, sigma_b, query_labels)
  # Positional: shard_map'd functions take no keyword arguments.
  total, acc = statistics(flat_x - arrays["centre"], 1.0 / sigma_b, query_labels,
                          *(arrays[k] for k in _TRAIN_ARRAYS))
  out = (acc / total[:, None]).reshape(jnp.shape(x)).astype(jnp.asarray(x).dtype)
  return out.addressable_data(0) if from_host else out


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


def _rebased_moments(old_max, shift, s0, s1, s2, inv_sigma):
  """The sums S0 = sum e^u, S1 = sum e^u u, S2 = sum e^(2u), u = (l - old_max) / sigma^2, moved
  to u' = (l - shift) / sigma^2 exactly (shift >= old_max): the scan's step when its maximum grows,
  and the merge of per-device sums at the global maximum. A query with no point yet (S0 = 0) has
  nothing to move."""
  seen = s0 > 0
  delta = jnp.where(seen, _scaled(old_max - shift, inv_sigma), 0.0)
  r = jnp.exp(delta)
  delta = jnp.where(r > 0, delta, 0.0)  # r = 0: the old sums vanish, and so does their shift
  r = jnp.where(seen, r, 0.0)
  return r * s0, r * (s1 + delta * s0), r * r * s2


def posterior_statistics(train_images, train_labels=None, *, chunk_size: int = 2048,
                         mesh: Optional[Mesh] = None, axis: str = DATA_AXIS):
  """Returns stats(x, sigma, labels=None) -> PosteriorStatistics of the weights of y*(x; sigma).

  The weights are those of `empirical_optimal_denoiser` (the same `_scores`, class-conditional
  when labels are given), streamed over chunks of the training set with a running maximum m and
  the sums S0 = sum e^(l-m), S1 = sum e^(l-m) (l-m), S2 = sum e^(2(l-m)), each rescaled exactly
  when m grows. Then H = log S0 - S1 / S0 (no difference of large logits), 1/sum w^2 = S0^2 / S2
  and max w = 1 / S0. float32; x: (B, ...) queries, sigma scalar or (B,).

  train_images, train_labels, mesh: as for `empirical_optimal_denoiser` (a source read by each
  process only where its devices hold it; with a mesh the per-device sums are moved to the global
  maximum and added, exactly up to float rounding, and an eager multi-process call with host
  queries returns this process's copy).
  """
  data = _prepare(train_images, train_labels, chunk_size, mesh, axis, jnp.float32,
                  with_train=False)
  arrays, centre = data.arrays, data.centre
  chunk = data.chunk_size
  by_class = data.classes is not None
  axis_name = None if mesh is None else axis

  def statistics(x_centred, inv_sigma, query_labels, train_centred, half_sq_norms, train_labels):
    b = x_centred.shape[0]

    def update(carry, xs):
      run_max, s0, s1, s2 = carry
      scores = _scores(x_centred, query_labels, *xs)
      new_max = jnp.maximum(run_max, jnp.max(scores, axis=1))
      shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
      u = _scaled(scores - shift[:, None], inv_sigma)
      e = jnp.exp(u)
      # e u -> 0 as u -> -inf; -inf (invalid points, or overflow at tiny sigma) must not give 0 * inf.
      u = jnp.where(e > 0, u, 0.0)
      s0, s1, s2 = _rebased_moments(run_max, shift, s0, s1, s2, inv_sigma)
      return (new_max, s0 + jnp.sum(e, axis=1), s1 + jnp.sum(e * u, axis=1),
              s2 + jnp.sum(e * e, axis=1))

    zeros = jnp.zeros((b,), jnp.float32)
    init = (jnp.full((b,), -jnp.inf, jnp.float32), zeros, zeros, zeros)
    if axis_name is not None:
      init = lax.pcast(init, axis_name, to="varying")
    run_max, s0, s1, s2 = _over_chunks(update, init, (train_centred, half_sq_norms, train_labels),
                                       chunk, query_labels, by_class)
    if axis_name is not None:
      global_max = lax.pmax(run_max, axis_name)
      shift = jnp.where(jnp.isfinite(global_max), global_max, 0.0)
      s0, s1, s2 = (lax.psum(v, axis_name) for v in
                    _rebased_moments(run_max, shift, s0, s1, s2, inv_sigma))
    entropy = jnp.maximum(jnp.log(s0) - s1 / s0, 0.0)
    return PosteriorStatistics(entropy, jnp.exp(entropy), s0 * s0 / s2, 1.0 / s0)

  if mesh is not None:
    statistics = jax.shard_map(statistics, mesh=mesh,
                               in_specs=(P(), P(), P()) + (P(axis),) * 3, out_specs=P())
  statistics = jax.jit(statistics)
  mesh_across = mesh if across_processes(mesh) else None

  def stats(x, sigma, labels=None) -> PosteriorStatistics:
    flat_x, sigma_b, query_labels = _query_inputs(x, sigma, labels, data.item_shape, data.classes,
                                                  jnp.float32)
    (flat_x, sigma_b, query_labels), from_host = _queries_on_mesh(mesh_across, flat_x, sigma_b,
                                                                  query_labels)
    out = statistics(flat_x - centre, 1.0 / sigma_b, query_labels,
                     arrays["train_centred"], arrays["half_sq_norms"], arrays["train_labels"])
    return PosteriorStatistics(*(v.addressable_data(0) for v in out)) if from_host else out

  return stats
