"""The input-gradient correlation score: the mean distance, in pixels, at which a denoiser looks.

For output pixel p and output channel c with input-sensitivity
a_pc(q) = sum over input channels of |dD_c(p) / dx(q)|,
    score_pc = sum_q dist(p, q) a_pc(q) / sum_q a_pc(q),
dist the Euclidean distance between pixel positions; the score of an image is the mean of score_pc
over output pixels p and output channels c (rows with a_pc = 0 everywhere are left out; NaN if all
are, or if any row's gradient is NaN). Memory-bounded: the Jacobian is never formed; rows come from VJPs of one-hot cotangents,
vmapped over a chunk of output positions and `lax.map`ped over chunks, and reduced at once.
Examples of a batch are independent, so one VJP serves every image of the batch.
(Restricted receptive fields and guidance, the other factors that act on a denoiser, are
combinators in `diffgen_jax.denoisers`.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax.data.convention import check_images
from diffgen_jax.denoisers import Denoiser, check_labels, compiled
from diffgen_jax.evaluation.gap import image_noise


# ------------------------------------------------------------------------------------------------
# Input-gradient correlation score


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
    ok = (den != 0) & (r < m)  # `!= 0`, not `> 0`: a NaN row counts (and makes the score NaN)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0), ok

  ratios, ok = lax.map(jax.vmap(one), rows.reshape(-1, chunk_size))  # (chunks, chunk, B)
  ratios = ratios.reshape(-1, b)
  ok = ok.reshape(-1, b)
  counted = jnp.sum(ok, axis=0)
  return jnp.where(counted > 0, jnp.sum(ratios, axis=0) / jnp.maximum(counted, 1), jnp.nan)


_score_jit = jax.jit(_score, static_argnames=("chunk_size",))


def gradient_correlation_vs_sigma(denoise: Denoiser, images, sigmas, labels=None, *, ids=None,
                                  noise_seed: int = 0, chunk_size: int = 64) -> np.ndarray:
  """(S, B) scores at noisy inputs y + sigma n_y (the gap evaluation's per-image noise); images
  (B, H, W, C) float in [-1, 1] (ValueError otherwise, data/convention.py)."""
  check_images(images, "images")
  check_labels(denoise, labels)
  images = jnp.asarray(images, jnp.float32)
  ids = np.arange(images.shape[0]) if ids is None else np.asarray(ids)
  noise = image_noise(noise_seed, ids, images.shape[1:], images.dtype)
  fn = compiled(_score, _score_jit, denoise, chunk_size=chunk_size)  # score(x, sigma, labels)
  labels = None if labels is None else jnp.asarray(labels, jnp.int32)
  return np.stack([np.asarray(fn(images + s * noise, jnp.float32(s), labels))
                   for s in np.asarray(sigmas, np.float32)])
