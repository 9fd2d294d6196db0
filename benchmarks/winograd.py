"""Winograd F(m x m, 3 x 3) convolutions: a CPU speed experiment that lost (issue 15).

XLA:CPU runs 3x3 convolutions (their weight gradients in particular) well below what the same
cores reach in a matrix product (conv_cpu.py). Winograd's minimal filtering algorithm
F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016,
section 4) turns one such convolution into (m + 2)^2 independent matrix products of
(B * tiles, C_in) @ (C_in, C_out) between fixed linear transforms of (m + 2)^2 input tiles and of
the 3x3 filters: 2.25x (m = 2) or 4x (m = 4) fewer multiplications than the direct convolution.
Every step is linear, so the input and weight gradients follow by autodiff.

Small maps ran 4-6x faster than XLA's convolution, but the quickstart's training step was not
measurably faster (1.06x, within noise) and compiled 2x slower (benchmarks/README.md), so the
networks call `jax.lax.conv_general_dilated` and this module lives with the benchmarks:
conv_cpu.py times `winograd_conv3x3` against XLA's convolution, and train_throughput.py's
`--conv winograd` traces the whole train step inside `algorithm("winograd")`, which routes every
eligible `jax.lax.conv_general_dilated` call (3x3, stride 1, SAME, NHWC/HWIO, one feature group)
through `winograd_conv3x3` while the block is open (both flax's nn.Conv and the EDM2 MPConv look
the function up on `jax.lax` at trace time). ALGORITHMS:

- "xla": `jax.lax.conv_general_dilated` unchanged (what the networks run);
- "winograd": F(2x2, 3x3); transform coefficients 0, +-1, +-1/2 (exact in binary floating point):
  float32 results agree with the direct convolution to ~1e-6 relative;
- "winograd4": F(4x4, 3x3); coefficients up to 8 and 1/24, ~1e-5 relative in float32.

Run as a script it checks itself: value and both gradients against XLA's convolution on a few
shapes, for both tiles (`python benchmarks/winograd.py`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ALGORITHMS = ("xla", "winograd", "winograd4")
# Output tile of each Winograd algorithm: F(m x m, 3 x 3).
WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}

# Winograd F(m, 3) matrices (Lavin & Gray 2016, section 4.1 for m = 2 and 4.2 for m = 4):
# 1-D output y = A^T [(G g) * (B^T d)] for a 3-tap filter g and an (m + 2)-sample window d.
_TRANSFORMS = {
    2: dict(BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
            G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
            AT=[[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: dict(BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
            G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
            AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]]),
}
TILES = tuple(_TRANSFORMS)
DEFAULT_TILE = 2


def _check_tile(tile) -> int:
  """The Winograd output tile: an integer in TILES (2.0 or True would slip past `in TILES`)."""
  if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile not in TILES:
    raise ValueError(f"winograd_conv3x3: tile={tile!r} is not one of {TILES}")
  return int(tile)


# ----------------------------------------------------------------------------------------------
# F(m x m, 3 x 3).


def _combine(terms, coefficients):
  """sum_j c_j terms[j] over the nonzero c_j (elementwise; XLA fuses it with its producers)."""
  out = None
  for t, c in zip(terms, coefficients):
    if c == 0:
      continue
    t = t if c == 1 else (-t if c == -1 else t * np.float32(c))
    out = t if out is None else out + t
  return out


def _input_transform_1d(x: jax.Array, axis: int, m: int) -> jax.Array:
  """B^T d over (m + 2)-wide windows at stride m along `axis` (length m t + 2) -> leading axis.

  Sample j of window i is x[m i + j]: a strided slice per j, so no gather; returns
  (m + 2, ..., t, ...) with the window index t in place of `axis`.
  """
  t = (x.shape[axis] - 2) // m
  d = [lax.slice_in_dim(x, j, j + m * (t - 1) + 1, stride=m, axis=axis) for j in range(m + 2)]
  bt = _TRANSFORMS[m]["BT"]
  return jnp.stack([_combine(d, row) for row in bt])


def _output_transform_1d(v: jax.Array, axis: int, m: int) -> jax.Array:
  """A^T v along the leading axis (m + 2) -> m outputs per tile, interleaved into `axis` of v[0]."""
  at = _TRANSFORMS[m]["AT"]
  terms = [v[a] for a in range(v.shape[0])]
  y = jnp.stack([_combine(terms, row) for row in at], axis=axis + 1)  # (..., tiles, m, ...)
  shape = list(v.shape[1:])
  shape[axis] *= m
  return y.reshape(shape)


def winograd_filter(w: jax.Array, tile: int = DEFAULT_TILE) -> jax.Array:
  """G w G^T for an HWIO 3x3 kernel: (3, 3, C_in, C_out) -> (tile + 2, tile + 2, C_in, C_out).

  tile: an integer in TILES (ValueError otherwise).
  """
  tile = _check_tile(tile)
  g = jnp.asarray(np.array(_TRANSFORMS[tile]["G"], np.float32), w.dtype)
  return jnp.einsum("ah,hwio,bw->abio", g, w, g, precision=lax.Precision.HIGHEST)


def winograd_conv3x3(x: jax.Array, w: jax.Array, tile: int = DEFAULT_TILE, precision=None,
                     preferred_element_type=None) -> jax.Array:
  """3x3, stride-1, SAME-padded convolution by Winograd F(tile x tile, 3x3).

  Args:
    x: (B, H, W, C_in) NHWC input, any H, W >= 1 (sizes are zero-padded to whole tiles and the
      output cropped).
    w: (3, 3, C_in, C_out) HWIO kernel (cross-correlation, as lax.conv_general_dilated).
    tile: output tile m (2: F(2x2, 3x3), (m+2)^2 / (9 m^2) = 16/36 of the direct multiplies, exact
      transform coefficients; 4: F(4x4, 3x3), 36/144, coefficients up to 8 and 1/24, so float32
      rounding errors grow ~10x).
    precision, preferred_element_type: passed to the batched matrix product.
  Returns:
    (B, H, W, C_out), equal to `lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))` up to float rounding.
  Raises:
    ValueError: if x is not 4-D, w is not (3, 3, C_in, C_out) with x's C_in, or tile is not in
      TILES.
  """
  if x.ndim != 4 or w.ndim != 4 or w.shape[:2] != (3, 3) or w.shape[2] != x.shape[3]:
    raise ValueError(f"winograd_conv3x3 needs x (B,H,W,C_in) and w (3,3,C_in,C_out); got "
                     f"x {x.shape}, w {w.shape}")
  tile = _check_tile(tile)
  m, a = tile, tile + 2
  b, h, wd, c = x.shape
  k = w.shape[3]
  th, tw = -(-h // m), -(-wd // m)  # output tiles of m x m
  # SAME padding is 1 on each side; pad the bottom/right further to whole tiles (m t + 2).
  xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - wd), (0, 0)))
  # Tile-space index (col, row) leads: rows transformed first, then columns (stacked in front).
  v = _input_transform_1d(xp, 1, m)                   # (a row, B, th, Wp, C)
  v = _input_transform_1d(v, 3, m)                    # (a col, a row, B, th, tw, C)
  v = v.reshape(a * a, b * th * tw, c)
  u = jnp.swapaxes(winograd_filter(w, m), 0, 1).reshape(a * a, c, k)  # (col, row) order too
  prod = jnp.einsum("tnc,tck->tnk", v, u, precision=precision,
                    preferred_element_type=preferred_element_type)
  prod = prod.reshape(a, a, b, th, tw, k)             # (a col, a row, B, th, tw, K)
  y = _output_transform_1d(prod, 3, m)                # (a row, B, th, m tw, K)
  y = _output_transform_1d(y, 1, m)                   # (B, m th, m tw, K)
  return y[:, :h, :wd, :]


# ----------------------------------------------------------------------------------------------
# Routing jax.lax.conv_general_dilated through it.

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_same_3x3_padding(padding) -> bool:
  if isinstance(padding, str):
    return padding.upper() == "SAME"
  try:
    return [tuple(p) for p in padding] == [(1, 1), (1, 1)]
  except TypeError:
    return False


def winograd_eligible(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides,
                      padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                      feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
  """Whether a convolution is one the Winograd path computes (3x3, stride 1, SAME, NHWC/HWIO)."""
  if len(lhs_shape) != 4 or len(rhs_shape) != 4 or dimension_numbers is None:
    return False
  try:
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  except (TypeError, ValueError):
    return False
  if dn != lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), _NHWC):
    return False
  ones = lambda v: v is None or all(int(s) == 1 for s in v)
  return (tuple(rhs_shape[:2]) == (3, 3) and ones(window_strides) and ones(lhs_dilation)
          and ones(rhs_dilation) and feature_group_count == 1 and batch_group_count == 1
          and _is_same_3x3_padding(padding))


@contextlib.contextmanager
def algorithm(name: str) -> Iterator[None]:
  """Within the block, `jax.lax.conv_general_dilated` takes the Winograd path `name` (ALGORITHMS)
  for every eligible convolution (`winograd_eligible`), XLA's convolution for the others.

  Applies to functions traced inside the block (a jitted function already compiled keeps the
  algorithm it was traced with). Raises ValueError for a name not in ALGORITHMS.
  """
  if name not in ALGORITHMS:
    raise ValueError(f"algorithm(): convolution algorithm {name!r} is not one of {ALGORITHMS}")
  tile = WINOGRAD_TILES.get(name, 0)
  original = lax.conv_general_dilated

  def dispatch(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, batch_group_count=1,
               precision=None, preferred_element_type=None):
    if tile and winograd_eligible(jnp.shape(lhs), jnp.shape(rhs), window_strides, padding,
                                  lhs_dilation, rhs_dilation, dimension_numbers,
                                  feature_group_count, batch_group_count):
      return winograd_conv3x3(lhs, rhs, tile=tile, precision=precision,
                              preferred_element_type=preferred_element_type)
    return original(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                    feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                    precision=precision, preferred_element_type=preferred_element_type)

  lax.conv_general_dilated = dispatch
  try:
    yield
  finally:
    lax.conv_general_dilated = original


def _self_check() -> None:
  """Value, input and weight gradients of both tiles against XLA's convolution (HIGHEST)."""
  nhwc = ("NHWC", "HWIO", "NHWC")
  tol = {2: 1e-5, 4: 1e-4}  # F(4x4) multiplies by up to 8 and 1/24: ~10x F(2x2)'s rounding
  reference = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc,
                                                    precision=lax.Precision.HIGHEST)
  for seed, (shape, c_out) in enumerate([((2, 8, 8, 1), 32), ((3, 7, 7, 16), 8),
                                         ((2, 5, 6, 3), 5), ((1, 1, 1, 4), 4)]):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], c_out)) / np.sqrt(9 * shape[-1]),
                    jnp.float32)
    probe = jnp.asarray(rng.standard_normal(shape[:3] + (c_out,)), jnp.float32)
    want = jax.value_and_grad(lambda x, w: jnp.sum(reference(x, w) * probe), (0, 1))(x, w)
    for tile in TILES:
      conv = lambda x, w, tile=tile: winograd_conv3x3(x, w, tile=tile)
      got = jax.value_and_grad(lambda x, w: jnp.sum(conv(x, w) * probe), (0, 1))(x, w)
      np.testing.assert_allclose(np.asarray(conv(x, w)), np.asarray(reference(x, w)),
                                 rtol=tol[tile], atol=tol[tile])
      for g, r in zip(got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=tol[tile],
                                   atol=tol[tile] * float(np.abs(np.asarray(r)).max()))
    print(f"winograd: {shape} -> {c_out} channels: value and gradients equal XLA's (tiles {TILES})")


if __name__ == "__main__":
  _self_check()
