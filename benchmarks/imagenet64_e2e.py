"""The paper's protocol end to end at ImageNet-64's shape on this machine (issue 23, part 3).

What it builds, in --root (default /tmp/diffgen_imagenet64_e2e):
  * a synthetic ImageNet-64-shaped EDM dataset: train.zip with --train (20,000) random 64x64 RGB
    images and val.zip with --val (2,000), --classes (1,000) classes (every class in both splits),
    dataset.json labels, written by the package's own writer (`data.edm_zip.ZipWriter`);
  * a tiny EDM2 network in NVIDIA's format (`write_edm2_network`): EDM2's Precond + UNet kwargs at
    64x64x3 with 1,000 classes, the state dict under NVIDIA's torch names in torch layouts
    (state_dict.npz + config.json, a form `models.nvidia` and the convert job read), weights drawn
    as the test fixtures' (tests/fixtures/nvidia_networks/README.md: 0.2 N(0, 1), Fourier
    frequencies 2 pi N(0, 1), phases 2 pi U(0, 1)); there is no network to download here.

What it runs, with `configs/nvidia.py:edm2-img64` (the optimal denoiser on, the reference cap
evaluation.samples.reference_images) and the protocol's counts scaled down to what a shared 2-core
CPU finishes (`COUNTS`; the paper: 8,192 images x 64 sigmas, 50,000 references), three phases, each
a `python -m diffgen_jax.main` run in P processes (`benchmarks/launch.py`; --processes 1,2 runs
every phase at both, total devices fixed by --devices):
  convert  the network into WORKDIR/checkpoints/snapshots (config.job=convert);
  gap      the evaluate job without samples: E_train, E_val, G on the sigma grid, y* (streamed
           from train.zip over every device of every process) and its errors, the network's
           distance to y*, membership inference;
  samples  the evaluate job again with samples on (the gap resumes from results.json): Heun
           samples, the classifier features (trained), FD gap, copies, probes, early stopping.
Per process and phase: wall time, peak RSS and CPU time (`launch.run_main`: the kernel's
accounting of each child). JSON to benchmarks/results/imagenet64_e2e.json (--out).

  python benchmarks/imagenet64_e2e.py                      # 20,000 images, 1 process x 2 devices
  python benchmarks/imagenet64_e2e.py --processes 1,2      # ... and 2 processes x 1 device
  python benchmarks/imagenet64_e2e.py --train 400 --val 100 --classes 10 --num_images 16 \
      --num_sigmas 2 --num_samples 16 --num_steps 4        # a minute

`write_dataset`, `write_edm2_network` and `overrides` are what tests/test_jobs_convert.py runs at
a small size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# The protocol's counts run here (configs/nvidia.py:edm2-img64 has 8,192 images x 64 sigmas, 512
# samples of 32 Heun steps, a 2,000-step classifier and 50,000 reference images per split).
COUNTS = dict(num_images=256, num_sigmas=8, batch_size=64, num_samples=128, num_steps=32,
              classifier_steps=100, reference_images=4096, probe_size=64, grid_size=16)

# The tiny network: EDM2's UNet at 16 channels, three levels (64, 32, 16), attention at 16x16
# (channels_per_head 16: NVIDIA's 64 would leave 0 heads at these widths), one block per level.
NETWORK = dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[16],
               channels_per_head=16, dropout=0.0, use_fp16=True)


def write_dataset(root: str, *, train: int, val: int, resolution: int = 64, classes: int = 1000,
                  seed: int = 0, batch: int = 1000) -> Tuple[str, str]:
  """Writes root/train.zip and root/val.zip (uint8 RGB noise, labels a seeded permutation of
  i % classes, so every class is in both splits when each has >= classes images) with
  `data.edm_zip.ZipWriter`, batch by batch. Returns their paths; an existing pair is kept."""
  from diffgen_jax.data import edm_zip  # pylint: disable=import-outside-toplevel
  paths = []
  for name, n, stream in (("train", train, 0), ("val", val, 1)):
    path = os.path.join(root, f"{name}.zip")
    paths.append(path)
    if os.path.exists(path):
      continue
    rng = np.random.default_rng([seed, stream])
    labels = rng.permutation(n) % classes
    os.makedirs(root, exist_ok=True)
    with edm_zip.ZipWriter(path) as writer:
      for start in range(0, n, batch):
        rows = min(batch, n - start)
        writer.add(rng.integers(0, 256, (rows, resolution, resolution, 3), dtype=np.uint8),
                   labels[start:start + rows])
  return paths[0], paths[1]


def _torch_name(path: Sequence[str]) -> str:
  """NVIDIA's state-dict name of an EDM2 flax params path (the inverse of
  `models.nvidia._param_path`): enc_64x64_conv/mp_weight -> unet.enc.64x64_conv.weight."""
  parts = list(path)
  if parts[0].startswith(("enc_", "dec_")):
    parts[:1] = parts[0].split("_", 1)
  parts[-1] = {"mp_weight": "weight"}.get(parts[-1], parts[-1])
  root = [] if parts[0] in ("logvar_fourier", "logvar_linear") else ["unet"]
  return ".".join(root + parts)


def _torch_layout(value: np.ndarray) -> np.ndarray:
  """Flax (kh, kw, I, O) convolutions and (I, O) dense kernels in torch's (O, I, kh, kw), (O, I)."""
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    return value.T
  return value


