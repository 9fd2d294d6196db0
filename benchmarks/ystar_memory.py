"""Peak host memory (RSS) of building y* from a lazily read source against a whole numpy array.

Each case runs in its own process (ru_maxrss is a process's peak), on the CPU backend, where the
devices' arrays live in host memory too: y*'s own (N_padded x D) float32 arrays (centred and
uncentred points, 8 bytes per value) are resident in every case. Cases:
  * lazy:     a source whose rows are computed from their index when read (nothing held);
  * array:    the same rows as one (N, D) float32 numpy array, made before the build;
  * baseline: (with --baseline_rev) the array case with optimal.py of an earlier revision, which
              made float64 copies of the whole set.
Each reports the peak RSS, the RSS before the build (after imports and, for the array cases, the
array) and the increase; the build is followed by one small call so the arrays are materialised.

  python benchmarks/ystar_memory.py                        # N=20,000, D=3,072 (CIFAR-sized)
  python benchmarks/ystar_memory.py --baseline_rev 86cef4a
  python benchmarks/ystar_memory.py --devices 8            # laid out over 8 host devices

Writes JSON to benchmarks/results/ystar_memory.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--n", type=int, default=20_000, help="training rows")
  p.add_argument("--d", type=int, default=3072, help="values per row (3,072 = 32x32x3)")
  p.add_argument("--chunk", type=int, default=2048, help="chunk_size")
  p.add_argument("--devices", type=int, default=1,
                 help="host devices; > 1 lays the set out over a mesh of them")
  p.add_argument("--baseline_rev", default=None, help="git revision of optimal.py for 'baseline'")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--out", default=os.path.join(HERE, "results", "ystar_memory.json"))
  return p.parse_args(argv)


def _rss_mib() -> float:
  import resource  # pylint: disable=import-outside-toplevel
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2.0 ** 20


class Synthetic:
  """(n, d) float32 rows in [-1, 1] computed from their index when read: a lazily decoded split."""

  def __init__(self, n, d):
    self.shape, self.dtype = (n, d), __import__("numpy").dtype("float32")

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, index):
    import numpy as np  # pylint: disable=import-outside-toplevel
    rows = np.arange(self.shape[0])[index]
    out = np.empty((len(rows), self.shape[1]), np.float32)
    cols = np.arange(self.shape[1])[None] * 0.01
    for start in range(0, len(rows), 256):  # float64 temporaries of 256 rows, not of the read
      out[start:start + 256] = np.sin(rows[start:start + 256, None] * 0.001 + cols)
    return out


def child(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from diffgen_jax import sharding  # pylint: disable=import-outside-toplevel
  if args.child == "baseline":
    sys.path.insert(0, HERE)
    from ystar_class_skip import load_revision  # pylint: disable=import-outside-toplevel
    optimal = load_revision(args.baseline_rev)
  else:
    from diffgen_jax import optimal  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh() if args.devices > 1 else None
  source = Synthetic(args.n, args.d)
  if args.child != "lazy":
    source = source[np.arange(args.n)]
  before, before_peak = _current_rss_mib(), _rss_mib()
  denoise = optimal.empirical_optimal_denoiser(source, chunk_size=args.chunk, mesh=mesh)
  out = denoise(jnp.zeros((4, args.d), jnp.float32), 1.0)
  jax.block_until_ready(out)
  peak = _rss_mib()
  resident = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(denoise)) / 2.0 ** 20
  return {"case": args.child, "peak_rss_mib": peak, "rss_before_build_mib": before,
          "peak_rss_before_build_mib": before_peak,
          "increase_mib": peak - before, "y_star_arrays_mib": resident,
          "rows_built": dict(sharding.rows_built)}


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    print(json.dumps(child(args)))
    return 0
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={args.devices}"])
  cases = ["lazy", "array"] + (["baseline"] if args.baseline_rev else [])
  results = []
  for case in cases:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--n", str(args.n),
           "--d", str(args.d), "--chunk", str(args.chunk), "--devices", str(args.devices)]
    if args.baseline_rev:
      cmd += ["--baseline_rev", args.baseline_rev]
    line = subprocess.check_output(cmd, env=env, cwd=REPO, text=True).strip().splitlines()[-1]
    results.append(json.loads(line))
    print(f"{case:>8}: peak RSS {results[-1]['peak_rss_mib']:8.1f} MiB, before the build "
          f"{results[-1]['rss_before_build_mib']:8.1f} MiB, increase "
          f"{results[-1]['increase_mib']:8.1f} MiB (y* arrays {results[-1]['y_star_arrays_mib']:.1f}"
          " MiB)")
  report = {"config": {k: v for k, v in vars(args).items() if k != "child"},
            "set_float32_mib": args.n * args.d * 4 / 2.0 ** 20, "platform": platform.platform(),
            "cases": results}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
