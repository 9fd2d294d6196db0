"""Figures of the `ladder` job (jobs/ladder.py), from its results.json.

    ladder_r2.png           r2 vs sigma, one line per rung, one panel per input set
    ladder_calibration.png  calibrated patch size vs sigma per local rung, and each candidate size's
                            mean squared distance to the network vs sigma (one panel per rung)
    ladder_gap.png          G(sigma) of every rung beside the network's
r2 and G are drawn with their 95% intervals as shaded bands where the results carry them (r2_low /
r2_high, gap_low / gap_high; results written before them are drawn as plain lines).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

R2_FLOOR = -1.0  # r2 below this is drawn at the floor (a rung far off would flatten the rest)


def _array(values) -> np.ndarray:
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _band(ax, x, entry, key: str, color, floor=None) -> None:
  """Shades entry[key + "_low"] .. entry[key + "_high"] over x where the entry carries them (an
  undefined bound leaves a gap; floor: bounds below it drawn at it, as the curve is)."""
  if entry.get(f"{key}_low") is None or entry.get(f"{key}_high") is None:
    return
  low, high = _array(entry[f"{key}_low"]), _array(entry[f"{key}_high"])
  if floor is not None:
    low, high = np.maximum(low, floor), np.maximum(high, floor)
  ok = np.isfinite(low) & np.isfinite(high)
  ax.fill_between(x, np.where(ok, low, np.nan), np.where(ok, high, np.nan), color=color,
                  alpha=0.2, lw=0)


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _styles(names):
  cmap = plt.get_cmap("tab10")
  return {n: cmap(i % 10) for i, n in enumerate(names)}


def r2_vs_sigma(path: str, agreement: Dict[str, Any], title: str = "") -> None:
  sets = list(agreement)
  names = list(next(iter(agreement.values()))["rungs"]) if sets else []
  colour = _styles(names)
  fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.2), squeeze=False)
  for ax, set_name in zip(axes[0], sets):
    section = agreement[set_name]
    sigmas = _array(section["sigmas"])
    for name, a in section["rungs"].items():
      r2 = _array(a["r2"])
      ax.plot(sigmas, np.maximum(r2, R2_FLOOR), "-o", ms=3, color=colour[name], label=name)
      _band(ax, sigmas, a, "r2", colour[name], floor=R2_FLOOR)
    ax.set_xscale("log")
    ax.set_ylim(R2_FLOOR - 0.05, 1.05)
    ax.axhline(1.0, color="gray", lw=0.6)
    ax.set_xlabel("sigma")
    ax.set_ylabel("r2 (normalised by the network's output variance)")
    ax.set_title(f"{set_name} inputs")
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  _save(fig, path)


def calibration(path: str, section: Dict[str, Any]) -> None:
  machines = section["machines"]
  sigmas = _array(section["sigmas"])
  sizes = list(section["sizes"])
  n = 1 + len(machines)
  fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 4.2), squeeze=False)
  ax = axes[0][0]
  for name, m in machines.items():
    best = _array(m["best_size"])
    ax.plot(sigmas, np.where(best > 0, best, np.nan), "-o", ms=3, label=name)  # -1: no size
  ax.set_xscale("log")
  ax.set_xlabel("sigma")
  ax.set_ylabel("calibrated patch size k")
  ax.set_title(f"closest patch size ({section['on']} inputs)")
  ax.set_yticks(sizes)
  if machines:
    ax.legend(fontsize=7)
  cmap = plt.get_cmap("viridis")
  for ax, (name, m) in zip(axes[0][1:], machines.items()):
    mse = np.asarray([_array(row) for row in m["mse"]])
    for i, k in enumerate(sizes):
      ax.plot(sigmas, mse[i], "-", color=cmap(i / max(1, len(sizes) - 1)), label=f"k={k}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma")
    ax.set_ylabel("mean squared distance to the network")
    ax.set_title(f"{name}: distance per candidate size")
    ax.legend(fontsize=7)
  _save(fig, path)


def gaps(path: str, section: Dict[str, Any], title: str = "") -> None:
  sigmas = _array(section["sigmas"])
  names = list(section["denoisers"])
  colour = _styles([n for n in names if n != "network"])
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for name in names:
    g = _array(section["denoisers"][name]["gap"])
    color = "black" if name == "network" else colour[name]
    if name == "network":
      ax.plot(sigmas, g, "-", color=color, lw=2.4, label="network")
    else:
      ax.plot(sigmas, g, "--o", ms=3, color=color, label=name)
    _band(ax, sigmas, section["denoisers"][name], "gap", color)
  ax.set_xscale("log")
  ax.set_yscale("symlog", linthresh=1e-2)
  ax.axhline(0.0, color="gray", lw=0.6)
  ax.set_xlabel("sigma")
  ax.set_ylabel("G(sigma) = (E_val - E_train) / E_train")
  ax.set_title(title or "Denoising gap of each rung and of the network")
  ax.legend(fontsize=7)
  _save(fig, path)


def draw(results: Dict[str, Any], out_dir: str) -> List[str]:
  """Draws the three figures of a ladder results dict into out_dir; returns the paths."""
  s = results["settings"]
  # A run's snapshot, or a hook's file (run_dir null, step the file name).
  source = s["run_dir"] or s.get("snapshot") or ""
  what = (f"{os.path.basename(source.rstrip('/'))} step {s['step']}" if s["run_dir"]
          else os.path.basename(source))
  paths = [os.path.join(out_dir, name) for name in
           ("ladder_r2.png", "ladder_calibration.png", "ladder_gap.png")]
  r2_vs_sigma(paths[0], results["agreement"], title=f"Network vs analytic rungs ({what})")
  calibration(paths[1], results["calibration"])
  gaps(paths[2], results["gaps"], title=f"G(sigma): rungs and network ({what})")
  return paths
