"""Speed of the analytic ladder's patch machines (diffgen_jax.optimal_patches), side by side in one run.

  * LS and PSPC-square: time per (query, sigma) of ours against a plain numpy implementation of the
    same formula in the style of the published scripts (unfold every training image into its k x k
    windows, squared differences to the query's windows, softmax over images per position, weighted
    centre pixels; PSPC: weighted whole windows folded back and averaged), at Fashion-MNIST shape
    (N = 1,000, 28x28x1) and CIFAR shape (N = 50,000, 32x32x3; few queries).
  * ELS: achieved GFLOP/s of the cross-term and weighted-sum matmuls (2 B HW N HW (k^2 C + C)
    flops) against the GEMM ceiling, a (2048 x 2048) @ (2048 x 2048) full-precision matmul measured
    before and after each ELS row (the higher of the two is used: the conservative ratio); where
    ELS's time goes: its four passes over the energy tiles (energy matmul, row min, exp, weights
    matmul) timed on their own at the same shapes, as fractions of ELS's time, and the ratio ELS
    would reach if the exp pass alone took all its time (the bound the exp count sets); time per
    (query, sigma) at N = 1,000.
  * y*: the streaming optimal denoiser's time at several chunk sizes (the backend default marked).

Numbers are medians of --repeats calls after a warm-up (compile) call. On a shared machine quote the
ratios, which are measured side by side. Examples:

  nice python benchmarks/analytic_ladder.py --quick        # ~1 minute on 2 cores
  nice python benchmarks/analytic_ladder.py --els_only --out benchmarks/results/analytic_ladder_els.json
  nice python benchmarks/analytic_ladder.py                # adds the CIFAR-shape rows (~10 min)
  python benchmarks/analytic_ladder.py --els_cifar_n 50000  # on a GPU: ELS at CIFAR shape as well
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import edm, jsonio
from diffgen_jax.optimal import (default_chunk_size, empirical_optimal_denoiser,
                                 equivariant_local_denoiser, local_denoiser,
                                 patch_composite_denoiser)
from diffgen_jax.optimal_patches import els_blocks
from optimal_denoiser import timed  # the benchmarks' one timing helper (benchmarks/ is on sys.path)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--patch", type=int, default=5, help="LS/PSPC patch size")
  p.add_argument("--els_patch", default="3",
                 help="ELS patch sizes, comma-separated (e.g. 1,3,5,7,9,11,13: the sizes the "
                      "Fashion-MNIST calibration picks), each timed side by side in one run")
  p.add_argument("--queries", type=int, default=16, help="LS/PSPC queries per sigma (ours), Fashion")
  p.add_argument("--sigmas", type=int, default=4, help="sigmas, log-spaced over [0.002, 80]")
  p.add_argument("--numpy_queries", type=int, default=4, help="(query, sigma) pairs for numpy")
  p.add_argument("--cifar_queries", type=int, default=4, help="(query, sigma) pairs at CIFAR shape")
  p.add_argument("--cifar_numpy_n", type=int, default=5000,
                 help="training images for numpy at CIFAR shape (its full-N cost is ~N/this x)")
  p.add_argument("--els_queries", type=int, default=2, help="(query, sigma) pairs for ELS")
  p.add_argument("--els_chunks", default="1,5",
                 help="ELS chunk sizes (training images) to time; 1 is the default at 28x28")
  p.add_argument("--els_cifar_n", type=int, default=0,
                 help="also time ELS at CIFAR shape (32x32x3) with this many training images "
                      "(50000 on a GPU; 0: skip; on a 2-core CPU one query takes minutes)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="skip the CIFAR-shape rows")
  p.add_argument("--els_only", action="store_true",
                 help="only the ELS rows (write them with --out elsewhere to keep the full JSON)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "analytic_ladder.json"))
  args = p.parse_args(argv)
  try:
    args.els_patches = [int(k) for k in args.els_patch.split(",")]
  except ValueError:
    p.error(f"--els_patch must be comma-separated odd integers >= 1, got {args.els_patch!r}")
  if any(k < 1 or k % 2 == 0 for k in args.els_patches) or len(set(args.els_patches)) != len(
      args.els_patches):
    p.error(f"--els_patch must be distinct odd integers >= 1, got {args.els_patch!r}")
  return args


def timed_cpu(fn, repeats):
  """(median wall seconds, median process CPU seconds) of fn() after one warm-up call. CPU seconds
  (all threads of this process) barely move when other jobs take the cores, so on a shared
  machine ratios of CPU-time rates are the steadier measure; wall-time ratios are reported too."""
  fn()
  walls, cpus = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - w0)
    cpus.append(time.process_time() - c0)
  return statistics.median(walls), statistics.median(cpus)


# ---- the published scripts' style, in plain numpy ---------------------------------------------

def np_patches(images, k):
  """(n, H, W, C) -> (n, H W, k k C) zero-padded windows (what torch's F.unfold gives)."""
  n, h, w, c = images.shape
  r = k // 2
  padded = np.pad(images, ((0, 0), (r, r), (r, r), (0, 0)))
  return np.stack([padded[:, i:i + h, j:j + w] for i in range(k) for j in range(k)],
                  axis=3).reshape(n, h * w, k * k * c)


def numpy_patch_machine(train, x, sigmas, k, composite, chunk=1000):
  """LS (composite=False) or PSPC-square, one query at a time, float32 numpy."""
  n, h, w, c = train.shape
  r = k // 2
  out = np.empty_like(x)
  for q, (xq, s) in enumerate(zip(x, sigmas)):
    xp = np_patches(xq[None], k)[0]  # (HW, K)
    d2 = np.concatenate([np.sum((np_patches(train[a:a + chunk], k) - xp) ** 2, axis=-1)
                         for a in range(0, n, chunk)])  # (N, HW)
    logits = -d2 / (2 * s * s)
    wts = np.exp(logits - logits.max(axis=0))
    wts /= wts.sum(axis=0)
    if not composite:
      out[q] = np.einsum("nq,nqc->qc", wts, train.reshape(n, h * w, c)).reshape(h, w, c)
      continue
    est = sum(np.einsum("nq,nqk->qk", wts[a:a + chunk], np_patches(train[a:a + chunk], k))
              for a in range(0, n, chunk)).reshape(h, w, k, k, c)
    acc = np.zeros((h + 2 * r, w + 2 * r, c), np.float32)  # the padded canvas
    cover = np.zeros((h + 2 * r, w + 2 * r, 1), np.float32)  # windows covering each position
    for i in range(k):
      for j in range(k):
        acc[i:i + h, j:j + w] += est[:, :, i, j]
        cover[i:i + h, j:j + w] += 1
    out[q] = (acc / cover)[r:r + h, r:r + w]
  return out


def queries_for(train, sigma_grid, per_sigma, rng):
  idx = rng.integers(0, len(train), (len(sigma_grid), per_sigma)).reshape(-1)
  s = np.repeat(sigma_grid, per_sigma).astype(np.float32)
  x = (train[idx] + s[:, None, None, None] * rng.standard_normal((len(s),) + train.shape[1:]))
  return x.astype(np.float32), s


def local_rows(name, train, k, per_sigma, numpy_pairs, sigma_grid, repeats, rng, numpy_n=None):
  """Ours vs numpy for LS and PSPC on one problem shape.

  numpy_n: numpy (and a second timing of ours) on the first numpy_n training images only (numpy's
  cost is linear in N; the speed-up is then quoted on that identical problem, and ours at full N
  is reported beside it).
  """
  x, s = queries_for(train, sigma_grid, per_sigma, rng)
  pick = rng.choice(len(x), min(numpy_pairs, len(x)), replace=False)
  small = train if numpy_n is None else train[:numpy_n]
  rows = {}
  for kind, factory in (("ls", local_denoiser), ("pspc", patch_composite_denoiser)):
    denoise = factory(train, k)
    xq, sq = jnp.asarray(x), jnp.asarray(s)
    ours_s, first, ours_out = timed(lambda: denoise(xq, sq).block_until_ready(), repeats)
    t0 = time.perf_counter()  # numpy compiles nothing: one timed call
    np_out = numpy_patch_machine(small, x[pick], s[pick], k, kind == "pspc")
    np_s = time.perf_counter() - t0
    if numpy_n is None:
      ours_same_s, ours_same_out = ours_s / len(x) * len(pick), np.asarray(ours_out)[pick]
    else:
      small_denoise = factory(small, k)
      xs, ss = jnp.asarray(x[pick]), jnp.asarray(s[pick])
      ours_same_s, _, ours_same_out = timed(lambda: small_denoise(xs, ss).block_until_ready(),
                                            repeats)
    row = dict(
        n=len(train), numpy_n=len(small), image=list(train.shape[1:]), patch=k,
        ours_pairs=len(x), numpy_pairs=len(pick),
        ours_seconds=ours_s, ours_first_call_seconds=first, numpy_seconds=np_s,
        ours_ms_per_query_sigma=ours_s / len(x) * 1e3,
        ours_ms_per_query_sigma_at_numpy_n=ours_same_s / len(pick) * 1e3,
        numpy_ms_per_query_sigma=np_s / len(pick) * 1e3,
        max_abs_difference=float(np.max(np.abs(np.asarray(ours_same_out) - np_out))))
    row["speedup"] = row["numpy_ms_per_query_sigma"] / row["ours_ms_per_query_sigma_at_numpy_n"]
    rows[kind] = row
    print(f"{name} {kind.upper():4s} N={len(train)} {train.shape[1:]} k={k}: ours "
          f"{row['ours_ms_per_query_sigma']:.2f} ms / (query, sigma); at N={len(small)}: ours "
          f"{row['ours_ms_per_query_sigma_at_numpy_n']:.2f} ms, numpy "
          f"{row['numpy_ms_per_query_sigma']:.1f} ms -> {row['speedup']:.1f}x; max |diff| "
          f"{row['max_abs_difference']:.1e}")
  return rows


def gemm_peak(repeats):
  """GFLOP/s of a (2048 x 2048) @ (2048 x 2048) float32 matmul at full precision, the ceiling:
  (per wall second, per CPU second)."""
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
  sq = jnp.asarray(np.random.default_rng(1).standard_normal((2048, 2048)), jnp.float32)
  wall, cpu = timed_cpu(lambda: matmul(sq, sq).block_until_ready(), repeats)
  return 2.0 * 2048 ** 3 / wall / 1e9, 2.0 * 2048 ** 3 / cpu / 1e9


def els_stage_seconds(rows, cols, kdim, c, tiles, repeats, steps=32):
  """Seconds ELS's four passes over its (rows, cols) energy tiles take on their own, for `tiles`
  tiles: the energy matmul (rows, K + 1) @ (K + 1, cols), the row min, the exp (with the +inf
  guard, writing the weights) and the weights matmul (rows, cols) @ (cols, C + 1). Each is a
  lax.scan over `steps` distinct tiles (so loop overheads count as in ELS), scaled to `tiles`."""
  hi = jax.lax.Precision.HIGHEST
  rng = np.random.default_rng(4)
  xa = jnp.asarray(rng.standard_normal((rows, kdim + 1)), jnp.float32)
  ya = jnp.asarray(rng.standard_normal((steps, cols, kdim + 1)), jnp.float32)
  energy = jnp.asarray(rng.uniform(0, 10, (rows, cols)), jnp.float32)
  centres = jnp.asarray(rng.standard_normal((steps, cols, c + 1)), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.1, 1, (rows,)), jnp.float32)

  def scanned(step, init, xs):
    # Each step's whole output is the next carry, so no part of a pass can be optimised away.
    return jax.jit(lambda *a: jax.lax.scan(lambda carry, x: (step(carry, x, *a), None), init, xs)[0])

  index = jnp.arange(steps, dtype=jnp.float32)
  stages = dict(
      energy_matmul=(scanned(lambda e, y, x: jnp.matmul(x, y.T, precision=hi), energy, ya), (xa,)),
      row_min=(scanned(lambda m, i, e: jnp.minimum(m, (e + i).min(axis=1)), scale, index), (energy,)),
      exp=(scanned(lambda wt, i, e, sc: jnp.where(e < jnp.inf, jnp.exp(-(e - i) * sc[:, None]), 0.0),
                   energy, index), (energy, scale)),
      weights_matmul=(scanned(lambda acc, y, e: acc + jnp.matmul(e, y, precision=hi),
                              jnp.zeros((rows, c + 1), jnp.float32), centres), (energy,)),
  )
  out = {}
  for name, (fn, args) in stages.items():
    wall, cpu = timed_cpu(lambda: fn(*args).block_until_ready(), repeats)
    out[name] = dict(wall=wall * tiles / steps, cpu=cpu * tiles / steps)
  return out


