"""End-to-end tests of the training system: sharding, exact resume, checkpoints, errors, multi-host.

Everything runs a tiny DDPM++ (model_channels 8, one level) on 64 8x8 digits. Runs that must be
real processes (kill -9, two jax.distributed processes) call `python -m diffgen_jax.main` with this
file as the config file (`get_config` below); the rest runs in-process through `jobs.run`.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffgen_jax import (checkpointing, config_checks, data, defaults, jobs, jsonio, sharding,
                         training)

from diffgen_jax.jobs import common  # noqa: E402
from diffgen_jax.jobs import train as train_job  # noqa: E402
from diffgen_jax.models.network import build_network  # noqa: E402

THIS_FILE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(THIS_FILE))
BATCH = 16
STEPS = 12  # state every 2 steps, snapshot every 4, all states kept
SUBPROCESS_TIMEOUT = 600  # a hang guard: three processes compile the train step, slow on loaded cores


def get_config(arg=None):
  """The tiny training config (also the --config file of the subprocess runs)."""
  del arg
  c = defaults.train_config("digits", "ddpmpp")
  c.data.subset_size = 64
  m = c.model
  m.preset = ""
  m.model_channels = 8
  m.channel_mult = (1,)  # one level: the plumbing under test compiles in half the time
  m.num_blocks = 1
  m.attn_resolutions = ()
  m.img_resolution = 8
  m.img_channels = 1
  m.num_classes = 10
  m.dropout = 0.0
  t = c.training
  t.batch_size = BATCH
  t.total_images = BATCH * STEPS
  t.lr = 2e-3
  t.warmup_images = 0
  t.label_dropout = 0.1
  t.ema.halflife_images = 4 * BATCH
  c.checkpoint.state_every_images = 2 * BATCH
  c.checkpoint.snapshot_every_images = 4 * BATCH
  c.checkpoint.keep_states = 100
  c.sampling.grid_size = 0
  c.log_every_steps = 1
  if "evaluation" in c:
    c.evaluation.after_training = False
  return c


# ------------------------------------------------------------------------------------------------
# Helpers


def _env(num_devices: int) -> dict:
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]  # conftest's
  env["XLA_FLAGS"] = " ".join(kept + [f"--xla_force_host_platform_device_count={num_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "diffgen_jax.main", f"--config={THIS_FILE}", f"--workdir={workdir}",
          *extra]


def _start(cmd, env, log_path):
  log = open(log_path, "w")
  return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)


def _wait(proc, log_path, timeout=SUBPROCESS_TIMEOUT):
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail(f"training subprocess timed out after {timeout} s; log tail:\n{_tail(log_path)}")
  assert rc == 0, f"training subprocess failed (rc={rc}); log tail:\n{_tail(log_path)}"


def _tail(path, n=4000):
  with open(path) as f:
    return f.read()[-n:]


def _finalized_steps(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _load_arrays(workdir, step, item="state", kind=checkpointing.STATE_DIR):
  """{path string: numpy array} of one saved item, restored on this process's first device."""
  path = os.path.join(os.path.abspath(workdir), kind, str(step), item)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = ckptr.restore(path, target)
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _metrics(workdir):
  with open(os.path.join(workdir, train_job.METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted in-process run of the tiny config on the 8 test devices."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  out = jobs.run(get_config(), workdir)
  return workdir, out


# ------------------------------------------------------------------------------------------------
# 1. Sharding does not change the step


def test_sharded_step_matches_unsharded_and_loss_decreases():
  config = get_config()
  split = data.load_split("digits", "train", subset_size=64)
  network = build_network(config.model, split.num_classes)
  settings = common.training_settings(config)
  optimizer = training.make_optimizer(settings)
  key = jax.random.key(0)
  batches = [data.batch_at(split, t, BATCH, config.seed) for t in range(2)]
  devices = jax.devices()
  assert len(devices) == 8

  meshes = {"1 device": sharding.make_mesh(1, 1, devices[:1]),
            "data 8": sharding.make_mesh(8, 1),
            "data 4 x model 2": sharding.make_mesh(4, 2)}
  results = {}
  initial = None
  for name, mesh in meshes.items():
    init_fn, step_fn, _, state_sharding = training.compile_training(
        network, optimizer, settings, mesh, split.shape)
    if initial is None:  # initialized once (on one device), then placed on each mesh
      initial = jax.device_get(init_fn(jax.random.key(1)))
    state = jax.device_put(initial, state_sharding)
    if name == "data 4 x model 2":  # parameters really are split over the model axis
      specs = [s.spec for s in jax.tree.leaves(state_sharding.params)]
      assert any(sharding.MODEL_AXIS in tuple(s) for s in specs)
    for batch in batches:
      batch = jax.device_put(batch, training.batch_sharding(mesh))
      state, metrics = step_fn(state, batch, key)
    results[name] = jax.device_get((state.params, state.ema, metrics["loss"]))
    if name == "data 8":
      trained_8 = (mesh, step_fn, state)

  # Not bitwise: the gradient's mean over the batch (and, with a model axis, the contractions) is
  # summed in a different order when it is split over devices, so float32 rounding differs.
  ref = results["1 device"]
  for name in ("data 8", "data 4 x model 2"):
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(results[name])):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(ref[0]), jax.tree.leaves(initial.params))]
  assert sum(changed) > len(changed) // 2  # the two steps did move the parameters

  # A short run lowers the loss on a fixed evaluation set (fixed batches and noise keys).
  mesh, step_fn, state = trained_8
  eval_batches = [data.batch_at(split, t, BATCH, 123) for t in range(4)]
  loss_fn = jax.jit(lambda p, b, k: training.denoising_loss(network, p, b, k, settings, False)[0])

  def eval_loss(params):
    return np.mean([float(loss_fn(params, b, jax.random.key(100 + i)))
                    for i, b in enumerate(eval_batches)])

  before = eval_loss(state.params)
  for t in range(2, 42):
    batch = data.batch_at(split, t, BATCH, config.seed)
    state, _ = step_fn(state, jax.device_put(batch, training.batch_sharding(mesh)), key)
  after = eval_loss(state.params)
  assert after < 0.8 * before, (before, after)


