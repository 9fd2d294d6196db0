"""Speed and memory of the exact empirical optimal denoiser at CIFAR-10 scale.

One run measures, side by side on the same machine:
  * our streaming denoiser (diffgen_jax.optimal) on N training points of dimension D, for
    queries x sigmas queries flattened into one call with a per-query sigma; achieved GFLOP/s
    counting 4 B N D flops per sigma (two matrix products of B x D by D x N);
  * the GEMM ceiling: a plain jnp.matmul of (B_total x D) @ (D x N) at HIGHEST precision;
  * a dense numpy broadcast in the authors' style ((queries, N, D) differences, squared, summed,
    softmax, broadcast weighted sum) at a reduced N that fits in memory, with ours on the very same
    reduced problem;
  * torch.cdist + softmax + matmul at the full shape, when torch is importable (cuda if available);
  * the memory our denoiser's calls add on top of the resident training set.

Runs unchanged on CPU, GPU or TPU (jax's default device). Examples:

  python benchmarks/optimal_denoiser.py --small
  python benchmarks/optimal_denoiser.py                 # N=50,000, D=3,072, 256 queries x 8 sigmas
  python benchmarks/optimal_denoiser.py --small --mesh  # over every local device (per device too)

--mesh lays the training set over a mesh of every local device (`sharding.make_mesh`, the data
axis), as the evaluate job does, and the GEMM ceiling is then the same matmul with the training
points' columns split over the same devices (each device (B x D) @ (D x N/devices)); the JSON adds
per-device GFLOP/s (benchmarks/eval_scaling.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from diffgen_jax import edm
from diffgen_jax.optimal import default_chunk_size, empirical_optimal_denoiser
from diffgen_jax.sharding import DATA_AXIS, make_mesh


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--n", type=int, default=50_000, help="training points")
  p.add_argument("--d", type=int, default=3072, help="dimension (3072 = 32x32x3)")
  p.add_argument("--queries", type=int, default=256, help="queries per sigma")
  p.add_argument("--sigmas", type=int, default=8, help="sigmas, log-spaced over [0.002, 80]")
  p.add_argument("--chunk", type=int, default=None,
                 help="chunk_size of our denoiser (default: the backend's, optimal.default_chunk_size)")
  p.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
  p.add_argument("--dense_n", type=int, default=1024, help="reduced N for the numpy comparison")
  p.add_argument("--dense_queries", type=int, default=128, help="queries for the numpy comparison")
  p.add_argument("--dense_batch", type=int, default=16,
                 help="queries per numpy broadcast ((batch, dense_n, D) float32 arrays)")
  p.add_argument("--no_torch", action="store_true", help="skip the torch comparison")
  p.add_argument("--mesh", action="store_true",
                 help="lay the training set (ours and the GEMM ceiling) over every local device")
  p.add_argument("--small", action="store_true",
                 help="quick run: N=4096, D=256, 64 queries x 4 sigmas, dense_n=512")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "optimal_denoiser.json"))
  args = p.parse_args(argv)
  if args.chunk is None:
    args.chunk = default_chunk_size()
  if args.small:
    args.n, args.d, args.queries, args.sigmas, args.dense_n, args.dense_queries = (
        4096, 256, 64, 4, 512, 64)
  return args


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


def current_rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
  """Polls the resident set size every few milliseconds (Linux) and keeps the peak."""

  def __init__(self, interval=0.005):
    self.interval, self.peak, self._stop = interval, 0, threading.Event()

  def __enter__(self):
    self.start = current_rss_bytes()
    self.peak = self.start
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def _poll(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, current_rss_bytes())
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, current_rss_bytes())


def device_memory_stats():
  try:
    return jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None


def dense_numpy_denoiser(train, x, sigma, batch):
  """The authors' style: a dense (queries, N, D) broadcast, softmax over N, broadcast weighted sum."""
  out = np.empty_like(x)
  for start in range(0, len(x), batch):
    xb, sb = x[start:start + batch], sigma[start:start + batch]
    diff = xb[:, None, :] - train[None, :, :]  # (b, N, D)
    d2 = np.sum(diff ** 2, axis=-1)  # (b, N)
    logits = -d2 / (2 * sb[:, None] ** 2)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    out[start:start + batch] = np.sum(w[:, :, None] * train[None, :, :], axis=1)
  return out


