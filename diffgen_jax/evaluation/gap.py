"""The denoising error on a split over a sigma grid, the relative generalization gap, and its summaries.

    E_D(sigma) = mean over images y of D of  mean over pixels of (D(y + sigma n_y; sigma, c_y) - y)^2
    G(sigma)   = (E_val - E_train) / E_train                                   (paper.md section 6)

Noise: one standard-normal draw n_y per image, n_y = normal(fold_in(key(noise_seed), id_y)), where
id_y is the image's id (e.g. `Split.ids`, its row in the whole split). It is reused for every sigma
and, with the same seed, for every checkpoint, so curves over training differ by the network only,
and the errors of an image do not depend on which batch it lands in or on how the images are
ordered. (Training and validation ids both start at 0, so with one seed the two splits share noise
vectors for equal ids: common random numbers, which lowers the variance of the gap; pass different
seeds for independent draws.)

Compute: for a batch of images all sigmas are evaluated inside one compiled function: `lax.map`
over chunks of `sigma_chunk` noise levels, each chunk flattened into the batch with a per-row sigma.
Every batch has the same shape (the last one is padded), so there is one compilation per
(batch shape, sigma count). Given a mesh, each batch of images is split over its data axis.

Compilation across checkpoints: a pytree denoiser (`jax.tree_util.Partial` over arrays, as the
package's own denoisers are; `denoisers.is_array_pytree`) is passed to the compiled function as an
argument, so the same compiled program serves every checkpoint and training set of the same shapes
(a network: `Partial(apply, params)` with a fixed `apply(params, x, sigma, labels)`). A plain
closure `denoise(x, sigma, labels)` works as well but compiles once per call (its arrays are baked
in as constants).
"""

from __future__ import annotations

import functools
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from diffgen_jax import edm, progress
from diffgen_jax.checks import check_number, check_resamples
from diffgen_jax.data.convention import check_images
from diffgen_jax.denoisers import check_labels, compiled
from diffgen_jax.sharding import LazyRows, batch_multiple, fetch, put_batch, replicated


def image_noise(noise_seed, ids, item_shape, dtype=jnp.float32) -> jax.Array:
  """n_y = normal(fold_in(key(noise_seed), id)) for every id: (len(ids),) + item_shape."""
  key = jax.random.key(noise_seed)
  ids = jnp.asarray(ids, jnp.uint32)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(item_shape),
                                              dtype))(ids)


def _per_image_values(denoise, reference, images, labels, ids, sigmas, noise_seed, *,
                      sigma_chunk):
  """(K, B, S) per-image per-pixel mean squared values for one batch of images and all sigmas.

  K = 1: the denoising error against the clean image. With a reference denoiser, K = 2: also the
  squared distance to reference(x, sigma, labels) on the same noisy inputs (one network pass).
  """
  b = images.shape[0]
  item = images.shape[1:]
  c = sigma_chunk
  noise = image_noise(noise_seed, ids, item, images.dtype)
  chunks = sigmas.reshape(-1, c)
  expand = (1,) * len(item)

  def mse(out, target):
    diff = (out - target).astype(jnp.float32)
    return jnp.mean((diff * diff).reshape(b, c, -1), axis=-1).T  # (c, B)

  def per_chunk(chunk):
    # Rows ordered (image, sigma) so a batch split over devices stays split after the reshape.
    x = images[:, None] + chunk.reshape((1, c) + expand) * noise[:, None]
    x = x.reshape((b * c,) + item)
    sigma = jnp.tile(chunk, b)
    lab = None if labels is None else jnp.repeat(labels, c)
    out = denoise(x, sigma, lab)
    values = [mse(out, jnp.repeat(images, c, axis=0))]
    if reference is not None:
      values.append(mse(out, reference(x, sigma, lab)))
    return jnp.stack(values)  # (K, c, B)

  values = lax.map(per_chunk, chunks)  # (S / c, K, c, B)
  k = values.shape[1]
  return values.transpose(1, 3, 0, 2).reshape(k, b, -1)


# Pytree denoisers are arguments: one compiled function per (treedef, shapes), reused.
_per_image_values_jit = jax.jit(_per_image_values, static_argnames=("sigma_chunk",))


def _as_float_images(images):
  """Float images on the [-1, 1] scale (any (N, ...) shape; values up to 10 in magnitude pass so
  that synthetic data such as Gaussians can be measured; data/convention.py), else ValueError.

  A numpy (or jax) array is checked whole now; any other source with len(), .shape and indexing by
  an int array (a lazily decoded split, `sharding.LazyRows`) is checked batch by batch as it is
  read, so each process reads only the rows its devices evaluate."""
  if not isinstance(images, (np.ndarray, jax.Array)) and hasattr(images, "shape"):
    return LazyRows(images, np.arange(len(images)), transform=_as_float_images)
  a = np.asarray(images)
  check_images(a, "images", nhwc=False, lenient=True)
  return a.astype(np.float32) if a.dtype != np.float32 and a.dtype != np.float64 else a


