"""The analytic ladder below y*: local (LS), equivariant-local (ELS), patch-composite (PSPC-square)
and Gaussian (Wiener) optimal denoisers of a finite training set.

Each is the posterior mean under some assumed data distribution (analytic.md section 1), returned as
a `denoise(x, sigma, labels=None)` of the package interface, so G(sigma), the distance to a network,
sampling and trajectory probes apply to it unchanged. Images are NHWC, float, in [-1, 1].

  LS   (Kamb & Ganguli, "An analytic theory of creativity in convolutional diffusion models",
       ICML 2025, sec. 3, the "local score machine"): the output at pixel p is the posterior mean
       of the centre pixel over the N training windows at the same position,
         w_i(p) = softmax_i(-||x[P_k(p)] - y_i[P_k(p)]||^2 / 2 sigma^2),  out(p) = sum_i w_i(p) y_i(p),
       windows zero-padded outside the image.
  ELS  (same paper, the "equivariant local score machine"): the candidates are the k x k windows of
       every training image at ANY position; out(p) = weighted mean of the candidates' centre pixels.
  PSPC (Niedoba et al., "Towards a mechanistic explanation of diffusion model generalization",
       ICML 2025, sec. 4, square patches): for every window position the posterior mean of the
       whole window over the same-position training windows; each pixel averages the estimates of
       the windows (with centre inside the image) that cover it.
  Gaussian (Wiener): m + U diag(l / (l + sigma^2)) U^T (x - m) with the training mean m and
       covariance U diag(l) U^T (optionally its top-r eigenpairs only); Wang & Vastola, "The
       unreasonable effectiveness of Gaussian score approximation", TMLR 2024, sec. 3.

How the patch machines are computed, and why (the same choices as y* in optimal.py):
  * Exact: every training image counts; no nearest-neighbour shortlist.
  * Streaming: training images are visited in chunks under `lax.scan` with a running log-sum-exp,
    so memory is O(query block x chunk x H x W), independent of N. Queries are processed in blocks
    (`query_block`) so memory does not grow with the batch either.
  * Overflow-free in sigma: the running statistic is the smallest energy seen (a squared distance)
    and every weight is exp(-(e - e_min) / 2 sigma^2) with 1 / 2 sigma^2 clipped to the largest
    finite float. The softmax is the same function, but no logit ever becomes +-inf for a finite
    sigma > 0: as sigma -> 0 it is one-hot on the nearest candidate (uniform over exact ties), as
    sigma -> inf uniform, with no NaN at sigma = 1e-30 or 1e30 in float32.
  * LS/PSPC window distances are k x k box sums of per-pixel squared differences (no cancellation;
    O(N H W (C + 2k)) per query). ELS energies are one matmul per chunk of the query block's
    augmented patch matrix [-x, 1] (B H W, k^2 C + 1) with the chunk's [y, ||y||^2 / 2]
    (k^2 C + 1, chunk H W), at full precision on data centred at the mean training patch (as y*
    centres at the mean image); a second matmul of the weights with [centre pixels, 1] gives the
    weighted sums and the normaliser together. Its cost is one exp per (query window, training
    window) pair: at k^2 C = 9 the exp pass, not the matmul, takes most of the time on a CPU
    (benchmarks/analytic_ladder.py reports the split).
  * Class-conditional: with train_labels, a query with label c sees only class-c training images;
    labels=None is refused (ValueError naming labels). A concrete query label without training images raises
    ValueError (a traced one cannot be checked and yields NaN).
  * A training set is a source, never a whole array (design.md, "Scale: measure where it trains"):
    anything with len(), .shape (N, H, W, C) and indexing that returns numpy rows in [-1, 1] (a
    numpy array, `sharding.LazyRows` over a lazily decoded split). Values are checked where read.
  * Sharded: given a mesh (over the devices of one or several processes), the training images are
    split over its `axis` (`sharding.rows_on_mesh`): each process reads and builds only the shards
    its devices hold, one at a time, so host memory is O(N / P + shard) and device memory
    O(N / (P D) + working chunk). Each device streams its shard and the partial statistics are
    merged exactly (pmin of the minima, rescaled psums). Statistics of the whole set (ELS's mean
    patch, the Gaussian's mean and covariance) are float64 sums over each process's rows, added
    over processes exactly (`sharding.sum_counted`); with one process bit-identical to the
    whole-array computation. Queries are replicated (host arrays, or batches split over the data
    axis inside a jit: the machine gathers them); the result is replicated.
  * Patch-size schedules: `patch_size` may be a mapping {sigma: k}; a query at sigma uses the size
    of the nearest listed sigma in log space (the output of `evaluation.ladder.calibrate`). With
    several distinct sizes every size is computed and each query keeps its own (cost x sizes).
"""

from __future__ import annotations

import functools
import zlib
from typing import Mapping, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P

from diffgen_jax.checks import check_float_dtype, check_number
from diffgen_jax.data.convention import CONVENTION, check_images
from diffgen_jax.denoisers import (ANY_LABEL, NO_LABEL, Denoiser, analytic_query_labels, check_query,
                                   training_labels)
from diffgen_jax.sharding import (DATA_AXIS, RowSum, across_processes, blocks, counted_rows,
                                  counted_spans, padded_rows, read_rows, rows_on_mesh, sum_counted,
                                  sum_over_processes, training_source)

BOUNDARIES = ("circular", "zeros")
# optimal.py re-exports this module, so it imports nothing from optimal.py (imports run one way).
_HIGHEST = lax.Precision.HIGHEST
PatchSize = Union[int, Mapping[float, int]]


# ------------------------------------------------------------------------------------------------
# Input checks: the shared homes (data.convention for images, checks for numbers and dtypes,
# denoisers for sigma and labels) with the argument's name; only what is particular to windows
# (odd sizes, schedules, boundaries) lives here.
# ------------------------------------------------------------------------------------------------

