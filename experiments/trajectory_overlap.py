"""Finding 8: sampling trajectories avoid the noisy training samples where the network overfits.

From the evaluate job's samples section of the U-Net and DiT runs (shared with training_time):
early-stopped sampling (G_FD of D(x_i; sigma_i) vs sigma_i, per snapshot), trajectory overlap
with noisy training / validation samples, and 1-NN cosine similarity over snapshots.

    python experiments/trajectory_overlap.py  # local: the training_time runs (~15 min if not run yet)
    python experiments/trajectory_overlap.py --config=configs/experiments.py:trajectory_overlap,paper \
        --config.data_dir=/path/to/tfds

Figures: early_stop_gap_fd.png, trajectory_overlap.png, nn_similarity.png,
nn_similarity_over_training.png, and each run's own PNGs (<run>_*.png).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "trajectory_overlap"
COPIED = ("early_stop_gap_fd.png", "trajectory_overlap.png", "nn_similarity.png")


def gather(ctx):
  models, early, overlap, sims, sims_time = {}, [], [], [], []
  for name, group, _ in ctx.sweep():
    samples = ctx.results[name]["samples"]
    steps = sorted(int(k) for k in samples["snapshots"])
    records = [samples["snapshots"][str(k)] for k in steps]
    last = records[-1]
    models[group] = {
        "run": name, "steps": steps, "images_seen": [r["images_seen"] for r in records],
        "early_stop": [r["early_stop"] for r in records], "overlap_last": last.get("overlap"),
        "nn_similarity_last": last.get("nn_similarity"),
        "nn_similarity_mean_over_steps": samples["summary"].get("nn_similarity_mean_over_steps"),
        # The paper: stopping at the peak sigma already shows ~11% of the sample gap.
        "early_stop_at_peak": common.early_stop_share(
            last, ctx.results[name]["summary"]["peak_sigma"][-1])}
    early += [(group, f"{r['images_seen']} img", r["early_stop"]["sigmas"], r["early_stop"]["gap"])
              for r in records]
    for kind, stats in (last.get("overlap") or {}).items():
      if kind != "sigmas":
        overlap.append((group, kind, last["overlap"]["sigmas"], stats["relative_nn"]))
    for key, values in (last.get("nn_similarity") or {}).items():
      if key != "sigmas":
        sims.append((group, key, last["nn_similarity"]["sigmas"], values))
    for key, values in (models[group]["nn_similarity_mean_over_steps"] or {}).items():
      sims_time.append((group, key, models[group]["images_seen"], values))
    for png in COPIED:
      ctx.copy(os.path.join(ctx.workdirs[name], "evaluation", png), f"{name}_{png}")
  panels = list(models)
  common.line_plot(ctx.figure("early_stop_gap_fd.png"), early, panels=panels, logx=True,
                   xlabel="sigma_i where sampling stopped", ylabel="G_FD of D(x_i; sigma_i)",
                   zero_line=True, title="Early-stopped sampling")
  common.line_plot(ctx.figure("trajectory_overlap.png"), overlap, panels=panels, logx=True,
                   xlabel="sigma", ylabel="relative NN distance to the training set",
                   title="Trajectory overlap (last snapshot)")
  common.line_plot(ctx.figure("nn_similarity.png"), sims, panels=panels, logx=True,
                   xlabel="sigma", ylabel="1-NN cosine similarity",
                   title="1-NN similarity (last snapshot)")
  common.line_plot(ctx.figure("nn_similarity_over_training.png"), sims_time, panels=panels,
                   xlabel="images seen", ylabel="1-NN cosine similarity (mean over steps)",
                   title="1-NN similarity over training")
  return {"models": models}


if __name__ == "__main__":
  common.main(FINDING, gather)
