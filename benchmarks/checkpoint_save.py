"""What one process pays to save a replicated training state with orbax's replica-parallel writing
(its default on CPU and TPU: each replicated array split into one slice per device, each
(shape, device) slice a separately compiled program) against whole arrays written from one device
(`checkpointing.Checkpoints` in a single process), side by side in one run.

    python benchmarks/checkpoint_save.py [--devices 8 --saves 3]

Each mode runs in its own child process (orbax keeps its array handler in a process-wide
registry), on the quickstart's full training state (configs/quickstart.py: ddpmpp-tiny; params,
EMA sets, Adam state) replicated over --devices CPU devices: process CPU time of each
`save_state` + `wait` (the first save includes the compilations), then the restore compared with
the saved state bit for bit. Writes benchmarks/results/checkpoint_save.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("orbax_replica_parallel", "whole_arrays")


def _child(mode: str, devices: int, saves: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", devices)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from diffgen_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from checkpoint_checksums import quickstart_state  # pylint: disable=import-outside-toplevel
  state, target = quickstart_state()
  jax.block_until_ready(state)
  workdir = tempfile.mkdtemp()
  ckpt = checkpointing.Checkpoints(workdir, keep_states=saves + 1)
  if mode == "orbax_replica_parallel":  # orbax's own default handler back in place
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=import-outside-toplevel
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=True, array_metadata_store=array_metadata_store.Store()),
                                            override=True)
  save_cpu_s = []
  for step in range(1, saves + 1):
    t0 = time.process_time()
    ckpt.save_state(step, state, {"step": step})
    ckpt.wait()
    save_cpu_s.append(time.process_time() - t0)
  t0 = time.process_time()
  restored, _ = ckpt.restore_state(saves, target)
  restore_cpu_s = time.process_time() - t0
  identical = all(np.array_equal(np.asarray(a), np.asarray(b))
                  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)))
  ckpt.close()
  files = sorted(os.listdir(os.path.join(workdir, checkpointing.STATE_DIR, str(saves), "state")))
  return {"mode": mode, "devices": devices, "arrays": len(jax.tree.leaves(state)),
          "save_cpu_s": save_cpu_s, "restore_cpu_s": restore_cpu_s,
          "restored_bit_identical": identical, "files": files}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", type=int, default=8)
  p.add_argument("--saves", type=int, default=3)
  p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "checkpoint_save.json"))
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(_child(args.child, args.devices, args.saves)))
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT] + [q for q in [os.environ.get("PYTHONPATH")] if q]))
  rows = []
  for mode in MODES:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode,
                          f"--devices={args.devices}", f"--saves={args.saves}"],
                         capture_output=True, text=True, env=env, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  old, new = rows
  result = {"devices": args.devices, "saves": args.saves, "runs": rows,
            "first_save_ratio": old["save_cpu_s"][0] / new["save_cpu_s"][0],
            "later_save_ratio": (sum(old["save_cpu_s"][1:]) / max(sum(new["save_cpu_s"][1:]), 1e-9)
                                 if args.saves > 1 else None),
            "same_files": old["files"] == new["files"]}
  for r in rows:
    print(f"{r['mode']:>24}: {r['arrays']} arrays on {r['devices']} devices; save CPU s "
          + ", ".join(f"{t:.2f}" for t in r["save_cpu_s"])
          + f"; restore {r['restore_cpu_s']:.2f} s; bit-identical {r['restored_bit_identical']}")
  print(f"replica-parallel / whole arrays: first save {result['first_save_ratio']:.1f}x, later "
        f"saves {result['later_save_ratio']:.1f}x; same files: {result['same_files']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
