"""The convolution every network calls: a Winograd path for 3x3 stride-1 convolutions on CPU.

XLA:CPU runs 3x3 convolutions (and their weight gradients in particular) far below what the
same cores reach in a matrix product (benchmarks/conv_cpu.py). Winograd's minimal filtering
algorithm F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016, section 4) turns one such convolution into 16 independent matrix products of
(B * tiles, C_in) @ (C_in, C_out) between fixed linear transforms of 4x4 input tiles and of the
3x3 filters, with 2.25x fewer multiplications than the direct convolution. Every step is linear,
so the input and weight gradients follow by autodiff and are matrix products too.

`conv_general_dilated` has the signature of `jax.lax.conv_general_dilated` (pass it to
`flax.linen.Conv(conv_general_dilated=...)` or call it in its place): it takes the Winograd
path for a 3x3 kernel, stride 1, no dilation, one feature group, SAME (= 1-pixel zero) padding,
NHWC input / HWIO kernel, when the algorithm in force is "winograd", and falls back to
`jax.lax.conv_general_dilated` otherwise. The algorithm in force:

- "auto" (default): Winograd when jax's default backend is "cpu"; GPUs and TPUs keep XLA's
  convolution (cuDNN on NVIDIA GPUs);
- "winograd": Winograd on every backend;
- "xla": always `jax.lax.conv_general_dilated`.

It is read at trace time from `algorithm(...)` (a context manager, innermost wins) or, outside
one, from the environment variable DIFFGEN_JAX_CONV. Numerics: float32 results agree with the
direct convolution to ~1e-6 relative (the transforms' coefficients are 0, +-1 and +-1/2, exact in
binary floating point); the summation order differs, so results are not bitwise equal.
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

ALGORITHMS = ("auto", "winograd", "xla")
ENV_VAR = "DIFFGEN_JAX_CONV"

# F(2x2, 3x3) filter transform G (4x3) of Lavin & Gray (2016), eq. (7): U = G g G^T.
_G = np.array([[1.0, 0.0, 0.0],
               [0.5, 0.5, 0.5],
               [0.5, -0.5, 0.5],
               [0.0, 0.0, 1.0]], np.float32)

_local = threading.local()


def _check_algorithm(name: str, source: str) -> str:
  if name not in ALGORITHMS:
    raise ValueError(f"{source}: convolution algorithm {name!r} is not one of {ALGORITHMS}")
  return name


@contextlib.contextmanager
def algorithm(name: str) -> Iterator[None]:
  """Within the block, trace convolutions with `name` ("auto", "winograd" or "xla").

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


def use_winograd() -> bool:
  """Whether a Winograd-eligible convolution traced now takes the Winograd path."""
  name = current_algorithm()
  if name == "auto":
    return jax.default_backend() == "cpu"
  return name == "winograd"


# ----------------------------------------------------------------------------------------------
# F(2x2, 3x3).


def _input_transform_1d(x: jax.Array, axis: int) -> jax.Array:
  """B^T d over 4-wide windows at stride 2 along `axis` (length 2 n + 2) -> new leading axis of 4.

  With E = x[0::2], O = x[1::2] (n + 1 each), window i is (E_i, O_i, E_{i+1}, O_{i+1}) and
  B^T d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3) (Lavin & Gray eq. (7)); slices, no gather.
  """
  n = x.shape[axis] // 2 - 1
  take = lambda start: lax.slice_in_dim(x, start, start + 2 * n - 1, stride=2, axis=axis)
  e0, o0, e1, o1 = take(0), take(1), take(2), take(3)  # E_i, O_i, E_{i+1}, O_{i+1}
  return jnp.stack([e0 - e1, o0 + e1, e1 - o0, o0 - o1])


def _output_transform_1d(m: jax.Array, axis: int) -> jax.Array:
  """A^T m along the leading axis of 4 -> 2 outputs per tile, interleaved into `axis` (of m[0]).

  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] (Lavin & Gray eq. (7)).
  """
  y0 = m[0] + m[1] + m[2]
  y1 = m[1] - m[2] - m[3]
  y = jnp.stack([y0, y1], axis=axis + 1)  # (..., tiles, 2, ...)
  shape = list(y0.shape)
  shape[axis] *= 2
  return y.reshape(shape)


def winograd_filter(w: jax.Array) -> jax.Array:
  """G w G^T for an HWIO 3x3 kernel: (3, 3, C_in, C_out) -> (4, 4, C_in, C_out)."""
  g = jnp.asarray(_G, w.dtype)
  return jnp.einsum("ah,hwio,bw->abio", g, w, g)


def winograd_conv3x3(x: jax.Array, w: jax.Array, precision=None,
                     preferred_element_type=None) -> jax.Array:
  """3x3, stride-1, SAME-padded convolution by Winograd F(2x2, 3x3).

  Args:
    x: (B, H, W, C_in) NHWC input, any H, W >= 1 (odd sizes are zero-padded to whole tiles and
      the output cropped).
    w: (3, 3, C_in, C_out) HWIO kernel (cross-correlation, as lax.conv_general_dilated).
    precision, preferred_element_type: passed to the batched matrix product.
  Returns:
    (B, H, W, C_out), equal to `lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))` up to float rounding.
  Raises:
    ValueError: if x is not 4-D or w is not (3, 3, C_in, C_out) with x's C_in.
  """
  if x.ndim != 4 or w.ndim != 4 or w.shape[:2] != (3, 3) or w.shape[2] != x.shape[3]:
    raise ValueError(f"winograd_conv3x3 needs x (B,H,W,C_in) and w (3,3,C_in,C_out); got "
                     f"x {x.shape}, w {w.shape}")
  b, h, wd, c = x.shape
  k = w.shape[3]
  th, tw = -(-h // 2), -(-wd // 2)  # output tiles of 2x2
  # SAME padding is 1 on each side; pad the bottom/right further to whole tiles (2 t + 2).
  xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - wd), (0, 0)))
  # Tile-space index (col, row) leads: rows transformed first, then columns (stacked in front).
  v = _input_transform_1d(xp, axis=1)                 # (4 row, B, th, Wp, C)
  v = _input_transform_1d(v, axis=3)                  # (4 col, 4 row, B, th, tw, C)
  v = v.reshape(16, b * th * tw, c)
  u = jnp.swapaxes(winograd_filter(w), 0, 1).reshape(16, c, k)  # (col, row) order too
  m = jnp.einsum("tnc,tck->tnk", v, u, precision=precision,
                 preferred_element_type=preferred_element_type)
  m = m.reshape(4, 4, b, th, tw, k)                   # (4 col, 4 row, B, th, tw, K)
  y = _output_transform_1d(m, axis=3)                 # (4 row, B, th, 2 tw, K)
  y = _output_transform_1d(y, axis=1)                 # (B, 2 th, 2 tw, K)
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
  (`winograd_conv3x3`) is taken when `winograd_eligible(...)` and `use_winograd()` (see the
  module docstring for how the algorithm is chosen).
  """
  if use_winograd() and winograd_eligible(
      jnp.shape(lhs), jnp.shape(rhs), window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count):
    return winograd_conv3x3(lhs, rhs, precision=precision,
                            preferred_element_type=preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count,
                                  batch_group_count=batch_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)

