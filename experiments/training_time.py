"""Finding 2: G(sigma) grows over training time, with a per-sigma overfitting onset (U-Net, DiT).

    python experiments/training_time.py                      # local: digits, ~15 min on 2 cores
    python experiments/training_time.py --config=configs/experiments.py:training_time,paper \
        --config.data_dir=/path/to/tfds                      # CIFAR-10 DDPM++ and DiT-B/2

Figures: gap_over_training.png (G(sigma) per snapshot), peak_gap_vs_images.png, gap_at_sigmas.png
(G at fixed sigmas vs images seen, with the 95% interval bands), onset.png (images seen at the
overfitting onset vs sigma).

    python experiments/training_time.py --replot  # the figures again from results.json (no run)
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402

FINDING = "training_time"


# The k-th model's "no onset yet" markers are drawn at the last snapshot x (1 + NO_ONSET_RAISE * k):
# models that share the last snapshot would otherwise hide each other's markers.
NO_ONSET_RAISE = 0.04


def onset_series(models):
  """The onset per sigma where E_val rose after its minimum (points); where it has not risen yet
  the onset is at least the last snapshot, drawn apart (triangles), never as a value: at the last
  snapshot for the first model, raised by NO_ONSET_RAISE per later model (said in the label) so
  that models with the same last snapshot show both."""
  out, k = [], 0
  for g, m in models.items():
    seen, rises = m.get("onset_images_seen"), m.get("onset_rises")
    if not seen:
      continue
    sigmas, seen, rises = np.asarray(m["sigmas"]), np.asarray(seen, float), np.asarray(rises, bool)
    out.append((g, sigmas[rises], seen[rises], "o"))
    if np.any(~rises):
      raise_by = 1.0 + NO_ONSET_RAISE * k
      drawn = f", drawn x{raise_by:g}" if k else ""
      out.append((f"{g}: no onset yet (>= last snapshot{drawn})", sigmas[~rises],
                  np.full((~rises).sum(), max(m["images_seen"]) * raise_by), "^"))
    k += 1
  return out


def gap_at_sigmas_series(g, m):
  """(panel, label, images seen, G at sigma s, style, (low, high)) per fixed sigma s of a model:
  the evaluate job interpolates G linearly in log sigma between the protocol's sigmas
  (gap.gap_vs_images); its 95% interval over images is interpolated alike from gap_low / gap_high
  (None where the results do not carry them)."""
  from diffgen_jax.evaluation import gap  # pylint: disable=import-outside-toplevel
  kept = m.get("gap_low") and all(v is not None for v in m["gap_low"] + m["gap_high"])
  at = [float(s) for s in m["gap_at_sigmas"]]
  ends = ([gap.gap_vs_images(m["sigmas"], m[key], m["images_seen"], at)[1] for key in
           ("gap_low", "gap_high")] if kept else None)  # (K, A) each: the same interpolation as G
  return [(g, f"sigma={s}", m["images_seen"], values, None,
           None if ends is None else (ends[0][:, a].tolist(), ends[1][:, a].tolist()))
          for a, (s, values) in enumerate(m["gap_at_sigmas"].items())]


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  models = numbers["models"]
  names = list(models)
  common.line_plot(ctx.figure("gap_over_training.png"),
                   [s for g in names for s in common.gap_over_training_series(g, models[g])],
                   panels=names, xlabel="sigma", ylabel="G(sigma)", logx=True, zero_line=True,
                   title="Denoising gap over training time")
  common.line_plot(ctx.figure("peak_gap_vs_images.png"),
                   [(g, m["images_seen"], m["peak_gap"], None, common.interval(m, "peak_gap"))
                    for g, m in models.items()],
                   xlabel="images seen", ylabel="peak G (95% interval over images where kept)",
                   zero_line=True,
                   title="Peak denoising gap over training")
  at_sigmas = [s for g in names for s in gap_at_sigmas_series(g, models[g])]
  bands = any(s[5] is not None for s in at_sigmas)
  common.line_plot(ctx.figure("gap_at_sigmas.png"), at_sigmas,
                   panels=names, xlabel="images seen",
                   ylabel="G(sigma)" + (", 95% interval over images" if bands else ""),
                   zero_line=True, title="G at fixed sigma over training")
  series = onset_series(models)
  raised = any("drawn x" in s[0] for s in series)
  common.line_plot(ctx.figure("onset.png"), series,
                   xlabel="sigma", ylabel="images seen at the onset (min E_val)", logx=True,
                   title="Overfitting onset per sigma\n^ no onset yet: drawn at the last snapshot"
                         + (f", x{1 + NO_ONSET_RAISE:g} per later model" if raised else ""))


def gather(ctx):
  models = {}
  for name, group, _ in ctx.sweep():
    models[group] = dict(common.train_curves(ctx.results[name]), run=name)
    models[group].pop("e_train"), models[group].pop("e_val")
  numbers = {"models": models}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
