"""Figures of membership inference by sigma over a run's snapshots (evaluation/membership.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402


def membership_over_training(path, sigmas, aucs, tprs, images_seen, fpr: float = 0.01,
                             auc_band=None, title: str = "") -> None:
  """AUC(sigma) and TPR at `fpr` (sigma) per snapshot, coloured by images seen.

  aucs, tprs: (K, S); auc_band: optional ((S,) low, (S,) high) of the last snapshot's AUC.
  """
  seen = np.asarray(images_seen, np.float64)
  norm = (colors.LogNorm(max(seen.min(), 1), max(seen.max(), 2)) if seen.min() > 0 and len(seen) > 1
          else colors.Normalize(seen.min(), seen.max() + 1))
  cmap = plt.get_cmap("viridis")
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
  for a, t, n in zip(aucs, tprs, seen):
    axes[0].plot(sigmas, a, color=cmap(norm(n)), lw=1.2)
    axes[1].plot(sigmas, t, color=cmap(norm(n)), lw=1.2)
  if auc_band is not None:
    axes[0].fill_between(sigmas, auc_band[0], auc_band[1], color="0.6", alpha=0.35,
                         label="last snapshot, 95% interval")
    axes[0].legend(fontsize=8, loc="upper right")
  axes[0].axhline(0.5, color="0.5", lw=0.8, ls="--")
  axes[1].axhline(fpr, color="0.5", lw=0.8, ls="--")
  axes[0].set_ylabel("membership AUC (train vs validation)")
  axes[1].set_ylabel(f"TPR at {100 * fpr:g}% FPR")
  for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel(r"$\sigma$")
  fig.suptitle(title or "Membership inference from per-image denoising errors")
  fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="images seen")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
