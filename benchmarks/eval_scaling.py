"""The evaluate job over 1, 2 and 4 processes at a fixed total device count, side by side in one
run; and y*'s throughput per device against the GEMM ceiling (issue 23).

1. Trains a tiny quickstart-like run once (configs/quickstart.py with --train_images images seen and
   a snapshot every --snapshot_images, no evaluation after training) in --root; the evaluation
   settings are the quickstart's (128 images per split x 64 sigmas, 256 samples, a 300-step
   classifier) unless changed by the flags.
2. For each layout P x D of --layouts (default 1x8, 2x4, 4x2: 8 simulated CPU devices in all),
   copies the run's snapshots into a fresh workdir and runs the evaluate job there in P processes
   of D devices (`benchmarks/launch.py`: `python -m diffgen_jax.main`, jax.distributed on
   127.0.0.1 when P > 1): the gap of every snapshot against y*, membership, the samples (the classifier is
   trained in every layout, by every process: that part does not split). Per process: wall time,
   peak RSS (the kernel's VmHWM of the child, `os.wait4`), CPU time. Each layout's results.json
   is compared with the first layout's (`compare_results.compare`, rtol 1e-5; "settings", which
   records the process count, and paths skipped).
3. y* throughput: `benchmarks/optimal_denoiser.py --mesh` in one process over --ystar_devices
   devices each (default 1 and 8), achieved GFLOP/s per device against the GEMM ceiling (the same
   matmul with the training points split over the same devices), at N x D = --ystar_n x --ystar_d.

On this 2-core machine more processes cannot be faster in wall time (8 devices share 2 cores
however they are split); what falls is each process's share of the work (CPU seconds) and of the
data it holds, while the fixed cost of a process (Python, jax, start-up: ~0.35 GB; with the
evaluation's compiled programs ~0.85 GB in the 4 x 2 run here) is paid P times.

  python benchmarks/eval_scaling.py                         # about 10-20 minutes here
  python benchmarks/eval_scaling.py --layouts 1x2,2x1 --train_images 640 --num_sigmas 4 \
      --num_samples 32 --ystar_n 4096 --ystar_d 256        # a few minutes

JSON: benchmarks/results/eval_scaling.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import compare_results  # noqa: E402  pylint: disable=wrong-import-position
import launch  # noqa: E402  pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--root", default="/tmp/diffgen_eval_scaling")
  p.add_argument("--layouts", default="1x8,2x4,4x2", help="PROCESSESxDEVICES, comma-separated")
  p.add_argument("--train_images", type=int, default=64 * 200, help="images seen in training")
  p.add_argument("--snapshot_images", type=int, default=64 * 100)
  p.add_argument("--num_images", type=int, default=128, help="evaluation images per split")
  p.add_argument("--num_sigmas", type=int, default=64)
  p.add_argument("--num_samples", type=int, default=256)
  p.add_argument("--classifier_steps", type=int, default=300)
  p.add_argument("--ystar_devices", default="1,8")
  p.add_argument("--ystar_n", type=int, default=16_384)
  p.add_argument("--ystar_d", type=int, default=1024)
  p.add_argument("--ystar_queries", type=int, default=128, help="queries per sigma (4 sigmas)")
  p.add_argument("--timeout", type=float, default=3600.0, help="seconds per launch")
  p.add_argument("--out", default=os.path.join(HERE, "results", "eval_scaling.json"))
  return p.parse_args(argv)


def _flags(args) -> List[str]:
  """The run's config: quickstart, shortened; the same flags train it and evaluate it."""
  return ["--config=configs/quickstart.py",
          f"--config.training.total_images={args.train_images}",
          f"--config.checkpoint.snapshot_every_images={args.snapshot_images}",
          f"--config.checkpoint.state_every_images={args.snapshot_images}",
          "--config.monitor.every_images=0",
          f"--config.evaluation.num_images={args.num_images}",
          f"--config.evaluation.num_sigmas={args.num_sigmas}",
          f"--config.evaluation.samples.num_samples={args.num_samples}",
          f"--config.evaluation.samples.classifier_steps={args.classifier_steps}"]


def _summary(reports: List[Dict[str, Any]]) -> Dict[str, float]:
  cpu = [r["user_s"] + r["system_s"] for r in reports]
  return {"wall_s": max(r["wall_s"] for r in reports),
          "peak_rss_mib_per_process_max": max(r["peak_rss_mib"] for r in reports),
          "peak_rss_mib_all_processes": sum(r["peak_rss_mib"] for r in reports),
          "cpu_s_per_process_max": max(cpu), "cpu_s_all_processes": sum(cpu)}


def _results_excerpt(workdir: str) -> Dict[str, Any]:
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  s, samples = r["summary"], r.get("samples", {}).get("summary", {})
  return {"settings": r.get("settings"), "images_seen": s["images_seen"],
          "peak_gap": s["peak_gap"], "peak_sigma": s["peak_sigma"],
          "membership_peak_auc": s.get("membership_peak_auc"),
          "gap_fd_features": samples.get("gap_fd_features"),
          "copy_fraction": samples.get("copy_fraction")}


