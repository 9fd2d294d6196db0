"""The findings' figures with their intervals (experiments/common.py line_plot, gap_sweep,
peak_series; experiments/granularity.py's replicates and --replot; the --replot of training_time,
guidance, model_size, paper_regime and receptive_field from their committed results), without
running any job."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from experiments import common, granularity  # noqa: E402

COMMITTED = os.path.join(ROOT, "experiments", "results", "granularity")
RESULTS = os.path.join(ROOT, "experiments", "results")


def _axes():
  plt = common._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots()
  return plt, fig, ax


def test_band_spans_the_interval_and_skips_undefined_bounds():
  plt, fig, ax = _axes()
  x, y = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.5])
  low, high = [0.4, None, 1.2], [0.7, 1.3, 1.9]
  common._draw_interval(ax, x, y, (low, high), np.ones(3, bool), "C0", bars=False)  # pylint: disable=protected-access
  (band,) = ax.collections
  vertices = np.concatenate([p.vertices for p in band.get_paths()])
  # Only x = 1 and x = 3 have both bounds; the undefined middle one leaves a gap (two pieces).
  assert len(band.get_paths()) == 2
  assert vertices[:, 1].min() == pytest.approx(0.4) and vertices[:, 1].max() == pytest.approx(1.9)
  assert not np.any(np.isclose(vertices[:, 0], 2.0))
  plt.close(fig)


def test_error_bars_run_from_low_to_high():
  plt, fig, ax = _axes()
  x, y = np.array([1.0, 10.0]), np.array([5.0, 6.0])
  common._draw_interval(ax, x, y, ([4.0, 5.5], [7.0, 6.5]), np.ones(2, bool), "C0", bars=True)  # pylint: disable=protected-access
  segments = [s for c in ax.collections for s in c.get_segments()]
  ends = sorted((float(s[0][0]), float(min(s[:, 1])), float(max(s[:, 1]))) for s in segments)
  assert ends == [(1.0, 4.0, 7.0), (10.0, 5.5, 6.5)]
  plt.close(fig)


def test_line_plot_draws_intervals_and_falls_back_to_plain_lines(tmp_path, monkeypatch):
  plt = common._pyplot()  # pylint: disable=protected-access
  figures = []
  monkeypatch.setattr(plt, "close", figures.append)
  series = [("with", [1, 2, 3], [1.0, 2.0, 3.0], None, ([0.5, 1.5, 2.5], [1.5, 2.5, 3.5])),
            ("old results", [1, 2, 3], [2.0, 3.0, 4.0], "--"),
            ("no interval kept", [1, 2, 3], [3.0, 4.0, 5.0], "-", None)]
  common.line_plot(str(tmp_path / "band.png"), series, xlabel="x", ylabel="y")
  common.line_plot(str(tmp_path / "bars.png"), series, xlabel="x", ylabel="y", bars=True)
  band, bars = (f.axes[0] for f in figures)
  assert len(band.lines) == 3 and len(band.collections) == 1  # one band: the series with one
  assert [len(c.get_segments()) for c in bars.collections] == [3]  # three bars, one series
  assert os.path.getsize(tmp_path / "band.png") > 1000


def _entry(group, value, peak, with_interval):
  e = {"run": f"r{value}", "group": group, "value": value, "num_conditions": value,
       "final_peak_gap": peak, "final_gap": [peak], "sigmas": [1.0], "images_seen": [10],
       "peak_gap": [peak]}
  if with_interval:
    e.update(final_peak_gap_low=peak - 1, final_peak_gap_high=peak + 2, peak_gap_low=[peak - 1],
             peak_gap_high=[peak + 2], final_gap_low=[peak - 1], final_gap_high=[peak + 2])
  return e


def test_peak_series_carry_the_interval_only_when_every_entry_has_it():
  entries = [_entry("k-means", 2, 5.0, True), _entry("k-means", 10, 6.0, True),
             _entry("none", 1, 4.0, False)]
  (kmeans, none) = common.peak_series(entries, "num_conditions")
  assert kmeans == ("k-means", [2, 10], [5.0, 6.0], None, ([4.0, 5.0], [7.0, 8.0]))
  assert none == ("none", [1], [4.0], None, None)
  assert common.interval(entries[0], "final_gap") == ([4.0], [7.0])
  assert common.interval(entries[2], "final_gap") is None
  assert common.interval(entries[0], "peak_gap", -1) == (4.0, 7.0)


def test_replicates_of_the_committed_granularity_results():
  found = granularity.replicate_results(COMMITTED)
  assert sorted(found) == [0, 1]
  assert granularity.replicate_results(os.path.join(COMMITTED, "seed1")).keys() == found.keys()
  # The two seeds trained different networks: their peaks differ.
  peaks = {s: granularity.peak_points(n)[("trained U-Net", "k-means")][1] for s, n in found.items()}
  assert peaks[0] != peaks[1]


def test_replot_draws_both_seeds_and_keeps_the_numbers(tmp_path, monkeypatch):
  results_dir = str(tmp_path / "granularity")
  shutil.copytree(COMMITTED, results_dir)
  before = {p: open(os.path.join(results_dir, p), "rb").read()
            for p in ("results.json", os.path.join("seed1", "results.json"))}
  plt = common._pyplot()  # pylint: disable=protected-access
  figures = []
  monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
  granularity.replot(results_dir)
  (peak_fig,) = [f for f in figures if f._suptitle and "seeds 0, 1" in f._suptitle.get_text()]  # pylint: disable=protected-access
  for ax in peak_fig.axes:
    handles, labels = ax.get_legend_handles_labels()
    assert any("(seed 0" in s for s in labels) and any("(seed 1" in s for s in labels), labels
    # One word per kind of condition in both panels (the trained group "class" is "classes").
    assert {s.split(" (seed")[0] for s in labels} == {"none", "classes", "k-means"}, labels
    # The classes (10 conditions) are drawn left of k-means k = 10, said in their label.
    xs = {label: handle.lines[0].get_xdata() for handle, label in zip(handles, labels)}
    for seed in (0, 1):
      classes = xs[f"classes (seed {seed}, drawn at x{granularity.CLASSES_DODGE:g})"]
      assert np.allclose(classes, 10 * granularity.CLASSES_DODGE)
      assert 10.0 in xs[f"k-means (seed {seed})"]
  for p, data in before.items():  # results.json untouched
    assert open(os.path.join(results_dir, p), "rb").read() == data
  with open(os.path.join(results_dir, "results.json")) as f:
    names = json.load(f)["figures"]
  for name in names:
    assert os.path.getsize(os.path.join(results_dir, name)) > 1000


def test_replot_command_line(tmp_path):
  results_dir = str(tmp_path / "granularity")
  shutil.copytree(COMMITTED, results_dir)
  os.remove(os.path.join(results_dir, "peak_gap_vs_value.png"))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  script = os.path.join(ROOT, "experiments", "granularity.py")
  out = subprocess.run([sys.executable, script, "--replot", f"--results_dir={results_dir}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.getsize(os.path.join(results_dir, "peak_gap_vs_value.png")) > 1000
  other = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "sample_gap.py"),
                          "--replot", f"--results_dir={results_dir}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert other.returncode != 0 and "cannot redraw" in other.stderr
  empty = subprocess.run([sys.executable, script, "--replot", f"--results_dir={tmp_path / 'none'}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert empty.returncode != 0 and "has no results.json to redraw" in empty.stderr
  assert "Traceback" not in empty.stderr


def test_early_stop_share_takes_the_stop_nearest_the_peak_sigma_in_log_distance():
  """The share of the final sample gap that sampling stopped near the peak sigma shows: the stop
  step nearest in log sigma (0.3 is nearer 0.1 than 1 in log distance: 1.10 vs 1.20), divided by
  the finished samples' G_FD; None for a final gap <= 0 or one whose interval reaches 0."""
  record = {"early_stop": {"sigmas": [80.0, 10.0, 1.0, 0.1, 0.002],
                           "gap": [0.0, 0.1, 0.4, 0.9, 1.0]},
            "fd": {"features": {"gap": 2.0}}}
  assert common.early_stop_share(record, 0.8) == {
      "sigma": 1.0, "early_gap": 0.4, "final_gap": 2.0, "final_gap_low": None,
      "final_gap_high": None, "share": 0.2}
  assert common.early_stop_share(record, 0.3)["sigma"] == 0.1
  record["fd"]["features"].update(gap_low=0.5, gap_high=3.0)  # apart from 0: a share
  assert common.early_stop_share(record, 0.8)["share"] == 0.2
  record["fd"]["features"]["gap_low"] = -0.1  # a final gap within its noise of 0: none
  assert common.early_stop_share(record, 0.8)["share"] is None
  record["fd"]["features"]["gap"] = -0.05
  assert common.early_stop_share(record, 0.8)["share"] is None


