"""Runs one script in P real processes of D simulated CPU devices each (jax.distributed over gloo on
127.0.0.1), the way a pod runs it: tests compare P x D against 1 x PD.

    outs = multiprocess.run(BODY, tmp_path, processes=2, devices=4)   # [process 0's dict, ...]
    ref = multiprocess.run(BODY, tmp_path / "one", processes=1, devices=8)[0]

BODY runs after `jax.distributed` is initialized; it sees PROCESS (its index), OUT (a directory of
its own) and must end by calling `report(**arrays)`: the arrays come back to the test as a dict per
process (numpy, through an .npz file).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PREAMBLE = """
import os, sys
import numpy as np
import jax
PROCESS, NUM_PROCESSES, OUT = {process}, {processes}, {out!r}
from diffgen_jax import sharding
if NUM_PROCESSES > 1:
  sharding.initialize_distributed("127.0.0.1:{port}", NUM_PROCESSES, PROCESS)
assert jax.process_count() == NUM_PROCESSES and jax.device_count() == {total}, (
    jax.process_count(), jax.device_count())

def report(**arrays):
  np.savez(os.path.join(OUT, "report.npz"), **arrays)
"""


def env(devices: int) -> dict:
  """This test process's environment with `devices` simulated CPU devices (conftest's flags kept)."""
  out = dict(os.environ)
  kept = [f for f in out.get("XLA_FLAGS", "").split() if "device_count" not in f]
  out["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])
  out["JAX_PLATFORMS"] = "cpu"
  out["TF_CPP_MIN_LOG_LEVEL"] = "3"
  out["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in sys.path if p])
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(body: str, workdir, *, processes: int = 2, devices: int = 4, timeout: float = 600.0):
  """Runs `body` in `processes` processes of `devices` devices each; returns their reports."""
  workdir = str(workdir)
  port = free_port()
  procs = []
  for i in range(processes):
    out = os.path.join(workdir, f"process_{i}")
    os.makedirs(out, exist_ok=True)
    script = _PREAMBLE.format(process=i, processes=processes, out=out, port=port,
                              total=processes * devices) + textwrap.dedent(body)
    log = open(os.path.join(out, "log.txt"), "w")
    procs.append((subprocess.Popen([sys.executable, "-c", script], env=env(devices), cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                  log, out))
  try:
    for proc, log, out in procs:
      try:
        rc = proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        rc = "timeout"
      log.close()
      if rc != 0:
        with open(os.path.join(out, "log.txt")) as f:
          tail = f.read()[-4000:]
        raise AssertionError(f"process {out} failed (rc={rc}); log tail:\n{tail}")
  finally:
    for proc, _, _ in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
  reports = []
  for _, _, out in procs:
    with np.load(os.path.join(out, "report.npz")) as f:
      reports.append({k: f[k] for k in f.files})
  return reports