def torch_benchmark(train, x, sigma, repeats):
  import torch  # pylint: disable=import-outside-toplevel
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False  # full fp32, like our HIGHEST precision
  torch.backends.cudnn.allow_tf32 = False
  y = torch.from_numpy(train).to(device)
  q = torch.from_numpy(x).to(device)
  s = torch.from_numpy(sigma).to(device)

  def run():
    with torch.no_grad():
      d2 = torch.cdist(q, y) ** 2
      w = torch.softmax(-d2 / (2 * s[:, None] ** 2), dim=1)
      out = w @ y
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  seconds, first, out = timed(run, repeats)
  return dict(device=device, version=torch.__version__, threads=torch.get_num_threads(),
              seconds=seconds, first_call_seconds=first), out.cpu().numpy()


def main(argv=None):
  args = parse_args(argv)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}), {len(jax.devices())} devices")
  rng = np.random.default_rng(args.seed)
  n, d, b, k = args.n, args.d, args.queries, args.sigmas
  rss_start = current_rss_bytes()
  train = rng.uniform(-1, 1, (n, d)).astype(np.float32)
  sigma_grid = edm.gap_sigma_grid(k).astype(np.float32)
  # Per sigma: b noisy training points y_i + sigma n, all flattened into one call.
  idx = rng.integers(0, n, (k, b))
  queries = (train[idx] + sigma_grid[:, None, None] * rng.standard_normal((k, b, d))).astype(
      np.float32).reshape(k * b, d)
  query_sigmas = np.repeat(sigma_grid, b)
  total_q = k * b
  flops = 4.0 * total_q * n * d  # = sigmas x 4 B N D
  mesh = make_mesh() if args.mesh else None
  devices = len(jax.devices()) if args.mesh else 1
  results = dict(
      config=dict(n=n, d=d, queries_per_sigma=b, sigmas=sigma_grid.tolist(), total_queries=total_q,
                  chunk_size=args.chunk, repeats=args.repeats, small=args.small, seed=args.seed,
                  mesh_devices=devices if args.mesh else None),
      environment=dict(jax=jax.__version__, platform=dev.platform, device_kind=dev.device_kind,
                       devices=len(jax.devices()), cpu_count=os.cpu_count(),
                       python=platform.python_version()),
      notes=dict(
          timing="median of --repeats calls after one warm-up (compile) call, block_until_ready",
          flops="ours: 4 * total_queries * N * D (two matmul-shaped products per query); "
                "GEMM ceiling: 2 * total_queries * N * D for one (total_queries x D) @ (D x N) "
                "jnp.matmul at Precision.HIGHEST",
          dense_numpy="float32 numpy, (batch, N, D) broadcasts over query batches, at reduced N; "
                      "ours timed on the identical reduced problem in the same run"),
  )

  # ---- ours, full size ------------------------------------------------------------------------
  t0 = time.perf_counter()
  denoise = empirical_optimal_denoiser(train, chunk_size=args.chunk, mesh=mesh)
  jax.block_until_ready(jax.tree_util.tree_leaves(denoise(jnp.asarray(queries[:1]), 1.0)))
  build_s = time.perf_counter() - t0
  xq, sq = jnp.asarray(queries), jnp.asarray(query_sigmas)
  mem_before = device_memory_stats()
  with PeakRss() as rss:
    ours_s, ours_first, ours_out = timed(lambda: denoise(xq, sq).block_until_ready(), args.repeats)
  mem_after = device_memory_stats()
  ours_gflops = flops / ours_s / 1e9
  memory = dict(
      training_set_bytes=int(train.nbytes),
      rss_before_calls_bytes=rss.start,
      rss_peak_increase_during_calls_bytes=rss.peak - rss.start,
      rss_increase_since_start_bytes=current_rss_bytes() - rss_start,
      process_max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      streaming_working_set_estimate_bytes=int(4 * total_q * (3 * min(args.chunk, n) + d)),
      method="process RSS polled every 5 ms during our (warm-up + timed) calls, minus the RSS "
             "just before them (the training set is resident already)")
  if mem_after and "peak_bytes_in_use" in mem_after:
    memory.update(
        device_bytes_in_use_before_calls=mem_before.get("bytes_in_use"),
        device_peak_bytes_in_use=mem_after["peak_bytes_in_use"],
        device_peak_increase_bytes=mem_after["peak_bytes_in_use"] - mem_before.get("bytes_in_use", 0),
        device_method="jax device memory_stats(): peak_bytes_in_use after our calls minus "
                      "bytes_in_use before them (upper bound: the peak may predate the calls)")
  results["ours"] = dict(seconds=ours_s, first_call_seconds=ours_first, build_seconds=build_s,
                         gflops=ours_gflops, devices=devices,
                         gflops_per_device=ours_gflops / devices,
                         ns_per_query_point=ours_s / (total_q * n) * 1e9, memory=memory)
  print(f"ours: {ours_s:.3f} s for {total_q} queries x {n} points x {d} dims "
        f"-> {ours_gflops:.1f} GFLOP/s (first call {ours_first:.2f} s, build {build_s:.2f} s)"
        + (f"; {ours_gflops / devices:.1f} per device over {devices}" if mesh else ""))
  print(f"  memory: training set {train.nbytes / 2**20:.0f} MiB; peak RSS increase during calls "
        f"{memory['rss_peak_increase_during_calls_bytes'] / 2**20:.0f} MiB" +
        (f"; device peak increase {memory['device_peak_increase_bytes'] / 2**20:.0f} MiB"
         if "device_peak_increase_bytes" in memory else ""))

  # ---- GEMM ceiling ---------------------------------------------------------------------------
  a_mat = jnp.asarray(queries)
  b_mat = (jnp.asarray(train.T) if mesh is None else  # (columns split as ours splits the points)
           jax.device_put(train.T, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))))
  matmul = jax.jit(lambda a, c: jnp.matmul(a, c, precision=jax.lax.Precision.HIGHEST))
  gemm_s, _, _ = timed(lambda: matmul(a_mat, b_mat).block_until_ready(), args.repeats)
  del b_mat
  gemm_gflops = 2.0 * total_q * n * d / gemm_s / 1e9
  results["gemm_ceiling"] = dict(seconds=gemm_s, gflops=gemm_gflops, devices=devices,
                                 gflops_per_device=gemm_gflops / devices,
                                 shape=f"({total_q} x {d}) @ ({d} x {n})"
                                 + (f", columns split over {devices} devices" if mesh else ""))
  results["ratio_to_gemm"] = ours_gflops / gemm_gflops
  print(f"GEMM ceiling: {gemm_s:.3f} s -> {gemm_gflops:.1f} GFLOP/s; "
        f"ours / GEMM = {results['ratio_to_gemm']:.2f}")

  # ---- dense numpy (authors' style) vs ours at the same reduced N ------------------------------
  dn, dq = min(args.dense_n, n), min(args.dense_queries, total_q)
  pick = rng.choice(total_q, dq, replace=False)
  small_train, small_x, small_s = train[:dn], queries[pick], query_sigmas[pick]
  np_s, _, np_out = timed(lambda: dense_numpy_denoiser(small_train, small_x, small_s,
                                                       args.dense_batch), max(1, args.repeats))
  small_denoise = empirical_optimal_denoiser(small_train, chunk_size=args.chunk)
  sx, ss = jnp.asarray(small_x), jnp.asarray(small_s)
  ours_small_s, _, ours_small_out = timed(lambda: small_denoise(sx, ss).block_until_ready(),
                                          max(5, args.repeats))
  results["dense_numpy"] = dict(
      n=dn, queries=dq, batch=args.dense_batch, seconds=np_s, ours_seconds=ours_small_s,
      speedup=np_s / ours_small_s,
      numpy_ns_per_query_point=np_s / (dq * dn) * 1e9,
      ours_ns_per_query_point=ours_small_s / (dq * dn) * 1e9,
      speedup_vs_ours_full_size_per_query_point=(np_s / (dq * dn)) / (ours_s / (total_q * n)),
      max_abs_difference=float(np.max(np.abs(np.asarray(ours_small_out) - np_out))))
  print(f"dense numpy at N={dn}, {dq} queries: {np_s:.3f} s vs ours {ours_small_s:.4f} s "
        f"-> speed-up {results['dense_numpy']['speedup']:.1f}x "
        f"({results['dense_numpy']['speedup_vs_ours_full_size_per_query_point']:.1f}x against "
        f"ours' per-query-point time at full size); max |diff| "
        f"{results['dense_numpy']['max_abs_difference']:.2e}")

  # ---- torch ----------------------------------------------------------------------------------
  torch_available = False
  if not args.no_torch:
    try:
      import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      torch_available = True
    except ImportError:
      print("torch not importable: skipping the torch comparison")
  if torch_available:
    info, torch_out = torch_benchmark(train, queries, query_sigmas, args.repeats)
    info["ours_over_torch_speed"] = info["seconds"] / ours_s
    info["max_abs_difference"] = float(np.max(np.abs(np.asarray(ours_out) - torch_out)))
    results["torch"] = info
    print(f"torch.cdist+softmax+matmul ({info['device']}, {info['threads']} threads): "
          f"{info['seconds']:.3f} s -> ours is {info['ours_over_torch_speed']:.2f}x as fast; "
          f"max |diff| {info['max_abs_difference']:.2e}")
  else:
    results["torch"] = None

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")
  return results


if __name__ == "__main__":
  main()
