"""DDPM++ U-Net: EDM's CIFAR-10 network (NVlabs edm `SongUNet` with the DDPM++ settings).

Settings reproduced from EDM (`--arch=ddpmpp`): standard encoder/decoder, resample filter [1,1]
(2x2 average pooling down, nearest-neighbour up, inside the residual blocks), one attention head,
skip scale 1/sqrt(2), GroupNorm eps 1e-6, 1x1 projection on resampled skips, additive (non-adaptive)
embedding, xavier-uniform init with 1e-5 for the last conv of each branch and sqrt(0.2) for qkv,
positional noise embedding with sin/cos swapped (or NCSN++'s random Fourier features), label
embedding Linear(one_hot * sqrt(num_classes)) added to the noise embedding (and, with augment_dim,
EDM's augmentation-label Linear `map_augment` applied to zero augment labels: inert, present so that
EDM's published CIFAR-10 weights load one to one), then two SiLU layers.

Group normalization: min(32, channels // 4) groups (EDM's rule; see `layers.group_norm_groups`).

Resolutions: the network works at any H = W divisible by 2^(len(channel_mult) - 1), e.g. 8x8 with
two or more levels up to 4, 28x28 (Fashion-MNIST: 28 -> 14 -> 7) with up to three levels, 32x32
(CIFAR-10) with up to six. `attn_resolutions` names actual feature-map sizes (e.g. 16, or 14 / 7
for 28x28 inputs); the innermost decoder block always has attention, as in EDM.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.models import layers


def xavier_uniform(init_weight: float = 1.0):
  """EDM's xavier_uniform weight init times init_weight (fans include the kernel window)."""
  return nn.initializers.variance_scaling(init_weight ** 2, "fan_avg", "uniform")


INIT = xavier_uniform(1.0)
INIT_ZERO = xavier_uniform(1e-5)
INIT_ATTN = xavier_uniform(np.sqrt(0.2))


def _conv(features, kernel, init, dtype, name):
  return nn.Conv(features, (kernel, kernel), padding="SAME", kernel_init=init,
                 bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features, init, dtype, name):
  return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


