"""The `ladder` job end to end on a tiny trained run (2 training steps, 8x8 digits), its config
checks, and its numbers against the library called directly on the same network and inputs."""

import os

import jax
import numpy as np
import pytest

from diffgen_jax import checkpointing, data, jobs
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.evaluation import ladder
from diffgen_jax.jobs import common
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.models.network import network_denoiser
from config_files import config_file  # tests/config_files.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 16


def _ladder_config(variant="smoke"):
  return config_file("ladder", variant)


@pytest.fixture(scope="module")
def run_dir(tiny_unet_config, tmp_path_factory):
  """A 2-step class-conditional U-Net run on 32 digits (one snapshot; no evaluation samples)."""
  c = tiny_unet_config(subset_size=32, batch_size=BATCH, steps=2)
  c.checkpoint.state_every_images = 2 * BATCH
  c.checkpoint.snapshot_every_images = 2 * BATCH
  c.sampling.grid_size = 0
  c.tensorboard = False
  c.log_every_steps = 1
  c.monitor.every_images = 0
  c.evaluation.update(dict(num_images=4, sigmas=(1.0,), batch_size=8, at_sigmas=()))
  c.evaluation.samples.enabled = False
  workdir = str(tmp_path_factory.mktemp("ladder_run"))
  jobs.run(c, workdir)
  return workdir


def _config(run_dir, **overrides):
  c = _ladder_config()
  c.run_dir = run_dir
  c.update(overrides)
  return c


