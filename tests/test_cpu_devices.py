"""main.use_cpu_cores_as_devices: one CPU device per core, unless the user or a started backend says otherwise."""

import os
import subprocess
import sys

_PROBE = ("import diffgen_jax.main as m, jax; n = m.use_cpu_cores_as_devices({batch}); "
          "print(n, jax.device_count(), jax.default_backend())")


def _probe(batch, **env):
  clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  clean.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path), **env)
  out = subprocess.run([sys.executable, "-c", _PROBE.format(batch=batch)], env=clean, check=True,
                       capture_output=True, text=True, timeout=120).stdout.split()
  return int(out[0]), int(out[1]), out[2]


def test_one_device_per_core_dividing_the_batch():
  cores = len(os.sched_getaffinity(0))
  want = max(d for d in range(1, cores + 1) if 64 % d == 0)
  assert _probe(64) == (want, want, "cpu")
  # A batch of 1 cannot be split: one device.
  assert _probe(1) == (1, 1, "cpu")


def test_the_users_device_count_wins():
  assert _probe(64, XLA_FLAGS="--xla_force_host_platform_device_count=3") == (0, 3, "cpu")
  assert _probe(64, JAX_NUM_CPU_DEVICES="5") == (0, 5, "cpu")


def test_noop_once_jax_has_started():
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import main  # pylint: disable=import-outside-toplevel
  before = jax.device_count()  # starts the backends (8 simulated devices in the tests)
  assert main.use_cpu_cores_as_devices(64) == 0
  assert jax.device_count() == before
