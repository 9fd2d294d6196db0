"""What the train job shows while it runs: the denoising error on fixed subsets during training
(the monitor), TensorBoard event files, the quiet console, and the one results.json at the end."""

import json
import logging as py_logging
import os
import struct

import numpy as np
import pytest
from absl import logging

import ml_collections

from diffgen_jax import checkpointing, defaults, jobs, jsonio
from diffgen_jax.jobs import common
from diffgen_jax.models import network as network_lib
from diffgen_jax.evaluation import gap
from diffgen_jax.jobs import console
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.jobs import train as train_job
from config_files import config_file  # tests/config_files.py

SIGMAS = (0.2, 0.5, 1.0)
BATCH = 16
STEPS = 8


def _config(tiny_unet_config):
  """The suite's tiny U-Net (tests/conftest.py) on 64 digits for STEPS steps."""
  c = tiny_unet_config(subset_size=64, batch_size=BATCH, steps=STEPS)
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


def test_monitor_tensorboard_console_and_results(tiny_unet_config, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = _config(tiny_unet_config)
  config.evaluation.at_sigmas = (0.5,)
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
  # The evaluation at the end: each snapshot's summary, with images seen as the step, and the
  # figure of G over training.
  summary = results["summary"]
  assert summary["images_seen"] == [4 * BATCH, 8 * BATCH]
  for tag, key in (("evaluate/peak_gap", "peak_gap"), ("evaluate/peak_sigma", "peak_sigma"),
                   ("evaluate/membership_peak_auc", "membership_peak_auc")):
    got = sorted((step, v) for t, step, v in events if t == tag)
    assert [s for s, _ in got] == summary["images_seen"], tag
    np.testing.assert_allclose([v for _, v in got], summary[key], rtol=1e-6, err_msg=tag)
  got = sorted((step, v) for t, step, v in events if t == "evaluate/gap_at_sigma/0.5")
  np.testing.assert_allclose([v for _, v in got], summary["gap_at_sigmas"]["0.5"], rtol=1e-6)
  assert [(step, v) for t, step, v in events if t == "evaluate/gap_over_training"] == [
      (8 * BATCH, "image")]

  # The console: the config is printed by main, not here; one line per log interval, one per
  # monitor evaluation, the evaluation's progress and the summary.
  progress = [line for line in printed if line.startswith("train: step")]
  assert len(progress) == STEPS // config.log_every_steps
  # The network's size, counted by the model library from the recorded model (8x8 digits).
  with open(os.path.join(workdir, common.RUN_FILE)) as f:
    model = ml_collections.ConfigDict(json.load(f)["model"])
  count = network_lib.num_params(model, (8, 8, 1), model.num_classes)
  assert f"train: ddpmpp network, {count:,} parameters, images (8, 8, 1), {STEPS} steps of {BATCH}" \
      in printed
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
    # The note orbax logs when checkpointing replaces jax.Array's handler (every save) is dropped:
    # orbax logs it (seen with the filter off), and it does not get through the filter.
    def notes(with_filter: bool):
      shown, handler = [], py_logging.Handler()
      handler.emit = shown.append
      filters = list(absl_logger.filters)
      drop = console._DropHarmlessNotes  # pylint: disable=protected-access
      if not with_filter:
        absl_logger.filters = [f for f in filters if not isinstance(f, drop)]
      absl_logger.addHandler(handler)
      try:
        checkpointing._whole_shards_when_one_process()  # pylint: disable=protected-access
      finally:
        absl_logger.removeHandler(handler)
        absl_logger.filters = filters
      return [r for r in shown if "Type handler registry" in r.getMessage()]
    assert notes(with_filter=False)
    assert not notes(with_filter=True)
    console.configure(1)
    assert logging.get_verbosity() == logging.INFO
  finally:
    logging.set_verbosity(before)


def test_train_job_checks_the_evaluation_fields_before_training(tiny_unet_config, tmp_path):
  config = _config(tiny_unet_config)
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


def test_snapshot_grid_split_over_the_mesh_equals_one_device(tiny_unet_config):
  """The per-snapshot sample grid runs split over the 8 devices when the grid divides them (its
  noise is an argument of the compiled sampler, not a constant, so it keeps its sharding)."""
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import sharding, training  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  config = _config(tiny_unet_config)
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
# Issue 22, kinds 6-8: a run's identity (WORKDIR/config.json) and every job that reads a run


SHORT = 4  # steps of the short run; a state and a snapshot every 2 steps


def _short_config(tiny_unet_config, steps=SHORT):
  c = _config(tiny_unet_config)
  c.training.total_images = BATCH * steps
  c.checkpoint.state_every_images = 2 * BATCH
  c.checkpoint.snapshot_every_images = 2 * BATCH
  c.checkpoint.keep_states = 100
  c.sampling.grid_size = 0
  c.monitor.every_images = 0
  c.tensorboard = False
  c.evaluation.after_training = False
  return c


@pytest.fixture(scope="module")
def short_run(tiny_unet_config, tmp_path_factory):
  """A 4-step run (snapshots and states at steps 2 and 4), not evaluated."""
  workdir = str(tmp_path_factory.mktemp("identity") / "run")
  jobs.run(_short_config(tiny_unet_config), workdir)
  return workdir


def _copy(run, tmp_path, name="copy"):
  import shutil  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / name)
  shutil.copytree(run, workdir)
  return workdir


