"""Figures of the sample-based evaluation of a run's snapshots (paper.md section 6, inference side).

Every function takes plain lists / arrays (as stored in the "samples" section of results.json) and
writes one PNG.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors, patches  # noqa: E402


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def _feature_label(feature: str) -> str:
  names = {"classifier": "classifier features", "pixels": "pixels"}
  return names.get(feature, f"{feature} features")


def _seen_norm(seen):
  seen = np.asarray(seen, np.float64)
  if len(seen) > 1 and seen.min() > 0 and seen.max() > seen.min():
    return colors.LogNorm(seen.min(), seen.max())
  return colors.Normalize(seen.min() - 1, seen.max() + 1)


def _baseline_lines(ax, baselines, spaces):
  """Horizontal lines at the G_FD of the copier (ceiling) and of fresh real images (floor) in each
  space, coloured as that space's curve (`samples.fd_baselines`)."""
  if not baselines:
    return
  for name, style in (("copier", ":"), ("real", "-.")):
    b = baselines.get(name)
    if not b:
      continue
    for space, color in spaces:
      ax.axhline(b[space]["gap"], color=color, ls=style, lw=1.0, alpha=0.8,
                 label=f"{'copier (ceiling)' if name == 'copier' else 'fresh real images'}, "
                       f"{'pixels' if space == 'pixels' else 'features'}")


def _band(ax, x, bounds, color, label: Optional[str] = None) -> None:
  """The 95% interval (low, high) lists as a band where both ends are numbers (None: not kept),
  labelled `label` in the legend."""
  if bounds is None:
    return
  low, high = (np.asarray([np.nan if v is None else v for v in b], np.float64) for b in bounds)
  if np.isfinite(low).any():
    ax.fill_between(np.asarray(x, np.float64), low, high, color=color, alpha=0.2, lw=0,
                    label=label)


def gap_fd_vs_images(path, images_seen, gap_features, gap_pixels, feature: str,
                     gap_peaks: Optional[Mapping[float, float]] = None, baselines=None,
                     intervals: Optional[Mapping[str, Tuple[Sequence, Sequence]]] = None):
  """G_FD of the samples (feature space and pixels) vs images seen, with the G_FD of a copier and
  of fresh real images as its scale (baselines: `samples.fd_baselines`, optional), and its 95%
  bootstrap interval over the samples as a band (intervals: {"features" | "pixels": (low, high)},
  optional; None entries are snapshots without one); optionally the peak of the denoising gap
  G(sigma) of the same snapshots on a second axis."""
  intervals = intervals or {}
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  ax.plot(images_seen, gap_features, marker="o", ms=4, color="tab:blue",
          label=rf"$G_{{FD}}$, {_feature_label(feature)}")
  over = "95% over the samples (bootstrap; a lower bound of the noise where samples copy)"
  _band(ax, images_seen, intervals.get("features"), "tab:blue", over)
  spaces = [("features", "tab:blue")]
  if feature != "pixels":
    ax.plot(images_seen, gap_pixels, marker="s", ms=4, color="tab:green",
            label=r"$G_{FD}$, pixels")
    _band(ax, images_seen, intervals.get("pixels"), "tab:green",
          None if intervals.get("features") else over)
    spaces.append(("pixels", "tab:green"))
  _baseline_lines(ax, baselines, spaces)
  ax.axhline(0, color="0.5", lw=0.7)
  ax.set_xlabel("images seen")
  ax.set_ylabel(r"$G_{FD} = (FD_{val} - FD_{train}) / FD_{train}$")
  handles, labels = ax.get_legend_handles_labels()
  if gap_peaks:
    twin = ax.twinx()
    xs = sorted(gap_peaks)
    line, = twin.plot(xs, [gap_peaks[x] for x in xs], marker="^", ms=4, ls="--", color="tab:red",
                      label=r"denoising gap: peak of $G(\sigma)$")
    twin.set_ylabel(r"peak of $G(\sigma)$", color="tab:red")
    twin.tick_params(axis="y", colors="tab:red")
    handles.append(line)
    labels.append(line.get_label())
  ax.legend(handles, labels, fontsize=8, loc="best")
  ax.set_title("Generalization gap of the samples vs training time")
  _save(fig, path)


