"""Speed of the analytic ladder's patch machines (diffgen_jax.optimal_patches), side by side in one run.

  * LS and PSPC-square: time per (query, sigma) of ours against a plain numpy implementation of the
    same formula in the style of the published scripts (unfold every training image into its k x k
    windows, squared differences to the query's windows, softmax over images per position, weighted
    centre pixels; PSPC: weighted whole windows folded back and averaged), at Fashion-MNIST shape
    (N = 1,000, 28x28x1) and CIFAR shape (N = 50,000, 32x32x3; few queries).
  * ELS: achieved GFLOP/s of the cross-term and weighted-sum matmuls (2 B HW N HW (k^2 C + C)
    flops) against two GEMM ceilings measured in the same run: a (2048 x 2048) @ (2048 x 2048)
    matmul (the machine's peak) and the same-shaped matmul ELS does per chunk
    ((B HW x k^2 C) @ (k^2 C x chunk HW), summed over chunks); time per (query, sigma) at N = 1,000.
  * y*: the streaming optimal denoiser's time at several chunk sizes (the backend default marked).

Numbers are medians of --repeats calls after a warm-up (compile) call. On a shared machine quote the
ratios, which are measured side by side. Examples:

  nice python benchmarks/analytic_ladder.py --quick        # ~1 minute on 2 cores
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


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--patch", type=int, default=5, help="LS/PSPC patch size")
  p.add_argument("--els_patch", type=int, default=3, help="ELS patch size")
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
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "analytic_ladder.json"))
  return p.parse_args(argv)


def timed(fn, repeats):
  """Median wall time of fn() after one warm-up (compile) call; fn must block on its result."""
  t0 = time.perf_counter()
  result = fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first, result


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


def els_rows(train, k, pairs, chunks, sigma_grid, repeats, rng):
  n, h, w, c = train.shape
  hw, kdim = h * w, k * k * c
  x, s = queries_for(train, sigma_grid[:1], pairs, rng)
  flops = 2.0 * len(x) * hw * n * hw * (kdim + c)
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
  sq = jnp.asarray(np.random.default_rng(1).standard_normal((2048, 2048)), jnp.float32)
  peak_s, _, _ = timed(lambda: matmul(sq, sq).block_until_ready(), repeats)
  peak = 2.0 * 2048 ** 3 / peak_s / 1e9
  out = dict(n=n, image=[h, w, c], patch=k, pairs=len(x), flops_per_pair=flops / len(x),
             gemm_peak_gflops=peak, chunks={})
  print(f"GEMM peak (2048^3, HIGHEST): {peak:.1f} GFLOP/s")
  for chunk in chunks:
    denoise = equivariant_local_denoiser(train, k, chunk_size=chunk)  # default query block
    xq, sgm = jnp.asarray(x), jnp.asarray(s)
    ours_s, first, _ = timed(lambda: denoise(xq, sgm).block_until_ready(), repeats)
    # The same-shaped GEMM, chunk by chunk: (block HW x K) @ (K x chunk HW) at full precision.
    block = els_blocks(train.shape, chunk)[1]  # ELS's default query block
    a = jnp.asarray(np.random.default_rng(2).standard_normal((block * hw, kdim)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).standard_normal((kdim, chunk * hw)), jnp.float32)
    gemm_s, _, _ = timed(lambda: matmul(a, b).block_until_ready(), repeats)
    shaped = 2.0 * block * hw * chunk * hw * kdim / gemm_s / 1e9
    gflops = flops / ours_s / 1e9
    row = dict(seconds=ours_s, first_call_seconds=first, s_per_query_sigma=ours_s / len(x),
               gflops=gflops, same_shape_gemm_gflops=shaped, ratio_to_gemm_peak=gflops / peak,
               ratio_to_same_shape_gemm=gflops / shaped)
    out["chunks"][str(chunk)] = row
    print(f"ELS k={k} N={n} chunk={chunk}: {row['s_per_query_sigma']:.2f} s / (query, sigma), "
          f"{gflops:.1f} GFLOP/s = {row['ratio_to_gemm_peak']:.2f} of peak GEMM, "
          f"{row['ratio_to_same_shape_gemm']:.2f} of the same-shaped GEMM ({shaped:.1f} GFLOP/s)")
  return out


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
  results["fashion"] = local_rows("fashion", fashion, args.patch, args.queries, args.numpy_queries,
                                  sigma_grid, args.repeats, rng)
  if not args.quick:
    cifar = rng.uniform(-1, 1, (50_000, 32, 32, 3)).astype(np.float32)
    results["cifar"] = local_rows("cifar", cifar, args.patch,
                                  max(1, args.cifar_queries // len(sigma_grid)), 1, sigma_grid,
                                  1, rng, numpy_n=args.cifar_numpy_n)
    del cifar
  results["els"] = els_rows(fashion, args.els_patch, args.els_queries,
                            [int(c) for c in args.els_chunks.split(",")], sigma_grid, args.repeats,
                            rng)
  if args.els_cifar_n:
    cifar_like = rng.uniform(-1, 1, (args.els_cifar_n, 32, 32, 3)).astype(np.float32)
    results["els_cifar"] = els_rows(cifar_like, args.els_patch, args.els_queries,
                                    [els_blocks(cifar_like.shape)[0]], sigma_grid, args.repeats, rng)
    del cifar_like
  results["ystar"] = ystar_chunks(rng, args.repeats)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  jsonio.write_json(args.out, results)
  print(f"wrote {args.out}")
  return results


if __name__ == "__main__":
  main()