def _training_source(images, name: str = "train_images"):
  """(source, N, (H, W, C)) of a training set of NHWC images (`sharding.training_source`: kept as
  a source, nothing read). Its values (floating point, finite, in [-1, 1]) are checked where they
  are read (`_read`), so each process checks the rows it reads. Raises ValueError naming `name`
  unless it is 4-D and non-empty."""
  return training_source(images, name, ndim=4, layout=CONVENTION)


def _check_read(rows) -> None:
  check_images(rows, "train_images")


def _read(source, index) -> np.ndarray:
  """Rows `index` (a slice or ascending int array) of a training source, checked against the image
  convention (`data.convention.check_images`) and counted (`sharding.read_rows`)."""
  return read_rows(source, index, "train_images", check=_check_read)


def _check_size(k, name: str) -> int:
  """A window size: a positive odd integer (the window is centred on a pixel)."""
  message = f"{name} must be a positive odd integer (a window centred on a pixel), got {k!r}"
  try:
    k = check_number(k, name, low=1, integer=True)
  except ValueError:
    raise ValueError(message) from None
  if k % 2 == 0:
    raise ValueError(message)
  return int(k)


def _check_count(v, name: str, allow_none: bool = False) -> Optional[int]:
  """A count (chunk or block size): a positive integer (or None where a default applies)."""
  if v is None and allow_none:
    return None
  return int(check_number(v, name, low=1, integer=True))


def _check_boundary(boundary, name: str = "boundary") -> str:
  if not isinstance(boundary, str) or boundary not in BOUNDARIES:
    raise ValueError(f"{name} must be one of {BOUNDARIES}, got {boundary!r}")
  return boundary


def _check_mesh_axis(mesh, axis) -> None:
  if mesh is not None and axis not in mesh.shape:
    raise ValueError(f"axis must be one of the mesh's axes {tuple(mesh.shape)}, got {axis!r}")


class PatchSchedule(NamedTuple):
  """A patch size per sigma: the entry whose sigma is nearest in log space applies."""
  sigmas: Tuple[float, ...]  # ascending
  sizes: Tuple[int, ...]  # one per sigma


def patch_schedule(patch_size: PatchSize, name: str = "patch_size") -> PatchSchedule:
  """Normalises an int or a {sigma: size} mapping (sizes positive and odd, sigmas > 0 finite)."""
  if isinstance(patch_size, PatchSchedule):
    patch_size = dict(zip(patch_size.sigmas, patch_size.sizes))
  if isinstance(patch_size, Mapping):
    if not patch_size:
      raise ValueError(f"{name} mapping {{sigma: size}} must not be empty")
    items = []
    for s, k in patch_size.items():
      s = float(check_number(s, f"{name} key (a sigma)", low=0.0, low_open=True))
      items.append((s, _check_size(k, f"{name}[{s:g}]")))
    items.sort()
    return PatchSchedule(tuple(s for s, _ in items), tuple(k for _, k in items))
  return PatchSchedule((1.0,), (_check_size(patch_size, name),))


def _size_selector(schedule: PatchSchedule):
  """(distinct sizes, fn sigma_b -> index into them per query)."""
  distinct = tuple(sorted(set(schedule.sizes)))
  if len(distinct) == 1:
    return distinct, None
  log_s = np.log(np.asarray(schedule.sigmas))
  edges = jnp.asarray(0.5 * (log_s[1:] + log_s[:-1]))
  entry = jnp.asarray([distinct.index(k) for k in schedule.sizes], jnp.int32)
  return distinct, lambda sigma_b: entry[jnp.searchsorted(edges, jnp.log(sigma_b))]


# ------------------------------------------------------------------------------------------------
# The training set, laid out for streaming
# ------------------------------------------------------------------------------------------------

class _Images(NamedTuple):
  images: jax.Array  # (N_padded, H W C) flat, split over the mesh axis; zero rows as padding
  labels: jax.Array  # (N_padded,) int32, NO_LABEL on padding
  item_shape: Tuple[int, ...]  # (H, W, C)
  classes: Optional[frozenset]
  chunk: int
  mean: Optional[np.ndarray]  # (H, W, C) float64 mean image, when asked for


def _prepare(train_images, train_labels, chunk_size, mesh, axis, dtype, with_mean=False) -> _Images:
  """The training set laid out for streaming: (N_padded, H W C) images and (N_padded,) labels over
  the mesh's `axis` (`sharding.rows_on_mesh`: each shard built from the source on the process that
  holds it, one shard on the host at a time; a whole number of chunks per shard), and with
  `with_mean` the float64 mean image, summed over the rows of this process's shards that it counts
  (`sharding.counted_spans`) as they are built (`sharding.RowSum`) and added over processes
  (`sharding.sum_counted`; one process: bit-identical to np.mean(images, axis=0, dtype=float64)).
  Host memory: one shard and the labels (N int32)."""
  source, n, item_shape = _training_source(train_images)
  chunk_size = _check_count(chunk_size, "chunk_size")
  labels, classes = training_labels(train_labels, n)
  chunk, total = padded_rows(n, chunk_size, mesh, axis)
  counted = set(counted_spans(total, mesh, axis))
  mean_sum = RowSum(int(np.prod(item_shape)))

  def build(lo, hi):
    # rows_on_mesh builds this process's shards in ascending order: the sum runs over rows in order.
    raw = _read(source, slice(lo, min(hi, n))) if lo < n else np.zeros((0,) + item_shape, dtype)
    if with_mean and (lo, hi) in counted:  # the mean of the values as given, before the cast
      mean_sum.add(raw)
    rows = raw.astype(dtype)
    pad = (hi - lo) - len(rows)
    images = np.concatenate([rows, np.zeros((pad,) + item_shape, rows.dtype)]) if pad else rows
    # Flat (N, H W C) storage: the scan slices it without the layout copy XLA inserts for a 4-D
    # parameter (a whole-training-set temporary, seen with C = 1).
    return {"images": images.reshape(hi - lo, -1),
            "labels": np.concatenate([labels[lo:min(hi, n)], np.full((pad,), NO_LABEL, np.int32)])}

  arrays = rows_on_mesh(total, build, mesh, axis)
  mean = (sum_counted(mean_sum.value(), mesh) / n).reshape(item_shape) if with_mean else None
  return _Images(arrays["images"], arrays["labels"], item_shape, classes, chunk, mean)


