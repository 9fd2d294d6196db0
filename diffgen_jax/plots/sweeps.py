"""Figures of the factor sweeps (diffgen_jax/evaluation/sweeps.py, job `factors`), from their results.json sections.

Per gap sweep: <sweep>.png, G(sigma) with one panel per group (e.g. guidance style, delta), curves
coloured by the factor value (colourbar) and labelled (legend); <sweep>_peak.png, the peak of G vs
the factor value, one line per group. Gradient scores: <sweep>_gradient_score.png.
Where a curve carries its 95% interval (gap_low / gap_high, peak_gap_low / peak_gap_high,
score_low / score_high) it is drawn: a shaded band around a curve, error bars on a peak; results
written before the intervals existed are drawn as plain lines.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402

_SPECIAL_CONDITIONS = {"none": ("s", "tab:gray"), "class": ("*", "tab:red")}


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _array(values) -> np.ndarray:
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _band(ax, x, curve: Dict[str, Any], key: str, color) -> None:
  """Shades curve[key + "_low"] .. curve[key + "_high"] over x, where the curve carries them (an
  undefined bound, e.g. where G is infinite, leaves a gap)."""
  if curve.get(f"{key}_low") is None or curve.get(f"{key}_high") is None:
    return
  low, high = _array(curve[f"{key}_low"]), _array(curve[f"{key}_high"])
  ok = np.isfinite(low) & np.isfinite(high)
  ax.fill_between(x, np.where(ok, low, np.nan), np.where(ok, high, np.nan), color=color,
                  alpha=0.2, lw=0)


def _peak_bars(curves):
  """(2, n) distances below and above each curve's peak to its interval's bounds (NaN, no bar,
  where a bound is undefined), or None when some curve lacks the interval (older results)."""
  if not all(c.get("peak_gap_low") is not None and c.get("peak_gap_high") is not None
             and c.get("peak_gap") is not None for c in curves):
    return None
  peak = _array([c["peak_gap"] for c in curves])
  low, high = _array([c["peak_gap_low"] for c in curves]), _array([c["peak_gap_high"] for c in curves])
  bars = np.stack([np.maximum(peak - low, 0.0), np.maximum(high - peak, 0.0)])
  return np.where(np.isfinite(bars).all(axis=0), bars, np.nan)  # an undefined bound: no bar


def _groups(curves: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
  out: Dict[str, List[Dict[str, Any]]] = {}
  for c in curves:
    out.setdefault(c.get("group", ""), []).append(c)
  return out


def _norm(values):
  v = np.asarray(values, np.float64)
  lo, hi = float(np.min(v)), float(np.max(v))
  if lo > 0 and hi / lo > 4:
    return colors.LogNorm(lo, hi)
  return colors.Normalize(lo, hi if hi > lo else lo + 1)


def gap_curves(path, sigmas, curves, value_name: str, title: str = "") -> None:
  """G(sigma), one panel per group, coloured by the factor value."""
  groups = _groups(curves)
  cols = min(2, len(groups))
  rows = -(-len(groups) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.3 * rows), squeeze=False)
  for ax in axes.flat[len(groups):]:
    ax.set_visible(False)
  cmap = plt.get_cmap("viridis")
  for ax, (group, members) in zip(axes.flat, groups.items()):
    values = [float(c["value"]) for c in members]
    norm = _norm(values)
    for c, v in zip(members, values):
      ax.plot(sigmas, _array(c["gap"]), color=cmap(norm(v)), lw=1.4, label=c["label"])
      _band(ax, sigmas, c, "gap", cmap(norm(v)))
    ax.axhline(0, color="0.5", lw=0.7)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel(r"$\sigma$")
    ax.set_ylabel(r"$G(\sigma) = (E_{val} - E_{train}) / E_{train}$")
    ax.set_title(f"{title} {group}".strip())
    ax.legend(fontsize=7, loc="upper left")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=value_name)
  fig.tight_layout()
  _save(fig, path)


def peak_vs_factor(path, curves, value_name: str, title: str = "") -> None:
  """The peak of G vs the factor value, one line per group (granularity: none / class marked)."""
  fig, ax = plt.subplots(figsize=(6.5, 4.3))
  for i, (group, members) in enumerate(_groups(curves).items()):
    color = plt.get_cmap("tab10")(i % 10)
    line = [c for c in members if c.get("condition") not in _SPECIAL_CONDITIONS]
    line.sort(key=lambda c: float(c["value"]))
    if line:
      ax.errorbar([float(c["value"]) for c in line], _array([c["peak_gap"] for c in line]),
                  yerr=_peak_bars(line), marker="o", color=color, capsize=3,
                  label=group or None)
    for c in members:
      special = _SPECIAL_CONDITIONS.get(c.get("condition"))
      if special and c["peak_gap"] is not None:
        ax.errorbar([float(c["value"])], [c["peak_gap"]], yerr=_peak_bars([c]),
                    marker=special[0], ms=11, ls="none", capsize=3, color=special[1],
                    label=f"{c['condition']} ({group})" if group else c["condition"])
  vals = [float(c["value"]) for c in curves]
  if min(vals) > 0 and max(vals) / min(vals) > 8:
    ax.set_xscale("log")
  peaks = _array([c["peak_gap"] for c in curves])
  if np.all(peaks[np.isfinite(peaks)] > 0) and np.any(np.isfinite(peaks)):
    ax.set_yscale("log")
  ax.set_xlabel(value_name)
  ax.set_ylabel(r"peak of $G(\sigma)$" + (" (95% interval over images)" if _peak_bars(curves)
                                            is not None else ""))
  ax.set_title(title)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  _save(fig, path)


def gradient_scores(path, sigmas, curves, title: str = "") -> None:
  """Mean distance looked at vs sigma; train images solid, validation dashed."""
  fig, ax = plt.subplots(figsize=(6.5, 4.3))
  names = sorted({c["value"] for c in curves}, key=str)
  for c in curves:
    color = plt.get_cmap("tab10")(names.index(c["value"]) % 10)
    ax.plot(sigmas, _array(c["score"]), marker="o", ms=3, color=color,
            ls="-" if c["group"] == "train" else "--", label=c["label"])
    _band(ax, sigmas, c, "score", color)
  ax.set_xscale("log")
  ax.set_xlabel(r"$\sigma$")
  ax.set_ylabel("input-gradient correlation score (pixels)")
  ax.set_title(title or "Where the denoiser looks")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  _save(fig, path)


def guidance_sample_gap(path, sample_gap, curves) -> None:
  """Sample-level gap G_FD vs guidance weight, beside the peak denoising gap of the same pairs."""
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  for style, color in (("cfg", "tab:blue"), ("autoguidance", "tab:red")):
    rows = [r for r in sample_gap if r["style"] == style]
    if rows:
      ax1.plot([r["w"] for r in rows], [r["gap_fd_features"] for r in rows], "o-", color=color,
               label=f"{style} (features)")
      ax1.plot([r["w"] for r in rows], [r["gap_fd_pixels"] for r in rows], "s--", color=color,
               alpha=0.6, label=f"{style} (pixels)")
    dens = [c for c in curves if c.get("group") == style]
    if dens:
      ax2.errorbar([c["value"] for c in dens], _array([c["peak_gap"] for c in dens]),
                   yerr=_peak_bars(dens), fmt="o-", color=color, capsize=3, label=style)
  ax1.set_xlabel("guidance weight w")
  ax1.set_ylabel(r"$G_{FD} = (FD_{val} - FD_{train}) / FD_{train}$")
  ax1.set_title("Sample-level gap")
  ax1.legend(fontsize=8)
  ax2.set_xlabel("guidance weight w")
  ax2.set_ylabel(r"peak $G(\sigma)$")
  ax2.set_title("Denoising gap (peak over sigma)")
  ax2.legend(fontsize=8)
  _save(fig, path)


def draw_sweep(name: str, section: Dict[str, Any], out_dir: str) -> List[str]:
  """Draws the figures of one sweep's results section; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  sigmas = np.asarray(section["sigmas"], np.float64)
  written = []
  if name == "gradient_score":
    p = os.path.join(out_dir, f"{name}.png")
    gradient_scores(p, sigmas, section["curves"], "Input-gradient correlation score: y*, y_delta")
    return [p]
  value_name = section.get("value_name", name)
  p = os.path.join(out_dir, f"{name}.png")
  gap_curves(p, sigmas, section["curves"], value_name, title=name)
  written.append(p)
  p = os.path.join(out_dir, f"{name}_peak.png")
  peak_vs_factor(p, section["curves"], value_name, title=f"{name}: peak denoising gap")
  written.append(p)
  if section.get("sample_gap"):
    p = os.path.join(out_dir, f"{name}_sample_gap.png")
    guidance_sample_gap(p, section["sample_gap"], section["curves"])
    written.append(p)
  if "gradient_score" in section:
    g = section["gradient_score"]
    p = os.path.join(out_dir, f"{name}_gradient_score.png")
    gradient_scores(p, np.asarray(g["sigmas"], np.float64), g["curves"],
                    "Input-gradient correlation score: network vs y*")
    written.append(p)
  return written