def early_stop_gap(path, sigmas_per_snapshot: Sequence, gaps_per_snapshot: Sequence, images_seen,
                   feature: str, baselines=None):
  """G_FD of early-stopped samples D(x_i; sigma_i) vs sigma_i: one curve per snapshot, with the
  copier's and fresh real images' G_FD in feature space (`samples.fd_baselines`) when given."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  norm = _seen_norm(images_seen)
  cmap = plt.get_cmap("viridis")
  for sig, g, n in zip(sigmas_per_snapshot, gaps_per_snapshot, images_seen):
    ax.plot(sig, g, marker="o", ms=3, lw=1.3, color=cmap(norm(n)))
  _baseline_lines(ax, baselines, [("features", "0.3")])
  if baselines:
    ax.legend(fontsize=8, loc="best")
  ax.axhline(0, color="0.5", lw=0.7)
  ax.set_xscale("log")
  ax.set_xlabel(r"$\sigma_i$ (sampling stopped at step $i$, output $D(x_i; \sigma_i)$)")
  ax.set_ylabel(r"$G_{FD}$" + f" ({_feature_label(feature)})")
  ax.set_title("Early-stopped sampling: generalization gap vs stopping noise level")
  fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="images seen")
  _save(fig, path)


_GROUPS = (("trajectory", "sampling trajectory", "tab:blue"),
           ("noisy_train", r"noisy training images $y + \sigma n$", "tab:green"),
           ("noisy_val", r"noisy validation images", "tab:orange"))


def trajectory_overlap(path, overlap: Mapping, title: str = ""):
  """Relative nearest-neighbour distance and effective number of training points vs sigma for the
  trajectory states, noisy training and noisy validation images (means over images)."""
  sigmas = np.asarray(overlap["sigmas"])
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for key, label, color in _GROUPS:
    if key not in overlap:
      continue
    axes[0].plot(sigmas, overlap[key]["relative_nn"], marker="o", ms=3, color=color, label=label)
    axes[1].plot(sigmas, overlap[key]["effective_number"], marker="o", ms=3, color=color,
                 label=label)
  axes[0].axhline(1, color="0.5", lw=0.7, ls=":")
  axes[0].set_ylabel(r"$\|x - y_{nn}\| / (\sigma \sqrt{D})$")
  axes[0].set_title("relative distance to the nearest training image")
  axes[1].set_ylabel(r"$\exp(H(w))$")
  axes[1].set_title("effective number of training points (posterior)")
  for ax in axes:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\sigma$")
  axes[0].legend(fontsize=8)
  fig.suptitle(title or "Trajectory overlap with the training set")
  _save(fig, path)


_SIM = (("trajectory/train", "trajectory predictions -> train", "tab:blue", "-"),
        ("trajectory/val", "trajectory predictions -> val", "tab:blue", "--"),
        ("train/train", "denoised train -> train", "tab:green", "-"),
        ("train/val", "denoised train -> val", "tab:green", "--"),
        ("val/train", "denoised val -> train", "tab:orange", "-"),
        ("val/val", "denoised val -> val", "tab:orange", "--"))


def nn_similarity(path, images_seen, means: Mapping, last: Mapping, feature: str):
  """Left: 1-NN cosine similarity (mean over sampling steps) vs images seen; right: per sigma for
  the last snapshot. Solid: to the training set; dashed: to the validation set."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  sigmas = np.asarray(last["sigmas"])
  for key, label, color, ls in _SIM:
    if key in means:
      axes[0].plot(images_seen, means[key], marker="o", ms=3, color=color, ls=ls, label=label)
    if key in last:
      axes[1].plot(sigmas, last[key], marker="o", ms=3, color=color, ls=ls, label=label)
  axes[0].set_xlabel("images seen")
  axes[0].set_ylabel("1-NN cosine similarity (mean over steps)")
  axes[0].set_title("over training")
  axes[1].set_xscale("log")
  axes[1].set_xlabel(r"$\sigma$")
  axes[1].set_ylabel("1-NN cosine similarity")
  axes[1].set_title("last snapshot, per sampling step")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"Nearest-neighbour similarity in {_feature_label(feature)}")
  _save(fig, path)


def copy_fraction(path, images_seen, fractions, control, ratio: float, interval=None):
  """Fraction of samples that copy a training image vs images seen, with the validation control;
  interval: optional (low, high) per snapshot, drawn as a band."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  ax.plot(images_seen, fractions, marker="o", ms=4, color="tab:red", label="samples", zorder=3)
  _band(ax, images_seen, interval, "tab:red", "95% (Wilson, over the samples)")
  ax.plot(images_seen, control, marker="s", ms=3, ls="--", color="0.4",
          label="control: validation images")
  ax.set_ylim(-0.03, 1.03)
  ax.set_xlabel("images seen")
  ax.set_ylabel("copy fraction")
  ax.set_title(rf"Memorized samples: $d_{{1}} < {ratio:.2g}\, d_{{2}}$ to the training set")
  ax.legend(fontsize=8)
  _save(fig, path)


def sample_grid(path, samples, nearest, distances=None, ratio: float = 1.0 / 3.0, title: str = "",
                cols: int = 8):
  """Each sample (left) next to its nearest training image (right); copies framed in red."""
  samples = np.asarray(samples, np.float32)
  nearest = np.asarray(nearest, np.float32)
  b, h, w, c = samples.shape
  cols = min(cols, b)
  rows = int(np.ceil(b / cols))
  pad, gap = max(1, h // 8), max(2, h // 3)
  cell_w = 2 * w + pad
  width = cols * cell_w + (cols + 1) * gap
  height = rows * h + (rows + 1) * gap
  canvas = np.ones((height, width, c), np.float32)
  to01 = lambda a: (np.clip(a, -1, 1) + 1) / 2
  copies = (np.zeros(b, bool) if distances is None
            else np.asarray(distances)[:, 0] < ratio * np.asarray(distances)[:, 1])
  origins = []
  for i in range(b):
    r, q = divmod(i, cols)
    y, x = gap + r * (h + gap), gap + q * (cell_w + gap)
    canvas[y:y + h, x:x + w] = to01(samples[i])
    canvas[y:y + h, x + w + pad:x + 2 * w + pad] = to01(nearest[i])
    origins.append((x, y))
  scale = 0.16 if h <= 16 else 0.05
  fig, ax = plt.subplots(figsize=(max(4.0, width * scale), max(2.0, height * scale) + 0.6))
  ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
            interpolation="nearest")
  for (x, y), copy in zip(origins, copies):
    if copy:
      ax.add_patch(patches.Rectangle((x - 1.0, y - 1.0), cell_w + 1.0, h + 1.0, fill=False,
                                     edgecolor="red", lw=1.5))
  ax.set_axis_off()
  note = "each pair: sample (left) | nearest training image (right)"
  if distances is not None:
    note += f"; red: copy ({int(copies.sum())}/{b})"
  ax.set_title((title + "\n" if title else "") + note, fontsize=9)
  _save(fig, path)