def _query(x, sigma, labels, item_shape, classes, dtype):
  """Checked queries (B, H, W, C), per-query sigma (B,) and labels (ANY_LABEL: unconditional)."""
  x = jnp.asarray(x)
  if x.ndim != 4 or x.shape[1:] != tuple(item_shape):
    raise ValueError(f"x must be (B, H, W, C) with (H, W, C) = {tuple(item_shape)}, got {x.shape}")
  b = check_query(x, sigma, labels if classes is not None else None)
  sigma_b = jnp.broadcast_to(jnp.asarray(sigma, dtype).reshape(-1), (b,))
  return x.astype(dtype), sigma_b, analytic_query_labels(labels, classes, b)


def _inverse_two_var(sigma_b, half: bool = True):
  """1 / (2 sigma^2) (or 1 / sigma^2), clipped to the largest finite float: never inf, never NaN."""
  var = sigma_b * sigma_b  # may underflow to 0 (sigma < 1e-19 in float32): then the clip applies
  inv = (0.5 if half else 1.0) / var
  return jnp.minimum(inv, jnp.finfo(sigma_b.dtype).max)


def _valid(query_labels, train_labels):
  """(B, c): training image usable for the query (its class, or any class; never padding)."""
  return (train_labels[None, :] != NO_LABEL) & (
      (query_labels[:, None] == ANY_LABEL) | (train_labels[None, :] == query_labels[:, None]))


# ------------------------------------------------------------------------------------------------
# The streaming softmax in energy form (overflow-free for every finite sigma > 0)
# ------------------------------------------------------------------------------------------------

def _softmax_step(run_min, run_sum, energy, scale, axis):
  """One chunk of a running softmax over candidates with weights exp(-(e - e_min) * scale).

  run_min, run_sum, scale: statistics shape S; energy: S with the chunk's candidates inserted at
  `axis` (+inf for candidates that do not count). Returns (new_min, weights relative to new_min,
  rescale of the old statistics, new run_sum). A row that has seen no candidate keeps min = +inf,
  sum = 0 and weights 0.
  """
  new_min = jnp.minimum(run_min, jnp.min(energy, axis=axis))
  ref = jnp.where(jnp.isfinite(new_min), new_min, 0.0)
  weights = jnp.where(energy < jnp.inf,
                      jnp.exp(-(energy - jnp.expand_dims(ref, axis)) * jnp.expand_dims(scale, axis)),
                      0.0)
  rescale = jnp.where(jnp.isfinite(run_min), jnp.exp(-(run_min - ref) * scale), 0.0)
  return new_min, weights, rescale, run_sum * rescale + jnp.sum(weights, axis=axis)


def _merge_shards(run_min, run_sum, accs, scale, axis_name):
  """Exact merge of per-device (min, sum, weighted sums) over `axis_name`."""
  global_min = lax.pmin(run_min, axis_name)
  ref = jnp.where(jnp.isfinite(global_min), global_min, 0.0)
  rescale = jnp.where(jnp.isfinite(run_min), jnp.exp(-(run_min - ref) * scale), 0.0)
  total = lax.psum(run_sum * rescale, axis_name)
  accs = tuple(lax.psum(a * rescale[..., None], axis_name) for a in accs)
  return global_min, total, accs


def _chunked(a, chunk):
  return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])


def _init_stats(shape, dtype, axis_name):
  stats = (jnp.full(shape, jnp.inf, dtype), jnp.zeros(shape, dtype))
  return stats if axis_name is None else lax.pcast(stats, axis_name, to="varying")


def _pcast(a, axis_name):
  return a if axis_name is None else lax.pcast(a, axis_name, to="varying")


# ------------------------------------------------------------------------------------------------
# LS and PSPC: same-position windows
# ------------------------------------------------------------------------------------------------

