"""Every test sees 8 simulated CPU devices, so sharded code paths run on any machine."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
# The suite runs tiny shapes for a few steps, so it is compile-bound: LLVM at -O0 compiles XLA:CPU
# programs faster than at the default -O2. Every program of the session (and of the subprocess
# runs, which keep these flags) is compiled alike, so the comparisons between paths are unchanged.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# For the same reason, XLA:CPU's elemental emitters instead of its fusion emitters: they compile the
# tiny U-Net's train step in less than half the time (benchmarks/compile_flags.py).
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent compilation cache for the whole session, in a fresh temporary directory (nothing
# carries over between sessions). The suite is compile-bound: the same tiny networks' train steps
# and evaluations are compiled by many tests (and by the subprocess runs of test_training, which
# inherit this environment), and XLA compiles an identical program to an identical executable, so
# serving it from the cache changes no number, only the time.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _cache_dir = tempfile.mkdtemp(prefix="diffgen_jax_test_jax_cache_")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  import signal  # noqa: E402
  import sys  # noqa: E402
  if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # `timeout`, CI cancel: still clean up
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402  (after the environment: jax must see the flags first)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data_dir holding the prepared digits dataset, shared by every test file."""
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  d = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("digits", d)
  return d


@pytest.fixture(scope="session")
def tiny_unet_config(data_dir):
  """make(subset_size, batch_size, steps) -> the train config of the suite's tiny class-conditional
  DDPM++ (8 channels, one level, no attention) on `subset_size` 8x8 digits of `data_dir`, for
  `steps` steps of `batch_size` images. Its training settings are tests/test_training.py's tiny
  run's (lr 2e-3, no warm-up, label dropout 0.1, EMA half-life 4 batches), so every test that
  trains it runs one train step program, compiled once through the session's compilation cache.
  Checkpoints, monitor and evaluation are left at their defaults for the caller to set."""
  from diffgen_jax import defaults  # pylint: disable=import-outside-toplevel

  def make(subset_size=32, batch_size=16, steps=2):
    c = defaults.train_config("digits", "ddpmpp")
    c.data.data_dir = data_dir
    c.data.subset_size = subset_size
    c.model.update(dict(preset="", model_channels=8, channel_mult=(1,), num_blocks=1,
                        attn_resolutions=(), img_resolution=8, img_channels=1, num_classes=10,
                        dropout=0.0))
    c.training.update(dict(batch_size=batch_size, total_images=batch_size * steps, lr=2e-3,
                           warmup_images=0, label_dropout=0.1))
    c.training.ema.halflife_images = 4 * batch_size
    return c

  return make


# The files that take longest (end-to-end jobs and subprocess runs), slowest first.
SLOWEST_FILES_FIRST = ("test_experiments.py", "test_training.py", "test_jobs_ladder.py",
                       "test_guarantees.py", "test_jobs_train.py",
                       "test_samples.py", "test_models.py", "test_jobs_convert.py")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  """With pytest-xdist's `-n N|auto`: whole files per worker (session and module fixtures, such as
  the shared experiment runs, are built once), handed out in collection order (SLOWEST_FILES_FIRST
  first, so the long files start first and the short ones fill in behind them and the workers
  finish together; xdist would otherwise start with the files holding most tests), and at most 4
  workers for `auto` (each holds its own 8 simulated devices and compiled programs). An explicit
  --dist or --maxprocesses wins. Set here, not in pytest.ini, so pytest runs without xdist too."""
  if not config.pluginmanager.hasplugin("xdist"):
    return
  option = config.option
  if option.dist == "no" and not option.distload:
    option.dist = "loadfile"
    option.loadscopereorder = False
  if not option.maxprocesses:
    option.maxprocesses = 4


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return SLOWEST_FILES_FIRST.index(name) if name in SLOWEST_FILES_FIRST else len(SLOWEST_FILES_FIRST)
  items.sort(key=rank)  # stable: files keep their order among equals, tests within a file too
