"""Every test sees 8 simulated CPU devices, so sharded code paths run on any machine."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402  (after the environment: jax must see the flags first)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data_dir holding the prepared digits dataset, shared by every test file."""
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  d = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits", d)
  return d
