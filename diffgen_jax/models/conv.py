"""The convolution the networks call, with a Winograd path for 3x3 stride-1 convolutions.

XLA:CPU runs 3x3 convolutions (their weight gradients in particular) well below what the same
cores reach in a matrix product (benchmarks/conv_cpu.py). Winograd's minimal filtering algorithm
F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016,
section 4) turns one such convolution into (m + 2)^2 independent matrix products of
(B * tiles, C_in) @ (C_in, C_out) between fixed linear transforms of (m + 2)^2 input tiles and of
the 3x3 filters: 2.25x (m = 2) or 4x (m = 4) fewer multiplications than the direct convolution.
Every step is linear, so the input and weight gradients follow by autodiff and are matrix
products too.

`conv_general_dilated` has the signature of `jax.lax.conv_general_dilated` (pass it to
`flax.linen.Conv(conv_general_dilated=...)` or call it in its place): it takes the Winograd
path for a 3x3 kernel, stride 1, no dilation, one feature group, SAME (= 1-pixel zero) padding,
NHWC input / HWIO kernel, when the algorithm in force is a Winograd one, and falls back to
`jax.lax.conv_general_dilated` otherwise. The algorithms (ALGORITHMS):

- "auto" (default): `AUTO_CPU` when jax's default backend is "cpu" (XLA's convolution for now:
  see AUTO_CPU for the measurement); GPUs and TPUs keep XLA's convolution (cuDNN on NVIDIA GPUs);
- "winograd": F(2x2, 3x3) on every backend; transform coefficients 0, +-1, +-1/2 (exact in
  binary floating point): float32 results agree with the direct convolution to ~1e-6 relative;
- "winograd4": F(4x4, 3x3); coefficients up to 8 and 1/24, ~1e-5 relative in float32;
- "xla": always `jax.lax.conv_general_dilated`.

The algorithm is read at trace time from `algorithm(...)` (a context manager, innermost wins) or,
outside one, from the environment variable DIFFGEN_JAX_CONV; a function jax has already traced
keeps the algorithm it was traced with. Summation orders differ, so results are close to, not
bitwise equal to, XLA's. Measured speed (benchmarks/README.md, issue 15): the Winograd step
compiles about 2x slower than XLA's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax.checks import check_number

ALGORITHMS = ("auto", "winograd", "winograd4", "xla")
# Output tile of each Winograd algorithm: F(m x m, 3 x 3).
WINOGRAD_TILES = {"winograd": 2, "winograd4": 4}
# What "auto" means on a CPU. XLA's convolution: on 2 shared cores the Winograd train step was not
# measurably faster (quickstart shape 1.06x, within noise) and compiled 2x slower (issue 15,
# benchmarks/README.md); Winograd stays one setting away (DIFFGEN_JAX_CONV=winograd).
AUTO_CPU = "xla"
ENV_VAR = "DIFFGEN_JAX_CONV"

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

_local = threading.local()


def _check_tile(tile) -> int:
  """The Winograd output tile: an integer in TILES (2.0 or True would slip past `in TILES`)."""
  check_number(tile, "tile", integer=True)
  if tile not in TILES:
    raise ValueError(f"winograd_conv3x3: tile={tile!r} is not one of {TILES}")
  return int(tile)


def _check_algorithm(name: str, source: str) -> str:
  if name not in ALGORITHMS:
    raise ValueError(f"{source}: convolution algorithm {name!r} is not one of {ALGORITHMS}")
  return name


@contextlib.contextmanager
def algorithm(name: str) -> Iterator[None]:
  """Within the block, trace convolutions with `name` (one of ALGORITHMS).

  Raises ValueError for any other name. Applies to functions traced inside the block (a jitted
  function already compiled keeps the algorithm it was traced with).
  """
  _check_algorithm(name, "algorithm()")
  stack = _local.__dict__.setdefault("stack", [])
  stack.append(name)
  try:
    yield
  finally:
    stack.pop()


def current_algorithm() -> str:
  """The algorithm in force: the innermost `algorithm(...)` block, else $DIFFGEN_JAX_CONV, else "auto"."""
  stack = getattr(_local, "stack", None)
  if stack:
    return stack[-1]
  return _check_algorithm(os.environ.get(ENV_VAR, "auto"), f"${ENV_VAR}")


def winograd_tile() -> int:
  """The output tile m of the Winograd path in force now, or 0 for XLA's convolution."""
  name = current_algorithm()
  if name == "auto":
    name = AUTO_CPU if jax.default_backend() == "cpu" else "xla"
  return WINOGRAD_TILES.get(name, 0)


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
# Drop-in for lax.conv_general_dilated.

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


def conv_general_dilated(lhs, rhs, window_strides, padding,
                         lhs_dilation: Optional[Sequence[int]] = None,
                         rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """`jax.lax.conv_general_dilated`, with 3x3 stride-1 SAME NHWC convolutions by Winograd.

  Same arguments, shapes and result as `jax.lax.conv_general_dilated`; the Winograd path
  (`winograd_conv3x3`) is taken when `winograd_eligible(...)` and `winograd_tile()` is nonzero (see the
  module docstring for how the algorithm is chosen).
  """
  tile = winograd_tile()
  if tile and winograd_eligible(
      jnp.shape(lhs), jnp.shape(rhs), window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count):
    return winograd_conv3x3(lhs, rhs, tile=tile, precision=precision,
                            preferred_element_type=preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count,
                                  batch_group_count=batch_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)

