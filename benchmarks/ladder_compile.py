"""What compiling the network once costs the ladder, against compiling it on every call: the ladder's
network outputs (`evaluation.ladder.network_outputs`, called once per input set and per calibration
and rung comparison) of the training-time DDPM++ U-Net (32 channels, mult (1, 2, 2), 8x8 digits,
untrained parameters) on the ladder job's local input sets, side by side in one process.

    python benchmarks/ladder_compile.py [--calls 6]

"fresh jit per call" is how `ladder._outputs` applied an array-pytree denoiser before
`denoisers.caller`: `jax.jit(lambda d, a, s, l: d(a, s, l))` made anew in every call, so every call
traced and compiled the network again. "caller" applies it through one module-level program. The
outputs of the two are compared bit for bit (the same program). Writes
benchmarks/results/ladder_compile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=6, help="network_outputs calls per variant")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from diffgen_jax import defaults, denoisers, models  # pylint: disable=import-outside-toplevel
  from diffgen_jax.evaluation import ladder  # pylint: disable=import-outside-toplevel
  from diffgen_jax.models.network import build_network, network_denoiser  # pylint: disable=import-outside-toplevel

  c = defaults.train_config("digits", "ddpmpp")
  c.model.update(dict(preset="", model_channels=32, channel_mult=(1, 2, 2), num_blocks=1,
                      attn_resolutions=(), img_resolution=8, img_channels=1, num_classes=10,
                      dropout=0.0))
  network = build_network(c.model, 10)
  params = models.init_variables(network.module, jax.random.key(0), (1, 8, 8, 1), 10)["params"]
  denoise = network_denoiser(network, params)
  rng = np.random.default_rng(0)
  sigmas = np.geomspace(0.002, 80.0, 12)
  inputs = rng.uniform(-1, 1, (12, 128, 8, 8, 1)).astype(np.float32)  # the ladder's local sets
  labels = rng.integers(0, 10, 128)

  def fresh_jit(d):  # the old ladder._outputs: a new jit object, so a new compilation, per call
    jitted = jax.jit(lambda d_, a, s, l: d_(a, s, l))
    return lambda a, s, l: jitted(d, a, s, l)

  results = {}
  outputs = {}
  for name, make in (("fresh jit per call", fresh_jit), ("caller (one program)", denoisers.caller)):
    original = ladder.caller
    ladder.caller = make
    try:
      times = []
      for _ in range(args.calls):
        t0 = time.perf_counter()
        out = ladder.network_outputs(denoise, inputs, sigmas, labels, batch_size=256)
        times.append(time.perf_counter() - t0)
    finally:
      ladder.caller = original
    outputs[name] = out
    results[name] = {"seconds_per_call": times, "total_s": float(sum(times))}
    print(f"{name:24s} total {sum(times):7.2f} s  per call " + " ".join(f"{t:.2f}" for t in times))
  a, b = outputs.values()
  same = bool(np.array_equal(a, b))
  ratio = results["fresh jit per call"]["total_s"] / results["caller (one program)"]["total_s"]
  print(f"ratio (fresh / caller): {ratio:.2f}x over {args.calls} calls; outputs identical: {same}")
  out = {"calls": args.calls, "inputs": list(inputs.shape), "sigmas": len(sigmas),
         "network": "DDPM++ 32 ch, mult (1,2,2), 8x8x1, 10 classes", "results": results,
         "ratio_total": ratio, "outputs_identical": same,
         "devices": [str(d) for d in jax.devices()]}
  path = os.path.join(ROOT, "benchmarks", "results", "ladder_compile.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
