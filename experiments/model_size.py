"""Finding 3: larger models overfit the denoising objective more (and sooner).

    python experiments/model_size.py          # local: DDPM++ 16/32/64 channels, DiT hidden 32/64/128
    python experiments/model_size.py --config=configs/experiments.py:model_size,paper \
        --config.data_dir=/path/to/tfds       # EDM2 img64 XS..XL, DiT-S..XL/4 on ImageNet-64

    python experiments/model_size.py --replot  # the figures again from results.json, nothing run

Figures: peak_gap_vs_value.png (x: parameter count, log; y: log where the peaks span a decade or
more), gap_curves.png, peak_gap_over_training.png.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402

FINDING = "model_size"
LOG_DECADES = 1.0  # peaks all positive and spanning at least this many decades: log y


def peak_figure(path, entries, title):
  """Peak G (last snapshot) vs parameters per group (`common.peak_series`), error bars where the
  entries carry the 95% interval (as common.line_plot(bars=True) draws them); log x, and log y
  where the peaks are all positive and span LOG_DECADES (line_plot's automatic log needs two: the
  smallest DiT's 0.45 against the largest U-Net's 27.6 is flattened on a linear axis)."""
  plt = common._pyplot()  # pylint: disable=protected-access
  draw_interval = common._draw_interval  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  ys = []
  for group, x, y, _, bounds in common.peak_series(entries, "num_params"):
    x, y = np.asarray(x, np.float64), common._floats(y)  # pylint: disable=protected-access
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
      continue
    line, = ax.plot(x[ok], y[ok], "-o", label=group, markersize=3)
    if bounds is not None:
      draw_interval(ax, x[ok], y[ok], bounds, ok, line.get_color(), True)
    ys += list(y[ok])
  ax.set_xscale("log")
  if common.spans_decades(ys, LOG_DECADES):
    ax.set_yscale("log")
  intervals = all(common.interval(e, "final_peak_gap") for e in entries)
  ax.set_xlabel("parameters")
  ax.set_ylabel("peak G (last snapshot)" + (", 95% interval" if intervals else ""))
  ax.set_title(title)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  entries = numbers["runs"]
  common.gap_sweep_figures(ctx, entries, x_key="num_params", xlabel="parameters", logx=True,
                           draw_peaks=lambda path: peak_figure(
                               path, entries, f"{FINDING}: peak denoising gap"))


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    m = ctx.run_config(e["run"]).model
    e["width"] = e["value"]
    e["num_params"] = common.num_params(m, (m.img_resolution, m.img_resolution, m.img_channels),
                                        m.num_classes)
  numbers = {"runs": entries}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