def _with(config, field, value):
  *path, leaf = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[leaf] = value
  return config


def test_run_record_holds_the_training_set_and_the_model_built(short_run, data_dir):
  """config.json: the training set's fingerprint (the subset's rows) and the network as built."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from diffgen_jax import checkpointing, data, models  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  run = common.read_run(short_run)
  split = data.load_split("digits", "train", data_dir=data_dir, subset_size=64, subset_seed=0)
  assert run.training_set["images"] == 64 and run.training_set["image_shape"] == [8, 8, 1]
  assert run.training_set["rows_sha256"] == hashlib.sha256(
      np.asarray(split.ids, np.int64).tobytes()).hexdigest()
  assert run.resumes == [] and run.config["data"]["subset_seed"] == 0
  # The recorded model builds the very parameters the snapshot holds.
  network = common.network_of(run.config_at(), 10)
  _, params, _ = checkpointing.load_ema_params(short_run, 4)
  shapes = jax.eval_shape(models.init_fn(network.module, (1, 8, 8, 1), 10),
                          jax.random.key(0))["params"]
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(np.shape, params)


@pytest.mark.parametrize("field,value,shown", [
    ("data.subset_seed", 1, "data.subset_seed: 0 vs 1"),  # the case: 0 of 8 trained on
    ("data.subset_size", 32, "data.subset_size: 64 vs 32"),
    ("data.subset_side", 2, "data.subset_side: 1 vs 2"),
    ("data.labels", "none", "data.labels: 'class' vs 'none'"),
    ("data.x_flip", True, "data.x_flip: False vs True"),
    ("training.sigma_data", 0.25, "training.sigma_data: 0.5 vs 0.25"),
    ("model.model_channels", 16, "model.model_channels: 8 vs 16"),
])
def test_evaluate_refuses_a_config_of_another_run(short_run, tiny_unet_config, field, value, shown):
  """Issue 22, kind 6: evaluating a run with other training images (or another network or
  sigma_data) than it was trained with is refused, naming each field (saved vs now) and the
  record; it measured G on images the run never trained on, silently."""
  config = _with(_short_config(tiny_unet_config), field, value)
  config.job = "evaluate"
  with pytest.raises(jobs.config_checks.ConfigError) as info:
    jobs.run(config, short_run)
  message = str(info.value)
  assert shown in message and os.path.join(short_run, "config.json") in message
  assert "with the values it was trained with" in message  # what to do
  if field.startswith("data.subset"):  # ... and the training set's fingerprint differs too
    assert "data.training_set.rows_sha256" in message
  assert not os.path.exists(os.path.join(short_run, "results.json"))


def test_evaluate_protocol_records_the_training_set(short_run, tiny_unet_config, tmp_path):
  """results.json's protocol says which training images were measured (seed and fingerprint), and
  results computed before it did are refused rather than extended."""
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  workdir = _copy(short_run, tmp_path)
  config = _short_config(tiny_unet_config)
  config.job = "evaluate"
  config.evaluation.at_sigmas = ()
  results = jobs.run(config, workdir)
  protocol = results["protocol"]
  assert protocol["subset_seed"] == 0 and protocol["subset_size"] == 64
  assert protocol["evaluation_subset_seed"] == 0  # (issue 26: seeded subsets, not the first rows)
  # Every G(sigma) has its 95% interval over the images (the per-image errors kept beside it
  # give the same interval), and the peak its interval at the peak's sigma.
  step = max(results["snapshots"], key=int)
  rec = next(iter(results["snapshots"][step]["ema"].values()))
  with np.load(os.path.join(workdir, "evaluation", "per_image", f"{step}.npz")) as f:
    low, high = gap.bootstrap_relative_gap(f["e_val"], f["e_train"])
  np.testing.assert_allclose(rec["gap_low"], low, rtol=1e-5)
  np.testing.assert_allclose(rec["gap_high"], high, rtol=1e-5)
  assert all(lo < hi for lo, hi in zip(rec["gap_low"], rec["gap_high"]))
  i = int(np.argmax(rec["gap"]))
  s = results["summary"]
  assert (s["peak_gap_low"][-1], s["peak_gap_high"][-1]) == (rec["gap_low"][i], rec["gap_high"][i])
  assert protocol["training_set"] == common.read_run(workdir).training_set
  saved = results_lib.read(workdir)
  del saved["protocol"]["training_set"], saved["protocol"]["subset_seed"]
  with open(results_lib.path(workdir), "w") as f:
    json.dump(saved, f)
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=r"results\.json was computed before its protocol recorded which "
                           r"training images.*'subset_seed', 'training_set'.*delete it"):
    jobs.run(config, workdir)


def test_factors_trained_sweep_refuses_another_training_subset(short_run, tiny_unet_config,
                                                               tmp_path):
  """Kind 6 for the factors job: its trained sweep is refused before any sweep runs."""
  config = config_file("factors", "delta,trained,local")
  config.data = _short_config(tiny_unet_config).data
  config.data.subset_seed = 1
  config.run_dir = short_run
  workdir = str(tmp_path / "factors")
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=r"data\.subset_seed: 0 vs 1.*use the run's data config"):
    jobs.run(config, workdir)
  assert not os.path.exists(workdir)  # refused before the analytic sweep ran


@pytest.mark.parametrize("field,value", [("data.subset_seed", 1), ("seed", 1),
                                         ("training.batch_size", 32)])
def test_resume_refuses_another_identity_even_when_named(short_run, tiny_unet_config, tmp_path,
                                                         field, value):
  """The run's identity never changes in a resume: refused at the restore, and naming it in
  config.resume_changes is refused at start-up."""
  workdir = _copy(short_run, tmp_path)
  config = _with(_short_config(tiny_unet_config, 2 * SHORT), field, value)
  with pytest.raises(jobs.config_checks.ConfigError, match="different configuration") as info:
    jobs.run(config, workdir)
  assert field in str(info.value) and "resume_changes" not in str(info.value)
  config.resume_changes = (field,)
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=rf"config\.resume_changes=\('{field}',\) names \['{field}'\], which "
                           r"decide what the run is.*new --workdir"):
    jobs.validate(config)


def test_resume_with_other_training_settings_is_refused_or_recorded(short_run, tiny_unet_config,
                                                                    tmp_path, capsys):
  """Issue 22, kind 8: a resume with training.lr x10 is refused, naming the field and the way to
  allow it; allowed, config.json records the change with its step and the steps after it run with
  the new value (metrics.jsonl's lr), and readers see the value that applied at each step."""
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  workdir = _copy(short_run, tmp_path)
  config = _short_config(tiny_unet_config, 2 * SHORT)  # total_images: changes without being named
  config.training.lr = 2e-2
  config.training.label_dropout = 0.0
  with pytest.raises(jobs.config_checks.ConfigError) as info:
    jobs.run(config, workdir)
  message = str(info.value)
  assert "training.lr: 0.002 vs 0.02" in message and "training.label_dropout: 0.1 vs 0.0" in message
  assert "--config.resume_changes=training.lr" in message
  assert "total_images" not in message  # free: not refused
  assert common.read_run(workdir).resumes == []  # nothing recorded, nothing trained
  assert len(_metric_rows(workdir)) == SHORT

  config.resume_changes = ("training.lr", "training.label_dropout")
  capsys.readouterr()
  jobs.run(config, workdir)
  assert "training.lr 0.002 -> 0.02" in capsys.readouterr().out
  run = common.read_run(workdir)
  assert run.resumes == [{"step": SHORT, "changed": {
      "resume_changes": [[], ["training.lr", "training.label_dropout"]],
      "training.label_dropout": [0.1, 0.0], "training.lr": [0.002, 0.02],
      "training.total_images": [BATCH * SHORT, 2 * BATCH * SHORT]}}]
  assert run.config["training"]["lr"] == 0.002  # the config the run started with
  assert run.config_at(SHORT).training.lr == 0.002 and run.config_at(SHORT + 1).training.lr == 0.02
  assert run.values("training.label_dropout", 2) == [0.1]
  assert run.values("training.label_dropout") == [0.1, 0.0]
  lrs = [r["lr"] for r in _metric_rows(workdir)]
  np.testing.assert_allclose(lrs, [2e-3] * SHORT + [2e-2] * SHORT, rtol=1e-6)
  # Resumed again with the same settings: nothing new to record.
  jobs.run(config, workdir)
  assert common.read_run(workdir).resumes == run.resumes
  # A reader of the run: the evaluate job accepts it (data, model and sigma_data unchanged).
  config.job = "evaluate"
  config.evaluation.at_sigmas = ()
  assert sorted(jobs.run(config, workdir)["snapshots"]) == ["2", "4", "6", "8"]


def test_factors_reads_the_label_dropout_that_applied(short_run, tmp_path):
  """Kind 8 for a reader: a run that trained without label dropout for 2 steps and with it after
  (a recorded resume): classifier-free guidance of the step-2 snapshot is refused (its network
  never saw the null label), of the step-4 snapshot accepted, and the trained sweep records the
  values that applied."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import factors as factors_job  # pylint: disable=import-outside-toplevel
  workdir = _copy(short_run, tmp_path)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    record = json.load(f)
  record["training"]["label_dropout"] = 0.0
  record["run"]["resumes"] = [{"step": 2, "changed": {"training.label_dropout": [0.0, 0.1]}}]
  with open(path, "w") as f:
    json.dump(record, f)
  run = common.read_run(workdir)
  assert run.values("training.label_dropout", 2) == [0.0]
  assert run.values("training.label_dropout", 4) == [0.0, 0.1]
  config = ml_collections.ConfigDict({"run_dir": workdir, "trained": {
      "styles": ("cfg",), "ws": (1.0,), "snapshot": 0}})
  with pytest.raises(jobs.config_checks.ConfigError, match=r"label_dropout=0\.0.*null label"):
    factors_job.check_guidance_is_learned(config, run)
  config.trained.snapshot = -1
  factors_job.check_guidance_is_learned(config, run)


def test_a_preset_override_is_refused_before_anything_runs(data_dir, tmp_path):
  """Issue 22, kind 7: --config.model.model_channels=64 on the quickstart (preset ddpmpp-tiny) is
  refused naming the preset (it trained the 32-channel model and config.json recorded 64)."""
  config = config_file("quickstart")
  config.data.data_dir = data_dir
  config.model.model_channels = 64
  workdir = str(tmp_path / "never")
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=r"config\.model\.model_channels=64 conflicts with preset 'ddpmpp-tiny' "
                           r"\(32\).*config\.model\.preset=''"):
    jobs.run(config, workdir)
  assert not os.path.exists(workdir)
  config.job = "evaluate"  # every job that builds the model refuses it alike
  with pytest.raises(jobs.config_checks.ConfigError, match="conflicts with preset"):
    jobs.validate(config)


def _metric_rows(workdir):
  with open(os.path.join(workdir, train_job.METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_pseudo_label_file_is_part_of_the_identity_not_its_path(tiny_unet_config, tmp_path):
  """The pseudo-label file is compared by content (sha256), its path is not: a moved copy is the
  same run, an edited file another one."""
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  labels = np.arange(64) % 3
  first, moved = str(tmp_path / "k3.npz"), str(tmp_path / "elsewhere.npz")
  np.savez(first, train=labels, validation=np.zeros(360, int))
  np.savez(moved, train=labels, validation=np.zeros(360, int))
  config = _short_config(tiny_unet_config)
  config.data.labels, config.data.pseudo_labels = "pseudo", first
  split = common.load_split(config, "train")
  run_dir = str(tmp_path / "run")
  os.makedirs(run_dir)
  model = config.model.copy_and_resolve_references()
  model.num_classes = split.num_classes
  common.write_run_record(run_dir, common.new_run_record(config, model, split))
  run = common.read_run(run_dir)
  assert len(run.training_set["pseudo_labels_sha256"]) == 64
  config.data.pseudo_labels = moved
  assert common.compare_with_run(run, config, common.load_split(config, "train"), remedy="",
                                 fields=("data.",)) == {"data.pseudo_labels": (first, moved)}
  np.savez(moved, train=(labels + 1) % 3, validation=np.zeros(360, int))
  with pytest.raises(jobs.config_checks.ConfigError) as info:
    common.compare_with_run(run, config, common.load_split(config, "train"), remedy="")
  assert "data.training_set.pseudo_labels_sha256" in str(info.value)
  assert "data.training_set.labels_sha256" in str(info.value)


def test_a_run_recorded_before_the_identity_is_read_as_it_ran(data_dir, tmp_path):
  """Format 1 records (config.json = the config as given): the model is read as built then (the
  preset's fields overrode the config's), fields added since are at the defaults they had then,
  and the training set's fingerprint, unknown, is not compared; the recorded fields still are."""
  from diffgen_jax import models  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  old = defaults.train_config("digits", "ddpmpp")
  old.model.preset = "ddpmpp-tiny"  # fields at the family's defaults (128 channels), as then
  old.model.update(dict(img_resolution=8, img_channels=1, num_classes=10))
  old.data.update(dict(data_dir=data_dir, subset_size=64))
  saved = json.loads(old.to_json_best_effort())
  del saved["resume_changes"], saved["data"]["subset_side"]  # fields the run's version lacked
  run_dir = tmp_path / "old"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps(saved))
  run = common.read_run(str(run_dir))
  assert run.training_set == {} and run.resumes == []
  assert run.config["model"]["model_channels"] == 32  # what the run built, not 128
  assert run.config["data"]["subset_side"] == 1 and run.config["resume_changes"] == []
  now = defaults.train_config("digits", "ddpmpp")
  models.apply_preset(now.model, "ddpmpp-tiny")
  now.model.update(dict(img_resolution=8, img_channels=1, num_classes=10))
  now.data.update(dict(data_dir=data_dir, subset_size=64))
  split = common.load_split(now, "train")
  assert common.compare_with_run(run, now, split, remedy="") == {}
  now.data.subset_seed = 1
  with pytest.raises(jobs.config_checks.ConfigError, match=r"data\.subset_seed: 0 vs 1"):
    common.compare_with_run(run, now, common.load_split(now, "train"), remedy="")