def write_edm2_network(path: str, *, resolution: int = 64, classes: int = 1000, kimg: int = 2097,
                       seed: int = 0, network: Optional[Mapping[str, Any]] = None) -> str:
  """Writes a random EDM2 network in NVIDIA's format at `path` (a directory: state_dict.npz with
  the torch names and layouts of `training.networks_edm2.Precond`, float32, + config.json with the
  preconditioner's class, kwargs and kimg), the architecture `NETWORK` (or `network`) at
  resolution x resolution x 3 with `classes` labels. Returns path; an existing one is kept."""
  if os.path.exists(os.path.join(path, "config.json")):
    return path
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import models  # pylint: disable=import-outside-toplevel
  from diffgen_jax.models import nvidia  # pylint: disable=import-outside-toplevel
  kwargs = dict(img_resolution=resolution, img_channels=3, label_dim=classes,
                **(NETWORK if network is None else network))
  config, _ = nvidia.model_config_from_kwargs("Precond", kwargs)
  shapes = jax.eval_shape(models.init_fn(models.build(config), (1, resolution, resolution, 3)),
                          jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(seed)
  state = {}
  for p, leaf in sorted(nvidia._flatten(shapes).items()):  # pylint: disable=protected-access
    if p[-1] == "freqs":
      value = 2 * np.pi * rng.standard_normal(leaf.shape)
    elif p[-1] == "phases":
      value = 2 * np.pi * rng.uniform(size=leaf.shape)
    else:
      value = 0.2 * rng.standard_normal(leaf.shape)
    state[_torch_name(p)] = _torch_layout(value.astype(np.float32))
  os.makedirs(path, exist_ok=True)
  np.savez(os.path.join(path, "state_dict.npz"), **state)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"preconditioner_class": "training.networks_edm2.Precond",
               "preconditioner_kwargs": kwargs, "kimg": kimg,
               "written_by": "benchmarks/imagenet64_e2e.py (random weights)"}, f, indent=1)
  return path


def overrides(train_zip: str, val_zip: str, network: str, **counts) -> Dict[str, Any]:
  """{dotted config field: value} turning configs/nvidia.py:edm2-img64 into the run here: the
  network and zips, and the protocol's counts (`COUNTS`, replaced by `counts`)."""
  c = dict(COUNTS, **counts)
  return {"model.checkpoint": network,
          "data.name": f"edm_zip:{train_zip},{val_zip}",
          "evaluation.num_images": c["num_images"],
          "evaluation.num_sigmas": c["num_sigmas"],
          "evaluation.batch_size": c["batch_size"],
          "evaluation.samples.num_samples": c["num_samples"],
          "evaluation.samples.num_steps": c["num_steps"],
          "evaluation.samples.classifier_steps": c["classifier_steps"],
          "evaluation.samples.reference_images": c["reference_images"],
          "evaluation.samples.probe_size": c["probe_size"],
          "evaluation.samples.grid_size": c["grid_size"]}


def apply(config, fields: Mapping[str, Any]):
  """Sets each dotted field of `fields` on config (a ConfigDict); returns config."""
  for dotted, value in fields.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _flags(fields: Mapping[str, Any]) -> List[str]:
  return [f"--config.{k}={v}" for k, v in fields.items()]


PHASES = (("convert", {"job": "convert"}),
          ("gap", {"evaluation.samples.enabled": False}),
          ("samples", {"evaluation.samples.enabled": True}))


def _excerpt(workdir: str) -> Dict[str, Any]:
  """The numbers that show each measurement ran (from WORKDIR/results.json)."""
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  (step, snap), = results["snapshots"].items()
  record = snap["ema"]["ema"]
  out = {"sections": sorted(results), "settings": results.get("settings"),
         "snapshot_kimg": int(step),
         "peak_gap": results["summary"]["peak_gap"][-1],
         "peak_sigma": results["summary"]["peak_sigma"][-1],
         "optimal_e_train_at_smallest_sigma": results["optimal"]["e_train"][0],
         "optimal_e_val_at_smallest_sigma": results["optimal"]["e_val"][0],
         "to_optimal_train": record["to_optimal_train"], "to_optimal_val": record["to_optimal_val"],
         "membership_peak_auc": results["summary"]["membership_peak_auc"][-1]}
  samples = results.get("samples", {})
  if samples:
    s = samples["summary"]
    out.update(gap_fd_features=s["gap_fd_features"][-1], gap_fd_pixels=s["gap_fd_pixels"][-1],
               copy_fraction=s["copy_fraction"][-1],
               copy_fraction_validation_control=s["copy_fraction_validation_control"][-1],
               reference=samples["protocol"]["reference_images"],
               feature=samples["feature"])
  return out


