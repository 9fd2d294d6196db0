"""Finding 5: finer conditions overfit more: unconditional < k-means pseudo-labels (k) / classes.

The factors job's `granularity` sweep gives the analytic curves (y_delta conditioned on nothing,
the classes, k-means clusters) and writes the pseudo-labels k{k}.npz that the trained runs use
(data.labels="pseudo"); the trained runs give the network's gap per condition.

    python experiments/granularity.py         # local: digits, k in 2/10/50, ~30 min
    python experiments/granularity.py --config=configs/experiments.py:granularity,paper \
        --config.data_dir=/path/to/tfds       # CIFAR-10 DDPM++, k in 2/10/100/500
    python experiments/granularity.py --replot  # the figures again from the results.json files,
                                              # nothing run (--config.seed=1: the replicate's)

Figures: peak_gap_vs_value.png (x: number of conditions; trained runs and the analytic y_delta,
every replicate seed found beside this one: results.json of the finding's results directory and
of its seed<k>/ subfolders; 95% intervals over images where the results carry them),
gap_curves.png, peak_gap_over_training.png, analytic_gap_curves.png.
"""

import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "granularity"
CLASSES_DODGE = 0.85  # the classes' x in the peak figure, times the number of conditions


def replicate_results(results_dir: str):
  """{seed: the "results" section} of every replicate's results.json: the base results directory
  (seed 0) and its seed<k>/ subfolders; results_dir may be the base or a seed<k> subfolder."""
  base = results_dir
  if re.fullmatch(r"seed\d+", os.path.basename(os.path.normpath(results_dir))):
    base = os.path.dirname(os.path.normpath(results_dir))
  dirs = {0: base}
  if os.path.isdir(base):
    dirs.update({int(d[4:]): os.path.join(base, d) for d in os.listdir(base)
                 if re.fullmatch(r"seed\d+", d)})
  out = {}
  for seed, d in sorted(dirs.items()):
    path = os.path.join(d, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        out[seed] = json.load(f)["results"]
  return out


def _kind(c):
  return "k-means" if c["condition"].startswith("k=") else c["condition"]


# Per kind of condition: marker, and whether the points form a line (k-means over k).
MARKERS = {"none": ("s", False), "classes": ("*", False), "k-means": ("o", True)}
# The trained runs' group is named "class", the analytic condition "classes": one legend word.
KIND_NAMES = {"class": "classes"}
PANELS = ("trained U-Net", "analytic y_delta")


def peak_points(numbers):
  """{(panel, kind): (x, peak G, (low, high) or None)} of one replicate's numbers: the trained
  runs per group and the analytic curves per condition kind (one analytic delta per sweep)."""
  out = {}
  for label, x, y, _, bounds in common.peak_series(numbers["trained"], "num_conditions"):
    out[(PANELS[0], label)] = (x, y, bounds)
  analytic = numbers["analytic"]
  for kind in dict.fromkeys(_kind(c) for c in analytic):
    mine = [c for c in analytic if _kind(c) == kind]
    bounds = common.peak_intervals(mine)
    out[(PANELS[1], kind)] = ([c["value"] for c in mine], [c["peak_gap"] for c in mine], bounds)
  return out


def peak_figure(path: str, by_seed, title: str) -> None:
  """Peak G vs the number of conditions, trained runs and analytic y_delta in two panels; one
  colour per seed, one marker per kind of condition (k-means a line over k); later seeds drawn
  smaller so that equal values (the analytic none / classes) show both; error bars where the
  results carry the 95% interval over images."""
  plt = common._pyplot()  # pylint: disable=protected-access
  seeds = sorted(by_seed)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  intervals, ticks = False, set()
  for i, seed in enumerate(seeds):
    colour = f"C{i % 10}"
    size = 8 - 3 * min(i, 1)
    for (panel, kind), (x, y, bounds) in peak_points(by_seed[seed]).items():
      ax = axes[PANELS.index(panel)]
      kind = KIND_NAMES.get(kind, kind)
      marker, line = MARKERS.get(kind, ("D", False))
      x, y = np.asarray(x, np.float64), common._floats(y)  # pylint: disable=protected-access
      order = np.argsort(x)
      x, y = x[order], y[order]
      ticks |= set(x[np.isfinite(x)].tolist())
      # The classes sit at the same number of conditions as k-means k = num_classes: drawn a
      # little to the left (said in the label) so that neither hides the other's marker and bars.
      dodged = kind == "classes"
      x = x * CLASSES_DODGE if dodged else x
      yerr = None
      if bounds is not None:
        low, high = (common._floats(b)[order] for b in bounds)  # pylint: disable=protected-access
        yerr = np.stack([np.maximum(y - low, 0.0), np.maximum(high - y, 0.0)])
        intervals = True
      ax.errorbar(x, y, yerr=yerr, color=colour, marker=marker, ms=size, capsize=3,
                  ls="-" if line else "none",
                  label=f"{kind} (seed {seed}{f', drawn at x{CLASSES_DODGE:g}' if dodged else ''})")
  for ax, panel in zip(axes, PANELS):
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{v:g}" for v in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("number of conditions")
    ax.set_ylabel("peak G (last snapshot)" + (", 95% interval over images" if intervals else "")
                  if panel == PANELS[0] else "peak G" + (", 95% interval" if intervals else ""))
    ax.set_title(panel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(title + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""))
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


class _Figures:
  """What `common.gap_sweep_figures` needs of a Context, over a results directory."""

  def __init__(self, results_dir: str):
    self.results_dir = results_dir
    self.config = type("Config", (), {"finding": FINDING})()
    self.figures = []

  def figure(self, filename: str) -> str:
    self.figures.append(filename)
    return os.path.join(self.results_dir, filename)


def draw(ctx, numbers, others) -> None:
  """The four figures from the finding's numbers (what gather returns) and the other replicates'
  ({seed: numbers}); ctx: anything with .figure(filename) and .config.finding."""
  by_seed = {**others, numbers.get("seed") or 0: numbers}
  common.gap_sweep_figures(ctx, numbers["trained"], x_key="num_conditions",
                           xlabel="number of conditions", one_panel=True,
                           draw_peaks=lambda path: peak_figure(
                               path, by_seed, f"{FINDING}: peak denoising gap"))
  common.line_plot(ctx.figure("analytic_gap_curves.png"),
                   [(c["label"], numbers["sigmas_analytic"], c["gap"], "-",
                     common.interval(c, "gap")) for c in numbers["analytic"]],
                   xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="Analytic: y_delta per condition granularity")


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    e["num_conditions"] = e["value"]
  section = ctx.results["factors_granularity"]["sweeps"]["granularity"]
  analytic = common.factor_curves(ctx.results["factors_granularity"], "granularity")
  keep = ("label", "group", "value", "condition", "peak_gap", "peak_sigma", "gap", "gap_low",
          "gap_high", "peak_gap_low", "peak_gap_high")
  seed = ctx.config.get("seed", 0) or 0
  numbers = {"trained": entries,
             "analytic": [{k: c.get(k) for k in keep if k in c} for c in analytic],
             "sigmas_analytic": section["sigmas"], "seed": seed}
  others = {s: n for s, n in replicate_results(ctx.results_dir).items() if s != seed}
  draw(ctx, numbers, others)
  numbers["replicates_drawn"] = sorted(others)
  return numbers


def replot(results_dir: str) -> None:
  """Redraws the figures of results_dir from its results.json and the other replicates' (nothing
  is run; results.json is left as it is)."""
  with open(os.path.join(results_dir, "results.json")) as f:
    saved = json.load(f)
  numbers = dict(saved["results"])
  numbers.setdefault("seed", (saved.get("config") or {}).get("seed") or 0)
  others = {s: n for s, n in replicate_results(results_dir).items() if s != numbers["seed"]}
  draw(_Figures(results_dir), numbers, others)


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