# ------------------------------------------------------------------------------------------------
# 2. kill -9 and resume: bit-identical to the uninterrupted run


def test_kill_and_resume_is_bit_identical(reference, tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / "killed")
  state_dir = os.path.join(workdir, checkpointing.STATE_DIR)
  env = _env(8)  # the same device count as the reference run (bit-identity needs it)
  log = str(tmp_path / "killed.log")
  proc = _start(_train_cmd(workdir), env, log)
  deadline = time.time() + SUBPROCESS_TIMEOUT
  while not _finalized_steps(state_dir):
    assert proc.poll() is None, f"run ended before its first checkpoint:\n{_tail(log)}"
    assert time.time() < deadline, "no checkpoint within the timeout"
    time.sleep(0.2)
  time.sleep(random.uniform(0.0, 2.0))
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = _finalized_steps(state_dir)
  assert killed_at and killed_at[-1] < STEPS, killed_at

  log2 = str(tmp_path / "resumed.log")
  _wait(_start(_train_cmd(workdir), env, log2), log2)
  assert f"Resumed from step {killed_at[-1]} " in _tail(log2, 10 ** 7)

  got, want = _load_arrays(workdir, STEPS), _load_arrays(ref_dir, STEPS)
  assert got.keys() == want.keys()
  assert any(k.startswith("['ema']") for k in got) and any(k.startswith("['params']") for k in got)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # 8. metrics after a resume: exactly one row per step, identical to the uninterrupted run's.
  rows, ref_rows = _metrics(workdir), _metrics(ref_dir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
  assert checkpointing.snapshot_steps(workdir) == [4, 8, 12]


# ------------------------------------------------------------------------------------------------
# 3. A checkpoint interrupted while being written is never loaded


def test_unfinished_checkpoint_is_ignored(reference, tmp_path):
  ref_dir, out = reference
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  state_dir = os.path.join(workdir, checkpointing.STATE_DIR)
  # What orbax 0.12 leaves when killed mid-save: `<step>.orbax-checkpoint-tmp-<timestamp>`
  # (orbax/checkpoint/_src/path/atomicity_types.py TMP_DIR_SUFFIX), with partial content.
  tmp = os.path.join(state_dir, f"{STEPS + 2}.orbax-checkpoint-tmp-1234567890")
  shutil.copytree(os.path.join(state_dir, str(STEPS)), tmp)
  for root, _, files in os.walk(tmp):
    for name in files:
      if name != "_CHECKPOINT_METADATA":
        open(os.path.join(root, name), "wb").close()  # truncated files
  ckpt = checkpointing.Checkpoints(workdir)
  assert ckpt.latest_state_step() == STEPS
  ckpt.close()

  resumed = jobs.run(get_config(), workdir)  # all steps done: resumes, trains nothing
  assert int(resumed["state"].step) == STEPS
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed["state"])),
                  jax.tree.leaves(jax.device_get(out["state"]))):
    np.testing.assert_array_equal(a, b)
  assert not [d for d in os.listdir(state_dir) if "tmp" in d]  # the leftover is cleaned up
  assert _finalized_steps(state_dir)[-1] == STEPS


