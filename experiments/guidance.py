"""Finding 6: guidance (classifier-free and autoguidance) over the weight w.

Analytic: the factors job's `guidance` sweep (y_delta pairs); trained: its `trained` sweep on the
conditional U-Net (label dropout 0.1, so the null label gives the unconditional model; the
autoguidance negative is the run's first snapshot). D = D_pos + w (D_pos - D_neg).

    python experiments/guidance.py            # local: digits, ~8 min (+ the shared U-Net run)
    python experiments/guidance.py --config=configs/experiments.py:guidance,paper \
        --config.data_dir=/path/to/tfds

    python experiments/guidance.py --replot   # the figures again from results.json, nothing run

Figures: peak_gap_vs_w.png (analytic and trained, per style; a panel whose peaks span a decade or
more in log y), trained_gap_curves.png, sample_gap_vs_w.png (the trained U-Net's sample-level gap
G_FD and copy fraction per style).
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402

FINDING = "guidance"
STYLES = ("cfg", "autoguidance")
PANELS = ("analytic y_delta", "trained U-Net")
LOG_DECADES = 1.0  # a panel whose positive peaks span at least this many decades: log y


def peak_figure(path, series, ylabel, title):
  """Peak G vs w, one panel per PANELS entry: series (panel, style, w, peak G, (low, high) or
  None), error bars where given (as common.line_plot(bars=True) draws them). Unlike line_plot's
  two decades, a panel whose peaks are all positive and span LOG_DECADES is drawn in log y: the
  analytic autoguidance peak is ~35x the cfg one, which a linear axis flattens."""
  plt = common._pyplot()  # pylint: disable=protected-access
  draw_interval = common._draw_interval  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, len(PANELS), figsize=(5.5 * len(PANELS), 4.2), squeeze=False)
  for ax, panel in zip(axes[0], PANELS):
    ys = []
    for _, style, x, y, bounds in (s for s in series if s[0] == panel):
      x, y = np.asarray(x, np.float64), common._floats(y)  # pylint: disable=protected-access
      ok = np.isfinite(x) & np.isfinite(y)
      if not ok.any():
        continue
      line, = ax.plot(x[ok], y[ok], "-o", label=style, markersize=3)
      if bounds is not None:
        draw_interval(ax, x[ok], y[ok], bounds, ok, line.get_color(), True)
      ys += list(y[ok])
    log = common.spans_decades(ys, LOG_DECADES)
    if log:
      ax.set_yscale("log")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel(ylabel)
    ax.set_title(panel + (" (log y)" if log else ""))
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  series = []
  for panel, key in zip(PANELS, ("analytic", "trained")):
    for style in STYLES:
      mine = [c for c in numbers[key] if c["group"] == style]
      series.append((panel, style, [c["value"] for c in mine], [c["peak_gap"] for c in mine],
                     common.peak_intervals(mine)))
  peak_figure(ctx.figure("peak_gap_vs_w.png"), series,
              "peak G (95% interval over images where kept)", "Guidance and the denoising gap")
  common.line_plot(ctx.figure("trained_gap_curves.png"),
                   [(c["group"], c["label"], numbers["sigmas"], c["gap"], "-",
                     common.interval(c, "gap")) for c in numbers["trained"]],
                   panels=STYLES, xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="Trained U-Net, guided")
  sample_gap = numbers.get("trained_sample_gap") or []
  if sample_gap:
    rows = lambda style: [r for r in sample_gap if r["style"] == style]
    common.line_plot(
        ctx.figure("sample_gap_vs_w.png"),
        [(panel, style, [r["w"] for r in rows(style)], [r[key] for r in rows(style)])
         for panel, key in (("G_FD (classifier features)", "gap_fd_features"),
                            ("copy fraction", "copy_fraction")) for style in STYLES],
        panels=("G_FD (classifier features)", "copy fraction"), xlabel="guidance weight w",
        ylabel="", title="Trained U-Net, guided: the sample level")


def gather(ctx):
  analytic = common.factor_curves(ctx.results["factors_guidance"], "guidance")
  trained_results = ctx.results["factors_trained_unet"]
  trained = [c for s in STYLES for c in common.factor_curves(trained_results, "trained", s)]
  sigmas = trained_results["sweeps"]["trained"]["sigmas"]
  keep = ("label", "group", "value", "peak_gap", "peak_sigma", "gap", "gap_low", "gap_high",
          "peak_gap_low", "peak_gap_high")
  section = trained_results["sweeps"]["trained"]
  numbers = {"analytic": [{k: c.get(k) for k in keep if k in c} for c in analytic],
             "trained": [{k: c.get(k) for k in keep if k in c} for c in trained], "sigmas": sigmas,
             "trained_sample_gap": section.get("sample_gap") or [],
             "trained_run": {k: section.get(k) for k in ("snapshot_step", "images_seen",
                                                         "negative_snapshot_step",
                                                         "negative_images_seen", "label_dropout")}}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