def _box(a, k):
  """k x k zero-padded box sum over the last two axes of (..., H, W)."""
  h, w = a.shape[-2:]
  nd = a.ndim
  for axis, length in ((nd - 2, h), (nd - 1, w)):
    kk = min(k, 2 * length - 1)  # a wider window only adds padding zeros
    dims = [1] * nd
    dims[axis] = kk
    pads = [(0, 0)] * nd
    pads[axis] = (kk // 2, kk // 2)
    a = lax.reduce_window(a, jnp.zeros((), a.dtype), lax.add, tuple(dims), (1,) * nd, tuple(pads))
  return a


def _window_energy(x, y, query_labels, labels, k):
  """(B, c, H, W): ||x[P_k(p)] - y_i[P_k(p)]||^2 per query, training image and pixel; +inf outside
  the query's class."""
  sq = jnp.sum(jnp.square(x[:, None] - y[None]), axis=-1)
  energy = _box(sq, k)
  return jnp.where(_valid(query_labels, labels)[:, :, None, None], energy, jnp.inf)


def _centre_sum(weights, y):
  """sum_i weights[b, i, p] y_i(p): (B, c, H, W) x (c, H, W, C) -> (B, H, W, C)."""
  return jnp.einsum("bchw,chwk->bhwk", weights, y, precision=_HIGHEST)


def _ls_stats(x, scale, query_labels, images, labels, *, k, chunk, axis_name):
  """LS over one shard: (min, sum) of shape (B, H, W) and the weighted centre sum (B, H, W, C)."""
  b, h, w, c = x.shape
  scale = scale[:, None, None]

  def step(carry, xs):
    run_min, run_sum, acc = carry
    y, lab = xs
    y = y.reshape((-1,) + x.shape[1:])  # stored flat: (chunk, H W C) -> (chunk, H, W, C)
    energy = _window_energy(x, y, query_labels, lab, k)
    run_min, weights, rescale, run_sum = _softmax_step(run_min, run_sum, energy, scale, axis=1)
    acc = acc * rescale[..., None] + _centre_sum(weights, y)
    return (run_min, run_sum, acc), None

  init = _init_stats((b, h, w), x.dtype, axis_name) + (_pcast(jnp.zeros(x.shape, x.dtype), axis_name),)
  (run_min, run_sum, acc), _ = lax.scan(step, init, (_chunked(images, chunk), _chunked(labels, chunk)))
  if axis_name is not None:
    run_min, run_sum, (acc,) = _merge_shards(run_min, run_sum, (acc,), scale, axis_name)
  return run_sum, acc


def _ls_core(x, scale, query_labels, images, labels, *, k, chunk, axis_name):
  run_sum, acc = _ls_stats(x, scale, query_labels, images, labels, k=k, chunk=chunk,
                           axis_name=axis_name)
  return acc / run_sum[..., None]


def _pspc_core(x, scale, query_labels, images, labels, *, k, chunk, axis_name):
  """PSPC-square: pass 1 the per-window normalisers (as LS), pass 2 the box-summed weights."""
  b, h, w, c = x.shape
  scale3 = scale[:, None, None]

  def normaliser_step(carry, xs):
    run_min, run_sum = carry
    y, lab = xs
    y = y.reshape((-1,) + x.shape[1:])  # stored flat: (chunk, H W C) -> (chunk, H, W, C)
    energy = _window_energy(x, y, query_labels, lab, k)
    run_min, _, _, run_sum = _softmax_step(run_min, run_sum, energy, scale3, axis=1)
    return (run_min, run_sum), None

  xs = (_chunked(images, chunk), _chunked(labels, chunk))
  (run_min, run_sum), _ = lax.scan(normaliser_step, _init_stats((b, h, w), x.dtype, axis_name), xs)
  if axis_name is not None:
    run_min, run_sum, _ = _merge_shards(run_min, run_sum, (), scale3, axis_name)
  ref = jnp.where(jnp.isfinite(run_min), run_min, 0.0)

  def composite_step(acc, xs):
    y, lab = xs
    y = y.reshape((-1,) + x.shape[1:])  # stored flat: (chunk, H W C) -> (chunk, H, W, C)
    energy = _window_energy(x, y, query_labels, lab, k)
    weights = jnp.where(energy < jnp.inf, jnp.exp(-(energy - ref[:, None]) * scale3[:, None]), 0.0)
    weights = weights / run_sum[:, None]  # normalised w_i(q) of every window q
    return acc + _centre_sum(_box(weights, k), y), None

  acc, _ = lax.scan(composite_step, _pcast(jnp.zeros(x.shape, x.dtype), axis_name), xs)
  if axis_name is not None:
    acc = lax.psum(acc, axis_name)
  coverage = _box(jnp.ones((h, w), x.dtype), k)  # windows (centres inside the image) covering p
  return acc / coverage[None, :, :, None]


# ------------------------------------------------------------------------------------------------
# ELS: windows at any position
# ------------------------------------------------------------------------------------------------

def _patches(images, k, boundary):
  """(n, H, W, C) -> (n, H W, k k C): the k x k window centred at every pixel."""
  n, h, w, c = images.shape
  r = k // 2
  if boundary == "circular":
    # Wrap with whole-image tiles so windows wider than the image still wrap correctly.
    reps_h, reps_w = -(-r // h), -(-r // w)
    tiled = jnp.tile(images, (1, 2 * reps_h + 1, 2 * reps_w + 1, 1))
    padded = tiled[:, reps_h * h - r:reps_h * h + h + r, reps_w * w - r:reps_w * w + w + r]
  else:
    padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)))
  cols = [padded[:, i:i + h, j:j + w] for i in range(k) for j in range(k)]
  return jnp.stack(cols, axis=3).reshape(n, h * w, k * k * c)


