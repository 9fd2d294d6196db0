"""Finding 2: G(sigma) grows over training time, with a per-sigma overfitting onset (U-Net, DiT).

    python experiments/training_time.py                      # local: digits, ~15 min on 2 cores
    python experiments/training_time.py --config=configs/experiments.py:training_time,paper \
        --config.data_dir=/path/to/tfds                      # CIFAR-10 DDPM++ and DiT-B/2

Figures: gap_over_training.png (G(sigma) per snapshot), peak_gap_vs_images.png, gap_at_sigmas.png
(G at fixed sigmas vs images seen), onset.png (images seen at the overfitting onset vs sigma).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402

from experiments import common  # noqa: E402

FINDING = "training_time"


def onset_series(models):
  """The onset per sigma where E_val rose after its minimum (points); where it has not risen yet
  the onset is at least the last snapshot, drawn apart (open triangles), never as a value."""
  out = []
  for g, m in models.items():
    seen, rises = m.get("onset_images_seen"), m.get("onset_rises")
    if not seen:
      continue
    sigmas, seen, rises = np.asarray(m["sigmas"]), np.asarray(seen, float), np.asarray(rises, bool)
    out.append((g, sigmas[rises], seen[rises], "o"))
    if np.any(~rises):
      out.append((f"{g}: no onset yet (>= the last snapshot)", sigmas[~rises],
                  np.full((~rises).sum(), max(m["images_seen"])), "^"))
  return out


def gather(ctx):
  models = {}
  for name, group, _ in ctx.sweep():
    models[group] = dict(common.train_curves(ctx.results[name]), run=name)
    models[group].pop("e_train"), models[group].pop("e_val")
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
  common.line_plot(ctx.figure("gap_at_sigmas.png"),
                   [(g, f"sigma={s}", m["images_seen"], v) for g, m in models.items()
                    for s, v in m["gap_at_sigmas"].items()],
                   panels=names, xlabel="images seen", ylabel="G(sigma)", zero_line=True,
                   title="G at fixed sigma over training")
  common.line_plot(ctx.figure("onset.png"), onset_series(models),
                   xlabel="sigma", ylabel="images seen at the onset (min E_val)", logx=True,
                   title="Overfitting onset per sigma")
  return {"models": models}


if __name__ == "__main__":
  common.main(FINDING, gather)
