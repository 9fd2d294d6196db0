"""Figures of the 2D toy model (paper.md section 5), drawn with matplotlib's Agg backend.

Each function takes the plain arrays an experiment in diffgen_jax.toy2d computed and writes one PNG.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402

_TRAIN = dict(marker="o", s=36, c="black", edgecolors="white", linewidths=0.8, zorder=5,
              label="training points")
_VAL = dict(marker="X", s=46, c="tab:red", edgecolors="white", linewidths=0.6, zorder=5,
            label="validation points")


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _circle(ax, radius, **kw):
  t = np.linspace(0, 2 * np.pi, 400)
  ax.plot(radius * np.cos(t), radius * np.sin(t), **{"color": "0.6", "lw": 0.8, "ls": ":", **kw})


def flow_field(path, axis, sigmas, field, train, val):
  """(a) |y*(x) - x| as colour with streamlines of y*(x) - x, one panel per sigma."""
  fig, axes = plt.subplots(1, len(sigmas), figsize=(5.4 * len(sigmas), 4.8), squeeze=False,
                           layout="constrained")
  for ax, sigma, f in zip(axes[0], sigmas, field):
    mag = np.linalg.norm(f, axis=-1)
    mesh = ax.pcolormesh(axis, axis, mag, cmap="magma", shading="auto")
    fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.04, label=r"$|y^*(x) - x|$")
    ax.streamplot(axis, axis, f[..., 0], f[..., 1], color="white", density=1.3, linewidth=0.6,
                  arrowsize=0.7)
    ax.scatter(train[:, 0], train[:, 1], **_TRAIN)
    ax.scatter(val[:, 0], val[:, 1], **_VAL)
    ax.set_title(rf"$\sigma$ = {sigma:.3g}")
    ax.set_aspect("equal")
    ax.set_xlim(axis[0], axis[-1])
    ax.set_ylim(axis[0], axis[-1])
    ax.set_xlabel("x1")
  axes[0, 0].set_ylabel("x2")
  axes[0, 0].legend(loc="lower left", fontsize=8, framealpha=0.8)
  fig.suptitle(r"Flow field $y^*(x) - x$ of the empirical optimal denoiser ($\delta$ = 0)")
  _save(fig, path)


def relative_error(path, angles, curves, train_angles, val_angles, sigma):
  """(b) relative denoising error along the circle, one line per delta."""
  fig, ax = plt.subplots(figsize=(9, 4.2))
  deg = np.degrees(angles)
  for i, t in enumerate(np.degrees(np.mod(train_angles, 2 * np.pi))):
    ax.axvline(t, color="black", lw=0.6, alpha=0.5, label="training angles" if i == 0 else None)
  for i, t in enumerate(np.degrees(np.mod(val_angles, 2 * np.pi))):
    ax.axvline(t, color="tab:red", lw=0.6, ls="--", alpha=0.5,
               label="validation angles" if i == 0 else None)
  order = np.argsort(np.mod(deg, 360))
  for c in curves:
    ax.plot(np.mod(deg, 360)[order], np.asarray(c["values"])[order], lw=1.6, label=c["label"])
  ax.axhline(0, color="0.3", lw=0.8)
  ax.set_xlim(0, 360 if np.ptp(np.mod(deg, 360)) > 180 else 180)  # the authors': [0, 180)
  ax.set_xlabel("angle on the circle (degrees)")
  ax.set_ylabel(r"$(E(\theta) - E_{train}) / E_{train}$")
  ax.set_title(rf"Relative denoising error along the circle, $\sigma$ = {sigma:.3g}")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  _save(fig, path)


def gap_curves(path, sigmas, curves, name, title, note=""):
  """(c)-(e) G(sigma) on a log-x axis, one curve per parameter value coloured by it.

  Curves with a "spread" entry (expected curves) get a band of +-spread: where a single estimate
  from a few draws per point would typically land. Bands of neighbouring curves overlap, so only
  the first, middle and last curve carry one.
  """
  values = np.asarray([c["parameter"][name] for c in curves], np.float64)
  norm = colors.Normalize(vmin=values.min(), vmax=values.max() if values.max() > values.min()
                          else values.min() + 1)
  cmap = plt.get_cmap("viridis")
  fig, ax = plt.subplots(figsize=(7.5, 4.6))
  banded = sorted({0, len(curves) // 2, len(curves) - 1})
  for i, (c, v) in enumerate(zip(curves, values)):
    g = np.asarray(c["values"], np.float64)
    if "spread" in c and i in banded:
      spread = np.asarray(c["spread"], np.float64)
      ax.fill_between(sigmas, g - spread, g + spread, color=cmap(norm(v)), alpha=0.2, lw=0)
    if "expected" in c and i in banded:  # an estimate with its expected curve beside it
      e = np.asarray(c["expected"]["values"], np.float64)
      spread = np.asarray(c["expected"]["spread"], np.float64)
      ax.fill_between(sigmas, e - spread, e + spread, color=cmap(norm(v)), alpha=0.2, lw=0)
      ax.plot(sigmas, e, color=cmap(norm(v)), lw=1.2, ls="--")
    ax.plot(sigmas, g, color=cmap(norm(v)), lw=1.5)
    ax.plot([c["peak_sigma"]], [c["peak_value"]], "o", color=cmap(norm(v)), ms=3)
  ax.axhline(0, color="0.3", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel(r"$\sigma$")
  ax.set_ylabel(r"$G(\sigma) = (E_{val} - E_{train}) / E_{train}$")
  ax.set_title(f"{title}\n{note}" if note else title, fontsize=11)
  sm = cm.ScalarMappable(norm=norm, cmap=cmap)
  fig.colorbar(sm, ax=ax, label={"delta": r"$\delta$", "w": "guidance weight w",
                                 "num_train": "training points"}.get(name, name))
  _save(fig, path)


def trajectories(path, runs, train, val, radius):
  """(f) sampling trajectories and endpoints, one panel per delta."""
  fig, axes = plt.subplots(1, len(runs), figsize=(4.8 * len(runs), 4.8), squeeze=False)
  lim = 1.6 * radius
  for ax, r in zip(axes[0], runs):
    paths = np.asarray(r["plotted_trajectories"])
    for p in paths:
      ax.plot(p[:, 0], p[:, 1], color="tab:blue", lw=0.6, alpha=0.5)
    ends = np.asarray(r["endpoints"])
    ax.scatter(ends[:, 0], ends[:, 1], s=5, c="tab:orange", alpha=0.5, zorder=6,
               label=f"endpoints ({len(ends)})")
    _circle(ax, radius)
    # Hollow training markers, so endpoints sitting exactly on them stay visible.
    ax.scatter(train[:, 0], train[:, 1], **{**_TRAIN, "c": None, "facecolors": "none",
                                            "edgecolors": "black", "s": 70, "linewidths": 1.4,
                                            "zorder": 7})
    ax.scatter(val[:, 0], val[:, 1], **_VAL)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(f"{r['label']}: {100 * r['fraction_within_tol_of_train']:.0f}% on train, "
                 f"{100 * r['fraction_within_tol_of_val']:.0f}% on val", fontsize=10)
  axes[0, 0].legend(loc="lower left", fontsize=8, framealpha=0.8)
  fig.suptitle(f"Euler sampling trajectories ({len(runs[0]['plotted_trajectories'])} shown)")
  _save(fig, path)


def frechet(path, deltas, fd_train, fd_val, g_fd, fd_sets=None, dataset=""):
  """(g) FD of samples to the train and validation sets, and G_FD, vs delta."""
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  ax1.plot(deltas, fd_train, "o-", label=r"FD(samples, train)")
  ax1.plot(deltas, fd_val, "s-", label=r"FD(samples, val)")
  if fd_sets is not None:
    ax1.axhline(fd_sets, color="0.4", ls="--", lw=1, label="FD(train set, val set)")
  ax1.set_xlabel(r"model error $\delta$")
  ax1.set_ylabel("Frechet distance (2D)")
  ax1.set_title(f"Frechet distance of samples ({dataset} set)" if dataset else
                "Frechet distance of samples")
  ax1.legend()
  ax2.plot(deltas, g_fd, "o-", color="tab:green")
  ax2.axhline(0, color="0.3", lw=0.8)
  ax2.set_xlabel(r"model error $\delta$")
  ax2.set_ylabel(r"$G_{FD} = (FD_{val} - FD_{train}) / FD_{train}$")
  ax2.set_title("Sample-level gap")
  fig.tight_layout()
  _save(fig, path)


def plot_experiment(name, data, path):
  """Dispatches an experiment's plot data (from diffgen_jax.toy2d) to its figure."""
  if name == "flow_field":
    flow_field(path, data["axis"], data["sigmas"], data["field"], data["train"], data["val"])
  elif name == "relative_error":
    relative_error(path, data["angles"], data["curves"], data["train_angles"], data["val_angles"],
                   data["sigma"])
  elif name in ("gap_vs_delta", "gap_vs_density", "guidance"):
    gap_curves(path, data["sigmas"], data["curves"], data["name"], data["title"],
               data.get("note", ""))
  elif name == "trajectories":
    trajectories(path, data["runs"], data["train"], data["val"], data["radius"])
  elif name == "frechet":
    frechet(path, data["deltas"], data["fd_train"], data["fd_val"], data["g_fd"],
            data.get("fd_sets"), data.get("dataset", ""))
  else:
    raise ValueError(f"no plot for experiment {name!r}")