# ------------------------------------------------------------------------------------------------
# 4. A non-finite loss stops training, naming the step; the last good checkpoint stays


def test_non_finite_loss_stops_with_step(tmp_path, monkeypatch):
  bad_step = 3

  class PoisonedBatches(data.BatchIterator):
    def __next__(self):
      step = self.step
      batch = super().__next__()
      if step == bad_step:
        batch["image"] = batch["image"] * np.nan
      return batch

  monkeypatch.setattr(data, "BatchIterator", PoisonedBatches)
  workdir = str(tmp_path)
  message = f"at training step {bad_step};.*last good checkpoint is step 2"
  with pytest.raises(FloatingPointError, match=message):
    jobs.run(get_config(), workdir)
  state_dir = os.path.join(workdir, checkpointing.STATE_DIR)
  assert _finalized_steps(state_dir) == [2]
  assert checkpointing.snapshot_steps(workdir) == []
  arrays = _load_arrays(workdir, 2)
  assert all(np.isfinite(v).all() for v in arrays.values())
  assert [r["step"] for r in _metrics(workdir)] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------
# 5. Bad configurations fail before anything compiles, naming the field


@pytest.mark.parametrize("field,value,error", [
    ("data.name", "no_such_dataset", "config.data.name"),
    ("model.family", "resnet", "config.model.family"),
    ("training.batch_size", 12, "config.training.batch_size"),
    ("model.img_resolution", 16, "config.model.img_resolution"),
    ("model.img_channels", 3, "config.model.img_channels"),
    ("training.lr", 0.0, "config.training.lr"),
    ("training.lr", -1e-3, "config.training.lr"),
    ("model.dropout", 2.0, "config.model.dropout"),  # (checked once the data's shape is known)
    ("mesh.model", 3, "config.mesh.model=3 must be >= 1 and divide the 8 available devices"),
    ("mesh.data", 3, "config.mesh.data=3: config.mesh.data * config.mesh.model must equal the 8"),
])
def test_bad_config_errors_before_compiling(tmp_path, monkeypatch, field, value, error):
  def no_compile(*args, **kwargs):
    raise AssertionError("compile_training reached with a bad config")

  monkeypatch.setattr(training, "compile_training", no_compile)
  config = get_config()
  section, name = field.split(".")
  config[section][name] = value
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=re.escape(error)) as info:
    jobs.run(config, workdir)
  assert isinstance(info.value, (config_checks.ConfigError, ValueError))
  assert not os.path.exists(workdir)  # not even an empty one


