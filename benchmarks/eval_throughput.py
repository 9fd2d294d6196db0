"""Overheads of the evaluation machinery, measured side by side against plain network forward passes.

  1. Gap evaluation: (images x sigmas) per second of `evaluation.gap.errors_and_distance`-style work
     (`denoising_errors`) vs plain jitted forward passes of the same network on the same number of
     noisy inputs. Goal: overhead (forward rate / evaluation rate) <= 1.15.
  2. Sampler: wall time of `samplers.sample` (Heun, N steps, 2N - 1 network evaluations) vs
     (2N - 1) x the time of one jitted forward pass on the same batch. Goal: <= 1.1.

    python benchmarks/eval_throughput.py [--family ddpmpp --preset ddpmpp-tiny --resolution 28]

Writes benchmarks/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import defaults, edm, samplers
from diffgen_jax.models.network import build_network, network_denoiser
from diffgen_jax import models
from diffgen_jax.evaluation import gap


def _median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile and warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", default="ddpmpp", choices=models.FAMILIES)
  parser.add_argument("--preset", default="ddpmpp-tiny")
  parser.add_argument("--resolution", type=int, default=28)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--images", type=int, default=256, help="images per split evaluated")
  parser.add_argument("--sigmas", type=int, default=16, help="noise levels (of the gap grid)")
  parser.add_argument("--batch", type=int, default=128, help="images per compiled evaluation call")
  parser.add_argument("--sigma_chunk", type=int, default=4)
  parser.add_argument("--sample_batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=18, help="Heun sampler steps")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "eval_throughput.json"))
  args = parser.parse_args()

  config = defaults.train_config(family=args.family)
  models.apply_preset(config.model, args.preset)
  config.model.img_resolution = args.resolution
  config.model.img_channels = args.channels
  config.model.num_classes = 0
  shape = (args.resolution, args.resolution, args.channels)
  network = build_network(config.model, 0)
  params = models.init_variables(network.module, jax.random.key(0), (1,) + shape, 0)["params"]
  sigma_data = config.training.sigma_data

  def network_fn(params, x, sigma, labels):
    return network_denoiser(network, params, sigma_data)(x, sigma, labels)

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.images,) + shape).astype(np.float32)
  sigmas = edm.gap_sigma_grid()[:: max(1, edm.GAP_GRID_SIZE // args.sigmas)][: args.sigmas]
  queries = args.images * len(sigmas)

  # 1. Gap evaluation vs the same number of plain forward passes, in batches of the same size.
  rows = args.batch * args.sigma_chunk
  x = jnp.asarray(rng.standard_normal((rows,) + shape), jnp.float32)
  s = jnp.asarray(np.resize(sigmas, rows), jnp.float32)
  forward = jax.jit(network_fn)
  calls = -(-queries // rows)

  def plain():
    out = None
    for _ in range(calls):
      out = forward(params, x, s, None)
    return out

  def evaluation():
    return gap.denoising_errors(jax.tree_util.Partial(network_fn, params), images, None, sigmas,
                                batch_size=args.batch, sigma_chunk=args.sigma_chunk)

  t_plain = _median_time(plain, args.repeats)
  t_eval = _median_time(evaluation, args.repeats)
  eval_rate, plain_rate = queries / t_eval, calls * rows / t_plain

  # 2. Sampler vs NFE x one forward pass on the same batch.
  noise = jnp.asarray(rng.standard_normal((args.sample_batch,) + shape), jnp.float32)
  sample = jax.jit(lambda p, z: samplers.sample(
      lambda xx, ss, ll: network_fn(p, xx, ss, ll), z, num_steps=args.steps).samples)
  xb = noise * 10.0
  sb = jnp.full((args.sample_batch,), 1.0, jnp.float32)
  t_forward = _median_time(lambda: forward(params, xb, sb, None), args.repeats * 3)
  t_sample = _median_time(lambda: sample(params, noise), args.repeats)
  nfe = 2 * args.steps - 1

  result = {
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "model": {"family": args.family, "preset": args.preset, "shape": list(shape),
                "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))},
      "gap_evaluation": {"images": args.images, "sigmas": len(sigmas), "batch": args.batch,
                         "sigma_chunk": args.sigma_chunk, "seconds": t_eval,
                         "queries_per_s": eval_rate, "plain_forward_queries_per_s": plain_rate,
                         "overhead": plain_rate / eval_rate, "goal": 1.15},
      "sampler": {"batch": args.sample_batch, "steps": args.steps, "nfe": nfe,
                  "seconds": t_sample, "forward_seconds": t_forward,
                  "ratio_to_nfe_forward": t_sample / (nfe * t_forward), "goal": 1.1},
  }
  print(f"model {args.preset} {shape}, {result['model']['params']:,} params, {result['backend']}")
  print(f"gap evaluation : {eval_rate:10.1f} images x sigmas / s; plain forward {plain_rate:10.1f} / s;"
        f" overhead {plain_rate / eval_rate:.3f}x (goal <= 1.15)")
  print(f"sampler        : {t_sample * 1e3:8.1f} ms for {nfe} NFE; NFE x forward "
        f"{nfe * t_forward * 1e3:8.1f} ms; ratio {t_sample / (nfe * t_forward):.3f}x (goal <= 1.1)")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