def _els_core(x, scale, query_labels, images, labels, mean_patch, *, k, boundary, chunk,
              conditional, axis_name):
  """ELS over one shard, two matmuls per chunk of training images and one exp per candidate.

  Rows are the query block's windows (B H W), columns the chunk's windows (chunk H W). The energy
  ||y||^2 / 2 - x.y (on patches centred at the mean training patch; scale 1 / sigma^2) comes out of
  ONE matmul of augmented patches, [-x, 1] (rows, k^2 C + 1) @ [y, ||y||^2 / 2]^T, so the only
  passes over the (rows, columns) energy tile are its min and its exp; the weighted centre sums
  and the weight sum come out of a second matmul, weights @ [y centre, 1] (columns, C + 1).
  Padding images get ||y||^2 / 2 = +inf, so the matmul itself gives them energy +inf; only a
  class-conditional machine (`conditional`) adds a per-(query, image) penalty to the tile.
  """
  b, h, w, c = x.shape
  hw = h * w
  xp = (_patches(x, k, boundary) - mean_patch).reshape(b * hw, -1)
  x_aug = jnp.concatenate([-xp, jnp.ones((b * hw, 1), x.dtype)], axis=1)
  row_scale = jnp.repeat(scale, hw)

  def step(carry, xs):
    run_min, acc = carry  # acc (rows, C + 1): weighted centre sums, then the sum of weights
    y, lab = xs
    y = y.reshape((-1,) + x.shape[1:])  # stored flat: (chunk, H W C) -> (chunk, H, W, C)
    yp = (_patches(y, k, boundary) - mean_patch).reshape(-1, xp.shape[1])  # (chunk hw, K)
    half_sq = 0.5 * jnp.sum(yp * yp, axis=1, keepdims=True)
    half_sq = jnp.where(jnp.repeat(lab, hw)[:, None] == NO_LABEL, jnp.inf, half_sq)
    # Every x_aug row ends in 1 and no patch entry is infinite, so padding columns are +inf (no NaN).
    energy = jnp.matmul(x_aug, jnp.concatenate([yp, half_sq], axis=1).T, precision=_HIGHEST)
    if conditional:
      # Other-class images get +inf through a (B, 1, chunk, 1) penalty: one fused add instead of
      # a per-entry label comparison on the (B HW, chunk HW) matrix.
      penalty = jnp.where(_valid(query_labels, lab), 0.0, jnp.inf).astype(x.dtype)[:, None, :, None]
      energy = (energy.reshape(b, hw, -1, hw) + penalty).reshape(b * hw, -1)
    run_min, weights, rescale, _ = _softmax_step(run_min, jnp.zeros_like(run_min), energy,
                                                 row_scale, axis=1)
    centres = jnp.concatenate([y.reshape(-1, c), jnp.ones((y.shape[0] * hw, 1), x.dtype)], axis=1)
    acc = acc * rescale[:, None] + jnp.matmul(weights, centres, precision=_HIGHEST)
    return (run_min, acc), None

  init = (_init_stats((b * hw,), x.dtype, axis_name)[0],
          _pcast(jnp.zeros((b * hw, c + 1), x.dtype), axis_name))
  (run_min, acc), _ = lax.scan(step, init, (_chunked(images, chunk), _chunked(labels, chunk)))
  if axis_name is not None:
    run_min, _, (acc,) = _merge_shards(run_min, acc[:, c], (acc,), row_scale, axis_name)
  return (acc[:, :c] / acc[:, c:]).reshape(x.shape)


# ------------------------------------------------------------------------------------------------
# Shared plumbing: query blocks, sharding, size schedules
# ------------------------------------------------------------------------------------------------

def _blocked(core, query_block):
  """Runs core(x, scale, labels, *train) over blocks of `query_block` queries (lax.map)."""

  def run(x, scale, query_labels, *train):
    b = x.shape[0]
    qb = min(query_block, b)
    nb = -(-b // qb)
    pad = nb * qb - b
    if pad:  # padded queries repeat the last one; dropped below
      x, scale, query_labels = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
                                for a in (x, scale, query_labels))
    if nb == 1:
      return core(x, scale, query_labels, *train)[:b]
    by_block = lambda a: a.reshape((nb, qb) + a.shape[1:])
    out = lax.map(lambda q: core(*q, *train), (by_block(x), by_block(scale), by_block(query_labels)))
    return out.reshape((nb * qb,) + out.shape[2:])[:b]

  return run


def _compile(core, mesh, axis, n_train, n_replicated=0):
  """jit(core) where core(x, scale, labels, *train[n_train], *replicated[n_replicated])."""
  if mesh is None:
    return jax.jit(functools.partial(core, axis_name=None))
  fn = jax.shard_map(functools.partial(core, axis_name=axis), mesh=mesh,
                     in_specs=(P(), P(), P()) + (P(axis),) * n_train + (P(),) * n_replicated,
                     out_specs=P())
  return jax.jit(fn)


def _patch_denoise(machines, select, item_shape, classes, dtype, scale_half, arrays, x, sigma,
                   labels=None):
  xq, sigma_b, query_labels = _query(x, sigma, labels, item_shape, classes, dtype)
  scale = _inverse_two_var(sigma_b, half=scale_half)
  outs = [m(xq, scale, query_labels, *arrays) for m in machines]
  out = outs[0]
  if select is not None:
    index = select(sigma_b)[:, None, None, None]
    for i, o in enumerate(outs[1:], start=1):
      out = jnp.where(index == i, o, out)
  return out.astype(jnp.asarray(x).dtype)


def _build(kind, train_images, train_labels, patch_size, *, boundary, chunk_size, query_block,
           dtype, mesh, axis):
  dtype = check_float_dtype(dtype)
  query_block = _check_count(query_block, "query_block")
  _check_mesh_axis(mesh, axis)
  schedule = patch_schedule(patch_size)
  sizes, select = _size_selector(schedule)
  data = _prepare(train_images, train_labels, chunk_size, mesh, axis, dtype,
                  with_mean=kind == "els")
  arrays = [data.images, data.labels]
  machines = [_machine(kind, k, boundary, data.chunk, query_block, mesh, axis,
                       data.classes is not None) for k in sizes]
  if kind == "els":
    # The mean training patch (patches are linear: the mean of the mean image's patches), one per
    # size; each machine takes its own as the replicated argument.
    mean_image = data.mean[None]
    means = [np.asarray(_patches(jnp.asarray(mean_image, jnp.float32), k, boundary)).mean(axis=(0, 1))
             for k in sizes]
    machines = [functools.partial(_with_extra, m, jnp.asarray(mp, dtype)) for m, mp in
                zip(machines, means)]
  static = functools.partial(_patch_denoise, tuple(machines), select, data.item_shape,
                             data.classes, dtype, kind != "els")
  return _with_label_domain(jax.tree_util.Partial(static, arrays), data.classes)


