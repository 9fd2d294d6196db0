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

from experiments import common  # noqa: E402

FINDING = "guidance"
STYLES = ("cfg", "autoguidance")
PANELS = ("analytic y_delta", "trained U-Net")
# A panel whose positive peaks span a decade is drawn in log y: the analytic autoguidance peak is
# ~35x the cfg one (4.1-150), which a linear axis flattens.
LOG_DECADES = 1.0
DODGE_W = 0.04  # the second style's x offset where both have error bars


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  series = []
  for panel, key in zip(PANELS, ("analytic", "trained")):
    for style in STYLES:
      mine = [c for c in numbers[key] if c["group"] == style]
      series.append((panel, style, [c["value"] for c in mine], [c["peak_gap"] for c in mine],
                     None, common.peak_intervals(mine)))
  common.line_plot(ctx.figure("peak_gap_vs_w.png"), series, panels=PANELS, bars=True,
                   decades=LOG_DECADES, xlabel="guidance weight w",
                   ylabel="peak G (95% interval over images where kept)",
                   title="Guidance and the denoising gap")
  common.line_plot(ctx.figure("trained_gap_curves.png"),
                   [(c["group"], c["label"], numbers["sigmas"], c["gap"], "-",
                     common.interval(c, "gap")) for c in numbers["trained"]],
                   panels=STYLES, xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="Trained U-Net, guided")
  sample_gap = numbers.get("trained_sample_gap") or []
  if sample_gap:
    rows = lambda style: [r for r in sample_gap if r["style"] == style]
    fd_panel = "G_FD (classifier features)"
    # Error bars: G_FD's 95% bootstrap and the copies' Wilson interval over the samples, where the
    # factors run kept them; the second style drawn DODGE_W to the right (said in its label).
    series = [(panel, style + (f" (drawn at w + {DODGE_W:g})" if i else ""),
               [r["w"] + DODGE_W * i for r in rows(style)], [r[key] for r in rows(style)], None,
               ([r.get(f"{key}_low") for r in rows(style)],
                [r.get(f"{key}_high") for r in rows(style)]))
              for panel, key in ((fd_panel, "gap_fd_features"), ("copy fraction", "copy_fraction"))
              for i, style in enumerate(STYLES)]
    ws = sorted({r["w"] for r in sample_gap})
    for kind, label, style in (("copier", "a copier of training images", ":"),
                               ("real", "fresh real images", "-.")):  # G_FD's scale
      b = (numbers.get("sample_gap_baselines") or {}).get(kind)
      if b:
        series.append((fd_panel, label, ws, [b["features"]["gap"]] * len(ws), style))
    common.line_plot(ctx.figure("sample_gap_vs_w.png"), series,
                     panels=(fd_panel, "copy fraction"), xlabel="guidance weight w",
                     ylabel="value (bars: 95% over the samples)", bars=True,
                     title="Trained U-Net, guided: the sample level (G_FD beside a copier's and "
                           "fresh real images')")


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
             # G_FD's scale, from the unguided run's own sample evaluation (same features)
             "sample_gap_baselines": (ctx.results["unet"].get("samples") or {}).get("baselines"),
             "trained_run": {k: section.get(k) for k in ("snapshot_step", "images_seen",
                                                         "negative_snapshot_step",
                                                         "negative_images_seen", "label_dropout")}}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
