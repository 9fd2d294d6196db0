"""Pieces shared by the network families: noise embeddings, label encoding, GroupNorm, resampling.

Conventions for every family (see `diffgen_jax.models`):
- images are NHWC; the raw network maps (x_in (B,H,W,C), c_noise (B,), labels (B,) int or None)
  to F (B,H,W,C);
- labels are ints in [0, num_classes]; label == num_classes is the NULL label (classifier-free
  guidance). `class_one_hot` encodes the null label (and labels=None) as the all-zero vector, which
  is what EDM/EDM2 feed for "no class" (their label dropout multiplies the one-hot by 0);
- random Fourier features (NCSN++'s `FourierEmbedding`, EDM2's `MPFourier`) are fixed, non-trained
  buffers in the PyTorch originals. Here they are constants drawn from a numpy generator with a fixed
  seed at trace time, so the variables hold only {"params": ...}, and every model built from the
  same config has the same features (the originals draw them once per model and pickle them).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
  """The jnp dtype of a config's `dtype` field ("float32", "bfloat16" or "float64").

  Params are created in float32 and used as given; "float64" (every intermediate in float64, e.g.
  for exact parity with a float64 reference) needs jax's x64 mode
  (`jax.config.update("jax_enable_x64", True)`) and float64 params. Raises ValueError otherwise.
  """
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not one of the allowed values {tuple(DTYPES)}")
  if name == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("dtype 'float64' needs jax's x64 mode: jax.config.update('jax_enable_x64', "
                     "True) (or JAX_ENABLE_X64=1) before building the network")
  return DTYPES[name]


def precise_dtype(dtype):
  """The dtype for numerically sensitive steps: float32, or float64 on the float64 path."""
  return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------------------------------
# Noise (timestep) embeddings. Each maps c_noise (B,) to (B, num_channels) float32 features.


def positional_embedding(x, num_channels: int, max_positions: float = 10000.0,
                         endpoint: bool = False, dtype=jnp.float32) -> jax.Array:
  """Transformer-style sinusoidal embedding [cos(x f_k), sin(x f_k)], f_k = max^(-k/(n/2 - e)).

  endpoint=True is EDM's DDPM++ variant (the lowest frequency is exactly 1/max_positions);
  endpoint=False is ADM's/DiT's `timestep_embedding` (f_k = exp(-ln(max) k / half)). An odd
  num_channels gets a trailing zero column, as in DiT.
  """
  half = num_channels // 2
  denom = max(half - (1 if endpoint else 0), 1)
  freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=dtype) / denom)
  args = jnp.asarray(x, dtype)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if num_channels % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def fourier_embedding(x, num_channels: int, scale: float = 16.0, seed: int = 0) -> jax.Array:
  """NCSN++'s random Fourier features [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2), fixed."""
  freqs = np.random.RandomState(seed).randn(num_channels // 2).astype(np.float32) * scale
  args = jnp.asarray(x, jnp.float32)[:, None] * jnp.asarray(2 * np.pi * freqs)[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def mp_fourier_features(num_channels: int, bandwidth: float = 1.0, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
  """EDM2's MPFourier draws, (freqs, phases) float32 (num_channels,): f ~ 2 pi N(0, bandwidth^2),
  phi ~ 2 pi U(0, 1), from a fixed numpy seed (the initial values of a network built here)."""
  rs = np.random.RandomState(seed)
  freqs = (2 * np.pi * rs.randn(num_channels) * bandwidth).astype(np.float32)
  phases = (2 * np.pi * rs.rand(num_channels)).astype(np.float32)
  return freqs, phases


# ----------------------------------------------------------------------------------------------
# Labels.


def class_one_hot(labels: Optional[jax.Array], num_classes: int, batch: int,
                  dtype=jnp.float32) -> jax.Array:
  """(B, num_classes) one-hot; the null label (== num_classes) and labels=None give all zeros."""
  if labels is None:
    return jnp.zeros((batch, num_classes), dtype)
  labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
  return jax.nn.one_hot(labels, num_classes, dtype=dtype)  # out-of-range (the null label) -> 0


def null_labels(labels: Optional[jax.Array], num_classes: int, batch: int) -> jax.Array:
  """Integer labels (B,) in [0, num_classes]; None and out-of-range labels become the null label.

  (The same convention as `class_one_hot`, whose out-of-range one-hot rows are all zero.)
  """
  if labels is None:
    return jnp.full((batch,), num_classes, jnp.int32)
  labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
  return jnp.where((labels < 0) | (labels > num_classes), num_classes, labels)


# ----------------------------------------------------------------------------------------------
# Normalization and resampling.


def group_norm_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
  """Number of GroupNorm groups: EDM's rule min(32, channels // 4), lowered to a divisor.

  EDM's `GroupNorm(num_groups=32, min_channels_per_group=4)` uses min(32, C // 4) groups, so small
  widths (the tiny CPU presets) keep >= 4 channels per group. Where that count does not divide C
  (never for the published widths) we take the largest divisor of C below it; at least 1 group.
  """
  groups = max(1, min(max_groups, channels // min_channels_per_group))
  while channels % groups:
    groups -= 1
  return groups


class GroupNorm(nn.Module):
  """GroupNorm with the group count of `group_norm_groups`; statistics in float32."""
  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=group_norm_groups(x.shape[-1]), epsilon=self.eps,
                        dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)


def downsample_2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (EDM/EDM2's resample filter [1,1]); H and W must be even."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"cannot downsample a {h}x{w} feature map by 2: the image resolution must be "
                     f"divisible by 2^(number of levels - 1)")
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour upsampling by 2 (the transposed [1,1] filter of EDM/EDM2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def resample(x: jax.Array, mode: str) -> jax.Array:
  if mode == "keep":
    return x
  if mode == "down":
    return downsample_2x(x)
  if mode == "up":
    return upsample_2x(x)
  raise ValueError(f"resample mode {mode!r} is not one of ('keep', 'down', 'up')")


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
  """softmax_k(q.k / sqrt(c)) computed in float32 (float64 for float64 inputs); q (B,Q,H,c),
  k (B,K,H,c) -> (B,H,Q,K)."""
  scale = float(1.0 / np.sqrt(q.shape[-1]))
  precise = precise_dtype(q.dtype)
  logits = jnp.einsum("bqhc,bkhc->bhqk", q.astype(precise), k.astype(precise) * scale)
  return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Multi-head attention on (B, N, heads, c) tensors; returns (B, N, heads, c)."""
  w = attention_weights(q, k)
  return jnp.einsum("bhqk,bkhc->bqhc", w, v)


def level_resolutions(img_resolution: int, num_levels: int) -> list[int]:
  """Feature-map resolutions of a U-Net with `num_levels` levels, halving at each level."""
  return [img_resolution >> level for level in range(num_levels)]


def unet_resolution_ok(img_resolution: int, num_levels: int) -> bool:
  """A U-Net with num_levels levels needs img_resolution divisible by 2^(num_levels - 1)."""
  return img_resolution % (2 ** (num_levels - 1)) == 0