def test_unreadable_run_record_names_the_file(tmp_path):
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  with pytest.raises(jobs.config_checks.ConfigError, match=r"config\.json does not exist"):
    common.read_run(str(tmp_path))
  (tmp_path / "config.json").write_text('{"data": {')
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=rf"{tmp_path}/config\.json is not a readable run record"):
    common.read_run(str(tmp_path))


def test_experiment_scripts_check_the_runs_they_read(short_run, tiny_unet_config):
  """Kind 6 for experiments/ (the scripts that read snapshots themselves): a run whose record
  differs from the finding's job config is refused before its snapshots are read."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "disjoint_subsets_script", os.path.join(root, "experiments", "disjoint_subsets.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = _short_config(tiny_unet_config)
  config.data.subset_side = 2
  with pytest.raises(jobs.config_checks.ConfigError, match=r"data\.subset_side: 1 vs 2"):
    module.snapshot_denoiser(config, short_run, 4)
  module.check_run(_short_config(tiny_unet_config), short_run)  # the run's own config: accepted


@pytest.mark.parametrize("names,message", [
    (("training.Lr",), r"names \['training.Lr'\], not fields of the config"),
    (("training.lr", "training.lr"), r"repeats a field"),
    (("model.model_channels",), r"which decide what the run is"),
])
def test_resume_changes_are_checked_at_start_up(names, message):
  config = defaults.train_config()
  config.resume_changes = names
  with pytest.raises(jobs.config_checks.ConfigError, match=r"config\.resume_changes=.*" + message):
    jobs.validate(config)
  config.resume_changes = ("training.lr", "training.ema.halflife_images")
  jobs.validate(config)


# ------------------------------------------------------------------------------------------------
# Run files (issue 22): one job per workdir; a damaged results.json is named


_HOLD_LOCK = r"""
import sys
from diffgen_jax import jobs
with jobs.workdir_lock(sys.argv[1], "evaluate"):
  print("held", flush=True)
  sys.stdin.read()
