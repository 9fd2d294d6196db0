"""Where the CPU training step loses to PyTorch: one 3x3 convolution, its input and weight gradients.

The DDPM++ training step on CPU runs at about a third of PyTorch's speed (train_throughput.py).
Nearly all of its FLOPs are 3x3 convolutions, so this times one of them, NHWC float32, in its three
parts (forward, input gradient, weight gradient; each jitted alone) in XLA, against torch's
forward and forward + both gradients (oneDNN, channels_last) on the same shapes and threads.
Effective GFLOP/s count the dense 2 B H W C_in C_out 9 per part.

    python benchmarks/conv_cpu.py [--shapes 64,32,64 --repeats 10 --devices 1]

The same parts are timed for the Winograd F(2x2, 3x3) and F(4x4, 3x3) paths (benchmarks/winograd.py,
an experiment that lost: the networks call XLA's convolution), interleaved round by round with
XLA's so both see the same machine load; `--shapes` runs several shapes (batch,size,channels) in one process.

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


def _time_ms(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return 1e3 * (time.perf_counter() - t0)


def _parse_shapes(text: str):
  shapes = []
  for item in text.split(";"):
    b, h, c = (int(v) for v in item.split(","))
    shapes.append((b, h, c))
  return shapes


def bench_shape(b: int, h: int, c: int, repeats: int, torch, devices: int = 1) -> dict:
  """One shape: XLA's and the Winograd convolution's parts, interleaved, and torch's.

  With devices > 1 the batch is split over that many CPU devices (as the main job splits it over
  one device per core) and the weights are replicated."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  import winograd as conv_lib  # pylint: disable=import-outside-toplevel  (benchmarks/ is on sys.path)
  rng = np.random.default_rng(0)
  mesh = Mesh(np.array(jax.devices()[:devices]), ("batch",))
  split, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  x = jax.device_put(rng.standard_normal((b, h, h, c), np.float32), split)
  w = jax.device_put(0.05 * rng.standard_normal((3, 3, c, c), np.float32), replicated)
  g = jax.device_put(np.ones((b, h, h, c), np.float32), split)
  convs = {"xla": lambda x, w: jax.lax.conv_general_dilated(
               x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
           "winograd": lambda x, w: conv_lib.winograd_conv3x3(x, w, tile=2),
           "winograd4": lambda x, w: conv_lib.winograd_conv3x3(x, w, tile=4)}
  calls = {}
  for algo, conv in convs.items():
    vjp = lambda x, w, g, conv=conv: jax.vjp(conv, x, w)[1](g)
    fwd_vjp = lambda x, w, g, conv=conv: (conv(x, w), jax.vjp(conv, x, w)[1](g))
    parts = {"forward": (jax.jit(conv), (x, w)),
             "input_grad": (jax.jit(lambda x, w, g, vjp=vjp: vjp(x, w, g)[0]), (x, w, g)),
             "weight_grad": (jax.jit(lambda x, w, g, vjp=vjp: vjp(x, w, g)[1]), (x, w, g)),
             "all_in_one": (jax.jit(fwd_vjp), (x, w, g))}
    for part, (f, a) in parts.items():
      calls[(algo, part)] = lambda f=f, a=a: jax.block_until_ready(f(*a))
  if torch is not None:
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous().requires_grad_()
    fwd = lambda: torch.nn.functional.conv2d(xt, wt, padding=1)
    gt = torch.ones_like(fwd())
    calls[("torch", "forward")] = fwd
    calls[("torch", "all_in_one")] = lambda: torch.autograd.grad(fwd(), (xt, wt), gt)
  for fn in calls.values():  # compile / warm up
    fn()
  times = {k: [] for k in calls}
  for _ in range(repeats):  # round-robin: every variant sees the same drift of machine load
    for k, fn in calls.items():
      times[k].append(_time_ms(fn))
  ms = {}
  for (algo, part), t in times.items():
    ms.setdefault(algo, {})[part] = statistics.median(t)
  for algo in convs:
    ms[algo]["all"] = ms[algo]["forward"] + ms[algo]["input_grad"] + ms[algo]["weight_grad"]
  out = {"shape": {"batch": b, "size": h, "channels": c, "kernel": 3, "devices": devices,
                   "gflop_per_part": 2 * b * h * h * c * c * 9 / 1e9},
         **{f"{algo}_ms": ms[algo] for algo in convs}}
  ref = np.asarray(convs["xla"](x, w))
  ratios = {}
  for algo in ("winograd", "winograd4"):
    out[f"{algo}_max_abs_difference"] = float(
        np.abs(np.asarray(jax.jit(convs[algo])(x, w)) - ref).max())
    ratios[f"{algo}/xla time (forward)"] = ms[algo]["forward"] / ms["xla"]["forward"]
    ratios[f"{algo}/xla time (forward+grads, one jit)"] = (
        ms[algo]["all_in_one"] / ms["xla"]["all_in_one"])
  if torch is not None:
    out["torch_ms"] = ms["torch"]
    with torch.no_grad():
      out["torch_forward_difference_std"] = float(
          (calls[("torch", "forward")]().permute(0, 2, 3, 1).numpy() - ref).std())
    for algo in convs:
      ratios[f"{algo}/torch time (forward)"] = ms[algo]["forward"] / ms["torch"]["forward"]
      ratios[f"{algo}/torch time (forward+grads, one jit)"] = (
          ms[algo]["all_in_one"] / ms["torch"]["all_in_one"])
  out["ratios"] = ratios
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--shapes", default="64,32,64",
                 help="';'-separated batch,size,channels triples (default 64,32,64)")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--devices", type=int, default=1,
                 help="CPU devices to split the batch over (XLA paths; torch uses all cores)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "conv_cpu.json"))
  args = p.parse_args(argv)
  if args.devices < 1 or any(b % args.devices for b, _, _ in _parse_shapes(args.shapes)):
    p.error(f"--devices={args.devices} must be >= 1 and divide every batch in --shapes")
  if args.devices > 1:
    jax.config.update("jax_num_cpu_devices", args.devices)  # before jax's backend starts
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  except ImportError:
    torch = None
  result = {"benchmark": "conv_cpu", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "platform": {"python": platform.python_version(), "jax": jax.__version__,
                         "backend": jax.default_backend(), "cpu_cores": os.cpu_count(),
                         "devices": args.devices,
                         "load_average": os.getloadavg(),
                         "xla_flags": os.environ.get("XLA_FLAGS", ""),
                         "torch": None if torch is None else torch.__version__,
                         "torch_threads": None if torch is None else torch.get_num_threads()},
            "repeats": args.repeats, "shapes": []}
  print(f"jax {jax.__version__} ({jax.default_backend()}); torch "
        f"{'absent' if torch is None else torch.__version__}; load average {os.getloadavg()[0]:.1f}")
  for b, h, c in _parse_shapes(args.shapes):
    r = bench_shape(b, h, c, args.repeats, torch, args.devices)
    result["shapes"].append(r)
    gflop = r["shape"]["gflop_per_part"]
    print(f"batch {b} on {args.devices} device(s), {h}x{h}, {c} -> {c} channels ({gflop:.2f} dense "
          f"GFLOP per part), median ms:")
    for algo in ("xla", "winograd", "winograd4", "torch"):
      if algo + "_ms" in r:
        print(f"  {algo:9s} " + "  ".join(f"{k} {v:.1f}" for k, v in r[algo + "_ms"].items()))
    for k, v in r["ratios"].items():
      print(f"  {k}: {v:.2f}")
  jsonio.write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