def _with_label_domain(denoiser, classes):
  # The labels the denoiser is defined for (None: any), as the optimal denoiser declares them, for
  # checks that walk a denoiser while the labels are still concrete.
  denoiser.label_domain = classes
  return denoiser


@functools.lru_cache(maxsize=256)
def _machine(kind, k, boundary, chunk, query_block, mesh, axis, conditional):
  """One compiled machine per configuration (cached: denoisers of equal shapes share compilations)."""
  if kind == "els":
    core = functools.partial(_els_core, k=k, boundary=boundary, chunk=chunk,
                             conditional=conditional)
  else:
    core = functools.partial(_ls_core if kind == "ls" else _pspc_core, k=k, chunk=chunk)
  return _compile(_blocked_core(core, query_block), mesh, axis, 2, n_replicated=int(kind == "els"))


def _with_extra(machine, extra, x, scale, query_labels, images, labels):
  return machine(x, scale, query_labels, images, labels, extra)


def _blocked_core(core, query_block):
  """Query blocking that keeps the axis_name keyword for _compile."""

  def fn(x, scale, query_labels, *train, axis_name):
    return _blocked(functools.partial(core, axis_name=axis_name), query_block)(
        x, scale, query_labels, *train)

  return fn


_DOC_COMMON = """
  Common arguments:
    train_images: (N, H, W, C) float rows in [-1, 1] (NHWC): a numpy array or any source with
      len(), .shape and indexing by a slice returning numpy rows (e.g. `sharding.LazyRows` over a
      lazily decoded split, transform=data.to_unit_range). Read once, shard by shard, only the
      rows of this process's devices; never copied whole.
    train_labels: optional (N,) integers >= 0; then `denoise(x, sigma, labels)` sums over the
      training images of each query's class (labels=None: all images).
    patch_size: odd int k >= 1, or a {sigma: k} schedule (nearest sigma in log space applies).
    chunk_size: training images per streaming step.
    query_block: queries per block (lax.map over blocks bounds memory for any batch).
    dtype: jnp.float32 (default) or jnp.float64 (needs jax_enable_x64).
    mesh, axis: optional mesh (one or several processes); training images are sharded over `axis`
      (replicated over the other axes), queries replicated. The result is a replicated array
      (with several processes `sharding.fetch` it to the host).

  Returns:
    denoise(x, sigma, labels=None) -> (B, H, W, C), x of shape (B, H, W, C) float (noisy, any range),
    sigma a scalar or (B,) vector > 0. A jax.tree_util.Partial whose leaves are the training arrays.

  Raises:
    ValueError naming the argument: images not non-empty NHWC float in [-1, 1]
    (`data.convention.check_images`, on the rows each process reads; also a source whose rows do
    not have its declared shape); patch_size not a positive odd integer (or a {sigma > 0: size}
    schedule of them); chunk_size / query_block not a positive integer; boundary not "circular" or
    "zeros"; dtype not float32 / float64; axis not an axis of mesh; train_labels not (N,) integers
    >= 0; query x of the wrong shape or dtype; sigma not > 0 and finite, or neither a scalar nor
    (B,); labels not (B,) integers, or a concrete label with no training images.
"""


def local_denoiser(train_images, patch_size: PatchSize, train_labels=None, *, chunk_size: int = 64,
                   query_block: int = 64, dtype=jnp.float32, mesh: Optional[Mesh] = None,
                   axis: str = DATA_AXIS) -> Denoiser:
  """LS: the local score machine of Kamb & Ganguli (ICML 2025, sec. 3; analytic.md sec. 1).

  out(p) = sum_i w_i(p) y_i(p),  w_i(p) = softmax_i(-||x[P_k(p)] - y_i[P_k(p)]||^2 / 2 sigma^2),
  windows P_k(p) zero-padded outside the image (pixels outside count in neither x nor y_i). Cost per
  query O(N H W (C + 2k)); memory O(query_block x chunk_size x H x W).
  """
  return _build("ls", train_images, train_labels, patch_size, boundary=None,
                chunk_size=chunk_size, query_block=query_block, dtype=dtype, mesh=mesh, axis=axis)


def patch_composite_denoiser(train_images, patch_size: PatchSize, train_labels=None, *,
                             chunk_size: int = 64, query_block: int = 64, dtype=jnp.float32,
                             mesh: Optional[Mesh] = None, axis: str = DATA_AXIS) -> Denoiser:
  """PSPC-square: patch posterior composites of Niedoba et al. (ICML 2025, sec. 4; analytic.md 1).

  For every window q (k x k, centred at each pixel, zero-padded) the posterior mean of the whole
  window over the N same-position training windows, with the LS weights w_i(q); pixel p averages
  the estimates of the windows covering it:
      out(p) = sum_{q in P_k(p)} sum_i w_i(q) y_i(p) / |P_k(p) n image|.
  Two streaming passes (normalisers, then box-summed normalised weights); cost about twice LS.
  """
  return _build("pspc", train_images, train_labels, patch_size, boundary=None,
                chunk_size=chunk_size, query_block=query_block, dtype=dtype, mesh=mesh, axis=axis)


