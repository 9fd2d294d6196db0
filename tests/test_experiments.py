"""Every experiment script (experiments/<finding>.py) end to end on its `smoke` variant.

One session-wide runs root: the tiny U-Net and DiT runs are trained once and shared by the findings
that use them (as the real local runs are), so the whole file stays within a few minutes on 2 cores.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from diffgen_jax import models  # noqa: E402
from experiments import common  # noqa: E402

FINDINGS = ("toy2d", "training_time", "model_size", "dataset_size", "granularity", "guidance",
            "receptive_field", "trajectory_overlap", "sample_gap", "gradient_score",
            "disjoint_subsets", "memorization_time", "analytic_ladder", "paper_regime")
# The keys of results.json's "results" section per finding.
EXPECTED = {
    "toy2d": {"flow_field", "relative_error", "gap_vs_delta", "gap_vs_density", "guidance",
              "trajectories", "frechet"},
    "training_time": {"models"},
    "model_size": {"runs"},
    "dataset_size": {"runs"},
    "granularity": {"trained", "analytic", "sigmas_analytic"},
    "guidance": {"analytic", "trained", "sigmas", "trained_run"},
    "receptive_field": {"image_size", "denoisers"},
    "trajectory_overlap": {"models"},
    "sample_gap": {"models"},
    "gradient_score": {"analytic", "trained U-Net", "trained DiT"},
    "disjoint_subsets": {"pairs"},
    "memorization_time": {"runs", "slopes", "tau_gen_fd_target"},
    "analytic_ladder": {"networks"},
    "paper_regime": {"models"},
}


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
  """The shared workdirs. The smoke runs that differ from another only in data (a subset size,
  pseudo-labels) reuse its executables through the session's persistent compilation cache
  (tests/conftest.py)."""
  yield str(tmp_path_factory.mktemp("experiment_runs"))


def _smoke_config(finding, data_dir):
  config = common.load_config(f"{finding},smoke")
  config.data_dir = data_dir
  return config


def _check_output(finding, results_dir, config):
  with open(os.path.join(results_dir, "results.json")) as f:
    saved = json.load(f)
  assert saved["finding"] == finding and saved["mode"] == "smoke"
  assert list(saved["runs"]) == list(config.order)
  assert EXPECTED[finding] <= set(saved["results"]), sorted(saved["results"])
  assert saved["figures"]
  for name in saved["figures"]:
    assert os.path.getsize(os.path.join(results_dir, name)) > 1000, name
  return saved


def test_findings_are_the_scripts():
  assert set(FINDINGS) == set(EXPECTED)
  scripts = {f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments"))
             if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert scripts == set(FINDINGS)


@pytest.mark.parametrize("finding", FINDINGS)
def test_smoke_variant_end_to_end(finding, data_dir, runs_root, tmp_path):
  module = importlib.import_module(f"experiments.{finding}")
  assert module.FINDING == finding
  config = _smoke_config(finding, data_dir)
  results_dir = str(tmp_path / finding)
  common.run_experiment(config, module.gather, runs_root=runs_root, results_dir=results_dir)
  saved = _check_output(finding, results_dir, config)
  for name in config.order:  # every run finished and was recorded
    assert os.path.exists(os.path.join(runs_root, name, common.MARKER)), name
  if finding in ("model_size", "dataset_size"):
    groups = {e["group"] for e in saved["results"]["runs"]}
    assert len(saved["results"]["runs"]) >= 2 and groups
    for e in saved["results"]["runs"]:
      assert len(e["final_gap"]) == len(e["sigmas"]) == 4
  if finding == "disjoint_subsets":
    for pair in saved["results"]["pairs"]:
      assert len(pair["model_variance"]) == len(pair["sigmas"]) == 4
      assert all(v >= 0 for v in pair["model_variance"])
      assert set(pair["copy_fraction"]) == {"1/own", "1/other", "2/own", "2/other"}
  if finding == "memorization_time":
    for run in saved["results"]["runs"]:
      assert len(run["copy_fraction"]) == len(run["images_seen"]) == 2
      assert {"tau_mem", "tau_gen", "tau_gap", "onset"} <= set(run)
      # The evaluate job's membership inference, per snapshot (AUC in [0, 1]).
      assert len(run["membership_peak_auc"]) == 2
      assert all(0.0 <= a <= 1.0 for a in run["membership_peak_auc"])
  if finding in ("guidance", "sample_gap", "paper_regime"):
    # G_FD's bootstrap interval and the copy fraction's Wilson interval reach the findings
    rows = (saved["results"].get("trained_sample_gap") or [] if finding == "guidance" else
            list(saved["results"]["models"].values()))
    assert rows
    for r in rows:
      for key in ("gap_fd_features", "gap_fd_pixels", "copy_fraction"):
        values, lows, highs = (np.atleast_1d(np.asarray(r[k], float))
                               for k in (key, f"{key}_low", f"{key}_high"))
        assert np.all(lows <= values) and np.all(values <= highs), (finding, key)
  if finding == "training_time":
    for m in saved["results"]["models"].values():
      assert len(m["images_seen"]) == 2 and len(m["onset_images_seen"]) == 4


def test_script_command_line_resumes(data_dir, runs_root, tmp_path):
  """The script's own command line; its runs finished in the test above are skipped, not rerun."""
  results_dir = str(tmp_path / "sample_gap")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "sample_gap.py"),
         f"--config={common.CONFIG_FILE}:sample_gap,smoke", f"--config.data_dir={data_dir}",
         f"--runs_root={runs_root}", f"--results_dir={results_dir}"]
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  _check_output("sample_gap", results_dir, _smoke_config("sample_gap", data_dir))
  wrong = subprocess.run(cmd[:2] + [f"--config={common.CONFIG_FILE}:toy2d,smoke"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert wrong.returncode != 0 and "this script runs 'sample_gap'" in wrong.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.runs.toy2d.drawz=3", "toy2d.py: --config.runs.toy2d.drawz: no such field (Did you "
                                    'mean "draws" instead of "drawz"?)'),
    ("--config.runs.toy2d.draws=1e9", "toy2d.py: flag --config.runs.toy2d.draws=1e9: must be an "
                                      "integer written out in digits (1000000000, not 1e9)"),
    ("--config.runs.toy2d.draws=-1", "toy2d.py: config.runs.toy2d.draws=-1 must be an integer "
                                     ">= 1"),
])
def test_a_bad_override_is_one_line_naming_it(tmp_path, override, message):
  """As the main job's command line (tests/test_main.py): a misspelled field, a value of the wrong
  type or out of range fails in one line naming the finding's field, exit status 2, no results."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "toy2d.py"), override,
                        f"--runs_root={tmp_path / 'runs'}", f"--results_dir={tmp_path / 'out'}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().splitlines() == [message]
  assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "runs" / "toy2d")


def test_placeholders_and_order(tmp_path):
  config = common.load_config("granularity,local")
  order = common.run_order(config)
  assert order.index("factors_granularity") < order.index("unet_k10")
  workdirs = {n: str(tmp_path / n) for n in config.runs}
  job = common.job_config(config, "unet_k10", workdirs)
  assert job.data.pseudo_labels == os.path.join(workdirs["factors_granularity"], "pseudo_labels",
                                                "k10.npz")
  config.data_dir = "/some/tfds"
  assert common.job_config(config, "unet", workdirs).data.data_dir == "/some/tfds"
  assert common.fingerprint(job) != common.fingerprint(common.job_config(config, "unet", workdirs))


def test_a_run_is_measured_again_when_what_it_read_changed(tmp_path, monkeypatch):
  """A factors-like run B reads run A ("@run:A"), a training-like run C reads a file A writes
  ("@run:A/labels.txt"). Unchanged configs and inputs: all skipped. A trained on (its config
  changed): B runs again, C only if the file's bytes changed. Before, B was skipped whenever its
  own config was unchanged, keeping the numbers of a snapshot A had trained past."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from diffgen_jax import jobs  # pylint: disable=import-outside-toplevel
  calls = []

  def fake_run(job, workdir):
    calls.append(job.name)
    os.makedirs(workdir, exist_ok=True)
    if job.name == "A":
      with open(os.path.join(workdir, "labels.txt"), "w") as f:
        f.write(job.labels)

  monkeypatch.setattr(jobs, "run", fake_run)
  workdirs = {n: str(tmp_path / n) for n in "ABC"}
  clock = iter(range(100))  # strictly later finish times, one per run
  monkeypatch.setattr(common.time, "strftime", lambda fmt: f"2026-01-01 00:00:{next(clock):02d}")

  def sweep(steps, labels):
    infos = {}
    jobs_ = {"A": dict(name="A", job="train", steps=steps, labels=labels),
             "B": dict(name="B", job="factors", run="@run:A"),
             "C": dict(name="C", job="train", pseudo="@run:A/labels.txt")}
    for name, job in jobs_.items():
      inputs = common.input_states(common._placeholders(job), infos, workdirs)  # pylint: disable=protected-access
      infos[name] = common.run_or_resume(name, ml_collections.ConfigDict(job), workdirs[name],
                                         log=lambda *_: None, inputs=inputs)
    return infos

  sweep(2, "0 1 0")
  assert calls == ["A", "B", "C"]
  sweep(2, "0 1 0")
  assert calls == ["A", "B", "C"]  # nothing changed: every run skipped
  sweep(4, "0 1 0")
  assert calls[3:] == ["A", "B"]  # A trained on: B measures it again; C's file is the same bytes
  sweep(6, "1 0 1")
  assert calls[5:] == ["A", "B", "C"]
  # A marker from before inputs were recorded: stale when an input finished after it.
  marker = os.path.join(workdirs["B"], common.MARKER)
  with open(marker) as f:
    saved = json.load(f)
  del saved["inputs"]
  for finished, reruns in (("2025-12-31 23:59:59", True), ("2026-12-31 00:00:00", False)):
    with open(marker, "w") as f:
      json.dump(dict(saved, finished=finished), f)
    before = len(calls)
    sweep(6, "1 0 1")
    assert calls[before:] == (["B"] if reruns else [])


