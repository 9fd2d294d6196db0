"""Finding: the paper's regime at a size a 2-core CPU holds (issue 26 of the project).

28x28 Fashion-MNIST, 1,024 training images, the quickstart's 1.23M-parameter U-Net, ~320k images
seen (configs/experiments.py: _regime_unet). The questions the paper answers at its scale: does
G stay below 1 and peak near sigma 1-2; does the sample-level gap stay near fresh real images'
(its floor) and far from a copier's (its ceiling); how much of the final sample gap early-stopped
sampling at the peak sigma already shows (the paper: ~11%).

    python experiments/paper_regime.py     # local: ~2-2.5 h of training here, then the evaluation
    python experiments/paper_regime.py --config.runs.regime_unet.training.total_images=192000
                                           # a shorter run (resumes; what the committed result used
                                           # when it says so)

Figures: peak_gap_over_training.png (peak G with its 95% interval), sample_gap.png (G_FD with a
copier's and fresh real images' G_FD), guidance.png (peak G and G_FD over the guidance weight, CFG
and autoguidance), peak_gap_vs_crop.png (peak G per crop size), and the run's own gap_over_training.png, errors.png,
early_stop_gap_fd.png, trajectory_overlap.png, nn_similarity.png (<run>_*.png).

    python experiments/paper_regime.py --replot  # the figures drawn here again from results.json,
                                                 # nothing run (the run's own ones are kept)
"""

import functools
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "paper_regime"
COPIED = ("gap_over_training.png", "errors.png", "early_stop_gap_fd.png", "trajectory_overlap.png",
          "nn_similarity.png")


def gather(ctx):
  out = {}
  for name, group, _ in ctx.sweep():
    res = ctx.results[name]
    s = res["summary"]
    sigmas = res["protocol"]["sigmas"]
    last = next(iter(res["snapshots"][str(s["steps"][-1])]["ema"].values()))
    samples = res.get("samples", {})
    m = {"run": name, "images_seen": s["images_seen"], "peak_gap": s["peak_gap"],
         "peak_gap_low": s.get("peak_gap_low"), "peak_gap_high": s.get("peak_gap_high"),
         "peak_sigma": s["peak_sigma"], "sigmas": sigmas, "gap_last": last["gap"],
         "gap_last_low": last.get("gap_low"), "gap_last_high": last.get("gap_high"),
         "gap_at_smallest_sigma": last["gap"][0]}
    if samples.get("snapshots"):
      ss = samples["summary"]
      steps = sorted(samples["snapshots"], key=int)
      m.update({"samples_images_seen": ss["images_seen"], "gap_fd_features": ss["gap_fd_features"],
                "gap_fd_pixels": ss["gap_fd_pixels"], "copy_fraction": ss["copy_fraction"],
                "copy_fraction_low": ss.get("copy_fraction_low"),
                "copy_fraction_high": ss.get("copy_fraction_high"),
                **{f"gap_fd_{sp}_{end}": ss.get(f"gap_fd_{sp}_{end}")
                   for sp in ("features", "pixels") for end in ("low", "high")},
                "baselines": samples.get("baselines"),
                "early_stop_at_peak": common.early_stop_share(samples["snapshots"][steps[-1]],
                                                              s["peak_sigma"][-1])})
    out[group] = m
    for figure in COPIED:
      ctx.copy(os.path.join(ctx.workdirs[name], "evaluation", figure), f"{name}_{figure}")
  factors = ctx.results.get("factors_regime") or ctx.results.get("factors_trained_unet")
  numbers = {"models": out, **(guidance_and_crops(factors) if factors else {})}
  draw(ctx, numbers)
  return numbers


def guidance_and_crops(results):
  """The factors job's trained sweep on the run's last snapshot: peak G per guidance style and
  weight (with its 95% interval over images), G_FD per style and weight, peak G per crop size."""
  section = results["sweeps"]["trained"]
  size = results["settings"]["image_shape"][0]
  styles = [s for s in ("cfg", "autoguidance")
            if common.factor_curves(results, "trained", s)]
  guidance = {s: [{k: c.get(k) for k in ("value", "peak_gap", "peak_sigma", "peak_gap_low",
                                         "peak_gap_high")}
                  for c in common.factor_curves(results, "trained", s)] for s in styles}
  crops = [{"crop_size": c["value"], "relative_crop": c["value"] / size,
            **{k: c.get(k) for k in ("peak_gap", "peak_gap_low", "peak_gap_high", "peak_sigma")}}
           for c in common.factor_curves(results, "trained", "receptive_field")]
  return {"guidance": guidance, "guidance_sample_gap": section.get("sample_gap") or [],
          "crops": crops,
          "factors_snapshot": {k: section.get(k) for k in (
              "snapshot_step", "images_seen", "negative_snapshot_step", "negative_images_seen",
              "label_dropout")}}