class UNetBlock(nn.Module):
  """EDM's UNetBlock with the DDPM++ settings (optional up/down sampling and self-attention)."""
  out_channels: int
  resample_mode: str = "keep"  # "keep", "up", "down"
  attention: bool = False
  num_heads: int = 1
  dropout: float = 0.0
  skip_scale: float = float(np.sqrt(0.5))
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    in_channels = x.shape[-1]
    orig = x
    h = nn.silu(layers.GroupNorm(self.eps, self.dtype, name="norm0")(x))
    h = layers.resample(h, self.resample_mode)
    h = _conv(self.out_channels, 3, INIT, self.dtype, "conv0")(h)
    params = _dense(self.out_channels, INIT, self.dtype, "affine")(emb)
    h = nn.silu(layers.GroupNorm(self.eps, self.dtype, name="norm1")(h + params[:, None, None, :]))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_channels, 3, INIT_ZERO, self.dtype, "conv1")(h)
    if self.out_channels != in_channels or self.resample_mode != "keep":
      orig = _conv(self.out_channels, 1, INIT, self.dtype, "skip")(
          layers.resample(orig, self.resample_mode))
    h = (h + orig) * self.skip_scale

    if self.attention:
      b, hh, ww, c = h.shape
      heads = self.num_heads
      qkv = _conv(3 * c, 1, INIT_ATTN, self.dtype, "qkv")(
          layers.GroupNorm(self.eps, self.dtype, name="norm2")(h))
      qkv = qkv.reshape(b, hh * ww, heads, c // heads, 3)
      a = layers.attend(qkv[..., 0], qkv[..., 1], qkv[..., 2]).reshape(b, hh, ww, c)
      h = (_conv(c, 1, INIT_ZERO, self.dtype, "proj")(a) + h) * self.skip_scale
    return h


class DDPMpp(nn.Module):
  """F(x_in, c_noise, labels) -> (B,H,W,C): EDM's DDPM++ (SongUNet) U-Net, NHWC."""
  img_channels: int
  num_classes: int = 0
  model_channels: int = 128
  channel_mult: Sequence[int] = (2, 2, 2)
  channel_mult_emb: int = 4
  channel_mult_noise: int = 1
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.10
  embedding_type: str = "positional"  # "positional" (DDPM++) or "fourier" (NCSN++)
  augment_dim: int = 0  # EDM's augmentation-label embedding (9 in the published CIFAR-10 nets)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c_noise, labels: Optional[jax.Array] = None, train: bool = False):
    batch = x.shape[0]
    emb_channels = self.model_channels * self.channel_mult_emb
    noise_channels = self.model_channels * self.channel_mult_noise
    block = dict(dropout=self.dropout, num_heads=1, skip_scale=float(np.sqrt(0.5)), eps=1e-6,
                 dtype=self.dtype)

    # Mapping network.
    if self.embedding_type == "positional":
      emb = layers.positional_embedding(c_noise, noise_channels, endpoint=True,
                                        dtype=layers.precise_dtype(self.dtype))
      emb = jnp.concatenate(jnp.split(emb, 2, axis=-1)[::-1], axis=-1)  # swap sin/cos, as EDM
    elif self.embedding_type == "fourier":
      emb = layers.fourier_embedding(c_noise, noise_channels, scale=16.0)
    else:
      raise ValueError(f"embedding_type={self.embedding_type!r} is not 'positional' or 'fourier'")
    emb = emb.astype(self.dtype)
    if self.num_classes:
      onehot = layers.class_one_hot(labels, self.num_classes, batch, self.dtype)
      emb = emb + _dense(noise_channels, INIT, self.dtype, "map_label")(
          onehot * float(np.sqrt(self.num_classes)))
    if self.augment_dim:
      # EDM's map_augment (Linear without bias) on the augmentation labels, which are all zero
      # here (no augmentation at inference or in this package's training): it adds exactly 0 and
      # exists so that EDM's published weights load tensor by tensor.
      augment_labels = jnp.zeros((batch, self.augment_dim), self.dtype)
      emb = emb + nn.Dense(noise_channels, use_bias=False, kernel_init=INIT, dtype=self.dtype,
                           param_dtype=jnp.float32, name="map_augment")(augment_labels)
    emb = nn.silu(_dense(emb_channels, INIT, self.dtype, "map_layer0")(emb))
    emb = nn.silu(_dense(emb_channels, INIT, self.dtype, "map_layer1")(emb))

    # Encoder.
    x = x.astype(self.dtype)
    skips = []
    cout = self.model_channels
    for level, mult in enumerate(self.channel_mult):
      res = f"{x.shape[1]}x{x.shape[2]}" if level == 0 else \
          f"{x.shape[1] // 2}x{x.shape[2] // 2}"
      if level == 0:
        x = _conv(cout, 3, INIT, self.dtype, f"enc_{res}_conv")(x)
      else:
        x = UNetBlock(cout, resample_mode="down", name=f"enc_{res}_down", **block)(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        cout = self.model_channels * mult
        attn = x.shape[1] in self.attn_resolutions
        x = UNetBlock(cout, attention=attn, name=f"enc_{res}_block{idx}", **block)(x, emb, train)
        skips.append(x)

    # Decoder.
    out = None
    for level in reversed(range(len(self.channel_mult))):
      mult = self.channel_mult[level]
      if level == len(self.channel_mult) - 1:
        res = f"{x.shape[1]}x{x.shape[2]}"
        x = UNetBlock(cout, attention=True, name=f"dec_{res}_in0", **block)(x, emb, train)
        x = UNetBlock(cout, name=f"dec_{res}_in1", **block)(x, emb, train)
      else:
        res = f"{x.shape[1] * 2}x{x.shape[2] * 2}"
        x = UNetBlock(cout, resample_mode="up", name=f"dec_{res}_up", **block)(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        cout = self.model_channels * mult
        attn = idx == self.num_blocks and x.shape[1] in self.attn_resolutions
        x = UNetBlock(cout, attention=attn, name=f"dec_{res}_block{idx}", **block)(x, emb, train)
      if level == 0:
        h = layers.GroupNorm(1e-6, self.dtype, name=f"dec_{res}_aux_norm")(x)
        out = _conv(self.img_channels, 3, INIT_ZERO, self.dtype, f"dec_{res}_aux_conv")(nn.silu(h))
    return out.astype(layers.precise_dtype(self.dtype))