def test_replicate_seed_offsets_every_run_and_keeps_apart(tmp_path):
  """config.seed = k shifts each run's seed by k (data fixed) and writes beside the seed-0 runs."""
  config = common.load_config("granularity,local")
  workdirs = {n: str(tmp_path / n) for n in config.runs}
  base = {n: common.job_config(config, n, workdirs) for n in config.order}
  base_dirs = common.output_dirs(config)
  config.seed = 3
  for name in config.order:
    job = common.job_config(config, name, workdirs)
    assert job.seed == base[name].seed + 3
    if "data" in job:
      assert job.data.to_dict() == base[name].data.to_dict()
  runs_root, results_dir = common.output_dirs(config)
  assert runs_root == base_dirs[0] + "_seed3"
  assert results_dir == os.path.join(base_dirs[1], "seed3")
  assert common.output_dirs(config, str(tmp_path / "r"), str(tmp_path / "o")) == (
      str(tmp_path / "r"), str(tmp_path / "o"))


@pytest.mark.parametrize("mode", ("local", "paper", "smoke"))
def test_every_finding_builds(mode):
  """local and paper variants: the runs exist, models resolve, and shared runs agree by name."""
  seen = {}
  for finding in FINDINGS:
    config = common.load_config(f"{finding},{mode}")
    assert config.mode == mode and common.run_order(config)
    for name in config.order:
      run = config.runs[name]
      if run.job == "train":
        models.resolve(run.model)
        assert run.training.batch_size % 8 == 0
      key = run.to_json_best_effort(sort_keys=True)
      assert seen.setdefault(name, key) == key, f"run {name!r} differs between findings"
  if mode == "paper":
    unet = common.load_config("training_time,paper").runs.unet
    assert (unet.data.name, unet.model.preset, unet.training.batch_size, unet.training.lr,
            unet.training.total_images, unet.training.ema.halflife_images, unet.model.dropout,
            unet.data.x_flip) == ("cifar10", "ddpmpp-cifar10", 512, 1e-3, 200_000_000, 500_000,
                                  0.13, True)
    edm2 = common.load_config("model_size,paper").runs.edm2_img64_s
    assert (edm2.training.loss, edm2.training.ema.kind, edm2.training.lr_schedule,
            edm2.training.lr, edm2.training.lr_ref_images, edm2.training.batch_size) == (
                "edm2", "power", "edm2", 1e-2, 70_000 * 2048, 2048)


def test_figures_draw_log_axes_where_values_span_decades_and_no_onset_apart():
  """Issue 26's figures: an axis whose positive values span two decades is drawn in log (the
  small-sigma plateau, the small-N curves); an onset not reached yet is never drawn as a value."""
  assert common.spans_decades([0.002, 0.1, 80]) and not common.spans_decades([1, 50, None])
  assert not common.spans_decades([-1e-3, 10, 100]) and not common.spans_decades([])
  training_time = importlib.import_module("experiments.training_time")
  models = {"U-Net": {"sigmas": [0.1, 1.0, 10.0], "images_seen": [100, 200, 300],
                      "onset_images_seen": [200, 300, 300], "onset_rises": [True, False, False]}}
  (label, sigmas, seen, style), (open_label, open_sigmas, at_least, open_style) = (
      training_time.onset_series(models))
  assert label == "U-Net" and list(sigmas) == [0.1] and list(seen) == [200] and style == "o"
  assert "no onset yet" in open_label and list(open_sigmas) == [1.0, 10.0]
  np.testing.assert_array_equal(at_least, [300, 300]) and open_style == "^"
