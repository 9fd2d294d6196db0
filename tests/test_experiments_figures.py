"""The findings' figures with their intervals (experiments/common.py line_plot, gap_sweep,
peak_series; experiments/granularity.py's replicates and --replot), without running any job."""

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
    labels = ax.get_legend_handles_labels()[1]
    assert any("(seed 0)" in s for s in labels) and any("(seed 1)" in s for s in labels), labels
    # One word per kind of condition in both panels (the trained group "class" is "classes").
    assert {s.split(" (seed")[0] for s in labels} == {"none", "classes", "k-means"}, labels
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
  other = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "model_size.py"),
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
  the finished samples' G_FD; None for a final gap <= 0."""
  record = {"early_stop": {"sigmas": [80.0, 10.0, 1.0, 0.1, 0.002],
                           "gap": [0.0, 0.1, 0.4, 0.9, 1.0]},
            "fd": {"features": {"gap": 2.0}}}
  assert common.early_stop_share(record, 0.8) == {"sigma": 1.0, "early_gap": 0.4,
                                                  "final_gap": 2.0, "share": 0.2}
  assert common.early_stop_share(record, 0.3)["sigma"] == 0.1
  record["fd"]["features"]["gap"] = -0.05
  assert common.early_stop_share(record, 0.8)["share"] is None
