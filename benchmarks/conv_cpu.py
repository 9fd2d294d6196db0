"""Where the CPU training step loses to PyTorch: one 3x3 convolution, its input and weight gradients.

The DDPM++ training step on CPU runs at about a third of PyTorch's speed (train_throughput.py).
Nearly all of its FLOPs are 3x3 convolutions, so this times one of them, NHWC float32, in its three
parts (forward, input gradient, weight gradient; each jitted alone) in XLA, against torch's
forward and forward + both gradients (oneDNN, channels_last) on the same shapes and threads.
Effective GFLOP/s count the dense 2 B H W C_in C_out 9 per part.

    python benchmarks/conv_cpu.py [--batch 64 --size 32 --channels 64 --repeats 10]

Writes benchmarks/results/conv_cpu.json. torch is optional (skipped when not importable).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from diffgen_jax import jsonio


def _median_ms(fn, repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--channels", type=int, default=64)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "conv_cpu.json"))
  args = p.parse_args(argv)
  b, h, c = args.batch, args.size, args.channels
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.standard_normal((b, h, h, c), np.float32))
  w = jax.numpy.asarray(0.05 * rng.standard_normal((3, 3, c, c), np.float32))
  g = jax.numpy.ones((b, h, h, c))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  vjp = lambda x, w, g: jax.vjp(conv, x, w)[1](g)
  parts = {"forward": jax.jit(conv), "input_grad": jax.jit(lambda x, w, g: vjp(x, w, g)[0]),
           "weight_grad": jax.jit(lambda x, w, g: vjp(x, w, g)[1])}
  inputs = {"forward": (x, w), "input_grad": (x, w, g), "weight_grad": (x, w, g)}
  gflop = 2 * b * h * h * c * c * 9 / 1e9
  ours = {k: _median_ms(lambda f=f, a=inputs[k]: jax.block_until_ready(f(*a)), args.repeats)
          for k, f in parts.items()}
  ours["all"] = sum(ours.values())
  print(f"jax {jax.__version__} ({jax.default_backend()}), batch {b}, {h}x{h}, {c} -> {c} channels, "
        f"{gflop:.2f} GFLOP per part")
  for k, ms in ours.items():
    n = 3 if k == "all" else 1
    print(f"  ours {k:12s} {ms:7.1f} ms  {n * gflop / ms * 1e3:6.0f} GFLOP/s")

  result = {"benchmark": "conv_cpu", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "platform": {"python": platform.python_version(), "jax": jax.__version__,
                         "backend": jax.default_backend(), "cpu_cores": os.cpu_count()},
            "shape": {"batch": b, "size": h, "channels": c, "kernel": 3, "gflop_per_part": gflop},
            "ours_ms": ours}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous().requires_grad_()
    fwd = lambda: torch.nn.functional.conv2d(xt, wt, padding=1)
    gt = torch.ones_like(fwd())
    both = lambda: torch.autograd.grad(fwd(), (xt, wt), gt)
    theirs = {"forward": _median_ms(fwd, args.repeats), "all": _median_ms(both, args.repeats)}
    with torch.no_grad():
      diff = float((fwd().permute(0, 2, 3, 1).numpy() - np.asarray(parts["forward"](x, w))).std())
    result["torch"] = dict(version=torch.__version__, threads=torch.get_num_threads(),
                           ms=theirs, forward_difference_std=diff)
    result["ratios"] = {"forward ours/torch time": ours["forward"] / theirs["forward"],
                        "forward+grads ours/torch time": ours["all"] / theirs["all"]}
    print(f"  torch forward      {theirs['forward']:7.1f} ms; forward + both gradients "
          f"{theirs['all']:7.1f} ms ({torch.get_num_threads()} threads)")
    for k, v in result["ratios"].items():
      print(f"  {k}: {v:.2f}")
  jsonio.write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
