"""Speed of a class-conditional y* on a batch of one class: the rows laid out by label, chunks of
other classes skipped (optimal._over_chunks), against a batch of every class (no chunk skipped),
the unconditional y* (every chunk scored) and, with --baseline_rev, the y* of an earlier revision
(every chunk scored and other classes masked), all on the same data in one run.

  python benchmarks/ystar_class_skip.py                        # N=20,000, D=1,024, 10 classes
  python benchmarks/ystar_class_skip.py --baseline_rev 86cef4a  # + the pre-layout y*

Timing: one warm-up (compile) call, then the median of --repeats calls with block_until_ready.
Writes JSON to benchmarks/results/ystar_class_skip.json (--out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.optimal import empirical_optimal_denoiser

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--n", type=int, default=20_000, help="training points")
  p.add_argument("--d", type=int, default=1024, help="dimension")
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--queries", type=int, default=256, help="queries per call (one class)")
  p.add_argument("--chunk", type=int, default=2048, help="chunk_size (2,048: the CPU default)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--baseline_rev", default=None,
                 help="git revision whose diffgen_jax/optimal.py is timed as the baseline")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(HERE, "results", "ystar_class_skip.json"))
  return p.parse_args(argv)


def load_revision(rev: str):
  """optimal.py of git revision `rev` as a module (it imports the rest of diffgen_jax as is)."""
  repo = os.path.dirname(HERE)
  source = subprocess.check_output(["git", "show", f"{rev}:diffgen_jax/optimal.py"], cwd=repo)
  path = os.path.join(tempfile.mkdtemp(), "optimal_baseline.py")
  with open(path, "wb") as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("optimal_baseline", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def timed(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None):
  args = parse_args(argv)
  rng = np.random.default_rng(args.seed)
  train = rng.uniform(-1, 1, (args.n, args.d)).astype(np.float32)
  labels = rng.integers(0, args.classes, args.n)  # classes interleaved, as in a shuffled split
  c = 3 % args.classes
  members = np.flatnonzero(labels == c)
  x = jnp.asarray(train[rng.choice(members, args.queries)] +
                  0.3 * rng.standard_normal((args.queries, args.d)).astype(np.float32))
  sigma = jnp.asarray(np.geomspace(0.01, 10, args.queries), jnp.float32)
  one_class = jnp.full((args.queries,), c, jnp.int32)
  every_class = jnp.asarray(rng.permutation(np.arange(args.queries) % args.classes), jnp.int32)
  cond = empirical_optimal_denoiser(train, labels, chunk_size=args.chunk)
  uncond = empirical_optimal_denoiser(train, chunk_size=args.chunk)
  chunks = -(-args.n // min(args.chunk, args.n))
  result = {
      "config": vars(args), "chunks": chunks, "rows_of_class": int(members.size),
      "platform": platform.platform(), "jax": jax.__version__, "backend": jax.default_backend(),
      "seconds": {
          "conditional_one_class": timed(lambda: cond(x, sigma, one_class), args.repeats),
          "conditional_every_class": timed(lambda: cond(x, sigma, every_class), args.repeats),
          "unconditional": timed(lambda: uncond(x, sigma), args.repeats)}}
  if args.baseline_rev:
    old = load_revision(args.baseline_rev)
    before = old.empirical_optimal_denoiser(train, labels, chunk_size=args.chunk)
    result["seconds"]["baseline_conditional_one_class"] = timed(
        lambda: before(x, sigma, one_class), args.repeats)
    diff = np.abs(np.asarray(before(x, sigma, one_class)) - np.asarray(cond(x, sigma, one_class)))
    result["max_abs_difference_to_baseline"] = float(diff.max())
  sec = result["seconds"]
  result["speedup_one_class_vs_every_class"] = (sec["conditional_every_class"] /
                                                sec["conditional_one_class"])
  if "baseline_conditional_one_class" in sec:
    result["speedup_one_class_vs_baseline"] = (sec["baseline_conditional_one_class"] /
                                               sec["conditional_one_class"])
  print(json.dumps(result, indent=1))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
