"""DiT: Diffusion Transformer with adaLN-Zero (facebookresearch/DiT `models.py`), NHWC.

Patchify (conv, kernel = stride = patch_size) + fixed 2D sin-cos positional embedding; noise
embedding = sinusoidal features of (noise_scale * c_noise) (256 channels, max period 10^4) -> MLP;
label embedding = table of num_classes + 1 rows, the last being the null class (classifier-free
guidance), added to the noise embedding; DiT blocks with adaLN-Zero modulation whose Linear is
initialized to zero, so every block is the identity at init; final adaLN + Linear, both zero at
init (F = 0 at init); unpatchify.

Differences to DiT, on purpose: the output has img_channels channels (no learned sigma: EDM's
preconditioning needs only F), and the embedding table always holds the null row when
num_classes > 0 (the training code decides the label-dropout probability). c_noise = ln(sigma)/4 is
fed to the sinusoidal embedding directly (noise_scale = 1), as EDM does for its networks and SiT
for t in [0, 1]; set noise_scale = 1000 to mimic DiT's integer timesteps.
Optional dropout (default 0; DiT has none) acts on the attention and MLP outputs.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.models import layers

FREQUENCY_EMBEDDING_SIZE = 256

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def get_1d_sincos_pos_embed(embed_dim: int, pos: np.ndarray) -> np.ndarray:
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """(grid_h * grid_w, embed_dim) fixed sin-cos embedding, token order row-major (h, w) as DiT."""
  gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
  # DiT: half of the channels encode the w coordinate, the other half the h coordinate.
  emb_w = get_1d_sincos_pos_embed(embed_dim // 2, gw)
  emb_h = get_1d_sincos_pos_embed(embed_dim // 2, gh)
  return np.concatenate([emb_w, emb_h], axis=1).astype(np.float32)


def modulate(x, shift, scale):
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def _dense(features, init, dtype, name, bias_init=zeros):
  return nn.Dense(features, kernel_init=init, bias_init=bias_init, dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def _layer_norm(dtype):
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


class Attention(nn.Module):
  """timm Attention: qkv Linear with bias, softmax(q k / sqrt(d)) v, output projection."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    qkv = _dense(3 * c, xavier, self.dtype, "qkv")(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    y = layers.attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, c)
    return _dense(c, xavier, self.dtype, "proj")(y)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block: the identity at init (zero modulation => zero gates)."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, train: bool = False):
    mod = _dense(6 * self.hidden_size, zeros, self.dtype, "adaLN_modulation")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = Attention(self.num_heads, self.dtype, name="attn")(
        modulate(_layer_norm(self.dtype)(x), shift_msa, scale_msa))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    x = x + gate_msa[:, None, :] * h
    h = modulate(_layer_norm(self.dtype)(x), shift_mlp, scale_mlp)
    h = _dense(int(self.hidden_size * self.mlp_ratio), xavier, self.dtype, "mlp_fc1")(h)
    h = nn.gelu(h, approximate=True)
    h = _dense(self.hidden_size, xavier, self.dtype, "mlp_fc2")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return x + gate_mlp[:, None, :] * h


class FinalLayer(nn.Module):
  """adaLN (zero-initialized) + Linear to patch_size^2 * out_channels (zero-initialized)."""
  hidden_size: int
  patch_size: int
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c):
    mod = _dense(2 * self.hidden_size, zeros, self.dtype, "adaLN_modulation")(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    x = modulate(_layer_norm(self.dtype)(x), shift, scale)
    return _dense(self.patch_size ** 2 * self.out_channels, zeros, self.dtype, "linear")(x)


class DiT(nn.Module):
  """F(x_in, c_noise, labels) -> (B,H,W,C): Diffusion Transformer; H, W divisible by patch_size."""
  img_channels: int
  num_classes: int = 0
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  noise_scale: float = 1.0
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c_noise, labels: Optional[jax.Array] = None, train: bool = False):
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"DiT patch_size={p} must divide the image size {h}x{w}")
    gh, gw = h // p, w // p

    # Patch embedding (DiT: xavier-uniform on the flattened conv weight, zero bias).
    patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                                  out_axis=3)
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_init,
                bias_init=zeros, dtype=self.dtype, param_dtype=jnp.float32,
                name="x_embedder")(x.astype(self.dtype))
    x = x.reshape(b, gh * gw, self.hidden_size)
    x = x + jnp.asarray(get_2d_sincos_pos_embed(self.hidden_size, gh, gw), self.dtype)[None]

    # Noise and label embeddings.
    t = layers.positional_embedding(c_noise * self.noise_scale, FREQUENCY_EMBEDDING_SIZE,
                                    max_positions=10000.0, endpoint=False).astype(self.dtype)
    normal = nn.initializers.normal(0.02)
    t = nn.silu(_dense(self.hidden_size, normal, self.dtype, "t_embedder_fc1")(t))
    c = _dense(self.hidden_size, normal, self.dtype, "t_embedder_fc2")(t)
    if self.num_classes:
      y = layers.null_labels(labels, self.num_classes, b)
      c = c + nn.Embed(self.num_classes + 1, self.hidden_size, embedding_init=normal,
                       dtype=self.dtype, param_dtype=jnp.float32, name="y_embedder")(y)

    for i in range(self.depth):
      x = DiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio, self.dropout, self.dtype,
                   name=f"blocks_{i}")(x, c, train)
    x = FinalLayer(self.hidden_size, p, self.img_channels, self.dtype, name="final_layer")(x, c)

    # Unpatchify: token (i, j) holds the patch as (p, p, C), row-major.
    x = x.reshape(b, gh, gw, p, p, self.img_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, self.img_channels).astype(jnp.float32)