# ------------------------------------------------------------------------------------------------
# The --replot of the findings whose figures the review fixed, from their committed results.json


def _replot(finding, tmp_path, monkeypatch):
  """Runs experiments/<finding>.py's replot on a copy of its committed results directory; returns
  {figure file name: the matplotlib Figure saved there}, after checking results.json is kept."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  results_dir = str(tmp_path / finding)
  shutil.copytree(os.path.join(RESULTS, finding), results_dir)
  before = open(os.path.join(results_dir, "results.json"), "rb").read()
  saved, savefig = {}, Figure.savefig

  def record(fig, path, *args, **kwargs):
    saved[os.path.basename(str(path))] = fig
    return savefig(fig, path, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", record)
  importlib.import_module(f"experiments.{finding}").replot(results_dir)
  assert open(os.path.join(results_dir, "results.json"), "rb").read() == before
  for name, fig in saved.items():
    assert os.path.getsize(os.path.join(results_dir, name)) > 1000, name
  return saved


def _lines(ax):
  """The axes' labelled lines (not error bar caps, zero lines) by label."""
  return {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}


def test_training_time_onset_shows_each_models_no_onset_markers(tmp_path, monkeypatch):
  """The U-Net's and the DiT's "no onset yet" markers share the last snapshot: each later model's
  are raised (said in the label and the title) so that none hides under another's."""
  figures = _replot("training_time", tmp_path, monkeypatch)
  (ax,) = figures["onset.png"].axes
  models = json.load(open(os.path.join(RESULTS, "training_time", "results.json")))[
      "results"]["models"]
  last = {g: max(m["images_seen"]) for g, m in models.items()}
  lines = _lines(ax)
  apart = {g: lines[label] for label in lines for g in models
           if label.startswith(f"{g}: no onset yet")}
  assert set(apart) == {"U-Net", "DiT"}
  points = {g: set(zip(line.get_xdata().tolist(), line.get_ydata().tolist()))
            for g, line in apart.items()}
  assert not points["U-Net"] & points["DiT"]  # no marker drawn where another model's is
  assert {x for x, _ in points["U-Net"]} & {x for x, _ in points["DiT"]}  # (they share sigmas)
  np.testing.assert_array_equal(apart["U-Net"].get_ydata(), last["U-Net"])  # the first: as is
  assert np.all(apart["DiT"].get_ydata() > last["DiT"])  # raised, never below the bound
  assert "drawn x1.04" in apart["DiT"].get_label() and "last snapshot" in ax.get_title()


