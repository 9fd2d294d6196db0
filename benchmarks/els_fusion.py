"""Can XLA:CPU fuse ELS's passes? Four ways to run ELS's inner loop, side by side in one run.

ELS (`diffgen_jax.optimal_patches._els_core`) spends its time in four passes over each energy tile
(rows = a query's windows, columns = a training image's windows, inner dimension K = k^2 C + 1 = 10
at k = 3, C = 1): the energy matmul, the row min, the exp, the weights matmul. With K this small
each pass is bound by memory traffic and the exp, not by multiply-adds, which caps ELS at about a
quarter of the GEMM ceiling on a CPU (benchmarks/README.md). This script asks whether letting XLA
fuse the passes helps, on one query block of 28 x 28 windows against `--steps` training images:

  matmul     the library's form: energy matmul, min, exp (weights stored), weights matmul;
  fused      the energy as K explicit broadcast multiply-adds, recomputed in the min pass and in the
             exp pass (never stored), then the weights matmul;
  fused_sum  as fused, with the weighted sums as row reductions instead of the second matmul;
  matmul_sum the energy matmul, then min, then exp and the weighted sums as row reductions.

All four compute the same numbers (checked: the largest relative difference is printed). Rates are
the benchmark's ELS flops, 2 (K - 1 + C) per (row, column) pair (as benchmarks/analytic_ladder.py),
per CPU second, as a fraction of a (2048 x 2048)^2 float32 matmul's rate measured in the same round.

    python benchmarks/els_fusion.py                 # ~1 minute on 2 cores
    python benchmarks/els_fusion.py --steps 128 --rounds 5 --out benchmarks/results/els_fusion.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from diffgen_jax import jsonio

HIGHEST = lax.Precision.HIGHEST


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", type=int, default=28, help="image side: rows = columns = size^2 windows")
  p.add_argument("--patch", type=int, default=3, help="k (C = 1): K = k^2 + 1")
  p.add_argument("--steps", type=int, default=64, help="training images (tiles) per call")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="", help="JSON output path")
  return p.parse_args(argv)


def variants(rows, kdim):
  def energy_matmul(xa, y):
    return jnp.matmul(xa, y.T, precision=HIGHEST)

  def energy_fused(xa, y):  # K broadcast multiply-adds: one elementwise fusion, never stored
    yt = y.T
    e = xa[:, :1] * yt[0][None, :]
    for k in range(1, kdim):
      e = e + xa[:, k:k + 1] * yt[k][None, :]
    return e

  def weighted_matmul(w, v):
    return jnp.matmul(w, v, precision=HIGHEST)

  def weighted_sums(w, v):
    return jnp.stack([jnp.sum(w * v[:, j][None, :], axis=1) for j in range(v.shape[1])], axis=1)

  def make(energy, weighted):
    def run(xa, ya, v, scale):
      def step(carry, t):
        run_min, acc = carry
        y, vv = t
        new_min = jnp.minimum(run_min, energy(xa, y).min(axis=1))
        w = jnp.exp(-(energy(xa, y) - new_min[:, None]) * scale[:, None])
        rescale = jnp.exp(-(run_min - new_min) * scale)
        return (new_min, acc * rescale[:, None] + weighted(w, vv)), None
      init = (jnp.full((rows,), jnp.inf), jnp.zeros((rows, 2)))
      run_min, acc = lax.scan(step, init, (ya, v))[0]
      return acc
    return jax.jit(run)

  return {"matmul": make(energy_matmul, weighted_matmul), "fused": make(energy_fused, weighted_matmul),
          "fused_sum": make(energy_fused, weighted_sums),
          "matmul_sum": make(energy_matmul, weighted_sums)}


def main(argv=None):
  args = parse_args(argv)
  rows = cols = args.size ** 2
  kdim = args.patch ** 2 + 1
  rng = np.random.default_rng(0)
  xa = jnp.asarray(rng.standard_normal((rows, kdim)) * 0.3, jnp.float32)
  ya = jnp.asarray(rng.standard_normal((args.steps, cols, kdim)) * 0.3, jnp.float32)
  v = jnp.asarray(np.stack([rng.standard_normal((args.steps, cols)),
                            np.ones((args.steps, cols))], -1), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.1, 1.0, (rows,)), jnp.float32)
  fns = variants(rows, kdim)
  outputs = {n: np.asarray(f(xa, ya, v, scale)) for n, f in fns.items()}  # compile + check
  ref = outputs["matmul"][:, 0] / outputs["matmul"][:, 1]
  diffs = {n: float(np.max(np.abs(o[:, 0] / o[:, 1] - ref) / (np.abs(ref) + 1e-3)))
           for n, o in outputs.items()}
  print("largest relative difference of the denoised values to `matmul`:",
        {n: f"{d:.1e}" for n, d in diffs.items()})
  gemm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=HIGHEST))
  sq = jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32)
  gemm(sq, sq).block_until_ready()
  flops = 2.0 * rows * cols * args.steps * (kdim - 1 + 1)
  rounds = []
  for r in range(args.rounds):
    c0 = time.process_time()
    gemm(sq, sq).block_until_ready()
    ceiling = 2.0 * 2048 ** 3 / (time.process_time() - c0) / 1e9
    row = {"gemm_ceiling_gflops_per_cpu_s": ceiling}
    for n, f in fns.items():
      c0 = time.process_time()
      f(xa, ya, v, scale).block_until_ready()
      row[n] = flops / (time.process_time() - c0) / 1e9 / ceiling
    rounds.append(row)
    print(f"round {r}: GEMM {ceiling:.1f} GFLOP/s per CPU s; ratio to it: " +
          ", ".join(f"{n} {row[n]:.2f}" for n in fns))
  medians = {n: statistics.median(rr[n] for rr in rounds) for n in fns}
  print("median ratio to the GEMM ceiling:", {n: round(m, 3) for n, m in medians.items()})
  if args.out:
    jsonio.write_json(args.out, {"args": vars(args), "jax": jax.__version__,
                                 "max_relative_difference": diffs, "rounds": rounds,
                                 "median_ratio_to_gemm_ceiling": medians})
    print("wrote", args.out)


if __name__ == "__main__":
  main()
