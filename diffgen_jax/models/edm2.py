"""EDM2 magnitude-preserving U-Net (NVlabs edm2 `training/networks_edm2.py`, config G), NHWC.

Magnitude-preserving (MP) pieces, each keeping unit-variance inputs at unit variance:
  mp_silu(x)      = silu(x) / 0.596
  mp_sum(a, b, t) = lerp(a, b, t) / sqrt((1-t)^2 + t^2)
  mp_cat(a, b, t) = [wa a, wb b], wa = C (1-t)/sqrt(Na), wb = C t/sqrt(Nb), C = sqrt((Na+Nb)/((1-t)^2+t^2))
  MP Fourier features sqrt(2) cos(f c_noise + phi)  (`MPFourier`: f and phi are parameters,
                  held fixed in training by a stop_gradient, as edm2's buffers, so that a
                  published checkpoint's values load; initialized from a fixed numpy seed)
  MPConv: no bias; the effective weight is normalize(w) * gain / sqrt(fan_in), so every output
          channel's weight has norm `gain` and unit-variance inputs give unit-variance outputs.

Forced weight normalization, done functionally: every MP weight is a parameter named `mp_weight`
(layout (kh, kw, in, out) or (in, out)); `normalize_weights(params)` rescales each output channel
of each `mp_weight` to norm sqrt(fan_in) (unit RMS), as edm2's `self.weight.copy_(normalize(w))`.
The training step applies it after every optimizer update (`models.weight_projection`); the forward
pass normalizes again (edm2's "traditional weight normalization"), so it is correct either way.

Log-variance head u(sigma) (EDM2 loss: lambda/exp(u) * err + u): MP Fourier features of c_noise
(`logvar_channels`, a second fixed seed) -> MPConv 1x1 -> scalar. Call the module with
`return_logvar=True` to get (F, logvar (B,)). Its params are created at init whatever
return_logvar is (so `model.init` with either setting gives the same tree); `init_variables` in
`diffgen_jax.models` passes return_logvar=True anyway.

Labels: one-hot (null label -> zero vector, as edm2's unconditional zeros) * sqrt(num_classes) ->
MPConv -> mp_sum with the noise embedding (t = label_balance).
The output is multiplied by a learned gain initialized at 0 (F = 0 at init).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.models import layers

MP_WEIGHT = "mp_weight"  # the parameter name that marks a magnitude-preserving weight
NORMALIZE_EPS = 1e-4


def normalize(x: jax.Array, axis=None, eps: float = NORMALIZE_EPS) -> jax.Array:
  """edm2's normalize: x / (eps + ||x|| sqrt(n_kept / n_total)) over `axis` (unit RMS over axis).

  axis=None normalizes over every axis but the last (per output channel of a weight).
  """
  if axis is None:
    axis = tuple(range(x.ndim - 1))
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  n = int(np.prod([x.shape[a] for a in axis]))
  norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(layers.precise_dtype(x.dtype))), axis=axis,
                          keepdims=True))
  norm = eps + norm * float(np.sqrt(1.0 / n))
  return (x / norm.astype(x.dtype)).astype(x.dtype)


def effective_weight(w: jax.Array, gain=1.0) -> jax.Array:
  """The weight MPConv uses: normalize(w) * gain / sqrt(fan_in); each output channel has norm gain."""
  fan_in = int(np.prod(w.shape[:-1]))
  return normalize(w.astype(layers.precise_dtype(w.dtype))) * (gain / float(np.sqrt(fan_in)))


def normalize_weights(params: Any) -> Any:
  """Forced weight normalization of every `mp_weight` leaf; other leaves pass through.

  Works on any pytree of nested dicts (params, EMA params, {"params": ...}).
  """

  def project(path, leaf):
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return normalize(leaf) if name == MP_WEIGHT else leaf

  return jax.tree_util.tree_map_with_path(project, params)


def mp_silu(x: jax.Array) -> jax.Array:
  return nn.silu(x) / 0.596


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
  return (a + (b - a) * t) / float(np.sqrt((1 - t) ** 2 + t ** 2))


def mp_cat(a: jax.Array, b: jax.Array, t: float = 0.5, axis: int = -1) -> jax.Array:
  na, nb = a.shape[axis], b.shape[axis]
  c = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
  wa = float(c / np.sqrt(na) * (1 - t))
  wb = float(c / np.sqrt(nb) * t)
  return jnp.concatenate([wa * a, wb * b], axis=axis)


class MPConv(nn.Module):
  """Magnitude-preserving conv (kernel_size=(k, k)) or fully connected layer (kernel_size=())."""
  features: int
  kernel_size: Sequence[int] = ()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, gain=1.0):
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    w = self.param(MP_WEIGHT, nn.initializers.normal(1.0), shape, jnp.float32)
    w = effective_weight(w.astype(layers.precise_dtype(self.dtype)), gain).astype(self.dtype)
    x = x.astype(self.dtype)
    if not self.kernel_size:
      return x @ w
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class MPFourier(nn.Module):
  """edm2's MPFourier: c_noise (B,) -> sqrt(2) cos(c_noise f + phi) (B, num_channels).

  f ("freqs") and phi ("phases") are parameters so that a checkpoint's values load (edm2 keeps them
  as per-model random buffers); a stop_gradient keeps them fixed in training (zero gradient, hence
  zero Adam update). Initial values: `layers.mp_fourier_features(num_channels, seed=seed)`.
  Computed in float32 (float64 on the float64 path), as edm2.
  """
  num_channels: int
  seed: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    freqs, phases = layers.mp_fourier_features(self.num_channels, seed=self.seed)
    freqs = self.param("freqs", lambda _: jnp.asarray(freqs))
    phases = self.param("phases", lambda _: jnp.asarray(phases))
    precise = layers.precise_dtype(self.dtype)
    freqs, phases = (jax.lax.stop_gradient(v).astype(precise) for v in (freqs, phases))
    y = jnp.asarray(x, precise)[:, None] * freqs[None, :] + phases[None, :]
    return jnp.cos(y) * float(np.sqrt(2.0))


class Block(nn.Module):
  """EDM2 encoder/decoder block with optional self-attention (edm2 Figure 21)."""
  out_channels: int
  flavor: str = "enc"  # "enc" or "dec"
  resample_mode: str = "keep"
  attention: bool = False
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: Optional[float] = 256.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    in_channels = x.shape[-1]
    conv_skip = (MPConv(self.out_channels, (1, 1), self.dtype, name="conv_skip")
                 if in_channels != self.out_channels else None)
    # Main branch.
    x = layers.resample(x, self.resample_mode)
    if self.flavor == "enc":
      if conv_skip is not None:
        x = conv_skip(x)
      x = normalize(x, axis=-1)  # pixel norm

    # Residual branch.
    y = MPConv(self.out_channels, (3, 3), self.dtype, name="conv_res0")(mp_silu(x))
    emb_gain = self.param("emb_gain", nn.initializers.zeros, (), jnp.float32)
    c = MPConv(self.out_channels, (), self.dtype, name="emb_linear")(emb, gain=emb_gain) + 1
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = MPConv(self.out_channels, (3, 3), self.dtype, name="conv_res1")(y)

    # Connect the branches.
    if self.flavor == "dec" and conv_skip is not None:
      x = conv_skip(x)
    x = mp_sum(x, y, t=self.res_balance)

    # Self-attention with pixel-normalized q, k, v.
    num_heads = self.out_channels // self.channels_per_head if self.attention else 0
    if num_heads:
      b, h, w, c = x.shape
      y = MPConv(3 * c, (1, 1), self.dtype, name="attn_qkv")(x)
      y = y.reshape(b, h * w, num_heads, c // num_heads, 3)  # edm2's channel layout (heads, c, 3)
      y = normalize(y, axis=3)
      y = layers.attend(y[..., 0], y[..., 1], y[..., 2]).reshape(b, h, w, c)
      y = MPConv(c, (1, 1), self.dtype, name="attn_proj")(y)
      x = mp_sum(x, y, t=self.attn_balance)

    if self.clip_act is not None:
      x = jnp.clip(x, -self.clip_act, self.clip_act)
    return x


class EDM2UNet(nn.Module):
  """F(x_in, c_noise, labels) -> (B,H,W,C) (and logvar (B,) if return_logvar): EDM2's U-Net."""
  img_channels: int
  num_classes: int = 0
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  channel_mult_noise: int = 0  # 0: cblock[0] (edm2's None)
  channel_mult_emb: int = 0  # 0: max(cblock) (edm2's None)
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (16, 8)
  label_balance: float = 0.5
  concat_balance: float = 0.5
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: float = 256.0
  logvar_channels: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c_noise, labels: Optional[jax.Array] = None, train: bool = False,
               return_logvar: bool = False):
    batch = x.shape[0]
    cblock = [self.model_channels * m for m in self.channel_mult]
    cnoise = self.model_channels * self.channel_mult_noise if self.channel_mult_noise else cblock[0]
    cemb = self.model_channels * self.channel_mult_emb if self.channel_mult_emb else max(cblock)
    block = dict(channels_per_head=self.channels_per_head, dropout=self.dropout,
                 res_balance=self.res_balance, attn_balance=self.attn_balance,
                 clip_act=self.clip_act, dtype=self.dtype)

    # Embedding.
    emb = MPConv(cemb, (), self.dtype, name="emb_noise")(
        MPFourier(cnoise, seed=0, dtype=self.dtype, name="emb_fourier")(c_noise))
    if self.num_classes:
      onehot = layers.class_one_hot(labels, self.num_classes, batch, self.dtype)
      emb = mp_sum(emb, MPConv(cemb, (), self.dtype, name="emb_label")(
          onehot * float(np.sqrt(self.num_classes))), t=self.label_balance)
    emb = mp_silu(emb)

    # Encoder.
    x = x.astype(self.dtype)
    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    skips = []
    for level, channels in enumerate(cblock):
      if level == 0:
        res = f"{x.shape[1]}x{x.shape[2]}"
        x = MPConv(channels, (3, 3), self.dtype, name=f"enc_{res}_conv")(x)
      else:
        res = f"{x.shape[1] // 2}x{x.shape[2] // 2}"
        x = Block(x.shape[-1], "enc", "down", name=f"enc_{res}_down", **block)(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        attn = x.shape[1] in self.attn_resolutions
        x = Block(channels, "enc", attention=attn, name=f"enc_{res}_block{idx}", **block)(
            x, emb, train)
        skips.append(x)

    # Decoder.
    for level in reversed(range(len(cblock))):
      channels = cblock[level]
      cout = x.shape[-1]
      if level == len(cblock) - 1:
        res = f"{x.shape[1]}x{x.shape[2]}"
        x = Block(cout, "dec", attention=True, name=f"dec_{res}_in0", **block)(x, emb, train)
        x = Block(cout, "dec", name=f"dec_{res}_in1", **block)(x, emb, train)
      else:
        res = f"{x.shape[1] * 2}x{x.shape[2] * 2}"
        x = Block(cout, "dec", "up", name=f"dec_{res}_up", **block)(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = mp_cat(x, skips.pop(), t=self.concat_balance)
        attn = x.shape[1] in self.attn_resolutions
        x = Block(channels, "dec", attention=attn, name=f"dec_{res}_block{idx}", **block)(
            x, emb, train)
    out_gain = self.param("out_gain", nn.initializers.zeros, (), jnp.float32)
    out = MPConv(self.img_channels, (3, 3), self.dtype, name="out_conv")(x, gain=out_gain)
    precise = layers.precise_dtype(self.dtype)
    out = out.astype(precise)

    if return_logvar or self.is_initializing():
      logvar = MPConv(1, (), precise, name="logvar_linear")(
          MPFourier(self.logvar_channels, seed=1, dtype=precise, name="logvar_fourier")(c_noise)
      ).reshape(batch)
      if return_logvar:
        return out, logvar
    return out