def equivariant_local_denoiser(train_images, patch_size: PatchSize, train_labels=None, *,
                               boundary: str = "circular", chunk_size: Optional[int] = None,
                               query_block: Optional[int] = None, dtype=jnp.float32,
                               mesh: Optional[Mesh] = None, axis: str = DATA_AXIS) -> Denoiser:
  """ELS: the equivariant local score machine of Kamb & Ganguli (ICML 2025, sec. 3; analytic.md 1).

  Candidates are the k x k windows of every training image at every position (N H W of them);
      out(p) = sum_{i,q} w_{iq}(p) y_i(q),  w(p) = softmax_{i,q}(-||x[P_k(p)] - y_i[P_k(q)]||^2 / 2 sigma^2).
  boundary="circular": windows wrap around (exactly equivariant to circular shifts);
  boundary="zeros": windows are zero-padded, for the query and for the training windows alike, and
  compared over the whole window, so a border window of the query matches windows with the same
  zero border best (our choice of the paper's border-aware variant).
  The energies are one matmul per chunk: (B H W, k^2 C + 1) @ (k^2 C + 1, chunk H W), full
  precision, on patches centred at the mean training patch, then one exp per (query window,
  training window) pair and a (B H W, chunk H W) @ (chunk H W, C + 1) matmul for the weighted sums
  and the normaliser. Cost per query 2 H W N H W (k^2 C + C) flops and H W N H W exps.
  Defaults (`els_blocks`): chunk_size = max(1, 1024 // (H W)) images and query_block such that a
  block's energy matrix has at most 2^20 entries (4 MiB in float32, cache-sized on a CPU: at 28x28,
  1 image x 1 query per block measured 2-4x faster than 5 x 1 or 2 x 2 with the earlier six-pass
  code; with the four passes, 1 and 2 images per chunk take the same CPU time).
  """
  _check_boundary(boundary)
  chunk_size = _check_count(chunk_size, "chunk_size", allow_none=True)
  query_block = _check_count(query_block, "query_block", allow_none=True)
  source, _, _ = _training_source(train_images)
  default_chunk, default_block = els_blocks(source.shape, chunk_size)
  chunk_size = default_chunk if chunk_size is None else chunk_size
  query_block = default_block if query_block is None else query_block
  return _build("els", source, train_labels, patch_size, boundary=boundary, chunk_size=chunk_size,
                query_block=query_block, dtype=dtype, mesh=mesh, axis=axis)


