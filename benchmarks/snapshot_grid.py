"""The train job's per-snapshot sample grid (`jobs/train.py: _make_sample_fn`) at the quickstart's
shape (configs/quickstart.py: 8x8x1, grid of 100, 18 Heun steps), split over the mesh (the job's
path when the grid divides the devices) against computed whole on every device (its path
otherwise), side by side in one run. Parameters are freshly initialised: timing does not depend on
them.

    python benchmarks/snapshot_grid.py [--devices 2 --repeats 3]

Writes benchmarks/results/snapshot_grid.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
import types


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "snapshot_grid.json"))
  args = p.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", args.devices)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from diffgen_jax import jsonio, sharding, training  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common, train  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("quickstart", os.path.join(root, "configs",
                                                                          "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  shape, classes = (8, 8, 1), 10
  mesh = sharding.make_mesh()
  network = common.network_of(config, classes)
  settings = common.training_settings(config)
  state = training.init_state(network, training.make_optimizer(settings), settings,
                              jax.random.key(0), shape)
  ema_sets = jax.device_put(state.ema, NamedSharding(mesh, P()))  # replicated, as in training
  not_dividing = types.SimpleNamespace(shape={sharding.DATA_AXIS: config.sampling.grid_size + 1})
  paths = {"whole grid on every device": not_dividing, "split over the mesh": mesh}
  out, grids = {}, {}
  for name, m in paths.items():
    fn = train._make_sample_fn(network, config, shape, classes, m)  # pylint: disable=protected-access
    t0 = time.perf_counter()
    fn(ema_sets)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      grids[name] = fn(ema_sets)
      times.append(time.perf_counter() - t0)
    out[name] = dict(first_call_s=first, s_per_grid=statistics.median(times))
    print(f"{name}: first call (compile) {first:.1f} s, then {out[name]['s_per_grid']:.2f} s per "
          f"grid of {config.sampling.grid_size}")
  a, b = grids.values()
  diff = float(np.abs(a - b).max())
  print(f"max |difference| {diff:.1e}")
  jsonio.write_json(args.out, dict(benchmark="snapshot_grid", devices=args.devices,
                                   grid_size=config.sampling.grid_size, paths=out,
                                   max_abs_difference=diff))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
