"""Finding 9: the sample-level gap (Frechet distance, G_FD) stays small and saturates while the
denoising gap keeps growing; the copy fraction of samples (Gu et al. 2023).

From the evaluate job of the U-Net and DiT runs (shared with training_time).

    python experiments/sample_gap.py          # local: the training_time runs (~15 min if not run yet)
    python experiments/sample_gap.py --config=configs/experiments.py:sample_gap,paper \
        --config.data_dir=/path/to/tfds

Figures: gaps_over_training.png (G_FD in classifier features and in pixels vs images seen, with the
G_FD of a copier and of fresh real images as its scale), denoising_gap_over_training.png (the peak
denoising G), copy_fraction.png, and each run's samples_vs_nearest_train.png (<run>_*.png).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "sample_gap"


def gather(ctx):
  models, gaps, denoising, copies = {}, [], [], []
  for name, group, _ in ctx.sweep():
    summary = ctx.results[name]["summary"]
    s = ctx.results[name]["samples"]["summary"]
    peak = dict(zip(summary["images_seen"], summary["peak_gap"]))
    m = {"run": name, "images_seen": s["images_seen"],
         "peak_denoising_gap": [peak.get(n) for n in s["images_seen"]],
         "gap_fd_features": s["gap_fd_features"], "gap_fd_pixels": s["gap_fd_pixels"],
         # 95% over the samples, where the run's evaluation kept it (None for older snapshots)
         **{f"gap_fd_{sp}_{end}": s.get(f"gap_fd_{sp}_{end}") for sp in ("features", "pixels")
            for end in ("low", "high")},
         "copy_fraction": s["copy_fraction"],  # with its 95% Wilson interval over the samples
         "copy_fraction_low": s.get("copy_fraction_low"),
         "copy_fraction_high": s.get("copy_fraction_high"),
         "copy_fraction_validation_control": s["copy_fraction_validation_control"],
         "feature": ctx.results[name]["samples"]["protocol"]["feature"]}
    models[group] = m
    m["baselines"] = ctx.results[name]["samples"].get("baselines")
    denoising += [(group, "peak denoising G", m["images_seen"], m["peak_denoising_gap"])]
    gaps += [(group, "G_FD (features)", m["images_seen"], m["gap_fd_features"], None,
              common.interval(m, "gap_fd_features")),
             (group, "G_FD (pixels)", m["images_seen"], m["gap_fd_pixels"], None,
              common.interval(m, "gap_fd_pixels"))]
    for kind, style in (("copier", ":"), ("real", "-.")):  # G_FD's scale
      b = (m["baselines"] or {}).get(kind)
      if b:
        gaps += [(group, f"{'copier' if kind == 'copier' else 'fresh real images'} ({space})",
                  m["images_seen"], [b[space]["gap"]] * len(m["images_seen"]), style)
                 for space in ("features", "pixels")]
    copies += [(group, m["images_seen"], m["copy_fraction"], None,
                common.interval(m, "copy_fraction")),
               (f"{group} validation control", m["images_seen"],
                m["copy_fraction_validation_control"], "--")]
    ctx.copy(os.path.join(ctx.workdirs[name], "evaluation", "samples_vs_nearest_train.png"),
             f"{name}_samples_vs_nearest_train.png")
  # Two figures, each on its own axis: the denoising gap spans decades, G_FD stays within its
  # scale (a copier's G_FD and fresh real images'), which one shared axis would squash.
  common.line_plot(ctx.figure("gaps_over_training.png"), gaps, panels=list(models),
                   xlabel="images seen", ylabel="G_FD = (FD_val - FD_train) / FD_train",
                   zero_line=True, title="Sample-level gap, with a copier's and real images'")
  common.line_plot(ctx.figure("denoising_gap_over_training.png"), denoising, panels=list(models),
                   xlabel="images seen", ylabel="peak denoising G",
                   title="Denoising gap (peak over sigma)")
  common.line_plot(ctx.figure("copy_fraction.png"), copies, xlabel="images seen",
                   ylabel="fraction of samples that copy a training image",
                   title="Copies (nearest < 1/3 second nearest; 95% Wilson band)")
  return {"models": models}


if __name__ == "__main__":
  common.main(FINDING, gather)
