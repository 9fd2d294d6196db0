"""Runs the main job (`python -m diffgen_jax.main`) in P real processes of D simulated CPU devices
each, over jax.distributed on 127.0.0.1 (gloo), as a pod runs it, and measures each process.

    reports = launch.run_main(["--config=configs/quickstart.py", "--workdir=/tmp/x"],
                              processes=2, devices=4, log_dir="/tmp/x_logs")

Each report holds the process's exit status, its wall time (start to exit), its peak resident set
size and its CPU time, all from the kernel's accounting of that child (`os.wait4`: ru_maxrss is
the child's own peak RSS, VmHWM; nothing is sampled). Used by benchmarks/eval_scaling.py and
benchmarks/imagenet64_e2e.py. Processes > 1 add --coordinator_address=127.0.0.1:PORT
--num_processes=P --process_id=i (main.py starts jax.distributed with them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(devices: int) -> Dict[str, str]:
  """This process's environment with `devices` simulated CPU devices and this tree first on the
  path (any device-count flag in XLA_FLAGS replaced)."""
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_main(args: Sequence[str], *, processes: int, devices: int, log_dir: str,
             timeout: float = 3600.0, poll: float = 0.1) -> List[Dict[str, float]]:
  """Runs `python -m diffgen_jax.main *args` in `processes` processes of `devices` devices each.

  Returns one report per process: {"process", "returncode", "wall_s", "peak_rss_mib", "user_s",
  "system_s", "log"}; logs (stdout and stderr) go to log_dir/process_<i>.log. Raises
  RuntimeError naming the failed process and the tail of its log when any exits non-zero or the
  run passes `timeout` seconds (then every process is killed).
  """
  os.makedirs(log_dir, exist_ok=True)
  port = free_port()
  procs = []
  for i in range(processes):
    extra = ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
              f"--process_id={i}"] if processes > 1 else [])
    log_path = os.path.join(log_dir, f"process_{i}.log")
    with open(log_path, "w") as log:
      proc = subprocess.Popen([sys.executable, "-m", "diffgen_jax.main", *args, *extra],
                              env=environment(devices), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    procs.append({"proc": proc, "start": time.perf_counter(), "log": log_path})
  reports: List[Optional[Dict[str, float]]] = [None] * processes
  deadline = time.perf_counter() + timeout
  try:
    while any(r is None for r in reports):
      for i, p in enumerate(procs):
        if reports[i] is not None:
          continue
        pid, status, usage = os.wait4(p["proc"].pid, os.WNOHANG)
        if pid == 0:
          continue
        p["proc"].returncode = os.waitstatus_to_exitcode(status)  # (reaped here, not by Popen)
        reports[i] = {"process": i, "returncode": p["proc"].returncode,
                      "wall_s": time.perf_counter() - p["start"],
                      "peak_rss_mib": usage.ru_maxrss / 1024.0,  # Linux: KiB
                      "user_s": usage.ru_utime, "system_s": usage.ru_stime, "log": p["log"]}
      if any(r is not None and r["returncode"] != 0 for r in reports):
        break  # (the others would wait for it at their next collective: killed below)
      if time.perf_counter() > deadline:
        raise RuntimeError(f"{' '.join(args)}: still running after {timeout:.0f} s")
      time.sleep(poll)
  finally:
    for p in procs:
      if p["proc"].returncode is None:
        os.killpg(p["proc"].pid, signal.SIGKILL)
        os.waitpid(p["proc"].pid, 0)
        p["proc"].returncode = -signal.SIGKILL
  failed = [r for r in reports if r is not None and r["returncode"] != 0]
  if failed:
    with open(failed[0]["log"]) as f:
      tail = f.read()[-3000:]
    raise RuntimeError(f"process {failed[0]['process']} of {processes} exited with "
                       f"{failed[0]['returncode']} ({' '.join(args)}); log tail:\n{tail}")
  return reports