def test_training_time_gap_at_sigmas_draws_the_interval_bands(tmp_path, monkeypatch):
  figures = _replot("training_time", tmp_path, monkeypatch)
  axes = figures["gap_at_sigmas.png"].axes
  assert [ax.get_title() for ax in axes] == ["U-Net", "DiT"]
  for ax in axes:
    assert len(ax.collections) == len(ax.lines) - (ax.get_yscale() == "linear")  # (zero line)
    for band, line in zip(ax.collections, ax.lines):  # each band holds its curve
      vertices = np.concatenate([p.vertices for p in band.get_paths()])
      assert vertices[:, 1].min() <= line.get_ydata().min() + 1e-12
      assert vertices[:, 1].max() >= line.get_ydata().max() - 1e-12
    assert "95% interval" in ax.get_ylabel()


def test_guidance_peak_panel_in_log_y_where_the_peaks_span_a_decade(tmp_path, monkeypatch):
  figures = _replot("guidance", tmp_path, monkeypatch)
  analytic, trained = figures["peak_gap_vs_w.png"].axes
  assert analytic.get_yscale() == "log" and trained.get_yscale() == "linear"  # 4.1-150; 14-21
  for ax in (analytic, trained):
    assert [len(c.get_segments()) for c in ax.collections] == [3, 3]  # error bars kept


def test_guidance_sample_gap_drawn_beside_a_copiers_and_fresh_real_images(tmp_path, monkeypatch):
  """G_FD has a scale: the unguided run's copier and fresh-real G_FD (its own sample evaluation, the
  same classifier features) as flat lines in the G_FD panel, at the values results.json keeps."""
  figures = _replot("guidance", tmp_path, monkeypatch)
  with open(os.path.join(RESULTS, "guidance", "results.json")) as f:
    baselines = json.load(f)["results"]["sample_gap_baselines"]
  fd = figures["sample_gap_vs_w.png"].axes[0]
  lines = _lines(fd)
  for label, kind in (("a copier of training images", "copier"), ("fresh real images", "real")):
    np.testing.assert_allclose(lines[label].get_ydata(), baselines[kind]["features"]["gap"])
  assert baselines["copier"]["features"]["gap"] > 1.0 > baselines["real"]["features"]["gap"]