"""


def test_a_second_job_on_a_workdir_is_refused_naming_the_first(tiny_unet_config, tmp_path):
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
      jobs.run(_config(tiny_unet_config), workdir)
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


def test_a_refused_config_leaves_no_workdir_behind_the_lock(tiny_unet_config, tmp_path):
  config = _config(tiny_unet_config)
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


# ------------------------------------------------------------------------------------------------
# Issue 23: the evaluation's summaries in TensorBoard; preemption


class _Board:
  """A SummaryWriter stand-in that keeps what is written."""

  def __init__(self):
    self.scalars = []

  def add_scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    pass


def test_sample_summaries_go_to_tensorboard_once_per_new_record():
  """G_FD and the copy fraction of every snapshot whose sample record is new (not the one the job
  started with), at its images seen."""
  from diffgen_jax.jobs import evaluate  # pylint: disable=import-outside-toplevel
  old, new = {"fd": 1}, {"fd": 2}
  section = {"snapshots": {"4": old, "8": new},
             "summary": {"steps": [4, 8], "images_seen": [64, 128], "gap_fd_features": [0.5, 0.25],
                         "gap_fd_pixels": [0.75, 0.125], "copy_fraction": [0.0, 0.375]}}
  board = _Board()
  evaluate.write_sample_summary(board, section, before={"4": old, "8": {"fd": 0}})
  assert board.scalars == [("evaluate/gap_fd_features", 0.25, 128),
                           ("evaluate/gap_fd_pixels", 0.125, 128),
                           ("evaluate/copy_fraction", 0.375, 128)]


def test_preemption_saves_the_state_stops_and_the_rerun_resumes_bit_identically(
    short_run, tiny_unet_config, tmp_path, monkeypatch, capsys):
  """orbax reports a preemption sync point at step 3 (as jax.distributed's preemption service does
  on every process after a SIGTERM): the run saves its state there, says so and stops without
  its evaluation; re-running the same command resumes from it and ends bit-identical to the
  uninterrupted run (`short_run`: the same config)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from diffgen_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from test_training import _load_arrays  # pylint: disable=import-outside-toplevel
  asked = []

  def reached_preemption(self, step):
    del self
    asked.append(step)
    return step == 3

  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", reached_preemption)
  workdir = str(tmp_path / "run")
  config = _short_config(tiny_unet_config)
  config.evaluation.after_training = True  # (a preempted run does not evaluate)
  out = jobs.run(config, workdir)
  assert out["preempted"] and out["steps_done"] == 3
  assert sorted(set(asked)) == [1, 2, 3]  # asked at every step, and no step after the notice
  printed = capsys.readouterr().out
  assert "train: preempted" in printed and "state after step 3 (48 images)" in printed
  states = sorted(int(d) for d in os.listdir(os.path.join(workdir, checkpointing.STATE_DIR))
                  if d.isdigit())
  assert states == [2, 3] and checkpointing.snapshot_steps(workdir) == [2]
  assert [r["step"] for r in train_job.read_metrics(
      os.path.join(workdir, train_job.METRICS_FILE))] == [1, 2, 3]
  assert not os.path.exists(results_lib.path(workdir))

  monkeypatch.undo()
  out = jobs.run(_short_config(tiny_unet_config), workdir)
  assert not out["preempted"] and out["steps_done"] == SHORT
  assert "Resumed from step 3" in capsys.readouterr().out
  for kind, item in ((checkpointing.STATE_DIR, "state"), (checkpointing.SNAPSHOT_DIR, "ema")):
    got, want = (_load_arrays(w, SHORT, item, kind) for w in (workdir, short_run))
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{kind} {k}")
  rows, want = (train_job.read_metrics(os.path.join(w, train_job.METRICS_FILE))
                for w in (workdir, short_run))
  assert [r["loss"] for r in rows] == [r["loss"] for r in want]