def compare_with(reference_workdir: str, workdir: str) -> Dict[str, Any]:
  """benchmarks/compare_results.py on two workdirs' results.json (rtol 1e-5; "settings", which
  records the process count, and paths skipped)."""
  sys.path.insert(0, HERE)
  import compare_results  # pylint: disable=import-outside-toplevel
  loaded = []
  for w in (reference_workdir, workdir):
    with open(os.path.join(w, "results.json")) as f:
      loaded.append(json.load(f))
  c = compare_results.compare(*loaded, rtol=1e-5,
                              ignore=compare_results.DEFAULT_IGNORE + ("settings",))
  return {"numbers": c["numbers"], "max_relative_difference": c["max_rel"][0],
          "where": c["max_rel"][1], "mismatches_rtol_1e-5": [list(map(str, m))
                                                              for m in c["mismatches"]],
          "missing": c["missing"]}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default="/tmp/diffgen_imagenet64_e2e", help="data, network, workdirs")
  p.add_argument("--train", type=int, default=20_000)
  p.add_argument("--val", type=int, default=2_000)
  p.add_argument("--classes", type=int, default=1000)
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--processes", default="1", help="comma-separated process counts")
  p.add_argument("--devices", type=int, default=2, help="total devices (split over processes)")
  for name, value in COUNTS.items():
    p.add_argument(f"--{name}", type=int, default=value)
  p.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per phase")
  p.add_argument("--out", default=os.path.join(HERE, "results", "imagenet64_e2e.json"))
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  sys.path.insert(0, HERE)
  import launch  # pylint: disable=import-outside-toplevel  (benchmarks/launch.py)
  t0 = time.perf_counter()
  train_zip, val_zip = write_dataset(os.path.join(args.root, "data"), train=args.train,
                                     val=args.val, resolution=args.resolution,
                                     classes=args.classes)
  write_s = time.perf_counter() - t0
  network = write_edm2_network(os.path.join(args.root, "network-snapshot-0002097-0.100"),
                               resolution=args.resolution, classes=args.classes)
  counts = {k: getattr(args, k) for k in COUNTS}
  fields = overrides(train_zip, val_zip, network, **counts)
  print(f"data: {args.train} + {args.val} images of {args.resolution}x{args.resolution}x3, "
        f"{args.classes} classes ({os.path.getsize(train_zip) / 2**20:.0f} MiB train.zip, "
        f"written in {write_s:.0f} s); network {network}")
  report = {"config": {**vars(args), "counts": counts, "network": NETWORK},
            "command": "python benchmarks/imagenet64_e2e.py " + " ".join(argv or sys.argv[1:]),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "train_zip_mib": os.path.getsize(train_zip) / 2**20,
            "training_set_float32_mib": args.train * args.resolution ** 2 * 3 * 4 / 2**20,
            "dataset_write_s": write_s, "runs": []}
  for processes in [int(p) for p in args.processes.split(",")]:
    if args.devices % processes:
      raise SystemExit(f"--devices={args.devices} is not a multiple of {processes} processes")
    workdir = os.path.join(args.root, f"work_{processes}p")
    shutil.rmtree(workdir, ignore_errors=True)
    run = {"processes": processes, "devices_per_process": args.devices // processes,
           "phases": {}}
    for phase, extra in PHASES:
      argv_main = ["--config=configs/nvidia.py:edm2-img64", f"--workdir={workdir}",
                   *_flags(fields), *_flags(extra)]
      reports = launch.run_main(argv_main, processes=processes,
                                devices=args.devices // processes,
                                log_dir=os.path.join(args.root, f"logs_{processes}p", phase),
                                timeout=args.timeout)
      run["phases"][phase] = reports
      print(f"{processes} process(es) x {args.devices // processes} device(s), {phase:>8}: "
            + "; ".join(f"process {r['process']}: {r['wall_s']:7.1f} s wall, "
                        f"{r['user_s'] + r['system_s']:7.1f} s CPU, peak RSS "
                        f"{r['peak_rss_mib']:7.0f} MiB" for r in reports), flush=True)
    run["results"] = _excerpt(workdir)
    if report["runs"]:  # every number of results.json against the first process count's
      run["against_first_run"] = compare_with(report["runs"][0]["workdir"], workdir)
    run["workdir"] = workdir
    run["command"] = "python -m diffgen_jax.main " + " ".join(
        ["--config=configs/nvidia.py:edm2-img64", f"--workdir={workdir}", *_flags(fields)])
    print(json.dumps(run["results"], indent=1))
    report["runs"].append(run)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  print(f"wrote {args.out}")
  return report


if __name__ == "__main__":
  main()
