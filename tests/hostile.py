"""Runs a reader on a hostile file in a child process whose memory is capped (`resource.RLIMIT_AS`).

A reader of files from the internet must bound every size before it allocates: under the cap, a
reader that trusts a declared size dies with MemoryError (or is killed), one that crashes in C code
dies with a signal, and one that checks first raises its own error naming the file. The cap counts
from after the imports, so it measures what the reader itself allocates.

    result = hostile.run_capped("from diffgen_jax.models import nvidia_pickle",
                                "nvidia_pickle.read_network_pickle(PATH)", path=bad, limit_mb=256)
    assert result.error == "NetworkPickleError" and str(bad) in result.message
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

_CHILD = """
import json, os, resource, sys
{imports}
PATH = {path!r}

def _address_space():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmSize in /proc/self/status")

_cap = _address_space() + {limit} * 2**20
resource.setrlimit(resource.RLIMIT_AS, (_cap, _cap))
try:
{code}
except BaseException as err:  # reported to the parent, which decides what was right
  print(json.dumps({{"error": type(err).__name__, "message": str(err)[:4000]}}))
  sys.exit(0)
print(json.dumps({{"error": None, "message": ""}}))
"""


@dataclasses.dataclass
class Result:
  returncode: int  # negative: killed by that signal (e.g. -11 SIGSEGV)
  error: str | None  # the exception's class name, None if the code returned
  message: str
  stderr: str

  @property
  def crashed(self) -> bool:
    return self.returncode != 0

  def __str__(self) -> str:
    return (f"returncode {self.returncode}, error {self.error}: {self.message[:500]}\n"
            f"stderr: {self.stderr[-2000:]}")


def run_capped(imports: str, code: str, *, path: str = "", limit_mb: int = 256,
               timeout: float = 120.0) -> Result:
  """Runs `imports`, then caps the address space at its size + limit_mb MiB, then runs `code`
  (with PATH bound to `path`) in a fresh Python. The child sees this process's sys.path and a
  single-threaded BLAS (each thread would reserve address space)."""
  script = _CHILD.format(imports=imports, path=str(path), limit=int(limit_mb),
                         code=textwrap.indent(textwrap.dedent(code), "  "))
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=timeout, env=env, check=False)
  last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
  try:
    report = json.loads(last[0]) if last else {}
  except json.JSONDecodeError:
    report = {}
  return Result(proc.returncode, report.get("error"), report.get("message", ""), proc.stderr)