def draw(ctx, numbers):
  """The finding's own figures from its numbers (what gather returns, or results.json's
  "results"); the run's figures are copied by gather, not drawn here."""
  peaks, fd = [], []
  for group, m in numbers["models"].items():
    peaks += [(group, m["images_seen"], m["peak_gap"], None, common.interval(m, "peak_gap"))]
    if "samples_images_seen" in m:
      seen = m["samples_images_seen"]
      fd += [("G_FD (features)", seen, m["gap_fd_features"], None,
              common.interval(m, "gap_fd_features")),
             ("G_FD (pixels)", seen, m["gap_fd_pixels"], None, common.interval(m, "gap_fd_pixels"))]
      for kind, style in (("copier", ":"), ("real", "-.")):
        b = (m["baselines"] or {}).get(kind)
        if b:
          fd += [(f"{'copier' if kind == 'copier' else 'fresh real images'} ({space})",
                  seen, [b[space]["gap"]] * len(seen), style)
                 for space in ("features", "pixels")]
  common.line_plot(ctx.figure("peak_gap_over_training.png"), peaks, xlabel="images seen",
                   ylabel="peak G (95% interval over images)", zero_line=True,
                   title="Peak denoising gap over training")
  if fd:
    common.line_plot(ctx.figure("sample_gap.png"), fd, xlabel="images seen",
                     ylabel="G_FD = (FD_val - FD_train) / FD_train (95% over the samples)",
                     zero_line=True,
                     title="Sample-level gap, with a copier's and real images'")
  if "guidance" in numbers:
    draw_guidance_and_crops(ctx, numbers)


PEAK_PANEL = "peak G (95% interval over images)"
DODGE_W = 0.04


def draw_guidance_and_crops(ctx, numbers):
  """guidance.png (peak G with its 95% interval, error bars, and G_FD over w per style) and
  peak_gap_vs_crop.png (peak G per crop size with its 95% interval, from 0; the full image a marker
  of its own in the crops' colour)."""
  guidance, sample_gap = numbers["guidance"], numbers.get("guidance_sample_gap") or []
  # In the peak panel each later style is drawn DODGE_W to the right (said in its label): the
  # styles' intervals overlap (and coincide at w = 0, the unguided model), hiding each other's bars.
  series = [(PEAK_PANEL, s + (f" (drawn at w + {DODGE_W * i:g})" if i else ""),
             [r["value"] + DODGE_W * i for r in rows], [r["peak_gap"] for r in rows], None,
             common.peak_intervals(rows)) for i, (s, rows) in enumerate(guidance.items())]
  rows = lambda s: [r for r in sample_gap if r["style"] == s]
  series += [("G_FD (features)", s + (f" (drawn at w + {DODGE_W * i:g})" if i else ""),
              [r["w"] + DODGE_W * i for r in rows(s)], [r["gap_fd_features"] for r in rows(s)],
              None, ([r.get("gap_fd_features_low") for r in rows(s)],
                     [r.get("gap_fd_features_high") for r in rows(s)]))
             for i, s in enumerate(guidance)]  # (95% over the samples where kept)
  # G_FD's scale and noise: the run's copier and fresh-real G_FD, and the run's own evaluation of
  # the same unguided network (another draw of samples) at w = 0.
  ws = sorted({r["w"] for r in sample_gap})
  run = next((m for m in numbers["models"].values() if m.get("baselines")), None)
  if run and ws:
    for kind, label, style in (("copier", "a copier of training images", ":"),
                               ("real", "fresh real images", "-.")):
      if run["baselines"].get(kind):
        series.append(("G_FD (features)", label, ws,
                       [run["baselines"][kind]["features"]["gap"]] * len(ws), style))
    series.append(("G_FD (features)", "w = 0 in the run's own evaluation (other samples)", [0.0],
                   [run["gap_fd_features"][-1]], "s"))
  common.line_plot(ctx.figure("guidance.png"), series, panels=(PEAK_PANEL, "G_FD (features)"),
                   xlabel="guidance weight w", ylabel="", zero_line=True, bars=True,
                   title="Guidance on the regime U-Net's last snapshot")
  crops = numbers["crops"]
  part = [c for c in crops if c["relative_crop"] < 1.0]
  full = [c for c in crops if c["relative_crop"] >= 1.0]
  crop_series = [("crops", [c["relative_crop"] for c in part], [c["peak_gap"] for c in part],
                  "-oC0", common.peak_intervals(part))]
  crop_series += [("full image", [1.0], [c["peak_gap"]], "*C0", common.peak_intervals([c]))
                  for c in full]
  kept = common.peak_intervals(crops) is not None  # (results older than the crops' intervals)
  common.line_plot(ctx.figure("peak_gap_vs_crop.png"), crop_series, xlabel="crop size s / H",
                   ylabel="peak G" + (" (95% interval over images)" if kept else ""),
                   ylim=(0.0, None), bars=True,
                   title="Receptive field on the regime U-Net"
                   + ("" if kept else "\n(no intervals kept for the crops)"))


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
