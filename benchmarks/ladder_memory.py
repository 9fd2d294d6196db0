"""Peak host memory per process while the analytic ladder's machines are built from a training
source (diffgen_jax.optimal_patches): 1 process x 8 devices against 2 processes x 4 devices.

The training set is a uint8 file, memory-mapped and read through `sharding.LazyRows` with
`data.to_unit_range` (as a lazily decoded split is read): nothing of it is resident until read.
Each machine is built in a fresh set of processes (tests/multiprocess.py, jax.distributed over
gloo, simulated CPU devices), which report:

  * rss_before_mib: the process's resident memory just before the build (imports, jax, the mesh,
    and the cross-process runtime, started by one `sum_over_processes` before: ~50 MiB that the
    first collective costs whatever runs it);
  * peak_increase_mib: the peak resident memory during the build (ru_maxrss) minus rss_before;
  * after_increase_mib: resident memory after the build minus rss_before (what stays: on CPU the
    devices' shards live in host memory);
  * rows_read / largest_read / largest_shard: `sharding.rows_built` ("source", "read", "shard").

For reference each row also gives the float32 size of the whole set and of 1/P of it. On CPU the
devices' memory is host memory, so the expected increase is about N/P float32 rows (this
process's devices' shards) plus one shard being built; the Gaussian holds chunk_size float64 rows
and its D x D sums instead. Run against an older checkout (PYTHONPATH) to compare versions.

  nice python benchmarks/ladder_memory.py                    # ~1-2 minutes on 2 cores
  nice python benchmarks/ladder_memory.py --n 16384 --out /tmp/ladder_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import multiprocess  # noqa: E402  (tests/multiprocess.py: P processes x D devices)

_BODY = """
import resource
from diffgen_jax import data, optimal_patches as op


def rss_mib():
  with open("/proc/self/status") as f:
    return int(next(l for l in f if l.startswith("VmRSS")).split()[1]) / 1024


pixels = np.load({path!r}, mmap_mode="r")
source = sharding.LazyRows(pixels, np.arange(len(pixels)), transform=data.to_unit_range)
mesh = sharding.make_mesh()
sharding.sum_over_processes(np.zeros(1))  # the cross-process runtime starts before, not counted
sharding.rows_built.clear()
before = rss_mib()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
machine = {{"ls": lambda: op.local_denoiser(source, 3, mesh=mesh),
           "els": lambda: op.equivariant_local_denoiser(source, 3, mesh=mesh),
           "gaussian": lambda: op.gaussian_denoiser(source, chunk_size=256, mesh=mesh)}}[{kind!r}]()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
report(rss_before_mib=np.array(before), peak_increase_mib=np.array(peak - before),
       peak_before_build_mib=np.array(peak_before), after_increase_mib=np.array(rss_mib() - before),
       rows_read=np.array(sharding.rows_built["source"]),
       largest_read=np.array(sharding.rows_built["read"]),
       largest_shard=np.array(sharding.rows_built["shard"]))
"""


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--n", type=int, default=65536, help="training images")
  p.add_argument("--size", type=int, default=16, help="image side (3 channels)")
  p.add_argument("--machines", default="ls,els,gaussian")
  p.add_argument("--out", default=os.path.join(HERE, "results", "ladder_memory.json"))
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  shape = (args.n, args.size, args.size, 3)
  whole_mib = np.prod(shape) * 4 / 2 ** 20
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "pixels.npy")
    np.save(path, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    for kind in args.machines.split(","):
      for processes, devices in ((1, 8), (2, 4)):
        reports = multiprocess.run(_BODY.format(path=path, kind=kind),
                                   os.path.join(tmp, f"{kind}_{processes}"), processes=processes,
                                   devices=devices)
        key = f"{kind}_{processes}x{devices}"
        rows[key] = dict(processes=processes, devices=devices,
                         whole_float32_mib=round(float(whole_mib), 1),
                         share_float32_mib=round(float(whole_mib) / processes, 1),
                         per_process=[{k: round(float(v), 1) for k, v in r.items()}
                                      for r in reports])
        print(key, json.dumps(rows[key]["per_process"]), flush=True)
  result = dict(shape=list(shape), python=platform.python_version(), machine=platform.machine(),
                rows=rows)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main()
