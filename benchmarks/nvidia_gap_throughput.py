"""Gap evaluation of an EDM2-XS-sized network: (images x sigmas) per second, and the paper's protocol.

The network is the `edm2-img64-xs` preset (the architecture of NVIDIA's EDM2-XS, 64x64x3, 1000
classes, 124.7M parameters) with random weights, evaluated through exactly the code path the
evaluate job uses for its snapshots and converted NVIDIA snapshots: `evaluation.gap.denoising_errors`
of `models.network.network_denoiser(network, params)` (a pytree: the params are an argument of the
compiled program), per-image fixed noise, labels.
Compute dtypes: float32 and bfloat16, measured side by side in one run (same images, sigmas,
batch). The paper's protocol per snapshot is 8,192 images x 2 splits x 64 sigmas = 1,048,576
denoiser evaluations; its time is estimated from each measured rate. The model FLOPs per
evaluation are counted from the jaxpr (`diffgen_jax.flops`).

    python benchmarks/nvidia_gap_throughput.py                      # CPU: 4 images x 2 sigmas
    python benchmarks/nvidia_gap_throughput.py --images 64 --sigmas 8 --batch 32   # a GPU

Writes benchmarks/results/nvidia_gap_throughput.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import edm, flops, models
from diffgen_jax.evaluation import gap
from diffgen_jax.models import presets
from diffgen_jax.models.network import build_network, network_denoiser

PROTOCOL_EVALUATIONS = 8192 * 2 * 64


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="edm2-img64-xs")
  parser.add_argument("--images", type=int, default=4)
  parser.add_argument("--sigmas", type=int, default=2, help="noise levels of the 64-point grid")
  parser.add_argument("--batch", type=int, default=4, help="images per compiled call")
  parser.add_argument("--sigma_chunk", type=int, default=2)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "nvidia_gap_throughput.json"))
  args = parser.parse_args()

  base = models.preset_config(args.preset)
  res, ch, classes = base.img_resolution, base.img_channels, base.num_classes
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.images, res, res, ch)).astype(np.float32)
  labels = rng.integers(0, classes, args.images).astype(np.int32) if classes else None
  grid = edm.gap_sigma_grid()
  sigmas = grid[np.linspace(0, len(grid) - 1, args.sigmas).round().astype(int)]
  evaluations = args.images * args.sigmas

  # Random weights drawn on the host from the abstract params (jax.eval_shape of init): compiling
  # the 125M-parameter init graph on a CPU takes minutes and is not what is measured here. Gains
  # are 1 so that every branch contributes (the speed does not depend on the values).
  t0 = time.perf_counter()
  module = models.build(base)
  shapes = jax.eval_shape(models.init_fn(module, (1, res, res, ch)), jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) if s.shape else
                            np.float32(1.0)), shapes["params"])
  init_s = time.perf_counter() - t0
  n_params = int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(params)))
  print(f"{args.preset}: {n_params:,} parameters (random weights), init {init_s:.1f} s; "
        f"{args.images} images x {args.sigmas} sigmas, batch {args.batch}, sigma_chunk "
        f"{args.sigma_chunk}, backend {jax.default_backend()}")

  out = {"preset": args.preset, "parameters": n_params, "images": args.images,
         "sigmas": sigmas.tolist(), "batch": args.batch, "sigma_chunk": args.sigma_chunk,
         "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
         "platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "protocol_evaluations_per_snapshot": PROTOCOL_EVALUATIONS, "dtypes": {}}
  for dtype in args.dtypes.split(","):
    config = base.copy_and_resolve_references()
    config.dtype = dtype
    network = build_network(config, classes, dtype)

    denoise = network_denoiser(network, params)  # as the evaluate job: a pytree over the params
    model_flops = flops.model_flops(
        lambda d, x, s, l: d(x, s, l), denoise, jnp.zeros((1, res, res, ch)), jnp.ones((1,)),
        None if labels is None else jnp.zeros((1,), jnp.int32))

    def run():
      return gap.denoising_errors(denoise, images, labels, sigmas, batch_size=args.batch,
                                  sigma_chunk=args.sigma_chunk)

    t0 = time.perf_counter()
    errors = run()  # compile + first run
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    rate = evaluations / seconds
    protocol_s = PROTOCOL_EVALUATIONS / rate
    out["dtypes"][dtype] = {
        "seconds": seconds, "first_call_seconds_incl_compile": first_s,
        "evaluations_per_second": rate, "model_gflops_per_evaluation": model_flops / 1e9,
        "achieved_gflops": rate * model_flops / 1e9, "protocol_hours_per_snapshot": protocol_s / 3600,
        "errors_finite": bool(np.all(np.isfinite(errors)))}
    print(f"  {dtype:9s}: {rate:8.3f} images x sigmas / s ({seconds:.1f} s for {evaluations}; "
          f"first call incl. compile {first_s:.0f} s), {model_flops / 1e9:.1f} model GFLOP per "
          f"evaluation = {rate * model_flops / 1e9:.1f} GFLOP/s; paper protocol (8,192 x 2 x 64) "
          f"= {protocol_s / 3600:,.0f} h = {protocol_s / 86400:,.1f} days per snapshot")
  if len(out["dtypes"]) == 2:
    a, b = (out["dtypes"][d]["evaluations_per_second"] for d in args.dtypes.split(","))
    out["rate_ratio_second_over_first"] = b / a
    print(f"  {args.dtypes.split(',')[1]} / {args.dtypes.split(',')[0]} rate: {b / a:.2f} "
          "(measured side by side in this run)")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