def test_a_negative_class_count_is_refused_before_training(tiny_unet_config, tmp_path):
  """The train job takes model.num_classes from data.labels (one model config serves class,
  pseudo-label and unconditional runs); a negative count is refused, naming the field."""
  config = tiny_unet_config()
  config.model.num_classes = -3
  workdir = str(tmp_path / "never")
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=r"config\.model\.num_classes: -3 must be an integer >= 0"):
    jobs.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_a_model_dtype_other_than_the_compute_dtype_is_refused(tiny_unet_config, tmp_path):
  """model.dtype is set from training.compute_dtype by the train job: naming another is refused,
  naming the field to set."""
  config = tiny_unet_config()
  config.model.dtype = "bfloat16"
  with pytest.raises(jobs.config_checks.ConfigError,
                     match=r"config\.model\.dtype='bfloat16'.*config\.training\.compute_dtype"):
    jobs.run(config, str(tmp_path / "never"))
  config.training.compute_dtype = "bfloat16"
  jobs.validate(config)  # the same dtype in both fields is what the job computes in


def test_an_evaluation_count_larger_than_a_split_is_said_before_training(
    tiny_unet_config, tmp_path, monkeypatch, caplog):
  """evaluation.num_images above both splits' sizes: the clamp is said at start-up, before the
  train step compiles (not only when the evaluation runs after training)."""
  from diffgen_jax import training  # pylint: disable=import-outside-toplevel

  class Stop(Exception):
    pass

  def stop(*args, **kwargs):
    raise Stop()

  monkeypatch.setattr(training, "compile_training", stop)
  config = _config(tiny_unet_config)
  config.evaluation.after_training = True
  config.evaluation.num_images = 100000
  with pytest.raises(Stop):
    jobs.run(config, str(tmp_path / "run"))
  num_val = len(common.load_split(config, "validation"))
  assert ("config.evaluation.num_images=100000 is more than the 64 images of the training split: "
          "all 64 are used") in caplog.text
  assert (f"config.evaluation.num_images=100000 is more than the {num_val} images of the "
          "validation split") in caplog.text
