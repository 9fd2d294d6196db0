"""Comparing a denoiser (a trained network) with the rungs of the analytic ladder, and calibrating
the patch size of LS / ELS against it (analytic.md section 1, "Comparing a network with a rung").

Per sigma, on a given input set (noised training images, noised validation images, or the
network's own trajectory states), for network D_net and analytic denoiser D_an:

    mse(sigma) = mean over inputs and pixels of (D_net(x; sigma) - D_an(x; sigma))^2
    r2(sigma)  = 1 - E||D_net - D_an||^2 / E||D_net - mean(D_net)||^2

mean(D_net) is the mean output image of the NETWORK over that sigma's inputs, so r2 is normalised
by the network's output variance (Kamb & Ganguli, ICML 2025, sec. 5, report the median of this r2
over samples; we pool over the set). r2 is not symmetric in its two arguments: pass the network
first.

Input sets are arrays of shape (S, B, H, W, C): one set of B states per sigma (`noised_inputs`,
`trajectory_inputs`). Images are NHWC float in [-1, 1].
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from diffgen_jax import progress, samplers
from diffgen_jax.checks import check_number, check_resamples
from diffgen_jax.data.convention import check_images
from diffgen_jax.denoisers import Denoiser, caller, check_labels, check_sigma
from diffgen_jax.evaluation import timescales
from diffgen_jax.evaluation.gap import FLOAT32_ERROR_FLOOR, image_noise, train_val_gap
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from diffgen_jax.optimal_patches import (BOUNDARIES, PatchSize, equivariant_local_denoiser,
                                         gaussian_denoiser, local_denoiser,
                                         patch_composite_denoiser, patch_schedule)
from diffgen_jax.sharding import batch_multiple, fetch, put_batch

MACHINES = ("ls", "els")


# The intervals of r2 and of the rungs' G: 95% percentile bootstrap over the inputs (images or
# trajectories), seeded so they are reproducible (the factor sweeps' `sweeps.INTERVAL` settings).
INTERVAL = {"confidence": 0.95, "num_resamples": 1000, "seed": 0,
            "method": "percentile bootstrap over the inputs of each set (r2 = 1 - SSE / SST "
                      "recomputed on each resample); over the images of each split for G"}


class Agreement(NamedTuple):
  """Per-sigma agreement of a network with an analytic denoiser on one input set."""
  sigmas: np.ndarray  # (S,)
  mse: np.ndarray  # (S,) mean squared difference per pixel
  r2: np.ndarray  # (S,) 1 - E||D_net - D_an||^2 / E||D_net - mean D_net||^2
  # (S,) INTERVAL's bootstrap interval of r2 over the inputs (`r2_interval`); None when not asked.
  r2_low: Optional[np.ndarray] = None
  r2_high: Optional[np.ndarray] = None


def noised_inputs(images, sigmas, *, ids=None, noise_seed: int = 0) -> np.ndarray:
  """(S, B, H, W, C) states y + sigma n_y with the gap evaluation's per-image noise n_y
  (`evaluation.gap.image_noise`: seeded by image id, the same draw at every sigma)."""
  images = np.asarray(check_images(images, "images"))
  sigmas = _check_sigmas(sigmas)
  check_number(noise_seed, "noise_seed", low=0, integer=True)
  ids = np.arange(len(images)) if ids is None else np.asarray(ids)
  if ids.shape != (len(images),) or not np.issubdtype(ids.dtype, np.integer) or np.any(ids < 0):
    raise ValueError(f"ids must be ({len(images)},) integers >= 0 (one per image), got shape "
                     f"{ids.shape} dtype {ids.dtype}")
  noise = np.asarray(image_noise(noise_seed, ids, images.shape[1:]), np.float64)
  return (images[None] + sigmas[:, None, None, None, None] * noise[None]).astype(np.float32)


def trajectory_inputs(denoise: Denoiser, noise, labels=None, *, mesh=None, **sampler_kwargs):
  """(sigmas (S,), states (S, B, ...)): the states the sampler shows `denoise` on its own path
  (`samplers.sample(..., return_trajectory=True)`, one state per step; the final sigma = 0 step is
  not a denoiser call and is not included). mesh: optional; the B trajectories are split over its
  data axis (padded to a multiple of it by repeating the last one; each process builds only its
  rows) and gathered once."""
  if mesh is None:
    out = samplers.sample(denoise, jnp.asarray(noise), labels, return_trajectory=True,
                          **sampler_kwargs)
    traj = out.trajectory
    return np.asarray(traj.sigmas, np.float64), np.asarray(traj.x, np.float32)
  noise = np.asarray(noise)
  n = len(noise)
  rows = np.minimum(np.arange(batch_multiple(n, mesh)), n - 1)
  if labels is not None:
    labels = np.asarray(labels)
    check_labels(denoise, labels)  # (the sampler cannot read labels split over processes)
  out = samplers.sample(denoise, put_batch(noise[rows], mesh),
                        None if labels is None else put_batch(labels[rows], mesh),
                        return_trajectory=True, **sampler_kwargs)
  traj = out.trajectory
  return (np.asarray(fetch(traj.sigmas), np.float64),
          np.asarray(fetch(traj.x), np.float32)[:, :n])


def _check_sigmas(sigmas) -> np.ndarray:
  s = np.atleast_1d(np.asarray(sigmas, np.float64))
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f"sigmas must be a non-empty 1-D array of noise levels, got shape {s.shape}")
  check_sigma(s, "sigmas")
  return s


def _check_batch_size(batch_size) -> int:
  return int(check_number(batch_size, "batch_size", low=1, integer=True))


def _check_labels_shape(labels, b):
  if labels is None:
    return None
  lab = np.asarray(labels)
  if lab.size != b or not np.issubdtype(lab.dtype, np.integer):
    raise ValueError(f"labels must be None or ({b},) integers (one per input), got shape "
                     f"{lab.shape} dtype {lab.dtype}")
  return lab.reshape(b).astype(np.int32)


def _check_inputs(inputs, sigmas):
  x = np.asarray(inputs)
  if x.ndim != 5 or x.shape[0] != len(sigmas) or x.shape[1] == 0:
    raise ValueError(f"inputs must be (S, B, H, W, C) with S = len(sigmas) = {len(sigmas)}, got "
                     f"shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"inputs must be floating point, got dtype {x.dtype}")
  return x.astype(np.float32)


def _outputs(denoise, x, sigma_rows, labels_rows, batch_size, mesh=None):
  """denoise over rows of x (R, ...) with per-row sigma, in batches; float64 numpy. With a mesh
  every batch (padded to a multiple of its data axis) is split over it, each process building only
  its rows, and the outputs are gathered."""
  call = caller(denoise)  # (compiled once for all calls with array-pytree denoisers)
  if labels_rows is not None:
    # Under jit the labels are traced and a denoiser cannot check them: refuse labels it has no
    # training points for (e.g. "labels [7] have no training points") now, instead of returning
    # NaN from a softmax over an empty class.
    check_labels(denoise, labels_rows)
  out = []
  if mesh is None:
    for start in range(0, len(x), batch_size):
      sl = slice(start, start + batch_size)
      lab = None if labels_rows is None else jnp.asarray(labels_rows[sl])
      out.append(np.asarray(call(jnp.asarray(x[sl]), jnp.asarray(sigma_rows[sl], jnp.float32),
                                 lab), np.float64))
    return np.concatenate(out)
  n, b = len(x), batch_multiple(min(batch_size, len(x)), mesh)
  sigma_rows = np.asarray(sigma_rows, np.float32)
  for start in range(0, n, b):
    rows = np.minimum(np.arange(start, start + b), n - 1)
    lab = None if labels_rows is None else put_batch(labels_rows[rows], mesh)
    y = call(put_batch(x[rows], mesh), put_batch(sigma_rows[rows], mesh), lab)
    out.append(np.asarray(fetch(y), np.float64)[:min(b, n - start)])
  return np.concatenate(out)


def network_outputs(network: Denoiser, inputs, sigmas, labels=None, *, batch_size: int = 256,
                    mesh=None):
  """(S, B, ...) float64 outputs of `network` on the input sets (reusable across comparisons).
  mesh: optional; the batches are split over its data axis."""
  sigmas = _check_sigmas(sigmas)
  batch_size = _check_batch_size(batch_size)
  x = _check_inputs(inputs, sigmas)
  s, b = x.shape[:2]
  rows = x.reshape((s * b,) + x.shape[2:])
  labels = _check_labels_shape(labels, b)
  lab = None if labels is None else np.tile(labels, s)
  return _outputs(network, rows, np.repeat(sigmas, b), lab, batch_size, mesh).reshape(x.shape)


def agreement_from_outputs(net_out, an_out, sigmas) -> Agreement:
  """Agreement from precomputed outputs (S, B, ...) of the network and the analytic denoiser."""
  net_out, an_out = np.asarray(net_out, np.float64), np.asarray(an_out, np.float64)
  sigmas = _check_sigmas(sigmas)
  if net_out.ndim < 2 or net_out.shape != an_out.shape or net_out.shape[0] != len(sigmas):
    raise ValueError(f"net_out and an_out must both be (S, B, ...) with S = len(sigmas) = "
                     f"{len(sigmas)}, got shapes {net_out.shape} and {an_out.shape}")
  s, b = net_out.shape[:2]
  diff = (net_out - an_out).reshape(s, b, -1)
  spread = (net_out - net_out.mean(axis=1, keepdims=True)).reshape(s, b, -1)
  sq = np.sum(diff * diff, axis=(1, 2))
  var = np.sum(spread * spread, axis=(1, 2))
  with np.errstate(divide="ignore", invalid="ignore"):
    r2 = np.where(var > 0, 1.0 - sq / var, np.where(sq == 0, 1.0, -np.inf))
  # A NaN or infinite output of either denoiser makes r2 NaN, never a number that looks measured.
  r2 = np.where(np.isfinite(sq) & np.isfinite(var), r2, np.nan)
  return Agreement(np.asarray(sigmas, np.float64), sq / diff[0].size, r2)


def r2_interval(net_out, an_out, *, num_resamples: int = INTERVAL["num_resamples"],
                seed: int = INTERVAL["seed"], confidence: float = INTERVAL["confidence"]):
  """(low (S,), high (S,)): percentile bootstrap interval of r2 over the B inputs of each sigma.

  net_out, an_out: (S, B, ...) outputs as for `agreement_from_outputs`. One resample (the same
  multinomial counts for every sigma: the inputs are the same images at every sigma) reweights
  the inputs; r2 = 1 - SSE / SST is recomputed on it, SST about the resample's own mean output:
  with weights c_i (sum B), d_i = D_net - D_an, u_i = D_net - mean D_net,
      SSE = sum c_i ||d_i||^2,   SST = sum c_i ||u_i||^2 - ||sum c_i u_i||^2 / B.
  A resample where SST is 0 gets r2 as `agreement_from_outputs` defines it (1 or -inf); a
  non-finite output gives NaN bounds. Raises ValueError for mismatched shapes, or for a bad
  num_resamples, seed or confidence (naming it).
  """
  net_out, an_out = np.asarray(net_out, np.float64), np.asarray(an_out, np.float64)
  if net_out.ndim < 2 or net_out.shape != an_out.shape:
    raise ValueError(f"net_out and an_out must both be (S, B, ...), got shapes {net_out.shape} "
                     f"and {an_out.shape}")
  check_resamples(num_resamples, confidence)
  s, b = net_out.shape[:2]
  counts = timescales.resample_counts(b, num_resamples, seed)  # (R, B)
  tail = 50.0 * (1.0 - confidence)
  low, high = np.full(s, np.nan), np.full(s, np.nan)
  for j in range(s):  # one sigma at a time: (R, pixels) at most
    d = (net_out[j] - an_out[j]).reshape(b, -1)
    u = (net_out[j] - net_out[j].mean(axis=0)).reshape(b, -1)  # centred: no cancellation below
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(u))):
      continue
    sse = timescales.resampled_means(np.sum(d * d, axis=1), counts)  # (R,) SSE / B
    mean_u = timescales.resampled_means(u, counts)  # (R, pixels)
    sst = timescales.resampled_means(np.sum(u * u, axis=1), counts) - np.sum(mean_u ** 2, axis=1)
    sst = np.maximum(sst, 0.0)  # rounding of the identity above
    with np.errstate(divide="ignore", invalid="ignore"):
      r2 = np.where(sst > 0, 1.0 - sse / sst, np.where(sse == 0, 1.0, -np.inf))
      low[j], high[j] = np.percentile(r2, tail), np.percentile(r2, 100.0 - tail)
  return low, high


def agreement(network: Denoiser, analytic: Denoiser, inputs, sigmas, labels=None, *,
              batch_size: int = 256, mesh=None) -> Agreement:
  """Per-sigma mse and r2 (normalised by the network's output variance) on inputs (S, B, H, W, C).

  labels: optional (B,) labels passed to both denoisers (the same for every sigma). A set where the
  network's output does not vary gets r2 = 1 if the two agree exactly, else -inf; a non-finite
  output of either denoiser gives r2 = NaN. mesh: optional; the batches of both are split over its
  data axis.
  """
  sigmas = _check_sigmas(sigmas)
  net = network_outputs(network, inputs, sigmas, labels, batch_size=batch_size, mesh=mesh)
  an = network_outputs(analytic, inputs, sigmas, labels, batch_size=batch_size, mesh=mesh)
  return agreement_from_outputs(net, an, sigmas)


def ladder_agreement(network: Denoiser, rungs: Mapping[str, Denoiser],
                     input_sets: Mapping[str, tuple], *, batch_size: int = 256, mesh=None,
                     intervals: bool = True) -> Dict[str, Dict[str, Agreement]]:
  """{input set: {rung: Agreement}} for every rung against the network on every input set.

  intervals: also each r2's bootstrap interval over the set's inputs (`r2_interval`, INTERVAL's
  settings: Agreement.r2_low / r2_high).

  input_sets: {name: (inputs (S, B, H, W, C), sigmas (S,), labels (B,) or None)}, e.g.
  "train" / "val" from `noised_inputs`, "trajectory" from `trajectory_inputs`. The network is run
  once per set. mesh: optional; every batch is split over its data axis. Reports its progress
  (`progress.track`, one unit per rung and set).
  """
  report = {}
  with progress.track("ladder: rungs on the input sets", len(input_sets) * len(rungs),
                      "rungs x sets") as bar:
    for set_name, (inputs, sigmas, labels) in input_sets.items():
      sigmas = _check_sigmas(sigmas)
      out = lambda d: network_outputs(d, inputs, sigmas, labels, batch_size=batch_size, mesh=mesh)
      net = out(network)
      report[set_name] = {}
      for name, rung in rungs.items():
        an = out(rung)
        a = agreement_from_outputs(net, an, sigmas)
        if intervals:
          a = a._replace(**dict(zip(("r2_low", "r2_high"), r2_interval(net, an))))
        report[set_name][name] = a
        bar.update(1)
  return report


class Calibration(NamedTuple):
  """Per sigma, the candidate patch size closest to the network, with every candidate's curve."""
  sizes: np.ndarray  # (K,) candidate patch sizes
  sigmas: np.ndarray  # (S,)
  mse: np.ndarray  # (K, S) mean squared difference of each candidate's machine to the network
  r2: np.ndarray  # (K, S)
  # (S,) int: sizes[argmin_k mse[k, s]] over the candidates whose mse is finite, the smallest size
  # among those within TIE_RTOL of the least (`first_least`); NO_SIZE (-1) at a sigma where no
  # candidate's mse is finite (e.g. the network outputs NaN or inf there).
  best_size: np.ndarray

  def schedule(self) -> Dict[float, int]:
    """{sigma: best size}: pass as `patch_size` to get the calibrated machine.

    Raises ValueError naming the sigmas without a calibrated size (best_size NO_SIZE: no
    candidate's distance to the network was finite there) rather than building a machine with a size
    nobody chose.
    """
    missing = [float(s) for s, k in zip(self.sigmas, self.best_size) if k == NO_SIZE]
    if missing:
      raise ValueError(f"no calibrated patch size at sigma {missing}: no candidate's mse to the "
                       "network is finite there (does the network output NaN or inf?)")
    return {float(s): int(k) for s, k in zip(self.sigmas, self.best_size)}


NO_SIZE = -1  # Calibration.best_size where no candidate size has a finite distance

# Candidates (patch sizes, rungs) whose distances to the network differ by less than this, relative,
# are tied: identical machines differ by float32 rounding, e.g. LS or PSPC with a window covering
# the whole image and y*, or two windows that both cover it. The same ladder job on 1, 2 and 3
# devices moved agreement mse by up to 5.8e-6 relative (smoke config), so the tolerance keeps a
# margin of 17 above that. A tie goes to the first candidate in order (the smaller size; the
# earlier rung).
TIE_RTOL = 1e-4


def first_least(values, *, relative: bool = True) -> Optional[int]:
  """Index of the first entry within TIE_RTOL of the least one (relative to it, or absolute, for
  distances on a log scale); NaN is never chosen; an infinite least (every number +inf, or some
  -inf) ties only with entries equal to it. None when every entry is NaN."""
  values = np.asarray(values, np.float64)
  ok = ~np.isnan(values)
  if not ok.any():
    return None
  least = np.min(values[ok])
  if not np.isfinite(least):
    return int(np.flatnonzero(ok & (values == least))[0])
  slack = TIE_RTOL * abs(least) if relative else TIE_RTOL
  return int(np.flatnonzero(ok & (values <= least + slack))[0])


def _best_sizes(sizes, mse) -> np.ndarray:
  """(S,) the size of least mse per column among the candidates whose mse is finite (np.argmin
  would return a NaN's position, and an inf mse is an overflow, not a distance); the smallest size
  among those within TIE_RTOL of the least (ties of identical machines are rounding); NO_SIZE
  where none is finite."""
  order = np.argsort(sizes, kind="stable")
  sizes, mse = np.asarray(sizes)[order], mse[order]
  best = np.full(mse.shape[1], NO_SIZE, np.int64)
  for j in range(mse.shape[1]):
    i = first_least(np.where(np.isfinite(mse[:, j]), mse[:, j], np.nan))
    if i is not None:
      best[j] = sizes[i]
  return best


def calibrate(network: Denoiser, train_images, sizes: Sequence[int], inputs, sigmas, labels=None, *,
              train_labels=None, machine: str = "ls", batch_size: int = 256,
              machine_factory: Optional[Callable[..., Denoiser]] = None, mesh=None,
              **machine_kwargs) -> Calibration:
  """Calibrates the patch size of LS (machine="ls") or ELS ("els") against `network`.

  For each candidate size k builds the machine on (train_images, train_labels) and measures its
  agreement with the network on inputs (S, B, H, W, C) at sigmas (S,) (the network's trajectory
  states for the calibration of Kamb & Ganguli, ICML 2025, sec. 5; or noised images). Extra keyword
  arguments go to the machine (e.g. boundary="zeros", chunk_size). machine_factory overrides the
  machine (a function (train_images, k, train_labels, **kw) -> denoiser). mesh: optional; each
  machine lays its training set out over it (passed as mesh=) and every batch of inputs is split
  over its data axis. Reports its progress (`progress.track`, one unit per candidate size).

  Returns a `Calibration`. A candidate whose mse is not finite (NaN or inf: its machine or the
  network output NaN or overflowed) is never chosen; at a sigma where no candidate's mse is finite,
  best_size is NO_SIZE (-1) and `Calibration.schedule()` raises ValueError naming that sigma.
  """
  if machine not in MACHINES:
    raise ValueError(f"machine must be one of {MACHINES}, got {machine!r}")
  if isinstance(sizes, (int, np.integer)) or not all(
      isinstance(k, (int, np.integer)) for k in sizes):
    raise ValueError(f"sizes must be a list of positive odd integers (candidate patch sizes), "
                     f"got {sizes!r}")
  sizes = [patch_schedule(k, f"sizes[{i}]").sizes[0] for i, k in enumerate(sizes)]
  if not sizes or len(set(sizes)) != len(sizes):
    raise ValueError(f"sizes must be a non-empty list of distinct positive odd integers, got {sizes}")
  factory = machine_factory or (local_denoiser if machine == "ls" else equivariant_local_denoiser)
  sigmas = _check_sigmas(sigmas)
  if mesh is not None:
    machine_kwargs = dict(machine_kwargs, mesh=mesh)
  net = network_outputs(network, inputs, sigmas, labels, batch_size=batch_size, mesh=mesh)
  mse, r2 = [], []
  with progress.track(f"ladder: calibrating {machine}", len(sizes), "candidate sizes") as bar:
    for k in sizes:
      an = network_outputs(factory(train_images, k, train_labels, **machine_kwargs), inputs,
                           sigmas, labels, batch_size=batch_size, mesh=mesh)
      a = agreement_from_outputs(net, an, sigmas)
      mse.append(a.mse)
      r2.append(a.r2)
      bar.update(1)
  mse, r2 = np.stack(mse), np.stack(r2)
  return Calibration(np.asarray(sizes), sigmas, mse, r2, _best_sizes(sizes, mse))


def _values(v) -> np.ndarray:
  return np.asarray([np.nan if x is None else x for x in np.atleast_1d(v)], np.float64)


def _log_ratio(c) -> np.ndarray:
  """log(E_val / E_train) = log(1 + G) per sigma; NaN where a rung reproduces its training images
  exactly (E_train = 0, or at most FLOAT32_ERROR_FLOOR: rounding, so G is undefined), where
  E_val is at the floor (the ratio would be rounding over E_train, though G itself is a stable -1),
  or where an error is missing."""
  e_val, e_train = _values(c["e_val"]), _values(c["e_train"])
  with np.errstate(divide="ignore", invalid="ignore"):
    out = np.log(e_val / e_train)
  measured = (e_val > FLOAT32_ERROR_FLOOR) & (e_train > FLOAT32_ERROR_FLOOR)
  return np.where(np.isfinite(out) & measured, out, np.nan)


def summarize(agreement: Mapping[str, Mapping], gaps: Mapping[str, Mapping]) -> Dict[str, object]:
  """Per input set and sigma, the rung of the highest r2; per sigma, the rung whose G is closest to
  the network's; and how often the two agree.

  G is compared on the log scale, |log(1 + G_rung) - log(1 + G_network)| = |log of the ratio of
  the two E_val / E_train|, because the G of memorizing rungs spans many decades. Where a rung's
  E_train or E_val is at most FLOAT32_ERROR_FLOOR (y* or a local machine reproducing its
  training images at small sigma: 0, or 1e-17 .. 1e-15 of rounding whose value depends on the
  order of float32 sums, e.g. on the device count), G is undefined and counts as infinitely far.
  gap_distance[rung] is the median of that distance over the sigmas; best_rung_predicts_gap[set]
  is the fraction of sigmas at which the set's best-r2 rung is the closest-G rung (train and val
  are on G's own sigma grid).

  NaN never wins a choice: a rung whose r2 is NaN is never the best rung over one with a number,
  and where every rung's r2 is NaN at a sigma (e.g. the network outputs NaN) best_rung is None and
  best_r2 NaN there. Likewise closest_gap_rung is None where no rung's distance is a number (the
  network's own E_train is 0 or missing). Sigmas where either choice is None are left out of
  best_rung_predicts_gap, which is NaN if no sigma is left. Rungs within TIE_RTOL of the
  best (relative on the mse, absolute on the log-scale G distance) are tied, and a tie goes to the
  rung listed first (y* before an LS whose window covers the image: the same denoiser up to
  rounding).

  agreement: {set: {"sigmas": (S,), "rungs": {rung: {"r2": (S,)}}}} as the ladder job writes
  (`Agreement` fields, None for a missing value); gaps: {"sigmas": (S',), "denoisers": {"network"
  and each rung: {"e_train": (S',), "e_val": (S',)}}} (`rung_gaps`).
  """
  best_rung, best_r2 = {}, {}
  for set_name, section in agreement.items():
    names = list(section["rungs"])
    r2 = np.stack([_values(section["rungs"][n]["r2"]) for n in names])  # (R, S)
    best_rung[set_name], best_r2[set_name] = [], []
    for column in r2.T:  # the highest r2 among the rungs whose r2 is a number (even -inf)
      # 1 - r2 = mse / (the network's output variance): compare the mse, ties within TIE_RTOL.
      i = first_least(1.0 - column, relative=True)
      best_rung[set_name].append(None if i is None else names[i])
      best_r2[set_name].append(float("nan") if i is None else float(column[i]))
  curves = gaps["denoisers"]
  net = _log_ratio(curves["network"])
  rung_names = [n for n in curves if n != "network"]
  dist = np.stack([np.abs(_log_ratio(curves[n]) - net) for n in rung_names])  # (R, S)
  dist = np.where(np.isnan(dist), np.inf, dist)
  closest = []
  for column in dist.T:  # a log-scale distance: an absolute tolerance is a relative one on E
    i = first_least(np.where(np.isfinite(column), column, np.nan), relative=False)
    closest.append(None if i is None else rung_names[i])
  median = np.median(dist, axis=1)
  distance = {n: (float(m) if np.isfinite(m) else None) for n, m in zip(rung_names, median)}
  overall = first_least(np.where(np.isfinite(median), median, np.nan), relative=False)
  gap_sigmas = np.asarray(gaps["sigmas"], np.float64)
  predicts = {}
  for set_name, names in best_rung.items():
    sig = np.asarray(agreement[set_name]["sigmas"], np.float64)
    if sig.shape == gap_sigmas.shape and np.allclose(sig, gap_sigmas):
      # Only sigmas where both choices exist: None == None is no agreement.
      hits = [a == b for a, b in zip(names, closest) if a is not None and b is not None]
      predicts[set_name] = float(np.mean(hits)) if hits else float("nan")
  return {"best_rung": best_rung, "best_r2": best_r2,
          "gap_log_distance": {n: [float(d) if np.isfinite(d) else None for d in row]
                               for n, row in zip(rung_names, dist)},
          "closest_gap_rung": closest, "gap_distance": distance,
          "closest_gap_rung_overall": None if overall is None else rung_names[overall],
          "best_rung_predicts_gap": predicts}


def ladder_rungs(train_images, train_labels=None, *, delta: Optional[float] = None,
                 ls_size: Optional[PatchSize] = None, els_size: Optional[PatchSize] = None,
                 pspc_size: Optional[PatchSize] = None, els_boundary: str = "circular",
                 gaussian_ranks: Sequence[Optional[int]] = (None,), mesh=None
                 ) -> Dict[str, Denoiser]:
  """The rungs of the ladder as named denoisers, all on (train_images, train_labels):
  "y*", "y_delta" (if delta), "LS" / "ELS" / "PSPC" (if their size, an int or a {sigma: k}
  schedule such as `Calibration.schedule()`, is given), "gaussian" (rank None) and "gaussian_r{r}".
  mesh: optional mesh that every rung, the Gaussian fits included, lays the training set out over
  (each process reading only its share).
  """
  if els_boundary not in BOUNDARIES:
    raise ValueError(f"els_boundary must be one of {BOUNDARIES}, got {els_boundary!r}")
  if delta is not None:
    check_number(delta, "delta", low=0.0)
  for name, size in (("ls_size", ls_size), ("els_size", els_size), ("pspc_size", pspc_size)):
    if size is not None:
      patch_schedule(size, name)  # names the argument; the machine normalises it again
  if isinstance(gaussian_ranks, (int, np.integer)) or gaussian_ranks is None:
    raise ValueError(f"gaussian_ranks must be a sequence of ranks (None: full), got {gaussian_ranks!r}")
  d = int(np.prod(np.shape(train_images)[1:]))
  for i, r in enumerate(gaussian_ranks):
    if r is not None:
      check_number(r, f"gaussian_ranks[{i}]", low=1, high=d, integer=True)
  rungs = {"y*": empirical_optimal_denoiser(train_images, train_labels, mesh=mesh)}
  if delta is not None:
    rungs["y_delta"] = error_prone_denoiser(rungs["y*"], delta)
  if ls_size is not None:
    rungs["LS"] = local_denoiser(train_images, ls_size, train_labels, mesh=mesh)
  if els_size is not None:
    rungs["ELS"] = equivariant_local_denoiser(train_images, els_size, train_labels,
                                              boundary=els_boundary, mesh=mesh)
  if pspc_size is not None:
    rungs["PSPC"] = patch_composite_denoiser(train_images, pspc_size, train_labels, mesh=mesh)
  for r in gaussian_ranks:
    rungs["gaussian" if r is None else f"gaussian_r{r}"] = gaussian_denoiser(
        train_images, r, train_labels, mesh=mesh)
  return rungs


def rung_gaps(rungs: Mapping[str, Denoiser], train_images, val_images, sigmas, train_labels=None,
              val_labels=None, *, noise_seed: int = 0, batch_size: int = 128, mesh=None
              ) -> Dict[str, Dict[str, np.ndarray]]:
  """Each rung's own E_train, E_val and G(sigma) = (E_val - E_train) / E_train, computed by the gap
  evaluation (`evaluation.gap.train_val_gap`, the same seeded per-image noise) on the given
  training-image and validation-image subsets (arrays or sources), with G's 95% bootstrap interval
  over the images (gap_low, gap_high: `gap.bootstrap_relative_gap` with INTERVAL's settings; NaN
  where G or its resamples are infinite). mesh: optional; every batch is split over its data axis.
  Reports its progress (`progress.track`, one unit per rung)."""
  check_number(noise_seed, "noise_seed", low=0, integer=True)
  _check_batch_size(batch_size)
  out = {}
  with progress.track("ladder: G(sigma) of the rungs", len(rungs), "rungs") as bar:
    for name, rung in rungs.items():
      g = train_val_gap(rung, (train_images, train_labels, None), (val_images, val_labels, None),
                        sigmas, noise_seeds=(noise_seed, noise_seed), batch_size=batch_size,
                        mesh=mesh)
      out[name] = {k: g[k] for k in ("e_train", "e_val", "gap", "gap_low", "gap_high")}
      bar.update(1)
  return out
