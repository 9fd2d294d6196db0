"""What XLA:CPU's compiler settings cost the test suite: compiling and running the tests' tiny DDPM++
train step (tests/test_training.py's network: 8 channels, two levels, 8x8 digits, batch 16, on 8
simulated CPU devices) under each setting, side by side in one run.

    python benchmarks/compile_flags.py [--steps 4]

The suite is compile-bound (tiny shapes, few steps), so tests/conftest.py compiles at LLVM -O0 with
XLA:CPU's elemental emitters instead of its fusion emitters. Each setting runs in its own child
process (XLA_FLAGS are read once, at start-up): process CPU time of the init program and of the
train step's trace + lowering and compilation, then the wall time of --steps steps; the parameters
after the steps are compared with the default setting's (not bitwise: other emitters, other float32
rounding). Writes benchmarks/results/compile_flags.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "default (-O2, fusion emitters)": "",
    "-O0": "--xla_backend_optimization_level=0",
    "-O0, elemental emitters (the suite's)": ("--xla_backend_optimization_level=0 "
                                             "--xla_cpu_use_fusion_emitters=false"),
}


def _child(steps: int, out_file: str) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from diffgen_jax import data, defaults, sharding, training  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  from diffgen_jax.models.network import build_network  # pylint: disable=import-outside-toplevel
  c = defaults.train_config("digits", "ddpmpp")
  c.model.update(dict(preset="", model_channels=8, channel_mult=(1, 2), num_blocks=1,
                      attn_resolutions=(), img_resolution=8, img_channels=1, num_classes=10,
                      dropout=0.0))
  c.training.update(dict(batch_size=16, lr=2e-3, warmup_images=0, label_dropout=0.1))
  split = data.load_split("digits", "train", subset_size=64)
  network = build_network(c.model, split.num_classes)
  settings = common.training_settings(c)
  mesh = sharding.make_mesh(8, 1)
  init_fn, step_fn, _, _ = training.compile_training(
      network, training.make_optimizer(settings), settings, mesh, split.shape)
  t0 = time.process_time()
  state = jax.block_until_ready(init_fn(jax.random.key(1)))
  init_cpu_s = time.process_time() - t0
  batches = [jax.device_put(data.batch_at(split, t, 16, 0), training.batch_sharding(mesh))
             for t in range(steps)]
  key = jax.random.key(0)
  t0 = time.process_time()
  lowered = step_fn.lower(state, batches[0], key)
  lower_cpu_s = time.process_time() - t0
  t0 = time.process_time()
  compiled = lowered.compile()
  compile_cpu_s = time.process_time() - t0
  t0 = time.perf_counter()
  for batch in batches:
    state, metrics = compiled(state, batch, key)
  jax.block_until_ready(state)
  steps_wall_s = time.perf_counter() - t0
  np.savez(out_file, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
  return {"init_cpu_s": init_cpu_s, "trace_lower_cpu_s": lower_cpu_s,
          "compile_cpu_s": compile_cpu_s, "steps": steps, "steps_wall_s": steps_wall_s,
          "last_loss": float(metrics["loss"])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--out_file", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child is not None:
    print(json.dumps(_child(args.steps, args.out_file)))
    return

  import numpy as np  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  tmp = tempfile.mkdtemp()
  rows, params = [], {}
  for i, (name, flags) in enumerate(SETTINGS.items()):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {flags}".strip(),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every setting compiles
    out_file = os.path.join(tmp, f"{i}.npz")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={name}",
                          f"--steps={args.steps}", f"--out_file={out_file}"],
                         capture_output=True, text=True, env=env)
    if out.returncode:
      sys.exit(f"{name}: the child failed:\n{out.stderr[-3000:]}")
    row = dict(setting=name, xla_flags=flags, **json.loads(out.stdout.strip().splitlines()[-1]))
    with np.load(out_file) as f:
      params[name] = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    ref = params[next(iter(SETTINGS))]
    row["params_max_abs_diff_vs_default"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(ref, params[name]))
    rows.append(row)
    print(f"{name:40s} init {row['init_cpu_s']:5.2f} s  trace+lower {row['trace_lower_cpu_s']:5.2f}"
          f" s  compile {row['compile_cpu_s']:5.2f} s  {args.steps} steps {row['steps_wall_s']:5.2f}"
          f" s  loss {row['last_loss']:.5f}  params vs default {row['params_max_abs_diff_vs_default']:.1e}",
          flush=True)
  base = rows[0]
  for row in rows:
    row["compile_speedup_vs_default"] = base["compile_cpu_s"] / row["compile_cpu_s"]
  os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
  path = os.path.join(ROOT, "benchmarks", "results", "compile_flags.json")
  with open(path, "w") as f:
    json.dump({"benchmark": "compile_flags", "rows": rows}, f, indent=1)
  print("compile CPU time relative to the default: " + ", ".join(
      f"{r['setting']}: {r['compile_speedup_vs_default']:.2f}x faster" for r in rows[1:]))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