def _evaluate(denoise, reference, images, labels, sigmas, *, ids, noise_seed, batch_size,
              sigma_chunk, mesh) -> np.ndarray:
  check_number(batch_size, "batch_size", low=1, integer=True)
  if sigma_chunk is not None:
    check_number(sigma_chunk, "sigma_chunk", low=0, integer=True)  # 0 or None: all sigmas at once
  check_number(noise_seed, "noise_seed", low=0, integer=True)
  images = _as_float_images(images)
  n = len(images)
  if n == 0:
    raise ValueError("no images to evaluate")
  sigmas_host = edm.validate_sigma_grid(np.atleast_1d(sigmas))
  s = sigmas_host.size
  ids = np.arange(n) if ids is None else np.asarray(ids)
  if ids.shape != (n,):
    raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
  if labels is not None:
    labels = np.asarray(labels, np.int32)
    if labels.shape != (n,):
      raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
  # Labels are concrete here and traced below: refuse labels without training points now.
  check_labels(denoise, labels)
  check_labels(reference, labels)
  c = max(1, min(sigma_chunk or s, s))
  padded = np.concatenate([sigmas_host, np.full(-s % c, sigmas_host[-1])])
  sigmas_dev = jnp.asarray(padded, np.asarray(images[:1]).dtype)
  batch_size = batch_multiple(min(batch_size, n), mesh)
  put = functools.partial(put_batch, mesh=mesh)
  if mesh is not None:
    sigmas_dev = jax.device_put(sigmas_dev, replicated(mesh))
  fn = compiled(_per_image_values, _per_image_values_jit, denoise, reference, sigma_chunk=c)
  out = []
  with progress.track("denoising errors", n * s, "images x sigmas") as bar:
    for start in range(0, n, batch_size):
      rows = np.minimum(np.arange(start, start + batch_size), n - 1)
      vals = fn(put(LazyRows(images, rows)), None if labels is None else put(labels[rows]),
                put(ids[rows].astype(np.uint32)), sigmas_dev, noise_seed)
      out.append(fetch(vals)[:, :min(batch_size, n - start), :s])
      bar.update(min(batch_size, n - start) * s)
  return np.concatenate(out, axis=1).astype(np.float64)  # (K, N, S)


def denoising_errors(denoise, images, labels=None, sigmas=None, *, ids=None, noise_seed: int = 0,
                     batch_size: int = 128, sigma_chunk: Optional[int] = 8,
                     mesh: Optional[Mesh] = None, return_per_image: bool = False):
  """E(sigma): per-pixel MSE of the denoiser on noisy images, averaged over the images.

  Args:
    denoise: `denoise(x, sigma, labels)`.
    images: (N, ...) float images in [-1, 1] (a fixed subset of a split).
    labels: (N,) int labels passed to the denoiser (c_y), or None.
    sigmas: (S,) increasing noise levels; default `edm.gap_sigma_grid()`.
    ids: (N,) image ids seeding the noise (default 0..N-1); use the images' rows in the split.
    noise_seed: seed of the per-image noise.
    batch_size: images per compiled call (rounded up to a multiple of the mesh's data axis).
    sigma_chunk: noise levels evaluated together (flattened into the batch); None: all at once.
    mesh: optional mesh; batches are sharded over its data axis.
    return_per_image: also return the (N, S) per-image errors (for bootstrapped error bars).

  Returns:
    (S,) float64 errors, or (errors, per_image (N, S)).
  """
  sigmas = edm.gap_sigma_grid() if sigmas is None else sigmas
  per_image = _evaluate(denoise, None, images, labels, sigmas, ids=ids, noise_seed=noise_seed,
                        batch_size=batch_size, sigma_chunk=sigma_chunk, mesh=mesh)[0]
  errors = per_image.mean(axis=0)
  return (errors, per_image) if return_per_image else errors


