"""Issue 15's negative result, reproducible: one 3x3 convolution's pieces written as matmuls on
XLA:CPU, against XLA's own convolution, side by side in one run (median ms of --repeats calls).

  * im2col: the (B, H, W, 9C) patch matrix (9 shifted slices concatenated), alone;
  * the forward as that im2col + one (BHW, 9C) @ (9C, C_out) matmul, and the matmul alone;
  * the weight gradient as nine matmuls over contiguous row-offset slices of the padded, flattened
    input (no batch/channel transposes), against XLA's weight gradient.

    python benchmarks/conv_as_matmul.py [--batch 64 --size 32 --channels 64 --repeats 7]

Writes benchmarks/results/conv_as_matmul.json. XLA_FLAGS (e.g. the YNNPACK setting of
benchmarks/README.md) is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax import jsonio

HI = lax.Precision.HIGHEST


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def im2col(x):
  b, h, wd, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], -1)


def weight_grad_row_slices(x, g):
  """dW[dy, dx] = sum_r xp[r + (dy (W + 2) + dx)] g[r] over the padded grid's flattened rows r."""
  _, _, wd, c = x.shape
  o = g.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
  gp = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, o)  # g[b, i, j] at xp's row of x[b, i, j]
  rows = gp.shape[0] - (2 * (wd + 2) + 2)
  taps = [lax.dot_general(lax.slice_in_dim(xp, dy * (wd + 2) + dx, dy * (wd + 2) + dx + rows),
                          gp[:rows], (((0,), (0,)), ((), ())), precision=HI)
          for dy in range(3) for dx in range(3)]
  return jnp.stack(taps).reshape(3, 3, c, o)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "conv_as_matmul.json"))
  args = p.parse_args(argv)
  b, h, c = args.batch, args.size, args.channels
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, h, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, c, c)) / (3 * c ** 0.5), jnp.float32)
  g = jnp.asarray(rng.standard_normal((b, h, h, c)), jnp.float32)
  patches = jax.jit(im2col)(x)
  xla_weight_grad = jax.jit(lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  calls = {
      "xla forward": (jax.jit(conv), (x, w)),
      "im2col alone": (jax.jit(im2col), (x,)),
      "forward matmul alone (on a ready im2col)": (
          jax.jit(lambda p_, w: jnp.matmul(p_, w.reshape(9 * c, c), precision=HI)), (patches, w)),
      "forward as im2col + matmul": (
          jax.jit(lambda x, w: jnp.matmul(im2col(x), w.reshape(9 * c, c), precision=HI)), (x, w)),
      "xla weight grad": (xla_weight_grad, (x, g)),
      "weight grad as 9 row-offset matmuls": (jax.jit(weight_grad_row_slices), (x, g)),
  }
  for fn, a in calls.values():  # compile
    jax.block_until_ready(fn(*a))
  times = {k: [] for k in calls}
  for _ in range(args.repeats):  # round-robin: every variant sees the same machine load
    for k, (fn, a) in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times[k].append(1e3 * (time.perf_counter() - t0))
  ms = {k: statistics.median(v) for k, v in times.items()}
  ref = np.asarray(xla_weight_grad(x, g))
  diff = float(np.abs(np.asarray(jax.jit(weight_grad_row_slices)(x, g)) - ref).max()
               / np.abs(ref).max())
  print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; batch {b}, "
        f"{h}x{h}, {c} -> {c} channels; median ms of {args.repeats}:")
  for k, v in ms.items():
    print(f"  {k:45s} {v:8.1f}")
  print(f"  weight grad as matmuls vs XLA's: relative difference {diff:.1e}")
  jsonio.write_json(args.out, dict(benchmark="conv_as_matmul", jax=jax.__version__,
                                   xla_flags=os.environ.get("XLA_FLAGS", ""),
                                   shape=dict(batch=b, size=h, channels=c), repeats=args.repeats,
                                   median_ms=ms, weight_grad_relative_difference=diff))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
