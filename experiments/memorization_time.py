"""Finding 12: memorization time scales against the training-set size N.

Bonnaire, Urfin, Biroli & Mezard (NeurIPS 2025) report that tau_mem, the training time at which
samples start to copy training images, grows linearly with N while tau_gen, the time at which
samples become good, does not depend on N (analytic.md section 2). Here, on U-Nets trained on both
disjoint subsets S1, S2 of each size N (two independent estimates per N; runs shared with
disjoint_subsets), from every snapshot (`evaluation.timescales`):
  * tau_mem: the copy fraction of the same seed-paired samples (fixed noise) against the run's own
    training set first reaches config.diagnostics.tau_mem_threshold;
  * tau_gen: the Frechet distance of the samples to the validation split, in classifier features,
    first falls to tau_gen_fd_multiple x the FD of the same number of real training images;
  * tau_G: the peak over sigma of G(sigma) (the evaluate job's per-image errors) first reaches
    tau_gap_threshold; and the overfitting onset at the last snapshot's peak sigma;
each with a percentile-bootstrap interval (samples or images resampled jointly over snapshots;
each snapshot's copy fraction has its Wilson interval over the samples), and the log-log slope of each against N (`timescales.loglog_slope`). Membership inference (peak
AUC over sigma, from the evaluate job) is reported over training beside them.

    python experiments/memorization_time.py               # local: digits, N = 16/32/64 per side
    python experiments/memorization_time.py --config=configs/experiments.py:memorization_time,paper \
        --config.data_dir=/path/to/tfds                   # CIFAR-10, N = 1k..8k per side

Figures: copy_fraction_over_training.png, fd_over_training.png, peak_gap_over_training.png,
membership_over_training.png, time_scales_vs_n.png.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402
from experiments import disjoint_subsets as shared  # noqa: E402

FINDING = "memorization_time"


def _per_image_errors(workdir, steps):
  """(K, N_train, S), (K, N_val, S) per-image errors of the evaluate job, or None if missing."""
  tr, va = [], []
  for step in steps:
    path = os.path.join(workdir, "evaluation", "per_image", f"{step}.npz")
    if not os.path.exists(path):
      return None
    with np.load(path) as f:
      tr.append(f["e_train"])
      va.append(f["e_val"])
  return np.stack(tr), np.stack(va)


def _crossing_record(c):
  return {"tau": c.time, "low": c.low, "high": c.high, "censored": c.censored}


def _slope_record(s):
  if s is None:
    return None
  return {"slope": s.slope, "low": s.low, "high": s.high, "intercept": s.intercept,
          "method": s.method, "points_used": int(np.sum(s.used))}


def gather(ctx):
  from diffgen_jax.evaluation import features as features_lib  # pylint: disable=import-outside-toplevel
  from diffgen_jax.evaluation import frechet, timescales  # pylint: disable=import-outside-toplevel
  from diffgen_jax.evaluation.copies import copy_flags  # pylint: disable=import-outside-toplevel
  settings = ctx.config.diagnostics
  r = int(settings.num_resamples)
  feats = None
  runs = []
  for name, group, n in ctx.sweep():
    cfg = shared.job(ctx, name)
    if feats is None:
      feats = shared.features_fn(ctx, name)
      val_x = shared.split_arrays(cfg, "validation")[0]
      val_f = features_lib.batched_features(feats, val_x)
      full_train = shared.split_arrays(shared._full(cfg), "train")[0]  # pylint: disable=protected-access
      m = int(settings.num_samples)
      rows = np.random.default_rng([settings.sample_seed, 11]).permutation(len(full_train))[:m]
      floor = frechet.frechet_distance(features_lib.batched_features(feats, full_train[rows]), val_f)
      target = float(settings.tau_gen_fd_multiple) * floor
    train_x = shared.split_arrays(cfg, "train")[0]
    samples = shared.snapshot_samples(ctx, name)
    steps = sorted(samples)
    seen = np.array([samples[s][0] for s in steps], np.float64)
    flags = np.stack([copy_flags(samples[s][1], train_x, settings.copy_ratio) for s in steps])
    sample_f = np.stack([features_lib.batched_features(feats, samples[s][1]) for s in steps])
    fd = np.array([frechet.frechet_distance(f, val_f) for f in sample_f])
    tau_mem = timescales.tau_mem(seen, flags.astype(np.float64), settings.tau_mem_threshold,
                                 num_resamples=r, seed=1)
    tau_gen = timescales.tau_gen(seen, sample_f, val_f, target, num_resamples=max(r // 5, 20),
                                 seed=2)
    low_high = [timescales.wilson_interval(float(f.mean()), len(f)) for f in flags]
    record = {"run": name, "side": group, "n": int(n), "images_seen": seen,
              "copy_fraction": flags.mean(axis=1), "copy_fraction_low": [a for a, _ in low_high],
              "copy_fraction_high": [b for _, b in low_high], "fd_features": fd,
              "tau_mem": _crossing_record(tau_mem), "tau_gen": _crossing_record(tau_gen)}
    res = ctx.results[name]
    summary = res["summary"]
    record["peak_gap"] = summary["peak_gap"]
    record["membership_peak_auc"] = summary.get("membership_peak_auc")
    record["membership_peak_sigma"] = summary.get("membership_peak_sigma")
    errors = _per_image_errors(ctx.workdirs[name], steps)
    if errors is not None:
      e_train, e_val = errors
      tau_g = timescales.tau_gap(seen, e_train, e_val, settings.tau_gap_threshold,
                                 num_resamples=r, seed=4)
      record["tau_gap"] = _crossing_record(tau_g)
      sigmas = np.asarray(res["protocol"]["sigmas"])
      j = int(np.argmin(np.abs(np.log(sigmas) - np.log(summary["peak_sigma"][-1]))))
      onset = timescales.onset_time(seen, e_val[:, :, j], num_resamples=r, seed=5)
      record["onset"] = dict(_crossing_record(onset), sigma=float(sigmas[j]))
    runs.append(record)
    print(f"[{FINDING}] {name}: tau_mem {tau_mem.time:.4g} [{tau_mem.low:.4g}, {tau_mem.high:.4g}]"
          f" {tau_mem.censored}; tau_gen {tau_gen.time:.4g} {tau_gen.censored}; tau_G "
          f"{record.get('tau_gap', {}).get('tau')}")

  sizes = [rec["n"] for rec in runs]
  slopes = {}
  for key in ("tau_mem", "tau_gen", "tau_gap", "onset"):
    if all(key in rec for rec in runs):
      crossings = [timescales.Crossing(rec[key]["tau"], rec[key]["low"], rec[key]["high"],
                                       rec[key]["censored"], np.zeros(0)) for rec in runs]
      try:
        slopes[key] = _slope_record(timescales.scaling_table(sizes, crossings))
      except ValueError as err:  # e.g. every finite tau at one size
        slopes[key] = {"error": str(err)}
  _figures(ctx, runs, settings, slopes, target)
  return {"runs": runs, "slopes": slopes, "tau_gen_fd_target": target, "fd_floor": floor,
          "thresholds": {"tau_mem": settings.tau_mem_threshold,
                         "tau_gen_fd_multiple": settings.tau_gen_fd_multiple,
                         "tau_gap": settings.tau_gap_threshold},
          "note": "taus in images seen; censored='right': not reached within the run (tau "
                  "null), 'left': reached by the first snapshot; slopes use uncensored taus only"}


def _figures(ctx, runs, settings, slopes, target):
  label = lambda rec: f"N={rec['n']} {rec['side']}"
  common.line_plot(ctx.figure("copy_fraction_over_training.png"),
                   [(label(rec), rec["images_seen"], rec["copy_fraction"], None,
                     common.interval(rec, "copy_fraction")) for rec in runs]
                   + [(f"threshold {settings.tau_mem_threshold}",
                       runs[0]["images_seen"], [settings.tau_mem_threshold] * len(
                           runs[0]["images_seen"]), ":")],
                   xlabel="images seen", ylabel="copy fraction (own training set; 95% Wilson)",
                   logx=True,
                   title="Copies of the training set over training")
  common.line_plot(ctx.figure("fd_over_training.png"),
                   [(label(rec), rec["images_seen"], rec["fd_features"]) for rec in runs]
                   + [("tau_gen target", runs[0]["images_seen"],
                       [target] * len(runs[0]["images_seen"]), ":")],
                   xlabel="images seen", ylabel="FD to validation (classifier features)",
                   logx=True, logy=True, title="Sample quality over training")
  common.line_plot(ctx.figure("peak_gap_over_training.png"),
                   [(label(rec), rec["images_seen"], rec["peak_gap"]) for rec in runs],
                   xlabel="images seen", ylabel="peak G", logx=True, logy=True,
                   title="Peak denoising gap over training")
  if all(rec.get("membership_peak_auc") for rec in runs):
    common.line_plot(ctx.figure("membership_over_training.png"),
                     [(label(rec), rec["images_seen"], rec["membership_peak_auc"]) for rec in runs],
                     xlabel="images seen", ylabel="peak membership AUC over sigma", logx=True,
                     title="Membership inference (train vs validation) over training")
  plt = common._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for k, (key, name) in enumerate((("tau_mem", "tau_mem (copies)"), ("tau_gen", "tau_gen (FD)"),
                                   ("tau_gap", "tau_G (peak G)"), ("onset", "overfitting onset"))):
    pts = [(rec["n"], rec[key]) for rec in runs if key in rec and rec[key]["censored"] == ""]
    if not pts:
      continue
    n = np.array([p[0] for p in pts], np.float64) * (1 + 0.04 * (k - 1.5))  # dodge
    tau = np.array([p[1]["tau"] for p in pts])
    lo = np.array([p[1]["low"] for p in pts])
    hi = np.array([p[1]["high"] for p in pts])
    hi = np.where(np.isfinite(hi), hi, tau * 3)
    slope = slopes.get(key) or {}
    text = f" (slope {slope['slope']:.2f} [{slope['low']:.2f}, {slope['high']:.2f}])" \
        if "slope" in slope else ""
    ax.errorbar(n, tau, yerr=[tau - lo, hi - tau], fmt="o", capsize=3, label=name + text)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("N (training images per side)")
  ax.set_ylabel("images seen")
  ax.set_title("Time scales vs training-set size (95% bootstrap intervals)")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(ctx.figure("time_scales_vs_n.png"), dpi=110, bbox_inches="tight")
  plt.close(fig)


if __name__ == "__main__":
  common.main(FINDING, gather)