def errors_and_distance(denoise, reference, images, labels=None, sigmas=None, *, ids=None,
                        noise_seed: int = 0, batch_size: int = 128,
                        sigma_chunk: Optional[int] = 8, mesh: Optional[Mesh] = None,
                        return_per_image: bool = False):
  """`denoising_errors` and the per-pixel mean squared distance between D(x; sigma) and
  `reference(x, sigma, labels)` (e.g. y*; 0 means exact recall of it), from one pass of the network.

  Returns (E (S,), distance (S,)), or with return_per_image ((E, per_image), (dist, per_image)).
  """
  sigmas = edm.gap_sigma_grid() if sigmas is None else sigmas
  err, dist = _evaluate(denoise, reference, images, labels, sigmas, ids=ids, noise_seed=noise_seed,
                        batch_size=batch_size, sigma_chunk=sigma_chunk, mesh=mesh)
  if return_per_image:
    return (err.mean(axis=0), err), (dist.mean(axis=0), dist)
  return err.mean(axis=0), dist.mean(axis=0)


# ------------------------------------------------------------------------------------------------
# Summaries of error curves


# The smallest per-pixel mean squared error a float32 denoiser can resolve on images in [-1, 1]:
# (float32 machine epsilon)^2 = 1.4e-14. A denoiser that returns a training image exactly up to
# rounding (y*, or a local machine at sigma -> 0) lands below it, at a value set by the order of its
# float32 sums (1e-17 .. 1e-15 for the same machine on 1 and 2 devices): not a measured error.
FLOAT32_ERROR_FLOOR = float(np.finfo(np.float32).eps) ** 2


def relative_gap(e_val, e_train, floor: float = FLOAT32_ERROR_FLOOR) -> np.ndarray:
  """G = (E_val - E_train) / E_train (paper eq. 4), elementwise (any matching shapes), float64.

  A training error at or below `floor` (a finite number >= 0; default FLOAT32_ERROR_FLOOR, for
  float32 denoisers on images in [-1, 1]; 0.0 divides whatever the values, e.g. for float64
  denoisers) is not a measurement: there G is +inf (the training images are recalled exactly, as
  y*'s E_train = 0 gives), or NaN where E_val is at the floor too (nothing measured). Without the
  floor y*'s G at small sigma would be ~1e12-1e15, a number set by float32 rounding that changes
  with the device count. E_val at the floor with E_train above it gives G = -1 up to a rounding
  term of relative size floor / E_train: a stable value (the log-ratio comparison of the ladder
  summary, where that term is the whole signal, leaves such sigmas out instead).
  Raises ValueError for a negative, NaN or infinite floor, or negative errors.
  """
  check_number(floor, "floor", low=0.0)
  e_val = np.asarray(e_val, np.float64)
  e_train = np.asarray(e_train, np.float64)
  for name, e in (("e_val", e_val), ("e_train", e_train)):
    if np.any(e < 0):
      raise ValueError(f"{name} must be mean squared errors >= 0, got a minimum of {np.nanmin(e)}")
  with np.errstate(divide="ignore", invalid="ignore"):
    g = (e_val - e_train) / e_train
  at_floor = e_train <= floor
  return np.where(at_floor, np.where(e_val > floor, np.inf, np.nan), g)


def bootstrap_relative_gap(per_image_val, per_image_train, *, num_resamples: int = 1000,
                           seed: int = 0, confidence: float = 0.95) -> Tuple[np.ndarray, np.ndarray]:
  """Percentile bootstrap interval of G(sigma), resampling images of each split independently.

  per_image_val: (N_val, S), per_image_train: (N_train, S) from `return_per_image=True`.
  Returns (low (S,), high (S,)). Raises ValueError for num_resamples below
  `checks.check_resamples` (40 at 95%) or confidence outside (0, 1).
  """
  check_resamples(num_resamples, confidence)
  rng = np.random.default_rng(seed)
  means = []
  for per_image in (per_image_val, per_image_train):
    a = np.asarray(per_image, np.float64)
    n = a.shape[0]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=num_resamples)  # (R, N)
    means.append(counts @ a / n)
  gaps = relative_gap(*means)
  tail = 50.0 * (1.0 - confidence)
  return np.percentile(gaps, tail, axis=0), np.percentile(gaps, 100.0 - tail, axis=0)


