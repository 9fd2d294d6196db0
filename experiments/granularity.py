"""Finding 5: finer conditions overfit more: unconditional < k-means pseudo-labels (k) / classes.

The factors job's `granularity` sweep gives the analytic curves (y_delta conditioned on nothing,
the classes, k-means clusters) and writes the pseudo-labels k{k}.npz that the trained runs use
(data.labels="pseudo"); the trained runs give the network's gap per condition.

    python experiments/granularity.py         # local: digits, k in 2/10/50, ~30 min
    python experiments/granularity.py --config=configs/experiments.py:granularity,paper \
        --config.data_dir=/path/to/tfds       # CIFAR-10 DDPM++, k in 2/10/100/500

Figures: peak_gap_vs_value.png (x: number of conditions; trained runs and the analytic y_delta),
gap_curves.png, peak_gap_over_training.png, analytic_gap_curves.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "granularity"


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    e["num_conditions"] = e["value"]
  analytic = common.factor_curves(ctx.results["factors_granularity"], "granularity")
  # Analytic series as the trained ones: k-means as a line over k, none and classes as points.
  kind = lambda c: "k-means" if c["condition"].startswith("k=") else c["condition"]
  series = list(dict.fromkeys((c["group"], kind(c)) for c in analytic))
  extra = [(f"analytic y_delta ({g}): {k}",
            [c["value"] for c in analytic if (c["group"], kind(c)) == (g, k)],
            [c["peak_gap"] for c in analytic if (c["group"], kind(c)) == (g, k)], "--s")
           for g, k in series]
  common.gap_sweep_figures(ctx, entries, x_key="num_conditions", xlabel="number of conditions",
                           extra_series=extra, one_panel=True)
  common.line_plot(ctx.figure("analytic_gap_curves.png"),
                   [(c["label"], ctx.results["factors_granularity"]["sweeps"]["granularity"]
                     ["sigmas"], c["gap"], "-") for c in analytic],
                   xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="Analytic: y_delta per condition granularity")
  keep = ("label", "group", "value", "condition", "peak_gap", "peak_sigma", "gap")
  return {"trained": entries, "analytic": [{k: c.get(k) for k in keep} for c in analytic],
          "sigmas_analytic": ctx.results["factors_granularity"]["sweeps"]["granularity"]["sigmas"]}


if __name__ == "__main__":
  common.main(FINDING, gather)
