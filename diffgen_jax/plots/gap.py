"""Figures of the denoising gap of a training run over its snapshots (paper.md section 6)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def gap_over_training(path, sigmas, gaps, images_seen, onset_sigma=None, title="", band=None):
  """G(sigma) per snapshot, coloured by images seen; optional vertical line at the peak sigma and
  band = (low, high) (S,) each: the last snapshot's interval, shaded."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  seen = np.asarray(images_seen, np.float64)
  norm = colors.LogNorm(max(seen.min(), 1), max(seen.max(), 2)) if seen.min() > 0 and len(seen) > 1 \
      else colors.Normalize(seen.min(), seen.max() + 1)
  cmap = plt.get_cmap("viridis")
  for g, n in zip(gaps, seen):
    ax.plot(sigmas, g, color=cmap(norm(n)), lw=1.3)
  if band is not None:
    low, high = (np.asarray([np.nan if v is None else v for v in b], np.float64) for b in band)
    ax.fill_between(sigmas, low, high, color=cmap(norm(seen[-1])), alpha=0.25, lw=0,
                    label="last snapshot: 95% interval over images")
    ax.legend(loc="upper left", fontsize=8)
  ax.axhline(0, color="0.5", lw=0.7)
  if onset_sigma is not None:
    ax.axvline(onset_sigma, color="tab:red", ls="--", lw=1, label=rf"peak $\sigma$ = {onset_sigma:.3g}")
    ax.legend(loc="upper left", fontsize=8)
  ax.set_xscale("log")
  ax.set_xlabel(r"$\sigma$")
  ax.set_ylabel(r"$G(\sigma) = (E_{val} - E_{train}) / E_{train}$")
  ax.set_title(title or "Relative denoising gap over training")
  fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="images seen")
  _save(fig, path)


def error_curves(path, sigmas, e_train, e_val, opt_train=None, opt_val=None, title=""):
  """E_train and E_val of the last snapshot, with the optimal denoiser's for reference."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  ax.plot(sigmas, e_train, color="tab:blue", label="network, train")
  ax.plot(sigmas, e_val, color="tab:orange", label="network, validation")
  if opt_train is not None:
    ax.plot(sigmas, np.maximum(opt_train, 1e-12), color="tab:blue", ls=":", label="optimal denoiser, train")
    ax.plot(sigmas, opt_val, color="tab:orange", ls=":", label="optimal denoiser, validation")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(r"$\sigma$")
  ax.set_ylabel(r"$E(\sigma)$ (per-pixel MSE)")
  ax.set_title(title or "Denoising error")
  ax.legend(fontsize=8)
  _save(fig, path)


def gap_vs_images(path, images_seen, values, at_sigmas, onsets=None):
  """G at chosen sigmas as training goes on; dotted lines at each sigma's overfitting onset
  (the snapshot where E_val(sigma) was smallest)."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  cmap = plt.get_cmap("plasma")
  for j, s in enumerate(at_sigmas):
    color = cmap(j / max(len(at_sigmas) - 1, 1))
    ax.plot(images_seen, values[:, j], marker="o", ms=3, color=color, label=rf"$\sigma$ = {s:.3g}")
    if onsets is not None:
      ax.axvline(onsets[j], color=color, ls=":", lw=1.2)
  ax.axhline(0, color="0.5", lw=0.7)
  ax.set_xlabel("images seen")
  ax.set_ylabel(r"$G(\sigma)$")
  ax.set_title("Relative denoising gap vs training time" +
               (" (dotted: overfitting onset, min E_val)" if onsets is not None else ""))
  ax.legend(fontsize=8)
  _save(fig, path)