def els_rows(train, k, pairs, chunks, sigma_grid, repeats, rng):
  n, h, w, c = train.shape
  hw, kdim = h * w, k * k * c
  x, s = queries_for(train, sigma_grid[:1], pairs, rng)
  flops = 2.0 * len(x) * hw * n * hw * (kdim + c)
  peaks = [gemm_peak(repeats)]
  out = dict(n=n, image=[h, w, c], patch=k, pairs=len(x), flops_per_pair=flops / len(x), chunks={})
  print(f"GEMM ceiling (2048^3, HIGHEST): {peaks[0][0]:.1f} GFLOP/s per wall second, "
        f"{peaks[0][1]:.1f} per CPU second")
  for chunk in chunks:
    denoise = equivariant_local_denoiser(train, k, chunk_size=chunk)  # default query block
    xq, sgm = jnp.asarray(x), jnp.asarray(s)
    t0 = time.perf_counter()
    denoise(xq, sgm).block_until_ready()
    first = time.perf_counter() - t0
    ours = dict(zip(("wall", "cpu"), timed_cpu(lambda: denoise(xq, sgm).block_until_ready(),
                                                repeats)))
    peaks.append(gemm_peak(repeats))
    block = min(els_blocks(train.shape, chunk)[1], len(x))  # ELS's default query block
    tiles = -(-len(x) // block) * -(-n // chunk)
    parts = els_stage_seconds(block * hw, chunk * hw, kdim, c, tiles, repeats)
    row = dict(first_call_seconds=first, query_block=block, s_per_query_sigma=ours["wall"] / len(x),
               gemm_ceiling_measurements=peaks[-2:], stage_seconds=parts)
    for clock, j in (("wall", 0), ("cpu", 1)):
      ceiling = max(p[j] for p in peaks[-2:])  # the higher of the two around this row: conservative
      gflops = flops / ours[clock] / 1e9
      row[clock] = dict(seconds=ours[clock], gflops=gflops, gemm_ceiling_gflops=ceiling,
                        ratio_to_gemm_ceiling=gflops / ceiling,
                        stage_fractions={k_: v[clock] / ours[clock] for k_, v in parts.items()},
                        ratio_bound_exp_alone=flops / parts["exp"][clock] / 1e9 / ceiling,
                        ratio_bound_four_passes=flops / sum(v[clock] for v in parts.values())
                        / 1e9 / ceiling)
    out["chunks"][str(chunk)] = row
    print(f"ELS k={k} N={n} chunk={chunk} query_block={block}: {row['s_per_query_sigma']:.2f} s / "
          f"(query, sigma)")
    for clock in ("wall", "cpu"):
      r = row[clock]
      fr = r["stage_fractions"]
      print(f"  per {clock} second: {r['gflops']:.1f} GFLOP/s = {r['ratio_to_gemm_ceiling']:.2f} of "
            f"the GEMM ceiling ({r['gemm_ceiling_gflops']:.1f}); the passes alone take: energy "
            f"matmul {fr['energy_matmul']:.0%}, min {fr['row_min']:.0%}, exp {fr['exp']:.0%}, "
            f"weights matmul {fr['weights_matmul']:.0%} of ELS's time; ratio bound by the exp pass "
            f"alone {r['ratio_bound_exp_alone']:.2f}, by the four passes {r['ratio_bound_four_passes']:.2f}")
  out["gemm_ceiling_measurements"] = peaks
  return out


def els_summary(by_patch):
  """One line per (patch size, chunk): the ELS ratio to the GEMM ceiling, the figure issue 12 asks for."""
  print("ELS ratio to the GEMM ceiling by patch size (per wall second / per CPU second):")
  for k, row in by_patch.items():
    for chunk, r in row["chunks"].items():
      print(f"  k={k:>2} (K={row['patch'] ** 2 * row['image'][2]:>3}) chunk {chunk}: "
            f"{r['wall']['ratio_to_gemm_ceiling']:.2f} / {r['cpu']['ratio_to_gemm_ceiling']:.2f}, "
            f"{r['s_per_query_sigma']:.2f} s per (query, sigma)")


def ystar_chunks(rng, repeats, n=8192, d=784, queries=256):
  train = rng.uniform(-1, 1, (n, d)).astype(np.float32)
  x = jnp.asarray(train[:queries] + 0.5 * rng.standard_normal((queries, d)).astype(np.float32))
  rows = {}
  for chunk in (1024, 2048, 8192):
    denoise = empirical_optimal_denoiser(train, chunk_size=chunk)
    sec, _, _ = timed(lambda: denoise(x, 0.5).block_until_ready(), repeats)
    rows[str(chunk)] = sec
  default = default_chunk_size()
  print("y* N=%d D=%d %d queries: " % (n, d, queries) + ", ".join(
      f"chunk {c}: {t * 1e3:.0f} ms" for c, t in rows.items()) + f" (default here: {default})")
  return dict(n=n, d=d, queries=queries, seconds_by_chunk=rows, default_chunk=default,
              backend=jax.default_backend())


def main(argv=None):
  args = parse_args(argv)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPUs")
  rng = np.random.default_rng(args.seed)
  sigma_grid = edm.gap_sigma_grid(args.sigmas).astype(np.float32)
  results = dict(
      config=vars(args),
      environment=dict(jax=jax.__version__, platform=dev.platform, device_kind=dev.device_kind,
                       cpu_count=os.cpu_count(), python=platform.python_version()),
      notes="medians after a warm-up call; numpy is float32, one query at a time, training windows "
            "unfolded per chunk of 1,000 images inside the timing; ours: all (query, sigma) pairs in "
            "one call with per-query sigma; random uniform images (timing does not depend on them)")
  fashion = rng.uniform(-1, 1, (1000, 28, 28, 1)).astype(np.float32)
  els_patches = args.els_patches
  els_chunks = [int(c) for c in args.els_chunks.split(",")]
  if args.els_only:
    results["els"] = {str(k): els_rows(fashion, k, args.els_queries, els_chunks, sigma_grid,
                                       args.repeats, rng) for k in els_patches}
    els_summary(results["els"])
    jsonio.write_json(args.out, results)
    print(f"wrote {args.out}")
    return results
  results["fashion"] = local_rows("fashion", fashion, args.patch, args.queries, args.numpy_queries,
                                  sigma_grid, args.repeats, rng)
  if not args.quick:
    cifar = rng.uniform(-1, 1, (50_000, 32, 32, 3)).astype(np.float32)
    results["cifar"] = local_rows("cifar", cifar, args.patch,
                                  max(1, args.cifar_queries // len(sigma_grid)), 1, sigma_grid,
                                  1, rng, numpy_n=args.cifar_numpy_n)
    del cifar
  results["els"] = {str(k): els_rows(fashion, k, args.els_queries, els_chunks, sigma_grid,
                                     args.repeats, rng) for k in els_patches}
  els_summary(results["els"])
  if args.els_cifar_n:
    cifar_like = rng.uniform(-1, 1, (args.els_cifar_n, 32, 32, 3)).astype(np.float32)
    results["els_cifar"] = {str(k): els_rows(cifar_like, k, args.els_queries,
                                             [els_blocks(cifar_like.shape)[0]], sigma_grid,
                                             args.repeats, rng) for k in els_patches}
    del cifar_like
  results["ystar"] = ystar_chunks(rng, args.repeats)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  jsonio.write_json(args.out, results)
  print(f"wrote {args.out}")
  return results


if __name__ == "__main__":
  main()