def ystar_throughput(args, devices: int) -> Dict[str, Any]:
  """optimal_denoiser.py --mesh over `devices` devices in one process (its JSON)."""
  out = os.path.join(args.root, f"ystar_{devices}.json")
  cmd = [sys.executable, os.path.join(HERE, "optimal_denoiser.py"), "--mesh", "--no_torch",
         "--n", str(args.ystar_n), "--d", str(args.ystar_d), "--queries", str(args.ystar_queries),
         "--sigmas", "4", "--dense_n", "256", "--dense_queries", "32", "--out", out]
  subprocess.run(cmd, env=launch.environment(devices), cwd=REPO, check=True,
                 stdout=subprocess.DEVNULL)
  with open(out) as f:
    r = json.load(f)
  return {"devices": devices, "n": args.ystar_n, "d": args.ystar_d,
          "queries": r["config"]["total_queries"], "chunk_size": r["config"]["chunk_size"],
          "gflops": r["ours"]["gflops"], "gflops_per_device": r["ours"]["gflops_per_device"],
          "gemm_gflops": r["gemm_ceiling"]["gflops"],
          "gemm_gflops_per_device": r["gemm_ceiling"]["gflops_per_device"],
          "ratio_to_gemm": r["ratio_to_gemm"], "seconds": r["ours"]["seconds"],
          "gemm_seconds": r["gemm_ceiling"]["seconds"]}


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.root, exist_ok=True)
  run_dir = os.path.join(args.root, "run")
  report: Dict[str, Any] = {
      "config": vars(args), "command": "python benchmarks/eval_scaling.py " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "platform": platform.platform(), "cpu_count": os.cpu_count(), "layouts": []}
  if not os.path.isdir(os.path.join(run_dir, "checkpoints", "snapshots")):
    t0 = time.perf_counter()
    launch.run_main(_flags(args) + [f"--workdir={run_dir}",
                                    "--config.evaluation.after_training=False"],
                    processes=1, devices=2, log_dir=os.path.join(args.root, "logs_train"),
                    timeout=args.timeout)
    print(f"trained {run_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
  reference = None
  for layout in args.layouts.split(","):
    processes, devices = (int(v) for v in layout.split("x"))
    workdir = os.path.join(args.root, f"evaluate_{layout}")
    shutil.rmtree(workdir, ignore_errors=True)
    # The run as training left it (snapshots, run record, config), no evaluation yet.
    shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns(
        "results.json", "evaluation", "tensorboard", "job.lock"))
    reports = launch.run_main(_flags(args) + [f"--workdir={workdir}", "--config.job=evaluate"],
                              processes=processes, devices=devices,
                              log_dir=os.path.join(args.root, f"logs_{layout}"),
                              timeout=args.timeout)
    entry = {"layout": layout, "processes": processes, "devices_per_process": devices,
             "per_process": reports, **_summary(reports), "results": _results_excerpt(workdir)}
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    if reference is None:
      reference = results
    else:
      c = compare_results.compare(reference, results, rtol=1e-5,
                                  ignore=compare_results.DEFAULT_IGNORE + ("settings",))
      entry["against_first_layout"] = {
          "numbers": c["numbers"], "max_relative_difference": c["max_rel"][0],
          "where": c["max_rel"][1], "mismatches_rtol_1e-5": [list(map(str, m))
                                                              for m in c["mismatches"]],
          "missing": c["missing"]}
    report["layouts"].append(entry)
    print(f"{layout}: wall {entry['wall_s']:6.1f} s; per process: "
          + ", ".join(f"{r['wall_s']:.1f} s wall / {r['user_s'] + r['system_s']:.1f} s CPU / "
                      f"{r['peak_rss_mib']:.0f} MiB" for r in reports)
          + (f"; vs {args.layouts.split(',')[0]}: {entry['against_first_layout']['numbers']} "
             f"numbers, max rel diff {entry['against_first_layout']['max_relative_difference']:.2g}"
             f", {len(entry['against_first_layout']['mismatches_rtol_1e-5'])} beyond 1e-5"
             if "against_first_layout" in entry else ""), flush=True)
    _write(args.out, report)
  report["ystar"] = []
  for devices in [int(d) for d in args.ystar_devices.split(",") if d]:
    y = ystar_throughput(args, devices)
    report["ystar"].append(y)
    print(f"y* over {devices} device(s), N={y['n']}, D={y['d']}, {y['queries']} queries: "
          f"{y['gflops']:.1f} GFLOP/s ({y['gflops_per_device']:.1f} per device); GEMM ceiling "
          f"{y['gemm_gflops']:.1f} ({y['gemm_gflops_per_device']:.1f} per device); ratio "
          f"{y['ratio_to_gemm']:.2f}", flush=True)
    _write(args.out, report)
  print(f"wrote {args.out}")
  return report


def _write(path: str, report: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
