"""Finding 13: which analytic denoiser predicts each trained network best, per sigma (analytic.md
section 1): the `ladder` job on the last snapshot of the shared U-Net and DiT runs (8x8 digits) and,
in the local mode, of a U-Net trained on 128 Fashion-MNIST images at 28x28.

For each network: r2 (normalised by the network's output variance) of every rung (y*, y_delta,
LS / ELS / PSPC at their calibrated patch sizes, Gaussian full and rank r) on noised training
images, noised validation images and the network's own trajectory states; the calibrated patch
size vs sigma; each rung's G(sigma) beside the network's, compared on the log scale of
E_val / E_train: per sigma the closest-G rung, and the fraction of sigmas at which the rung that
predicts the network best (on noised training / validation images) is also the closest-G rung.

    python experiments/analytic_ladder.py     # local: digits (+ the shared U-Net/DiT runs)
    python experiments/analytic_ladder.py --config=configs/experiments.py:analytic_ladder,paper \
        --config.data_dir=/path/to/tfds

Figures: best_r2.png (the highest r2 of each rung vs sigma on the trajectory, one panel per
network), calibrated_size.png (calibrated patch size vs sigma, both networks), and each ladder
job's own ladder_r2 / ladder_calibration / ladder_gap figures prefixed by the network.
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "analytic_ladder"
NETWORKS = {"U-Net": "ladder_unet", "DiT": "ladder_dit",
            "U-Net Fashion-MNIST 28x28": "ladder_fashion_unet"}
SET = "trajectory"  # the set the best rung is read on (the calibration set of Kamb & Ganguli)


def gather(ctx):
  out, r2_series, size_series = {}, [], []
  networks = {net: run for net, run in NETWORKS.items() if run in ctx.results}  # (smoke: no Fashion)
  for net, run in networks.items():
    res = ctx.results[run]
    s = res["summary"]
    traj = res["agreement"][SET]
    counts = collections.Counter(s["best_rung"][SET])
    best_overall = counts.most_common(1)[0][0]
    cal = res["calibration"]
    out[net] = {
        "step": res["settings"]["step"], "images_seen": res["settings"]["images_seen"],
        "rungs": res["settings"]["rungs"],
        "best_rung": s["best_rung"], "best_r2": s["best_r2"],
        "sigmas": {k: v["sigmas"] for k, v in res["agreement"].items()},
        "r2": {k: {r: a["r2"] for r, a in v["rungs"].items()} for k, v in res["agreement"].items()},
        "r2_interval": {k: {r: common.interval(a, "r2") for r, a in v["rungs"].items()}
                        for k, v in res["agreement"].items()},
        "calibration": {"on": cal["on"], "sigmas": cal["sigmas"],
                        "best_size": {m: v["best_size"] for m, v in cal["machines"].items()}},
        "gap_sigmas": res["gaps"]["sigmas"],
        "gap": {n: c["gap"] for n, c in res["gaps"]["denoisers"].items()},
        "gap_interval": {n: common.interval(c, "gap") for n, c in res["gaps"]["denoisers"].items()},
        "gap_distance": s["gap_distance"], "closest_gap_rung": s["closest_gap_rung"],
        "closest_gap_rung_overall": s["closest_gap_rung_overall"],
        "most_often_best_rung": best_overall,
        "best_rung_predicts_gap": s["best_rung_predicts_gap"],
        "most_often_best_rung_is_closest_gap": best_overall == s["closest_gap_rung_overall"],
    }
    r2_series += [(net, rung, traj["sigmas"], a["r2"], None, common.interval(a, "r2"))
                  for rung, a in traj["rungs"].items()]
    size_series += [(f"{net} {m}", cal["sigmas"], v["best_size"])
                    for m, v in cal["machines"].items()]
    for name in ("ladder_r2.png", "ladder_calibration.png", "ladder_gap.png"):
      ctx.copy(os.path.join(ctx.workdirs[run], name), f"{run}_{name}")
  common.line_plot(ctx.figure("best_r2.png"), r2_series, panels=list(networks), logx=True,
                   xlabel="sigma", ylim=(-0.5, 1.02),
                   ylabel=f"r2 on the network's {SET} states (axis clipped at -0.5)"
                   + ("\nbands: 95% interval over the states" if any(x[5] for x in r2_series)
                      else ""),
                   title="Analytic rungs vs trained networks")
  if size_series:
    common.line_plot(ctx.figure("calibrated_size.png"), size_series, logx=True, xlabel="sigma",
                     ylabel="calibrated patch size k", title="Calibrated patch size vs sigma")
  return {"networks": out}


if __name__ == "__main__":
  common.main(FINDING, gather)
