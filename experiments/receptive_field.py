"""Finding 7: a restricted receptive field (2x2 overlapping s x s crops, overlaps averaged) lowers
the denoising gap.

Analytic: the factors job's `receptive_field` sweep (y_delta of the pooled training crops);
trained: its `trained` sweep (the U-Net's and the DiT's own weights applied to the crops).

    python experiments/receptive_field.py     # local: digits, ~5 min (+ the shared U-Net/DiT runs)
    python experiments/receptive_field.py --config=configs/experiments.py:receptive_field,paper \
        --config.data_dir=/path/to/tfds

    python experiments/receptive_field.py --replot  # the figures again from results.json

Figures: peak_gap_vs_crop.png (x: s / H; each denoiser's full image a star in its colour),
gap_curves.png (one panel per denoiser).
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "receptive_field"
INTERVAL_KEYS = ("gap_low", "gap_high", "peak_gap_low", "peak_gap_high")


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  series, curves_series = [], []
  for i, (name, d) in enumerate(numbers["denoisers"].items()):
    curves = d["curves"]
    # Crops (s < H) are one family of denoisers; the full image (s = H, no crop) is another: a
    # marker of its own, not the end of a line through the crops, in the denoiser's colour.
    colour = f"C{i % 10}"
    crops = [c for c in curves if c["relative_crop"] < 1.0]
    series.append((name, [c["relative_crop"] for c in crops], [c["peak_gap"] for c in crops],
                   f"-o{colour}", common.peak_intervals(crops)))
    series += [(f"{name}: full image", [1.0], [c["peak_gap"]], f"*{colour}",
                common.peak_intervals([c])) for c in curves if c["relative_crop"] >= 1.0]
    curves_series += [(name, c["label"], d["sigmas"], c["gap"], "-", common.interval(c, "gap"))
                      for c in curves]
  common.line_plot(ctx.figure("peak_gap_vs_crop.png"), series, xlabel="crop size s / H",
                   bars=True, ylabel="peak G (95% interval over images where kept)",
                   title="Receptive field and the denoising gap")
  common.line_plot(ctx.figure("gap_curves.png"), curves_series, panels=list(numbers["denoisers"]),
                   xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="G(sigma) per crop size")


def gather(ctx):
  size = ctx.results["factors_receptive_field"]["settings"]["image_shape"][0]
  denoisers = {"analytic y_delta": (ctx.results["factors_receptive_field"], "receptive_field", None),
               "trained U-Net": (ctx.results["factors_trained_unet"], "trained", "receptive_field"),
               "trained DiT": (ctx.results["factors_trained_dit"], "trained", "receptive_field")}
  out = {}
  for name, (results, sweep, group) in denoisers.items():
    curves = common.factor_curves(results, sweep, group)
    out[name] = {"sigmas": results["sweeps"][sweep]["sigmas"],
                 "crop_sizes_skipped": results["sweeps"][sweep].get("crop_sizes_skipped", {}),
                 "curves": [
                     {"crop_size": c["value"], "relative_crop": c["value"] / size,
                      "label": c["label"], "peak_gap": c["peak_gap"],
                      "peak_sigma": c["peak_sigma"], "gap": c["gap"],
                      **{k: c[k] for k in INTERVAL_KEYS if k in c}}
                     for c in curves]}
  numbers = {"image_size": size, "denoisers": out}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