def train_val_gap(denoise, train, val, sigmas, *, noise_seeds=(0, 1), batch_size: int = 128,
                  mesh: Optional[Mesh] = None, reference=None,
                  interval: bool = True) -> Dict[str, np.ndarray]:
  """E_train, E_val and G(sigma) of one denoiser, the one computation every caller uses: each split
  through `denoising_errors` (`errors_and_distance` given a reference), G by `relative_gap` and
  its 95% interval by `bootstrap_relative_gap` (its defaults).

  train, val: (images, labels, ids) of each split; labels and ids may be None.
  noise_seeds: the (train, val) noise seeds; two seeds draw independent noise for the two splits,
    whose ids overlap; one seed twice gives common random numbers.
  reference: optional denoiser (e.g. y*): adds the distance to it from the same pass.
  interval: False skips the bootstrap.

  Returns float64 arrays: e_train, e_val, gap (S,); per_image_train, per_image_val (N, S);
  gap_low, gap_high (S,) with interval; to_reference_{train,val} (S,) and
  to_reference_per_image_{train,val} (N, S) with a reference.
  """
  out = {}
  for split, (x, y, ids), seed in (("train", train, noise_seeds[0]), ("val", val, noise_seeds[1])):
    kw = dict(ids=ids, noise_seed=seed, batch_size=batch_size, mesh=mesh, return_per_image=True)
    if reference is None:
      out[f"e_{split}"], out[f"per_image_{split}"] = denoising_errors(denoise, x, y, sigmas, **kw)
    else:
      ((out[f"e_{split}"], out[f"per_image_{split}"]),
       (out[f"to_reference_{split}"], out[f"to_reference_per_image_{split}"])) = (
          errors_and_distance(denoise, reference, x, y, sigmas, **kw))
  with np.errstate(divide="ignore", invalid="ignore"):
    out["gap"] = relative_gap(out["e_val"], out["e_train"])
    if interval:
      out["gap_low"], out["gap_high"] = bootstrap_relative_gap(out["per_image_val"],
                                                               out["per_image_train"])
  return out


class Onset(NamedTuple):
  images_seen: np.ndarray  # (S,) images seen at the checkpoint of minimal E_val, per sigma
  index: np.ndarray  # (S,) that checkpoint's index
  rises: np.ndarray  # (S,) bool: E_val rises after it (a later checkpoint exceeds the minimum)


def overfitting_onset(errors_val, images_seen, *, rtol: float = 0.0) -> Onset:
  """Per sigma, the checkpoint where E_val(sigma) is smallest over training, and whether it rises.

  errors_val: (K, S) E_val per checkpoint (rows in training order); images_seen: (K,) increasing.
  rises: some later checkpoint has E_val > (1 + rtol) * min (False when the minimum is the last).
  A checkpoint whose E_val is not finite (NaN or +-inf: a diverged network) is never the minimum
  and never a rise; a sigma where no checkpoint is finite has index -1, images_seen -1 and rises
  False. Raises ValueError for mismatched shapes or images_seen not finite and strictly increasing.
  """
  e = np.asarray(errors_val, np.float64)
  seen = np.asarray(images_seen)
  if e.ndim != 2 or e.shape[0] == 0 or seen.shape != (e.shape[0],):
    raise ValueError(f"errors_val must be (K, S) with K >= 1 checkpoints and images_seen (K,), "
                     f"got {e.shape}, {seen.shape}")
  check_number(rtol, "rtol", low=0.0)
  if seen.dtype.kind not in "iuf":
    raise ValueError(f"images_seen must be numbers, got dtype {seen.dtype}")
  if not np.all(np.isfinite(seen)) or np.any(np.diff(seen) <= 0):
    raise ValueError("images_seen must be finite and strictly increasing (checkpoints in training "
                     f"order), got {seen.tolist()}")
  finite = np.isfinite(e)
  defined = finite.any(axis=0)
  index = np.where(defined, np.argmin(np.where(finite, e, np.inf), axis=0), -1)
  minimum = e[index, np.arange(e.shape[1])]
  finite_later = (np.arange(e.shape[0])[:, None] > index[None, :]) & finite
  later = np.where(finite_later, e, -np.inf).max(axis=0)
  rises = defined & (later > (1.0 + rtol) * minimum)
  return Onset(np.where(defined, seen[index], -1), index, rises)


peak = edm.peak  # (sigma, value) at the maximum of a gap curve, NaNs ignored (one home: edm)


def gap_vs_images(sigmas, gaps, images_seen, at_sigmas: Sequence[float]
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """G at chosen sigmas over training: linear interpolation in log sigma of each checkpoint's curve.

  sigmas: (S,) increasing; gaps: (K, S); images_seen: (K,). Returns (images_seen (K,), (K, A)).
  """
  sigmas = np.asarray(sigmas, np.float64)
  gaps = np.asarray(gaps, np.float64)
  at = np.log(np.asarray(at_sigmas, np.float64))
  if gaps.ndim != 2 or gaps.shape[1] != sigmas.size:
    raise ValueError(f"gaps must be (K, {sigmas.size}), got {gaps.shape}")
  if np.any(at < np.log(sigmas[0])) or np.any(at > np.log(sigmas[-1])):
    raise ValueError(f"at_sigmas must lie in [{sigmas[0]}, {sigmas[-1]}]")
  values = np.stack([np.interp(at, np.log(sigmas), g) for g in gaps])
  return np.asarray(images_seen), values