def els_blocks(train_shape, chunk_size: Optional[int] = None) -> Tuple[int, int]:
  """ELS's default (chunk_size in training images, query_block) for training images of shape
  (N, H, W, C): about 1,024 training windows per chunk and at most 2^20 energy entries per block."""
  n, h, w = train_shape[:3]
  hw = h * w
  chunk = max(1, 1024 // hw) if chunk_size is None else chunk_size
  return chunk, max(1, (1 << 20) // (hw * min(chunk, n) * hw))


for _fn in (local_denoiser, patch_composite_denoiser, equivariant_local_denoiser):
  if _fn.__doc__:  # None under python -OO
    _fn.__doc__ += _DOC_COMMON


# ------------------------------------------------------------------------------------------------
# The Gaussian (Wiener) denoiser
# ------------------------------------------------------------------------------------------------

class GaussianModel(NamedTuple):
  """Per class (the last row: all images) mean (K, D), eigenvalues (K, r), eigenvectors (K, D, r)."""
  means: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  classes: Tuple[int, ...]  # class of each row but the last


def gaussian_fit(train_images, train_labels=None, *, rank: Optional[int] = None,
                 chunk_size: int = 4096, mesh: Optional[Mesh] = None,
                 axis: str = DATA_AXIS) -> GaussianModel:
  """Mean and covariance (ddof = 0, the empirical distribution's) of the training images, per class
  and pooled, accumulated in float64 over chunks; eigen-decomposed in float64; top `rank` kept.

  train_images: a source of (N, H, W, C) float rows in [-1, 1] (see `_training_source`). With a
  mesh spanning several processes each process reads only its rows (those of its devices' spans of
  the mesh's `axis`), chunk_size rows at a time (twice with train_labels: once per class, once
  pooled), and the float64 sums (D + D^2 per group) are added over processes exactly; with one
  process the result is bit-identical to mesh=None (and without a mesh, or with a mesh of this
  process's devices only, every process reads all rows and runs no collective). The
  eigendecomposition then runs on every process on the same bits (no D x r transfer; the processes
  run it in parallel); a fingerprint compare catches hosts whose LAPACK gives other bits, and
  process 0's result is then sent to all.
  Raises ValueError naming the argument (images, rank, chunk_size, labels, axis).
  """
  source, n, item_shape = _training_source(train_images)
  chunk_size = _check_count(chunk_size, "chunk_size")
  _check_mesh_axis(mesh, axis)
  d = int(np.prod(item_shape))
  if rank is not None:
    try:
      check_number(rank, "rank", low=1, high=d, integer=True)
    except ValueError:
      raise ValueError(f"rank must be None or an integer in [1, {d}] (H W C), got {rank!r}") from None
  labels, domain = training_labels(train_labels, n)
  # This process's rows: an even split of N over the axis (no chunk padding: nothing is laid out).
  mine = counted_rows(np.arange(n), n, padded_rows(n, 1, mesh, axis)[1], mesh, axis)
  if domain is None:
    groups, classes = [(mine, n)], ()
  else:
    classes = tuple(sorted(domain))
    groups = [(mine[labels[mine] == c], int(np.sum(labels == c))) for c in classes] + [(mine, n)]
  r = d if rank is None else int(rank)
  means, values, vectors = [], [], []
  for rows, count in groups:
    s1, s2 = np.zeros(d), np.zeros((d, d))
    for piece in blocks(rows, chunk_size):
      block = _read(source, piece).reshape(-1, d).astype(np.float64)
      s1 += block.sum(axis=0)
      s2 += block.T @ block
    s1, s2 = sum_counted(s1, mesh), sum_counted(s2, mesh)
    mean = s1 / count
    cov = s2 / count - np.outer(mean, mean)
    lam, u = np.linalg.eigh(0.5 * (cov + cov.T))
    lam = np.maximum(lam, 0.0)  # round-off can make zero eigenvalues slightly negative
    means.append(mean)
    values.append(lam[::-1][:r])
    vectors.append(u[:, ::-1][:, :r])
  model = (np.stack(means), np.stack(values), np.stack(vectors))
  if across_processes(mesh):
    model = _same_on_every_process(*model)
  return GaussianModel(*model, classes)


def _same_on_every_process(*arrays):
  """`arrays` (float64, computed on every process from the same bits) as process 0 has them, on
  every process. A crc32 per array in one small all-gather checks that they agree; only where a
  host's LAPACK gave other bits (another CPU's kernels, an eigenvector of the other sign) are
  process 0's arrays sent to all, as raw float64 bits (`sum_over_processes` of process 0's arrays
  and zeros elsewhere: x + 0 = x)."""
  if jax.process_count() == 1:
    return arrays
  prints = np.array([zlib.crc32(np.ascontiguousarray(a).tobytes()) for a in arrays], np.uint32)
  gathered = np.asarray(multihost_utils.process_allgather(prints.view(np.int32)))
  if np.all(gathered == gathered[:1]):
    return arrays
  first = jax.process_index() == 0
  return tuple(sum_over_processes(a if first else np.zeros_like(a)) for a in arrays)


def gaussian_denoiser(train_images, rank: Optional[int] = None, train_labels=None, *,
                      dtype=jnp.float32, chunk_size: int = 4096, mesh: Optional[Mesh] = None,
                      axis: str = DATA_AXIS) -> Denoiser:
  """The Gaussian (Wiener) denoiser: the posterior mean if the data were N(m, S) (analytic.md sec. 1;
  Wang & Vastola, TMLR 2024, sec. 3):

      D(x; sigma) = m + U diag(l / (l + sigma^2)) U^T (x - m),   S = U diag(l) U^T,

  m and S the training mean and covariance (per class with train_labels; labels=None at call time
  uses the pooled ones). rank=r keeps the top r eigenpairs (the component of x - m outside them is
  removed, as for data on an r-dimensional subspace). Its Jacobian is U diag(l / (l + sigma^2)) U^T.

  Args:
    train_images: a source of (N, H, W, C) float rows in [-1, 1] (a numpy array, or
      `sharding.LazyRows` over a lazily decoded split). rank: None or 1 <= r <= H W C.
    train_labels: optional (N,) integers >= 0. dtype: float32 or float64 (x64 on).
    chunk_size: training images read and summed at a time.
    mesh, axis: optional mesh; each process then reads only its rows and the sums are added over
      processes (`gaussian_fit`). The fitted model is the same on every process.
  Returns:
    denoise(x, sigma, labels=None), x (B, H, W, C); cost per query O(K D r) for K classes (all
    classes are evaluated and each query keeps its own). No training-set stream at call time: the
    model (K x D x r) is replicated.
  Raises:
    ValueError naming the argument (images, rank, labels, dtype, chunk_size, axis; unknown concrete
    query labels).
  """
  dtype = check_float_dtype(dtype)
  source, _, item_shape = _training_source(train_images)
  model = gaussian_fit(source, train_labels, rank=rank, chunk_size=chunk_size, mesh=mesh, axis=axis)
  arrays = dict(means=jnp.asarray(model.means, dtype), eigenvalues=jnp.asarray(model.eigenvalues, dtype),
                eigenvectors=jnp.asarray(model.eigenvectors, dtype),
                row_of_class=jnp.asarray(_row_lookup(model.classes), jnp.int32))
  classes = frozenset(model.classes) if model.classes else None
  static = functools.partial(_gaussian_denoise, item_shape, classes, dtype)
  return _with_label_domain(jax.tree_util.Partial(static, arrays), classes)


def _row_lookup(classes):
  """class id -> row in the model (last row: pooled), as a dense table."""
  size = (max(classes) + 1) if classes else 0
  table = np.full((size + 1,), -1, np.int32)
  for row, c in enumerate(classes):
    table[c] = row
  return table


def _gaussian_denoise(item_shape, classes, dtype, arrays, x, sigma, labels=None):
  xq, sigma_b, query_labels = _query(x, sigma, labels, item_shape, classes, dtype)
  return _gaussian_apply(arrays, xq, sigma_b, query_labels).astype(jnp.asarray(x).dtype)


@jax.jit
def _gaussian_apply(arrays, xq, sigma_b, query_labels):
  b = xq.shape[0]
  flat = xq.reshape(b, -1)
  means, lam, u = arrays["means"], arrays["eigenvalues"], arrays["eigenvectors"]
  pooled = means.shape[0] - 1
  table = arrays["row_of_class"]
  in_table = (query_labels >= 0) & (query_labels < table.shape[0] - 1)
  row = jnp.where(query_labels == ANY_LABEL, pooled,
                  jnp.where(in_table, table[jnp.clip(query_labels, 0, table.shape[0] - 1)], -1))
  if means.shape[0] == 1:
    row = jnp.zeros_like(row)
  centred = flat[None] - means[:, None, :]  # (K, B, D)
  coeff = jnp.einsum("kbd,kdr->kbr", centred, u, precision=_HIGHEST)
  lam_b = lam[:, None, :]
  var = (sigma_b * sigma_b)[None, :, None]
  # l = 0 directions shrink to 0 at every sigma (also where sigma^2 underflows: no 0 / 0).
  shrink = jnp.where(lam_b > 0, lam_b / (lam_b + var), 0.0)
  out = means[:, None, :] + jnp.einsum("kbr,kdr->kbd", coeff * shrink, u, precision=_HIGHEST)
  known = row >= 0  # a traced label without training images (not checkable here): NaN, not a guess
  out = jnp.take_along_axis(out, jnp.maximum(row, 0)[None, :, None], axis=0)[0]
  return jnp.where(known[:, None], out, jnp.nan).reshape(xq.shape)
