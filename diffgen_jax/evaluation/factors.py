"""Factors of the generalization gap that act on the denoiser (paper.md section 6).

* Restricted receptive field: `crop_averaged(denoise, s, image_size)` applies any denoiser to the
  four corner crops of size s x s (top-left, top-right, bottom-left, bottom-right; 2x2 overlapping
  crops covering the image when s >= H/2) and averages overlapping pixels. s = the full size returns
  the denoiser itself.
* Guidance: `cfg_pair` (the classifier-free negative: the same denoiser with the null label) and
  `cfg_denoiser`; guidance itself is `denoisers.guided`.
* Analytic baselines: `analytic_denoisers` builds y* and y_delta unconditionally, per class and per
  k-means cluster.
* Input-gradient correlation score (`gradient_correlation_score`): the mean distance, in pixels, at
  which the denoiser looks. For output pixel p and output channel c with input-sensitivity
  a_pc(q) = sum over input channels of |dD_c(p) / dx(q)|,
      score_pc = sum_q dist(p, q) a_pc(q) / sum_q a_pc(q),
  dist the Euclidean distance between pixel positions; the score of an image is the mean of score_pc
  over output pixels p and output channels c (rows with a_pc = 0 everywhere are left out; NaN if all
  are). Memory-bounded: the Jacobian is never formed; rows come from VJPs of one-hot cotangents,
  vmapped over a chunk of output positions and `lax.map`ped over chunks, and reduced at once.
  Examples of a batch are independent, so one VJP serves every image of the batch.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax.data.convention import check_images
from diffgen_jax.denoisers import Denoiser, check_labels, guided, is_array_pytree, with_labels
from diffgen_jax.evaluation.gap import image_noise
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser


def _hw(image_size) -> Tuple[int, int]:
  if isinstance(image_size, int):
    return image_size, image_size
  h, w = image_size
  return int(h), int(w)


def crop_offsets(crop_size: int, image_size) -> Tuple[Tuple[int, int], ...]:
  """Top-left corners of the four crops: top-left, top-right, bottom-left, bottom-right."""
  h, w = _hw(image_size)
  s = crop_size
  if not (s <= h and s <= w and 2 * s >= h and 2 * s >= w):
    raise ValueError(f"crop_size must satisfy max(H, W)/2 <= s <= min(H, W) so that 2x2 corner "
                     f"crops cover the {h}x{w} image, got {s}")
  return ((0, 0), (0, w - s), (h - s, 0), (h - s, w - s))


def crop_averaged(denoise: Denoiser, crop_size: int, image_size) -> Denoiser:
  """The denoiser restricted to s x s corner crops, overlapping pixels averaged.

  Overlap counts are 1, 2 or 4 and the four crop outputs are summed pairwise, so a pixelwise
  denoiser gives bit-identical results to the unwrapped one. Crops go through the denoiser as one
  batch of 4B (sigma and labels repeated). Returns a pytree (`jax.tree_util.Partial`) over the
  wrapped denoiser.
  """
  h, w = _hw(image_size)
  crop_offsets(crop_size, (h, w))
  if crop_size == h and crop_size == w:
    return denoise
  return jax.tree_util.Partial(functools.partial(_crop_averaged, crop_size, (h, w)), denoise)


def _crop_averaged(s, hw, denoise, x, sigma, labels=None):
  h, w = hw
  offsets = crop_offsets(s, hw)
  count = np.zeros((h, w), np.float32)
  for i, j in offsets:
    count[i:i + s, j:j + s] += 1.0
  b = x.shape[0]
  if x.shape[1:3] != (h, w):
    raise ValueError(f"x has spatial size {x.shape[1:3]}, the wrapper was made for {(h, w)}")
  crops = jnp.concatenate([x[:, i:i + s, j:j + s] for i, j in offsets], axis=0)
  sigma = jnp.asarray(sigma)
  sigma = sigma if sigma.ndim == 0 else jnp.tile(sigma, 4)
  out = denoise(crops, sigma, None if labels is None else jnp.tile(jnp.asarray(labels), 4))
  placed = [jnp.pad(out[k * b:(k + 1) * b], ((0, 0), (i, h - s - i), (j, w - s - j), (0, 0)))
            for k, (i, j) in enumerate(offsets)]
  total = (placed[0] + placed[1]) + (placed[2] + placed[3])
  return total / jnp.asarray(count, total.dtype)[None, :, :, None]


# ------------------------------------------------------------------------------------------------
# Guidance and analytic baselines


def cfg_pair(denoise: Denoiser, null_label: int) -> Denoiser:
  """The classifier-free negative: `denoise` with every label replaced by `null_label`."""
  return jax.tree_util.Partial(_cfg_negative, denoise, null_label)


def _cfg_negative(denoise, null_label, x, sigma, labels=None):
  null = jnp.full((x.shape[0],), null_label, jnp.int32)
  return with_labels(denoise, null)(x, sigma)


def cfg_denoiser(denoise: Denoiser, null_label: int, weight: float) -> Denoiser:
  """Classifier-free guidance D_c + w (D_c - D_null)."""
  return guided(denoise, cfg_pair(denoise, null_label), weight)


def analytic_denoisers(train_images, train_labels=None, deltas: Sequence[float] = (0.0,), *,
                       cluster_labels=None, chunk_size: int = 2048, mesh=None
                       ) -> Dict[Tuple[str, float], Denoiser]:
  """y* (delta = 0) and y_delta, unconditional and conditional, keyed by (condition, delta).

  condition: "unconditional"; "class" when train_labels are given; "cluster" when cluster_labels
  (e.g. `kmeans.kmeans(features, k)[1]`) are given. A conditional denoiser sums over the query
  label's training points: call it with the class / cluster of each query.
  """
  conditions = {"unconditional": None}
  if train_labels is not None:
    conditions["class"] = train_labels
  if cluster_labels is not None:
    conditions["cluster"] = cluster_labels
  out = {}
  for name, labels in conditions.items():
    optimal = empirical_optimal_denoiser(train_images, labels, chunk_size=chunk_size, mesh=mesh)
    for delta in deltas:
      out[(name, float(delta))] = error_prone_denoiser(optimal, float(delta))
  return out


# ------------------------------------------------------------------------------------------------
# Input-gradient correlation score


def _score_fn(denoise, chunk_size):
  """score(x, sigma, labels) -> (B,), compiled; a pytree denoiser enters as an argument."""
  if is_array_pytree(denoise):
    return functools.partial(_score_jit, denoise, chunk_size=chunk_size)
  return jax.jit(functools.partial(_score, denoise, chunk_size=chunk_size))


def _score(denoise, x, sigma, labels, *, chunk_size):
  b, h, w = x.shape[:3]
  out, vjp = jax.vjp(lambda x: denoise(x, sigma, labels), x)
  c_out = out.shape[-1]
  m = h * w * c_out
  rows = jnp.arange(-(-m // chunk_size) * chunk_size)
  ii = jnp.arange(h, dtype=jnp.float32)[:, None]
  jj = jnp.arange(w, dtype=jnp.float32)[None, :]

  def one(r):
    r_c = jnp.minimum(r, m - 1)
    pi, pj, ch = r_c // (w * c_out), (r_c // c_out) % w, r_c % c_out
    cotangent = jnp.zeros_like(out).at[:, pi, pj, ch].set(1.0)
    (grad,) = vjp(cotangent)
    a = jnp.sum(jnp.abs(grad), axis=-1).astype(jnp.float32)  # (B, H, W)
    dist = jnp.sqrt((ii - pi) ** 2 + (jj - pj) ** 2)
    num = jnp.sum(a * dist, axis=(1, 2))
    den = jnp.sum(a, axis=(1, 2))
    ok = (den > 0) & (r < m)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0), ok

  ratios, ok = lax.map(jax.vmap(one), rows.reshape(-1, chunk_size))  # (chunks, chunk, B)
  ratios = ratios.reshape(-1, b)
  ok = ok.reshape(-1, b)
  counted = jnp.sum(ok, axis=0)
  return jnp.where(counted > 0, jnp.sum(ratios, axis=0) / jnp.maximum(counted, 1), jnp.nan)


_score_jit = jax.jit(_score, static_argnames=("chunk_size",))


def gradient_correlation_score(denoise: Denoiser, x, sigma, labels=None, *,
                               chunk_size: int = 64) -> np.ndarray:
  """(B,) mean pixel distance the denoiser looks at, per image of x (B, H, W, C); see the module
  docstring. chunk_size output positions (pixel x channel) are processed per vmapped VJP."""
  fn = _score_fn(denoise, chunk_size)
  return np.asarray(fn(jnp.asarray(x), jnp.asarray(sigma, jnp.asarray(x).dtype), labels))


def gradient_correlation_vs_sigma(denoise: Denoiser, images, sigmas, labels=None, *, ids=None,
                                  noise_seed: int = 0, chunk_size: int = 64) -> np.ndarray:
  """(S, B) scores at noisy inputs y + sigma n_y (the gap evaluation's per-image noise); images
  (B, H, W, C) float in [-1, 1] (ValueError otherwise, data/convention.py)."""
  check_images(images, "images")
  check_labels(denoise, labels)
  images = jnp.asarray(images, jnp.float32)
  ids = np.arange(images.shape[0]) if ids is None else np.asarray(ids)
  noise = image_noise(noise_seed, ids, images.shape[1:], images.dtype)
  fn = _score_fn(denoise, chunk_size)
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)
  return np.stack([np.asarray(fn(images + s * noise, jnp.float32(s), labels))
                   for s in np.asarray(sigmas, np.float32)])