def test_model_size_peaks_in_log_y_and_log_parameters(tmp_path, monkeypatch):
  figures = _replot("model_size", tmp_path, monkeypatch)
  (ax,) = figures["peak_gap_vs_value.png"].axes
  assert ax.get_xscale() == "log" and ax.get_yscale() == "log"  # 0.45-27.6
  assert set(_lines(ax)) == {"U-Net", "DiT"}
  assert [len(c.get_segments()) for c in ax.collections] == [3, 3]
  assert {"gap_curves.png", "peak_gap_over_training.png"} <= set(figures)


def test_paper_regime_guidance_error_bars_and_crops_from_zero(tmp_path, monkeypatch):
  figures = _replot("paper_regime", tmp_path, monkeypatch)
  peak, fd = figures["guidance.png"].axes
  assert [len(c.get_segments()) for c in peak.collections] == [3, 3]  # per style, per w
  with open(os.path.join(RESULTS, "paper_regime", "results.json")) as f:
    guided = json.load(f)["results"]["guidance_sample_gap"]
  # G_FD's error bars exactly where the factors run kept its interval (not in the committed run)
  assert bool(fd.collections) == any(r.get("gap_fd_features_low") is not None for r in guided)
  # The later style is dodged to the right (said in its label): the bars do not coincide.
  lines = _lines(peak)
  cfg, auto = lines["cfg"], lines["autoguidance (drawn at w + 0.04)"]
  assert not set(cfg.get_xdata().tolist()) & set(auto.get_xdata().tolist())
  # G_FD beside its scale (the run's copier and fresh real images) and its noise (the run's own
  # evaluation of the unguided network, another draw of samples).
  with open(os.path.join(RESULTS, "paper_regime", "results.json")) as f:
    run = next(iter(json.load(f)["results"]["models"].values()))
  fd_lines = _lines(fd)
  for label, kind in (("a copier of training images", "copier"), ("fresh real images", "real")):
    np.testing.assert_allclose(fd_lines[label].get_ydata(), run["baselines"][kind]["features"]["gap"])
  own = fd_lines["w = 0 in the run's own evaluation (other samples)"]
  assert own.get_xdata().tolist() == [0.0]
  np.testing.assert_allclose(own.get_ydata(), run["gap_fd_features"][-1])
  (crops,) = figures["peak_gap_vs_crop.png"].axes
  assert crops.get_ylim()[0] == 0.0
  with open(os.path.join(RESULTS, "paper_regime", "results.json")) as f:
    kept = [c for c in json.load(f)["results"]["crops"] if c.get("peak_gap_low") is not None]
  # error bars on every crop size (the full image's included) exactly where the results keep them
  assert sum(len(c.get_segments()) for c in crops.collections) == len(kept)
  assert ("no intervals" in crops.get_title()) == (not kept)
  lines = _lines(crops)
  assert lines["crops"].get_color() == lines["full image"].get_color()
  # The run's own figures (copied when it ran) are not redrawn.
  assert not any(name.startswith("regime_unet_") for name in figures)


def test_receptive_field_full_image_markers_in_their_series_colour(tmp_path, monkeypatch):
  figures = _replot("receptive_field", tmp_path, monkeypatch)
  ax = figures["peak_gap_vs_crop.png"].axes[0]
  lines = _lines(ax)
  fulls = [label for label in lines if label.endswith(": full image")]
  assert len(fulls) == 3
  colours = set()
  for label in fulls:
    series = label[:-len(": full image")]
    assert lines[label].get_color() == lines[series].get_color(), label
    assert lines[label].get_linestyle() == "None"  # a marker, not joined to the crops
    colours.add(lines[series].get_color())
  assert len(colours) == 3


@pytest.mark.parametrize("finding", ["training_time", "guidance", "model_size", "paper_regime",
                                     "receptive_field"])
def test_replot_command_line_of_the_reviewed_findings(finding, tmp_path):
  """--replot redraws from results.json only; another finding's results directory is refused in one
  line (no traceback)."""
  results_dir = str(tmp_path / finding)
  shutil.copytree(os.path.join(RESULTS, finding), results_dir)
  with open(os.path.join(results_dir, "results.json")) as f:
    figure = json.load(f)["figures"][-1]
  os.remove(os.path.join(results_dir, figure))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  script = os.path.join(ROOT, "experiments", f"{finding}.py")
  out = subprocess.run([sys.executable, script, "--replot", f"--results_dir={results_dir}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.getsize(os.path.join(results_dir, figure)) > 1000
  other = "model_size" if finding != "model_size" else "guidance"
  shutil.copytree(os.path.join(RESULTS, other), str(tmp_path / other))
  wrong = subprocess.run([sys.executable, script, "--replot", f"--results_dir={tmp_path / other}"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert wrong.returncode != 0 and f"holds the {other!r} finding's results" in wrong.stderr
  assert "Traceback" not in wrong.stderr
