"""What the train job shows while it runs: the denoising error on fixed subsets during training
(the monitor), TensorBoard event files, the quiet console, and the one results.json at the end."""

import json
import logging as py_logging
import os
import struct

import numpy as np
import pytest
from absl import logging

from diffgen_jax import defaults, jobs, jsonio
from diffgen_jax.jobs import console
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.jobs import train as train_job

SIGMAS = (0.2, 0.5, 1.0)
BATCH = 16
STEPS = 8


def _config(data_dir):
  c = defaults.train_config("digits", "ddpmpp")
  c.data.data_dir = data_dir
  c.data.subset_size = 64
  c.model.update(dict(preset="", model_channels=8, channel_mult=(1, 2), num_blocks=1,
                      attn_resolutions=(), img_resolution=8, img_channels=1, num_classes=10,
                      dropout=0.0))
  t = c.training
  t.batch_size, t.total_images, t.lr, t.warmup_images = BATCH, BATCH * STEPS, 2e-3, 0
  # The training settings of tests/test_training.py's tiny run: the same train step program, which
  # the session's compilation cache (tests/conftest.py) then compiles once.
  t.label_dropout = 0.1
  t.ema.halflife_images = 4 * BATCH
  c.checkpoint.state_every_images = 4 * BATCH
  c.checkpoint.snapshot_every_images = 4 * BATCH
  c.sampling.grid_size = 4
  c.sampling.num_steps = 2
  c.log_every_steps = 2
  c.monitor.update(dict(every_images=4 * BATCH, num_images=16, sigmas=SIGMAS, batch_size=16))
  # The evaluation at the end on the monitor's images, noise and sigmas.
  c.evaluation.update(dict(num_images=16, sigmas=SIGMAS, batch_size=16, at_sigmas=()))
  c.evaluation.samples.enabled = False
  return c


def _tensorboard_events(logdir):
  """(tag, step, value-or-"image") of every summary in the event files (TFRecord framing)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  out = []
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      raw = f.read()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.append((v.tag, event.step, "image" if v.HasField("image") else v.simple_value))
  return out


def test_monitor_tensorboard_console_and_results(data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = _config(data_dir)
  jobs.run(config, workdir)
  printed = capsys.readouterr().out.splitlines()

  # The monitor: E_train, E_val and G at the monitor's sigmas every 4 steps, in the step's row.
  with open(os.path.join(workdir, train_job.METRICS_FILE)) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  monitored = {r["step"]: r for r in rows if any(k.startswith("monitor/") for k in r)}
  assert sorted(monitored) == [4, 8]
  last = monitored[8]
  for s in SIGMAS:
    e_t, e_v, g = (last[f"monitor/{k}/{s:g}"] for k in ("e_train", "e_val", "gap"))
    assert e_t > 0 and e_v > 0 and g == pytest.approx((e_v - e_t) / e_t, rel=1e-9)
  # ... the same numbers as the evaluation of the final snapshot (same images, noise, sigmas),
  # computed there without a mesh: equal up to float32 rounding.
  results = results_lib.read(workdir)
  assert results["job"] == "train" and results["schema_version"] == 1
  final = results["snapshots"]["8"]["ema"]["ema"]
  np.testing.assert_allclose([last[f"monitor/e_train/{s:g}"] for s in SIGMAS], final["e_train"],
                             rtol=1e-5)
  np.testing.assert_allclose([last[f"monitor/e_val/{s:g}"] for s in SIGMAS], final["e_val"],
                             rtol=1e-5)

  # TensorBoard: the training scalars every step, the monitor's, the sample grid per snapshot.
  events = _tensorboard_events(os.path.join(workdir, train_job.TENSORBOARD_DIR))
  tags = {(tag, step) for tag, step, _ in events}
  for tag in ("train/loss", "train/lr", "train/grad_norm"):
    assert {(tag, s) for s in range(1, STEPS + 1)} <= tags, tag
  assert {("train/img_per_s", s) for s in (2, 4, 6, 8)} <= tags
  loss = {step: v for tag, step, v in events if tag == "train/loss"}
  assert all(loss[r["step"]] == pytest.approx(r["loss"], rel=1e-6) for r in rows)
  assert {(f"monitor/gap/{s:g}", 8) for s in SIGMAS} <= tags
  assert sorted(step for tag, step, v in events if tag == "samples" and v == "image") == [4, 8]

  # The console: the config is printed by main, not here; one line per log interval, one per
  # monitor evaluation, the evaluation's progress and the summary.
  progress = [line for line in printed if line.startswith("train: step")]
  assert len(progress) == STEPS // config.log_every_steps
  assert all("img/s" in line and "loss" in line and "ETA" in line for line in progress)
  assert sum(line.startswith("train: G(sigma)") for line in printed) == 2
  assert any(line.startswith("Denoising gap of") for line in printed)
  assert len(printed) <= 20, printed


def test_console_verbosity():
  before = logging.get_verbosity()
  try:
    console.configure(0)
    assert logging.get_verbosity() == logging.WARNING  # library INFO records hidden
    # orbax's notes about read-only options (three per snapshot read) and the item-level metadata
    # read of checkpointing._saved_tree (one per snapshot) are dropped, other warnings kept.
    absl_logger = py_logging.getLogger("absl")
    record = lambda msg: py_logging.LogRecord("absl", py_logging.WARNING, "", 0, msg, (), None)
    assert not absl_logger.filter(record("Given directory is read only=/tmp/x"))
    assert not absl_logger.filter(record("CheckpointManagerOptions.read_only=True, setting create"))
    assert not absl_logger.filter(record("Metadata file does not exist: /w/snapshots/600/ema/x"))
    assert absl_logger.filter(record("Sample evaluation settings changed"))
    console.configure(1)
    assert logging.get_verbosity() == logging.INFO
  finally:
    logging.set_verbosity(before)


def test_train_job_checks_the_evaluation_fields_before_training(data_dir, tmp_path):
  config = _config(data_dir)
  config.evaluation.num_images = 0
  with pytest.raises(jobs.config_checks.ConfigError, match="config.evaluation.num_images"):
    jobs.run(config, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")  # rejected before anything was written
  config.evaluation.after_training = False  # not evaluated: not needed
  jobs.validate(config)


def test_only_training_needs_its_batch_to_fit_the_devices():
  """A run trained with batch 12 elsewhere is evaluated on these 8 devices (the evaluation splits
  its own batches); training it here is refused, naming the field (was refused for both)."""
  config = defaults.train_config()
  config.training.batch_size = 12
  with pytest.raises(ValueError, match=r"config.training.batch_size=12 must be divisible by the 8"):
    jobs.validate(config)
  config.job = "evaluate"
  assert jobs.validate(config) == "evaluate"


def test_snapshot_grid_split_over_the_mesh_equals_one_device(tmp_path):
  """The per-snapshot sample grid runs split over the 8 devices when the grid divides them (its
  noise is an argument of the compiled sampler, not a constant, so it keeps its sharding)."""
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import sharding, training  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  config = _config(str(tmp_path))
  config.sampling.grid_size = 8
  network = common.network_of(config, 10)
  settings = common.training_settings(config)
  state = training.init_state(network, training.make_optimizer(settings), settings,
                              jax.random.key(0), (8, 8, 1))
  split = train_job._make_sample_fn(network, config, (8, 8, 1), 10, sharding.make_mesh())
  one = train_job._make_sample_fn(network, config, (8, 8, 1), 10,
                                  sharding.make_mesh(1, 1, jax.devices()[:1]))
  a, b = split(state.ema), one(state.ema)
  assert a.shape == (8, 8, 8, 1) and np.all(np.isfinite(a))
  np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Run files (issue 22): one job per workdir; a damaged results.json is named


_HOLD_LOCK = r"""
import sys
from diffgen_jax import jobs
with jobs.workdir_lock(sys.argv[1], "evaluate"):
  print("held", flush=True)
  sys.stdin.read()