@pytest.mark.parametrize("field,value,error", [
    ("num_train_subsets", 200, "FD references would hold 0 images"),  # 64 images / 200 subsets
    ("classifier_path", "/nonexistent/classifier.npz", "classifier_path='/nonexistent/"),
    # A feature hook is checked on two images at start-up: features with NaN are refused.
    ("features", "HOOK:make_nan", "gave features holding NaN or Inf for 2 images of shape "
                                  "(2, 8, 8, 1)"),
])
def test_evaluation_fields_checked_against_the_data_before_training(tmp_path, monkeypatch, field,
                                                                     value, error):
  """The evaluation at the end of training is checked against the data and the disk at start-up:
  these used to be refused only after training and the gap evaluation had run."""
  def no_compile(*args, **kwargs):
    raise AssertionError("compile_training reached with a bad config")

  monkeypatch.setattr(training, "compile_training", no_compile)
  config = get_config()
  config.evaluation.after_training = True
  if field == "features":
    hook = tmp_path / "nan_features.py"
    hook.write_text("import numpy as np\n\ndef make_nan():\n"
                    "  return lambda images: np.full((len(images), 3), np.nan)\n")
    value = value.replace("HOOK", str(hook))
    config.evaluation.samples.feature = "hook"
  config.evaluation.samples[field] = value
  workdir = str(tmp_path / "run")
  with pytest.raises(config_checks.ConfigError, match=re.escape(error)):
    jobs.run(config, workdir)
  assert not os.path.exists(workdir)


# ------------------------------------------------------------------------------------------------
# 6. Resuming with a different configuration is refused


@pytest.mark.parametrize("field,value", [("seed", 1), ("training.batch_size", 32),
                                         ("model.model_channels", 16)])
def test_resume_with_different_config_is_refused(reference, tmp_path, field, value):
  ref_dir, _ = reference
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  before = _finalized_steps(os.path.join(workdir, checkpointing.STATE_DIR))
  config = get_config()
  *path, name = field.split(".")
  node = config
  for p in path:
    node = node[p]
  node[name] = value
  with pytest.raises(config_checks.ConfigError, match="different configuration") as info:
    jobs.run(config, workdir)
  assert name in str(info.value)
  assert _finalized_steps(os.path.join(workdir, checkpointing.STATE_DIR)) == before


# ------------------------------------------------------------------------------------------------
# 8. EMA snapshots and metrics of the uninterrupted run


def test_snapshots_and_metrics(reference):
  workdir, out = reference
  assert [r["step"] for r in _metrics(workdir)] == list(range(1, STEPS + 1))
  assert checkpointing.snapshot_steps(workdir) == [4, 8, 12]
  states = _finalized_steps(os.path.join(workdir, checkpointing.STATE_DIR))
  assert states == list(range(2, STEPS + 1, 2))
  for step in (4, 8, 12):
    ema = _load_arrays(workdir, step, "ema", checkpointing.SNAPSHOT_DIR)  # keys "['ema'][...]"
    state = _load_arrays(workdir, step)  # keys "['params'][...]", "['ema']['ema'][...]", ...
    assert {"['ema']" + k for k in ema} == {k for k in state if k.startswith("['ema']")}
    differs = 0
    for k, v in ema.items():
      np.testing.assert_array_equal(v, state["['ema']" + k])  # the snapshot is the state's EMA
      differs += not np.allclose(v, state["['params']" + k[len("['ema']"):]])
    assert differs > len(ema) // 2, step
  final = jax.device_get(out["state"])
  assert int(final.step) == STEPS


# ------------------------------------------------------------------------------------------------
# 7. Two real processes (jax.distributed, gloo) == one process with the same global batch