def test_job_writes_results_figures_and_the_library_numbers(run_dir, tmp_path):
  workdir = str(tmp_path / "ladder")
  config = _config(run_dir)
  jobs.run(config, workdir)
  res = results_lib.read(workdir)
  assert res["job"] == "ladder" and res["schema_version"] == 1
  s = res["settings"]
  steps = checkpointing.snapshot_steps(run_dir)
  assert s["step"] == steps[-1] and s["num_train_set"] == 32 and s["num_train_eval"] == 4
  assert s["rungs"] == ["y*", "y_delta", "LS", "ELS", "PSPC", "gaussian", "gaussian_r2"]
  sigmas = np.asarray(s["sigmas"])
  assert len(sigmas) == 3 and len(s["trajectory_sigmas"]) == 3  # smoke: 3 sigmas, 3 Heun steps
  # The analytic machines ran split over every device (the recomputation below uses one).
  assert s["evaluation_devices"] == len(jax.devices()) == 8

  # Calibration: per sigma, the best size is the argmin of the candidates' distance curves.
  cal = res["calibration"]
  assert cal["on"] == "trajectory" and cal["sizes"] == [1, 3]
  assert cal["sigmas"] == s["trajectory_sigmas"]
  for m in cal["machines"].values():
    mse = np.asarray(m["mse"])
    assert mse.shape == (2, 3)
    assert m["best_size"] == [cal["sizes"][ladder.first_least(column)] for column in mse.T]

  # Every rung on every input set; r2 = 1 - mse / (network output variance per pixel) <= 1.
  for set_name in ("train", "val", "trajectory"):
    section = res["agreement"][set_name]
    assert list(section["rungs"]) == s["rungs"]
    for a in section["rungs"].values():
      assert len(a["mse"]) == len(a["r2"]) == len(section["sigmas"])
      assert all(m >= 0 for m in a["mse"]) and all(r is None or r <= 1.0 for r in a["r2"])
      # r2's 95% interval over the set's inputs, beside it.
      assert len(a["r2_low"]) == len(a["r2_high"]) == len(a["r2"])
      assert all(lo <= r + 1e-9 and r <= hi + 1e-9 for lo, r, hi in
                 zip(a["r2_low"], a["r2"], a["r2_high"]) if None not in (lo, r, hi))
  assert s["interval"] == ladder.INTERVAL

  # An independent recomputation with the library on the snapshot's network: the same numbers.
  split = common.load_split(_run_config(run_dir), "train")  # the run's data config
  train_all, labels_all, _ = data.first_images(split)
  rows = data.evaluation_subset(split, 4, 0, "train")  # the job's seeded subset (subset_seed 0)
  assert not np.array_equal(rows, np.arange(4))  # (not the first rows: the test would not see it)
  x, y, ids = (data.to_unit_range(split.images[rows]), np.asarray(split.labels[rows], np.int32),
               np.asarray(split.ids[rows]))
  name, params, _ = checkpointing.load_ema_params(run_dir, steps[-1])
  run_config = _run_config(run_dir)
  net = network_denoiser(common.network_of(run_config, 10), params,
                         float(run_config.training.sigma_data))
  inputs = ladder.noised_inputs(x, sigmas, ids=ids, noise_seed=0)
  for rung_name, rung in ladder.ladder_rungs(train_all, labels_all, delta=0.3,
                                             gaussian_ranks=(None, 2)).items():
    expected = ladder.agreement(net, rung, inputs, sigmas, y)
    got = res["agreement"]["train"]["rungs"][rung_name]
    np.testing.assert_allclose(got["mse"], expected.mse, rtol=1e-5, err_msg=rung_name)
    np.testing.assert_allclose(got["r2"], expected.r2, rtol=1e-5, atol=1e-6, err_msg=rung_name)
    net_out, an_out = (ladder.network_outputs(d, inputs, sigmas, y) for d in (net, rung))
    # (r2 near 1 at tiny sigma is 1 - a rounding-level ratio: compared absolutely)
    np.testing.assert_allclose((got["r2_low"], got["r2_high"]),
                               ladder.r2_interval(net_out, an_out), rtol=1e-4, atol=1e-5,
                               err_msg=rung_name)
  ls = ladder.ladder_rungs(train_all, labels_all, ls_size={
      float(k): int(v) for k, v in zip(cal["sigmas"], cal["machines"]["LS"]["best_size"])})["LS"]
  np.testing.assert_allclose(res["agreement"]["train"]["rungs"]["LS"]["mse"],
                             ladder.agreement(net, ls, inputs, sigmas, y).mse, rtol=1e-5)

  # Gaps: y* recalls the training images at the smallest sigma (E_train ~ 0, an enormous G).
  g = res["gaps"]
  assert g["sigmas"] == s["sigmas"] and "network" in g["denoisers"]
  assert set(g["denoisers"]) == {"network"} | set(s["rungs"])
  opt = g["denoisers"]["y*"]
  assert opt["e_train"][0] < 1e-6 * opt["e_val"][0]
  for c in g["denoisers"].values():
    ok = [(gv, ev, et) for gv, ev, et in zip(c["gap"], c["e_val"], c["e_train"]) if gv is not None]
    for gv, ev, et in ok:
      assert gv == pytest.approx((ev - et) / et, rel=1e-9)
    assert all(lo <= gv <= hi for lo, gv, hi in zip(c["gap_low"], c["gap"], c["gap_high"])
               if None not in (lo, gv, hi))

  # The summary names, per sigma, the rung of the highest r2; and the closest G curve.
  summ = res["summary"]
  for set_name, names in summ["best_rung"].items():
    rungs = res["agreement"][set_name]["rungs"]
    for j, best in enumerate(names):
      r2 = [rungs[n]["r2"][j] for n in rungs if rungs[n]["r2"][j] is not None]
      assert rungs[best]["r2"][j] == max(r2)
  # G is compared as |log(E_val / E_train) of the rung - that of the network| per sigma.
  net = g["denoisers"]["network"]
  for name, row in summ["gap_log_distance"].items():
    c = g["denoisers"][name]
    for j, d in enumerate(row):
      if d is not None:
        want = abs(np.log(c["e_val"][j] / c["e_train"][j])
                   - np.log(net["e_val"][j] / net["e_train"][j]))
        assert d == pytest.approx(want, rel=1e-9, abs=1e-12)
    inf_row = [np.inf if d is None else d for d in row]
    assert (summ["gap_distance"][name] is None) == (not np.isfinite(np.median(inf_row)))
    if summ["gap_distance"][name] is not None:
      assert summ["gap_distance"][name] == pytest.approx(np.median(inf_row))
  for j, best in enumerate(summ["closest_gap_rung"]):
    row = {n: r[j] for n, r in summ["gap_log_distance"].items() if r[j] is not None}
    assert best == (min(row, key=row.get) if row else None)
  finite = {k: v for k, v in summ["gap_distance"].items() if v is not None}
  assert summ["closest_gap_rung_overall"] == min(finite, key=finite.get)
  for set_name in ("train", "val"):  # on G's own sigma grid
    agree = [a == b for a, b in zip(summ["best_rung"][set_name], summ["closest_gap_rung"])]
    assert summ["best_rung_predicts_gap"][set_name] == pytest.approx(np.mean(agree))

  for name in ("ladder_r2.png", "ladder_calibration.png", "ladder_gap.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000, name


def _run_config(run_dir):
  import json  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  with open(os.path.join(run_dir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


@pytest.mark.parametrize("field, value, message", [
    ("run_dir", "", "config.run_dir=''"),
    ("step", -2, "config.step=-2"),
    ("num_images", 1, "config.num_images=1 must be an integer >= 2"),
    ("calibration.sizes", (1, 2), "config.calibration.sizes=(1, 2) must be distinct odd"),
    ("calibration.on", "test", "config.calibration.on='test' is not one of"),
    ("local_rungs", ("LS", "XLS"), "config.local_rungs=('LS', 'XLS')"),
    ("els_boundary", "reflect", "config.els_boundary='reflect' is not one of"),
    ("gaussian_ranks", (0,), "config.gaussian_ranks=(0,)"),
    ("trajectory.num_samples", 1, "config.trajectory.num_samples=1"),
    ("delta", -0.1, "config.delta=-0.1"),
])
def test_validation_names_the_field(field, value, message, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  config = _config(str(run))
  node, _, leaf = field.rpartition(".")
  (config[node] if node else config)[leaf] = value
  with pytest.raises(ConfigError, match=_escape(message)):
    jobs.validate(config)


def _escape(text):
  import re  # pylint: disable=import-outside-toplevel
  return re.escape(text)


def test_run_time_checks_name_the_field(run_dir, tmp_path):
  with pytest.raises(ConfigError, match=r"config\.step=12345 is not a snapshot step"):
    jobs.run(_config(run_dir, step=12345), str(tmp_path / "a"))
  with pytest.raises(ConfigError, match=r"config\.gaussian_ranks=\(65,\) has \[65\] > H W C = 64"):
    jobs.run(_config(run_dir, gaussian_ranks=(65,)), str(tmp_path / "b"))
  # A rank at or above every class's covariance rank (at most 4 of the 32 images per class) is the
  # full-rank Gaussian under another name (the Fashion ladder's rank 16 over ~13 images a class).
  with pytest.raises(ConfigError, match=r"config\.gaussian_ranks=\(2, 3\) has \[3\] >= 3, the "
                     r"largest rank of a class's covariance \(at most 4 training images per class\)"):
    jobs.run(_config(run_dir, gaussian_ranks=(2, 3)), str(tmp_path / "c"))
  with pytest.raises(ConfigError, match="holds the results of job 'train'"):
    jobs.run(_config(run_dir), run_dir)  # not into the run's own workdir


def test_summary_lines_show_none_and_inf():
  s = ladder.summarize(
      {"train": {"sigmas": [0.5, 2.0], "rungs": {"y*": {"r2": [np.nan, -np.inf]},
                                                 "gaussian": {"r2": [0.1, np.nan]}}}},
      {"sigmas": [0.5, 2.0], "denoisers": {"network": {"e_val": [None, None], "e_train": [None, None]},
                                          "y*": {"e_val": [4.0, 4.0], "e_train": [1.0, 1.0]}}})
  from diffgen_jax.jobs import ladder as ladder_job
  lines = ladder_job.summary_lines({"summary": s, "agreement": {"train": {"sigmas": [0.5, 2.0]}},
                                    "gaps": {"sigmas": [0.5, 2.0]}})
  assert any("0.5:gaussian(0.10), 2:y*(-inf)" in line for line in lines), lines
  assert any("2:None" in line or "0.5:None" in line for line in lines), lines


def test_job_refuses_a_sigma_where_no_patch_size_was_calibrated(run_dir, tmp_path, monkeypatch):
  """The network NaN at one calibration sigma: no LS rung is built with a made-up size there."""
  import jax.numpy as jnp
  calibrate = ladder.calibrate

  def nan_at_the_top_sigma(network, train_images, sizes, inputs, sigmas, *args, **kwargs):
    top = float(np.max(sigmas))

    def nan_network(x, sigma, labels=None):
      return jnp.where(jnp.reshape(sigma, (-1, 1, 1, 1)) >= 0.999 * top, jnp.nan,
                       network(x, sigma, labels))

    return calibrate(nan_network, train_images, sizes, inputs, sigmas, *args, **kwargs)

  monkeypatch.setattr(ladder, "calibrate", nan_at_the_top_sigma)
  workdir = str(tmp_path / "w")
  with pytest.raises(ValueError, match=r"cannot build the calibrated LS rung: no calibrated patch "
                     r"size at sigma \[[0-9.e+-]+\]"):
    jobs.run(_config(run_dir), workdir)
  cal = results_lib.read(workdir)["calibration"]
  top = int(np.argmax(cal["sigmas"]))
  for m in cal["machines"].values():  # LS, ELS, PSPC: no size at the top sigma, one elsewhere
    assert m["best_size"][top] == -1 and all(row[top] is None for row in m["mse"])
    assert all(k in cal["sizes"] for i, k in enumerate(m["best_size"]) if i != top)


def test_run_on_other_training_images_is_refused(run_dir, tmp_path):
  """Issue 22, kind 6 for the ladder job: the data found where the run's record says (or at
  config.data_dir) must be the images the run trained on (the record's fingerprint); here the
  record says the run trained on other rows, and the job refuses before measuring anything."""
  import json  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  copy = str(tmp_path / "run")
  shutil.copytree(run_dir, copy)
  path = os.path.join(copy, "config.json")
  with open(path) as f:
    record = json.load(f)
  saved = record["run"]["training_set"]["rows_sha256"]
  record["run"]["training_set"]["rows_sha256"] = "0" * 64
  with open(path, "w") as f:
    json.dump(record, f)
  workdir = str(tmp_path / "ladder")
  with pytest.raises(ConfigError) as info:
    jobs.run(_config(copy), workdir)
  message = str(info.value)
  assert f"data.training_set.rows_sha256: '{'0' * 64}' vs '{saved}'" in message
  assert path in message and "point config.data_dir at the run's dataset" in message
  assert not os.path.exists(workdir)


# ------------------------------------------------------------------------------------------------
# Issue 23: every job measures over every device of every process


_JOBS_BODY = """
import json
from configs import factors as factors_config
from configs import ladder as ladder_config
from diffgen_jax import jobs, sharding
from diffgen_jax.jobs import common
RUN, DATA_DIR, WORK = {run!r}, {data_dir!r}, {work!r}
counts = {{}}

def measured(name, config):
  sharding.rows_built.clear()
  jobs.run(config, os.path.join(WORK, name))
  counts[name] = [sharding.rows_built[k] for k in ("batch", "source")]

# evaluate: the gap, y* and the distance to it, membership; on a copy of the run's snapshots.
c = common.read_run(os.path.join(WORK, "evaluate")).config_at()
c.job = "evaluate"
c.evaluation.update(dict(num_images=8, sigmas=(0.5, 1.0), batch_size=8, at_sigmas=()))
c.evaluation.samples.enabled = False
measured("evaluate", c)

# ladder: y* and LS (calibrated over two sizes on the network's trajectories).
c = ladder_config.get_config("smoke")
c.update(dict(run_dir=RUN, local_rungs=("LS",), gaussian_full=False, gaussian_ranks=(), delta=0.0,
              make_plots=False))
measured("ladder", c)

# factors: y* and y_delta (analytic), and the run's network (trained: its gap, the full-size crop,
# the gradient score).
c = factors_config.get_config("delta,trained,local")
c.data.update(dict(data_dir=DATA_DIR, subset_size=32))
c.update(dict(run_dir=RUN, num_images=8, sigmas=(0.5, 1.0), batch_size=8, chunk_size=2,
              make_plots=False))
c.delta.deltas = (0.0, 0.3)
c.gradient_score.num_sigmas = 1
c.trained.update(dict(ws=(0.0,), styles=("autoguidance",), crop_sizes=(8,),
                      gradient_images=1, sample_gap_samples=0))
measured("factors", c)
report(**{{k: np.asarray(v) for k, v in counts.items()}})
"""


def test_jobs_on_two_processes_equal_one_process(run_dir, data_dir, tmp_path):
  """The evaluate, ladder and factors jobs on 2 processes x 4 devices (jax.distributed, gloo) give
  the numbers of 1 process x 8 devices within 1e-5 relative, record the 8 devices and the process
  count, and each process builds exactly half of every batch (sharding.rows_built) and reads
  only its share of the training set."""
  import shutil  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  import multiprocess  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import compare_results  # pylint: disable=import-outside-toplevel
  from concurrent import futures  # pylint: disable=import-outside-toplevel

  def run(name, processes, devices):
    work = tmp_path / name
    os.makedirs(work / "evaluate" / "checkpoints")
    shutil.copytree(os.path.join(run_dir, checkpointing.SNAPSHOT_DIR),
                    work / "evaluate" / checkpointing.SNAPSHOT_DIR)
    shutil.copy(os.path.join(run_dir, common.RUN_FILE), work / "evaluate")
    body = _JOBS_BODY.format(run=run_dir, data_dir=data_dir, work=str(work))
    reports = multiprocess.run(body, tmp_path / f"{name}_processes", processes=processes,
                               devices=devices)
    return reports, {job: results_lib.read(str(work / job))
                     for job in ("evaluate", "ladder", "factors")}

  with futures.ThreadPoolExecutor(2) as pool:  # the two runs side by side
    multi_run, single_run = pool.submit(run, "multi", 2, 4), pool.submit(run, "single", 1, 8)
    (multi, multi_results), ([single], single_results) = multi_run.result(), single_run.result()
  ignore = compare_results.DEFAULT_IGNORE + ("processes",)
  for job in ("evaluate", "ladder", "factors"):
    settings = multi_results[job]["settings"]
    assert (settings["evaluation_devices"], settings["processes"]) == (8, 2), job
    assert single_results[job]["settings"]["processes"] == 1
    diff = compare_results.compare(single_results[job], multi_results[job], rtol=1e-5,
                                   ignore=ignore)
    assert not diff["mismatches"] and not diff["missing"], (job, diff)
    assert diff["numbers"] > 20, (job, diff["numbers"])
    # Each process built exactly half of every batch.
    batch, source = single[job]
    assert batch > 0 and [p[job][0] for p in multi] == [batch // 2, batch // 2], job
  # The training set (32 images) as each machine reads it: y* twice (its centre, then its
  # shards), LS once. On the mesh each process reads half of that: evaluate builds y*; the ladder
  # y*, LS at sizes 1 and 3 and the calibrated LS; factors y* for the delta sweep and, on one
  # device of each process (the mesh's y* has no derivative), the trained sweep's gradient
  # score's.
  n = 32
  for job, on_mesh, local in (("evaluate", 2 * n, 0), ("ladder", (2 + 3) * n, 0),
                              ("factors", 2 * n, 2 * n)):
    assert single[job][1] == on_mesh + local, (job, single[job])
    assert [p[job][1] for p in multi] == [on_mesh // 2 + local] * 2, (job, [p[job] for p in multi])
  e = multi_results["evaluate"]["snapshots"]
  assert all("to_optimal_train" in r and "membership" in r for s in e.values()
             for r in s["ema"].values())