"""


def test_a_second_job_on_a_workdir_is_refused_naming_the_first(data_dir, tmp_path):
  """Two jobs on one workdir would mix their checkpoints, metrics and results (and two writers of
  results.json crashed). The second is refused before it writes anything, naming the workdir and
  the first job's pid; the lock goes with its holder, also when it is killed."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, workdir], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(jobs.WorkdirBusyError) as err:
      jobs.run(_config(data_dir), workdir)
    assert str(err.value).startswith(
        f"the workdir {workdir} is in use by another job (pid {holder.pid} on ")
    assert "job 'evaluate'" in str(err.value) and "another --workdir" in str(err.value)
    assert os.listdir(workdir) == [jobs.LOCK_FILE]  # the refused job wrote nothing
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with jobs.workdir_lock(workdir, "train"):  # free again once its holder is gone
    with open(os.path.join(workdir, jobs.LOCK_FILE)) as f:
      assert f.read().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(jobs.WorkdirBusyError, match=f"pid {os.getpid()} on .*job 'train'"):
      with jobs.workdir_lock(workdir, "evaluate"):  # also within one process
        pass


def test_a_refused_config_leaves_no_workdir_behind_the_lock(data_dir, tmp_path):
  config = _config(data_dir)
  config.model.img_resolution = 16  # refused inside the job (against the data), after the lock
  with pytest.raises(ValueError, match="img_resolution"):
    jobs.run(config, str(tmp_path / "never"))
  assert not os.path.exists(tmp_path / "never")


def test_a_damaged_results_file_is_named(tmp_path):
  path = results_lib.path(str(tmp_path))
  with open(path, "w") as f:
    f.write('{"job": "train", "schema_version": 1, "snapshots": {"4": {"ima')  # cut
  for read in (results_lib.read, results_lib.read_if_exists):
    with pytest.raises(jsonio.DamagedFileError) as err:
      read(str(tmp_path))
    assert str(err.value).startswith(f"{path} is damaged or cut (")
    assert str(err.value).endswith("move it aside (or restore it from a copy) and re-run the job, "
                                   "which recomputes the results it does not find there")
  with open(path, "w") as f:
    f.write("[1, 2]")
  with pytest.raises(jsonio.DamagedFileError, match=f"{path} holds a JSON list, not the results"):
    results_lib.read(str(tmp_path))