def test_two_processes_match_one(tmp_path):
  steps = 4
  extra = [f"--config.training.total_images={BATCH * steps}"]
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = _free_port()
  procs = []
  for i in range(2):
    log = str(tmp_path / f"process_{i}.log")
    procs.append((_start(_train_cmd(multi, *extra, f"--coordinator_address=127.0.0.1:{port}",
                                    "--num_processes=2", f"--process_id={i}"), _env(2), log), log))
  log = str(tmp_path / "single.log")
  procs.append((_start(_train_cmd(single, *extra), _env(4), log), log))
  try:
    for proc, log in procs:
      _wait(proc, log)
  finally:
    for proc, _ in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
  # Both processes took part: each wrote its own shard files into the one checkpoint.
  saved = os.path.join(multi, checkpointing.STATE_DIR, str(steps), "state")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(saved)), os.listdir(saved)
  got, want = _load_arrays(multi, steps), _load_arrays(single, steps)
  assert got.keys() == want.keys()
  # Float32 rounding apart: 2 processes x 2 devices and 1 x 4 run the same 4-way data-parallel
  # program, but the cross-process gradient sum goes through gloo instead of in-process XLA.
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  rows_multi, rows_single = _metrics(multi), _metrics(single)
  assert [r["step"] for r in rows_multi] == list(range(1, steps + 1))
  np.testing.assert_allclose([r["loss"] for r in rows_multi], [r["loss"] for r in rows_single],
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# 9. Run files (issue 22): the last good state is good, damaged states are skipped, cut metrics


class _Killed(Exception):
  """Stands for a kill -9 at a chosen step (the train job's `finally` still runs)."""


def _killed_before_step(monkeypatch, kill_step):
  class KilledBatches(data.BatchIterator):
    def __next__(self):
      if self.step == kill_step:
        raise _Killed
      return super().__next__()

  monkeypatch.setattr(data, "BatchIterator", KilledBatches)


def _largest_parameter(workdir, step):
  return max(np.abs(v).max() for k, v in _load_arrays(workdir, step).items()
             if k.startswith("['params']"))


def _every_step_config(lr, steps):
  c = get_config()
  c.training.lr = lr
  c.training.total_images = BATCH * steps
  c.checkpoint.state_every_images = BATCH
  c.resume_changes = ("training.lr",)  # these runs resume with another lr on purpose (recorded)
  return c


def test_a_state_is_good_only_once_a_step_from_it_gave_a_finite_loss(tmp_path, monkeypatch,
                                                                      capsys):
  """The issue's case, after some sane steps: with lr = 1e25 the state after step 3 is finite but
  diverged and the loss computed from it is NaN, whatever the learning rate. It is set aside (never
  deleted), the error names step 2 as the last good state, and a resume with a sane learning rate
  trains to the end. Also the run killed between saving state 3 and computing the loss from it."""
  workdir = str(tmp_path)
  state_dir = os.path.join(workdir, checkpointing.STATE_DIR)
  sane, blow_up = _every_step_config(2e-3, 4), _every_step_config(1e25, 4)
  _killed_before_step(monkeypatch, 2)
  with pytest.raises(_Killed):
    jobs.run(sane, workdir)  # states 1, 2
  monkeypatch.undo()
  _killed_before_step(monkeypatch, 3)  # after saving state 3, before the loss computed from it
  with pytest.raises(_Killed):
    jobs.run(blow_up, workdir)
  monkeypatch.undo()
  assert _finalized_steps(state_dir) == [1, 2, 3]
  assert 1e20 < _largest_parameter(workdir, 3) < np.inf  # diverged, but finite

  rejected = os.path.join(workdir, checkpointing.REJECTED_DIR, "state", "3.non-finite-loss")
  with pytest.raises(FloatingPointError) as err:
    jobs.run(blow_up, workdir)  # resumes from state 3: the loss computed from it is NaN
  assert str(err.value) == (
      "non-finite loss nan at training step 3; it is computed from the state of step 3, whatever "
      f"the learning rate, so no run resumes from that state (moved to {rejected}); the last good "
      f"checkpoint is step 2 in {workdir}: re-running resumes from it (a lower "
      "config.training.lr, or a longer warmup, may avoid it)")
  assert _finalized_steps(state_dir) == [1, 2] and os.path.isdir(rejected)

  capsys.readouterr()
  out = jobs.run(sane, workdir)
  assert "Resumed from step 2 " in capsys.readouterr().out
  assert int(out["state"].step) == 4 and _finalized_steps(state_dir) == [1, 2, 3, 4]
  assert not checkpointing.non_finite_arrays(out["state"])
  assert _largest_parameter(workdir, 4) < 10
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and np.isfinite([r["loss"] for r in rows]).all()


def test_a_blow_up_at_the_first_step_leaves_no_good_state(tmp_path, capsys):
  """The issue's exact case: lr = 1e25, a state every step. The state after step 1 is finite but
  the loss computed from it is NaN: no saved state is good, and a re-run starts from scratch."""
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss nan at training step 1; .*\(moved to .*/checkpoints/"
                           r"rejected/state/1\.non-finite-loss\); no saved state is good: "
                           r"re-running starts from scratch in "):
    jobs.run(_every_step_config(1e25, 3), workdir)
  assert _finalized_steps(os.path.join(workdir, checkpointing.STATE_DIR)) == []
  capsys.readouterr()
  out = jobs.run(_every_step_config(2e-3, 3), workdir)
  printed = capsys.readouterr().out
  assert "Resumed" not in printed and int(out["state"].step) == 3
  assert [r["step"] for r in _metrics(workdir)] == [1, 2, 3]


def test_damaged_newest_state_falls_back_to_the_intact_one(reference, tmp_path, capsys):
  """The issue's case: the newest state's _METADATA deleted. The job names the damaged state, moves
  it aside, resumes from the one before and ends bit-identical to the uninterrupted run."""
  ref_dir, out = reference
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  newest = os.path.join(workdir, checkpointing.STATE_DIR, str(STEPS))
  os.remove(os.path.join(newest, "state", "_METADATA"))
  capsys.readouterr()
  resumed = jobs.run(get_config(), workdir)
  printed = capsys.readouterr().out
  moved = os.path.join(workdir, checkpointing.REJECTED_DIR, "state", f"{STEPS}.damaged")
  assert (f"train: the checkpoint {newest} is damaged: state/_METADATA is missing; moved it to "
          f"{moved}") in printed
  assert f"newest intact state, step {STEPS - 2}" in printed
  assert f"Resumed from step {STEPS - 2} " in printed
  for a, b in zip(jax.tree.leaves(jax.device_get(resumed["state"])),
                  jax.tree.leaves(jax.device_get(out["state"]))):
    np.testing.assert_array_equal(a, b)
  assert [r["loss"] for r in _metrics(workdir)] == [r["loss"] for r in _metrics(ref_dir)]


def test_cut_metrics_line_is_dropped_on_resume(reference, tmp_path, capsys):
  """The issue's case: half a line at the end of metrics.jsonl (a kill, a full disk) blocked every
  resume with a JSONDecodeError naming no file. It is dropped, saying so, and replayed."""
  ref_dir, _ = reference
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, workdir)
  for step in (10, 12):  # the run was killed while appending row 10, after saving state 8
    shutil.rmtree(os.path.join(workdir, checkpointing.STATE_DIR, str(step)))
  path = os.path.join(workdir, train_job.METRICS_FILE)
  with open(path) as f:
    lines = f.readlines()
  with open(path, "w") as f:
    f.writelines(lines[:9] + [lines[9][:len(lines[9]) // 2]])
  capsys.readouterr()
  jobs.run(get_config(), workdir)
  printed = capsys.readouterr().out
  assert f"train: {path}: dropped line 10, cut while being written" in printed
  assert "Resumed from step 8 " in printed
  assert [r["step"] for r in _metrics(workdir)] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in _metrics(workdir)] == [r["loss"] for r in _metrics(ref_dir)]


def test_damaged_metrics_line_is_named(tmp_path):
  path = str(tmp_path / train_job.METRICS_FILE)
  with open(path, "w") as f:
    f.write('{"step": 1, "loss": 0.5}\n{"step": 2, "lo\n{"step": 3, "loss": 0.4}\n')
  with pytest.raises(jsonio.DamagedFileError,
                     match=rf"{re.escape(path)}, line 2, is damaged .*: delete that line"):
    train_job.read_metrics(path)
  with open(path, "w") as f:
    f.write('{"step": 1, "loss": 0.5}\n{"step": 2, "loss"')
  assert train_job.read_metrics(path) == [{"step": 1, "loss": 0.5}]


def test_put_batch_splits_the_batch_over_the_data_axis():
  mesh = sharding.make_mesh()  # 8 simulated devices on the data axis
  assert sharding.batch_multiple(5, mesh) == 8 and sharding.batch_multiple(16, mesh) == 16
  assert sharding.batch_multiple(5, None) == 5
  x = np.arange(32, dtype=np.float32).reshape(16, 2)
  put = sharding.put_batch(x, mesh)
  assert put.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  assert len(put.addressable_shards) == 8 and put.addressable_shards[0].data.shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(put), x)
  np.testing.assert_array_equal(np.asarray(sharding.put_batch(x, None)), x)
  with pytest.raises(ValueError, match="batch=12 must be divisible by the 8 devices"):
    sharding.put_batch(x[:12], mesh)
