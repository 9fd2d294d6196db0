"""What the checkpoint checksums cost (`checkpointing`: checksums.json written by process 0 before
orbax renames a checkpoint into place, verified before every restore), on the quickstart's full
training state (configs/quickstart.py: ddpmpp-tiny; params, EMA sets, Adam state), side by side in
one run with a plain orbax CheckpointManager (the same options, no checksums).

    python benchmarks/checkpoint_checksums.py [--repeats 5 --devices 2]

Save: `save_state` + `wait` (async write, then the checksums of the written files) against orbax's
save alone, and `write_checksums` alone (the part the save adds); restore: `check_intact` +
`restore_state` against orbax's restore alone, and `check_intact` alone. Each repeat writes a fresh
directory (files in the page cache, as right after training wrote them). Writes
benchmarks/results/checkpoint_checksums.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time


def quickstart_state():
  """(state, target): the quickstart's initial training state (configs/quickstart.py: ddpmpp-tiny
  on 8x8x1 digits; params, EMA sets, Adam state) replicated over every device, and its abstract
  state with those shardings (a restore target). Set the device count before calling."""
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import sharding, training  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("quickstart", os.path.join(root, "configs",
                                                                          "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  settings = common.training_settings(config)
  init_fn, _, abstract_state, shardings = training.compile_training(
      common.network_of(config, 10), training.make_optimizer(settings), settings,
      sharding.make_mesh(), (8, 8, 1))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
  return init_fn(jax.random.key(0)), target


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", type=int, default=2)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "checkpoint_checksums.json"))
  args = p.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", args.devices)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from diffgen_jax import checkpointing, jsonio  # pylint: disable=import-outside-toplevel
  state, target = quickstart_state()
  meta = {"step": 500}
  args_save = lambda: ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta))
  args_restore = lambda: ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore())
  times = {k: [] for k in ("save_plain_s", "save_checksums_s", "restore_plain_s",
                           "restore_checked_s", "check_intact_s", "write_checksums_s")}
  nbytes = 0
  for _ in range(args.repeats + 1):  # the first round warms up (orbax, tensorstore, the caches)
    with tempfile.TemporaryDirectory() as tmp:
      plain = ocp.CheckpointManager(os.path.join(tmp, "plain"), options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=True, cleanup_tmp_directories=True))
      t0 = time.perf_counter()
      plain.save(500, args=args_save())
      plain.wait_until_finished()
      save_plain = time.perf_counter() - t0
      t0 = time.perf_counter()
      plain.restore(500, args=args_restore())
      restore_plain = time.perf_counter() - t0
      plain.close()
      ckpt = checkpointing.Checkpoints(os.path.join(tmp, "run"))
      t0 = time.perf_counter()
      ckpt.save_state(500, state, meta)
      ckpt.wait()
      save_checked = time.perf_counter() - t0
      t0 = time.perf_counter()
      checkpointing.check_intact(ckpt.state_dir(500))
      check = time.perf_counter() - t0
      t0 = time.perf_counter()
      checkpointing.check_intact(ckpt.state_dir(500))
      ckpt.restore_state(500, target)
      restore_checked = time.perf_counter() - t0
      ckpt.close()
      step_dir = os.path.join(tmp, "run", checkpointing.STATE_DIR, "500")
      t0 = time.perf_counter()
      checkpointing.write_checksums(step_dir)  # what the save adds, in orbax's background thread
      write = time.perf_counter() - t0
      nbytes = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(step_dir) for f in fs)
      shutil.rmtree(os.path.join(tmp, "run"))
    if _ == 0:
      continue
    for k, v in zip(times, (save_plain, save_checked, restore_plain, restore_checked, check,
                            write)):
      times[k].append(v)
  out = {"state_files_bytes": nbytes, "parameters": int(sum(x.size for x in
                                                           jax.tree.leaves(state.params))),
         "devices": jax.device_count(), "backend": jax.default_backend(), "repeats": args.repeats,
         **{k: statistics.median(v) for k, v in times.items()}}
  out["save_extra_s"] = out["save_checksums_s"] - out["save_plain_s"]
  out["restore_extra_s"] = out["restore_checked_s"] - out["restore_plain_s"]
  jsonio.write_json(args.out, out)
  for k, v in out.items():
    print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
  main()
