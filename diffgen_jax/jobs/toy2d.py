"""The `toy2d` job: the 2D toy model's experiments (a)-(g) of paper.md section 5. Every number comes
from `diffgen_jax.toy2d`; the job maps its config to those calls and writes results and figures.

  flow_field      (a) the field y*(x) - x at large, medium and small sigma
  relative_error  (b) the denoising error along the circle, relative to the training points
  gap_vs_delta    (c) the relative generalization gap G(sigma) as delta varies
  gap_vs_density  (d) G(sigma) as the number of training points varies
  guidance        (e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies
  trajectories    (f) Euler sampling with y* and with y_delta: where the endpoints land
  frechet         (g) 2D Frechet distance of samples to the train and validation sets vs delta

Writes WORKDIR/results.json (`jobs.results`: {"job": "toy2d", "experiments": {name: results}})
and WORKDIR/<experiment>/<experiment>.png (+ fields.npz for the flow field).

config.estimate says how each expectation over the noise is taken (see `diffgen_jax.toy2d`):
"expected" (default; quadrature, with the spread of a config.draws-draw estimate as a band),
"paper_draws" (the authors' numpy draws; configs/toy2d.py:paper) or "draws" (jax draws).
config.dtype = "float64" runs each experiment with jax's 64-bit mode switched on.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffgen_jax import config_checks, defaults, edm, jsonio, toy2d
from diffgen_jax.config_checks import fail as _fail
from diffgen_jax.denoisers import Denoiser, guided
from diffgen_jax.jobs import console, results as results_lib
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from diffgen_jax.toy2d import (Gap, NoiseRule, Split, circle_points, lattice_rule, make_dataset,
                               nearest_grid_sigma)

EXPERIMENTS = defaults.TOY2D_EXPERIMENTS
GAP_EXPERIMENTS = ("gap_vs_delta", "gap_vs_density", "guidance")

# Random streams: every draw is fold_in(key(seed), stream), so experiments never share draws by
# accident and the gap experiments (c)-(e) deliberately share one draw set.
_STREAM_GAP_DRAWS = 1
_STREAM_RELATIVE_ERROR = 2
_STREAM_TRAJECTORIES = 3
_STREAM_FRECHET = 4


def _split_from(section, config) -> Split:
  return make_dataset(section.dataset, int(section.num_points), float(config.radius),
                      float(section.get("offset", config.offset)), int(config.seed))


# ----------------------------------------------------------------------------------------------
# The experiments. Each returns (results, plot_data); results is what goes into results.json.

DTYPES = defaults.TOY2D_DTYPES


def _dtype(config):
  return jnp.float64 if config.get("dtype", "float32") == "float64" else jnp.float32


def _in_config_precision(experiment):
  """Runs an experiment with jax's 64-bit mode on when config.dtype is float64 (and only then)."""

  @functools.wraps(experiment)
  def wrapped(config):
    if config.get("dtype", "float32") != "float64":
      return experiment(config)
    with jax.enable_x64(True):
      return experiment(config)

  return wrapped


def _optimal(split: Split, config):
  return empirical_optimal_denoiser(split.train, dtype=_dtype(config))


def _rule(config) -> NoiseRule:
  return lattice_rule(float(config.quadrature.spacing), float(config.quadrature.radius))


def _protocol(config, section=None, **extra) -> Dict:
  proto = dict(seed=int(config.seed), radius=float(config.radius),
               dtype=config.get("dtype", "float32"))
  if section is not None:
    proto.update(dataset=section.dataset)
    if "num_points" in section:
      proto["num_points"] = section.num_points
    if section.dataset == "symmetric":
      proto["offset"] = float(section.get("offset", config.offset))
      proto["split"] = "angles 2 pi (k/N + offset); train = even k, validation = odd k"
    else:
      proto["split"] = "angles uniform in [0, 2 pi) (numpy default_rng(seed)); first half validation"
    if section.get("all_training", False):
      proto["split"] = "all points are training points (no validation points)"
  proto.update(extra)
  return proto


def _estimate_protocol(config, draws: int, legacy_seed: int, shared_world_draws=False,
                       estimate=None) -> Dict:
  """How the expectation over the noise was taken, for results.json."""
  estimate = estimate or config.estimate
  if estimate == "expected":
    rule = _rule(config)
    return dict(estimate="expected", quadrature=dict(
        rule="midpoint rule on the lattice spacing * (Z + 1/2)^2 within |n| <= radius "
             "(lattice_rule), nodes rotated into each point's (radial, tangential) frame",
        spacing=float(config.quadrature.spacing), radius=float(config.quadrature.radius),
        nodes=int(rule.weights.size)))
  if estimate == "paper_draws":
    how = (f"np.random.seed({legacy_seed}); one standard normal ({draws}, 2) array shared by every "
           "point in world coordinates" if shared_world_draws else
           f"np.random.seed({legacy_seed}); one standard normal ({draws}, N, 2) array, the k-th "
           "point in angle order taking [:, k, :]; reset for every curve, the same at every sigma")
    return dict(estimate="paper_draws", draws=draws, legacy_seed=legacy_seed, draws_note=how)
  return dict(estimate="draws", draws=draws, local_frame_draws=bool(config.local_frame_draws))


def _gap_protocol(config, section, **extra) -> Dict:
  proto = _protocol(
      config, section,
      sigma_grid=f"edm.toy_sigma_grid({config.sigma_grid_steps}): the EDM schedule, ascending",
      error="per point the expectation (or mean over draws) of ||y(y_p + sigma n) - y_p|| "
            "(not squared)",
      gap="G = (mean_val - mean_train) / mean_train",
      **_estimate_protocol(config, int(config.draws), int(config.legacy_seed)), **extra)
  if config.estimate == "expected":
    proto["spread_draws"] = int(config.draws)
    proto["spread"] = (f"the standard deviation of G from {int(config.draws)} independent draws "
                       "per point (the authors' scheme), to first order (expected_gap)")
  elif config.get("compare_expected", False):
    proto["compare_expected"] = dict(
        _estimate_protocol(config, 0, 0, estimate="expected"), spread_draws=int(config.draws),
        note="each curve's 'expected': the expected curve and the spread of a draws-draw "
             "estimate, as with estimate='expected'")
  if config.estimate == "draws":
    proto["draws_note"] = (
        "(ours) one draw set of (radial, tangential) vectors shared by all points in each point's "
        "local frame, reused at every sigma" if config.local_frame_draws else
        "independent draws per point, reused at every sigma")
  return proto


def _expected_gap(denoise: Denoiser, split: Split, section, config) -> Gap:
  # Every toy denoiser is built from the training set, so it commutes with the rotations that map
  # a symmetric set with even N onto itself: one point per half suffices.
  symmetric = section.dataset == "symmetric" and split.train.shape[0] == split.val.shape[0]
  return toy2d.expected_gap(denoise, split, edm.toy_sigma_grid(config.sigma_grid_steps),
                            _rule(config), by_symmetry=symmetric, spread_draws=int(config.draws),
                            dtype=_dtype(config))


def _gap(denoise: Denoiser, split: Split, section, config):
  """(G(sigma) by config.estimate, the expected G(sigma) beside it if config.compare_expected)."""
  if config.estimate == "expected":
    return _expected_gap(denoise, split, section, config), None
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  noise = toy2d.gap_noise(config.estimate, split, int(config.draws), key=_gap_key(config),
                          legacy_seed=int(config.legacy_seed),
                          local_frame=bool(config.local_frame_draws))
  estimate = toy2d.sampled_gap(denoise, split, sigmas, noise, _dtype(config))
  expected = (_expected_gap(denoise, split, section, config)
              if config.get("compare_expected", False) else None)
  return estimate, expected


def _gap_curve(label: str, name: str, value, gaps) -> Dict:
  gap, expected = gaps
  curve = dict(label=label, parameter={name: value}, **toy2d.curve_summary(gap))
  if expected is not None:  # the expected curve beside an estimate (config.compare_expected)
    summary = toy2d.curve_summary(expected)
    curve["expected"] = {k: summary[k] for k in ("values", "spread", "peak_value", "peak_sigma",
                                                 "spread_at_peak")}
  logging.info("toy2d   %s: peak G=%.4g at sigma=%.4g", label, curve["peak_value"],
               curve["peak_sigma"])
  return curve


@_in_config_precision
def experiment_flow_field(config):
  section = config.flow_field
  split = _split_from(section, config)
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  indices = tuple(section.get("sigma_indices", ()))
  if indices:
    sigmas = [float(grid[i]) for i in indices]
    requested = [None] * len(indices)
  else:
    requested = [float(s) for s in section.sigmas]
    sigmas = [nearest_grid_sigma(grid, s) for s in requested]
  flow = toy2d.flow_field(_optimal(split, config), sigmas, section.extent, section.grid_size,
                          _dtype(config))
  fields = []
  for i, stats in enumerate(toy2d.flow_field_statistics(flow, split.train)):
    entry = {"sigma": sigmas[i]}
    if indices:
      entry["sigma_index"] = int(indices[i])
    else:
      entry["sigma_requested"] = requested[i]
    entry.update(stats)
    fields.append(entry)
  sigma_note = (f"sigmas: indices {list(indices)} of the ascending toy grid (the sigmas the "
                "authors plot)" if indices else
                "sigmas: the toy-grid values nearest (in log) to the requested ones")
  results = dict(
      experiment="flow_field",
      description="(a) the flow field y*(x) - x of the empirical optimal denoiser (delta = 0)",
      protocol=_protocol(config, section, grid_size=int(section.grid_size),
                         extent=float(section.extent), delta=0.0,
                         notes=["10 training points: the train half (even k) of the symmetric "
                                "N=20 set with offset 0.001", sigma_note,
                                "the fields themselves are in fields.npz (axis, sigmas, field)"]),
      train_points=split.train, val_points=split.val, fields=fields)
  plot_data = dict(axis=flow.axis, sigmas=np.asarray(sigmas), field=flow.field, train=split.train,
                   val=split.val)
  return results, plot_data


@_in_config_precision
def experiment_relative_error(config):
  section = config.relative_error
  split = _split_from(section, config)
  if section.get("all_training", False):  # the authors' setup: no validation points
    split = toy2d.all_training(split, config.radius)
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  sigma = nearest_grid_sigma(grid, section.sigma)
  offset = float(section.get("offset", config.offset))
  kind = section.get("test_angles", "circle")
  angles = toy2d.relative_error_angles(kind, int(section.num_angles), offset)
  test_points = circle_points(angles, config.radius)
  if config.estimate == "expected":
    estimate = dict(rule=_rule(config))
  else:
    key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_RELATIVE_ERROR)
    estimate = dict(noise=toy2d.relative_error_noise(
        config.estimate, test_points, split.train, int(section.draws), key=key,
        legacy_seed=int(section.get("legacy_seed", 1))))
  optimal = _optimal(split, config)
  curves = []
  for delta in section.deltas:
    result = toy2d.relative_errors(error_prone_denoiser(optimal, float(delta)), test_points,
                                   split.train, sigma, dtype=_dtype(config), **estimate)
    curves.append(dict(label=f"delta={delta:g}", parameter={"delta": float(delta)},
                       **toy2d.relative_error_summary(result, angles, split.train_angles,
                                                      split.val_angles)))
  estimate_note = {
      "expected": "E(theta) and each training point's E are expectations over the noise "
                  "(lattice_rule in each point's local frame), so the curve is 0 at training "
                  "angles up to rounding",
      "draws": "(ours) one set of draws in the local (radial, tangential) frame of each angle, so "
               "every training point has the same error and the curve is 0 at training angles",
      "paper_draws": "the authors' draws: one set shared by every angle and training point in "
                     "world coordinates, so training points differ slightly in error"}
  angles_note = {"circle": "test angles 2 pi (k / num_angles + offset): they contain the training "
                           "angles",
                 "half_circle": "test angles pi k / num_angles on [0, pi) (the authors')"}
  results = dict(
      experiment="relative_error",
      description="(b) relative denoising error along the circle at sigma ~ 1",
      protocol=_protocol(
          config, section, sigma_requested=float(section.sigma), sigma=sigma,
          num_angles=int(section.num_angles), test_angles=kind, angle_offset=offset,
          **_estimate_protocol(config, int(section.draws), int(section.get("legacy_seed", 1)),
                               shared_world_draws=True),
          notes=["relative error (E(theta) - E_train) / E_train, E(theta) the expected (or mean "
                 "over draws) ||y_delta(y_theta + sigma n) - y_theta||, E_train the mean of E over "
                 "the training points", estimate_note[config.estimate], angles_note[kind]]),
      axis=dict(name="angle", unit="radians", values=angles),
      train_angles=split.train_angles, val_angles=split.val_angles, curves=curves)
  return results, dict(angles=angles, curves=curves, train_angles=split.train_angles,
                       val_angles=split.val_angles, sigma=sigma)


def _gap_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), _STREAM_GAP_DRAWS)


def _gap_plot_data(sigmas, curves, name, title, config):
  shown = ", ".join(f"{curves[i]['parameter'][name]:g}"
                    for i in sorted({0, len(curves) // 2, len(curves) - 1}))
  symbol = {"delta": "delta", "w": "w", "num_train": "training points"}[name]
  if config.estimate == "expected":
    band = (f"expected curves; bands: ±1 std of a {int(config.draws)}-draw estimate "
            f"({symbol} = {shown})")
  else:
    band = ("the authors' draws" if config.estimate == "paper_draws" else
            f"{int(config.draws)} draws per point")
    if config.get("compare_expected", False):
      band = (f"solid: {band}; dashed: expected ± 1 std of {int(config.draws)} draws "
              f"({symbol} = {shown})")
  return dict(sigmas=sigmas, curves=curves, name=name, title=title, note=band)


@_in_config_precision
def experiment_gap_vs_delta(config):
  section = config.gap_vs_delta
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = _optimal(split, config)
  curves = []
  for delta in section.deltas:
    gap = _gap(error_prone_denoiser(optimal, float(delta)), split, section, config)
    curves.append(_gap_curve(f"delta={delta:g}", "delta", float(delta), gap))
  results = dict(experiment="gap_vs_delta", description="(c) G(sigma) of y_delta as delta varies",
                 protocol=_gap_protocol(config, section), axis=dict(name="sigma", values=sigmas),
                 curves=curves)
  return results, _gap_plot_data(sigmas, curves, "delta", "G(sigma) vs model error", config)


@_in_config_precision
def experiment_gap_vs_density(config):
  section = config.gap_vs_density
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  curves = []
  for n in section.num_points:
    split = make_dataset(section.dataset, int(n), config.radius,
                         float(section.get("offset", config.offset)), config.seed)
    denoise = error_prone_denoiser(_optimal(split, config), float(section.delta))
    gap = _gap(denoise, split, section, config)
    curve = _gap_curve(f"{split.train.shape[0]} train (N={n})", "num_train",
                       int(split.train.shape[0]), gap)
    curve["parameter"]["num_points"] = int(n)
    curves.append(curve)
  results = dict(experiment="gap_vs_density",
                 description="(d) G(sigma) as the number of points on the circle varies",
                 protocol=_gap_protocol(config, section, delta=float(section.delta)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, _gap_plot_data(sigmas, curves, "num_train",
                                 f"G(sigma) vs data density (delta={section.delta:g})", config)


@_in_config_precision
def experiment_guidance(config):
  section = config.guidance
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = _optimal(split, config)
  positive = error_prone_denoiser(optimal, float(section.delta_pos))
  negative = error_prone_denoiser(optimal, float(section.delta_neg))
  curves = []
  for w in section.weights:
    gap = _gap(guided(positive, negative, float(w)), split, section, config)
    curves.append(_gap_curve(f"w={w:g}", "w", float(w), gap))
  results = dict(experiment="guidance",
                 description="(e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies",
                 protocol=_gap_protocol(config, section, delta_pos=float(section.delta_pos),
                                        delta_neg=float(section.delta_neg)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, _gap_plot_data(
      sigmas, curves, "w", f"G(sigma) with guidance (delta_pos={section.delta_pos:g}, "
                           f"delta_neg={section.delta_neg:g})", config)


def _sampler_start(config, section, stream: int):
  """The split, y* on it and the sampler's initial noise of a sampling experiment ((f), (g))."""
  split = _split_from(section, config)
  key = jax.random.fold_in(jax.random.key(config.seed), stream)
  return (split, _optimal(split, config),
          toy2d.sampler_noise(key, int(section.num_samples), _dtype(config)))


@_in_config_precision
def experiment_trajectories(config):
  section = config.trajectories
  split, optimal, noise = _sampler_start(config, section, _STREAM_TRAJECTORIES)
  runs = []
  for delta in section.deltas:
    samples, paths = toy2d.sample(error_prone_denoiser(optimal, float(delta)), noise,
                                  section.num_steps, section.solver, int(section.num_plotted))
    runs.append(dict(label=f"delta={delta:g}", parameter={"delta": float(delta)},
                     **toy2d.endpoint_statistics(samples, split.train, split.val,
                                                 section.tolerance),
                     plotted_trajectories=paths,  # (num_plotted, steps + 1, 2)
                     endpoints=samples))
  sigmas = edm.karras_sigmas(int(section.num_steps))
  results = dict(
      experiment="trajectories",
      description="(f) probability-flow sampling with y* (delta = 0) and y_delta",
      protocol=_protocol(config, section, solver=section.solver, num_steps=int(section.num_steps),
                         num_samples=int(section.num_samples), tolerance=float(section.tolerance),
                         initial_noise="N(0, sigma_max^2 I), sigma_max = 80",
                         notes=["(ours) the EDM schedule with num_steps steps, a final step into 0",
                                "plotted_trajectories: the states the sampler visited (first "
                                "num_plotted samples), the endpoint appended"]),
      sampler_sigmas=sigmas, train_points=split.train, val_points=split.val, runs=runs)
  return results, dict(runs=runs, train=split.train, val=split.val, radius=config.radius)


@_in_config_precision
def experiment_frechet(config):
  section = config.frechet
  split, optimal, noise = _sampler_start(config, section, _STREAM_FRECHET)
  samples = [toy2d.sample(error_prone_denoiser(optimal, float(delta)), noise, section.num_steps,
                          section.solver) for delta in section.deltas]
  fd = toy2d.frechet_curves(samples, split.train, split.val, ddof=section.ddof)
  deltas = np.asarray(section.deltas, np.float64)
  results = dict(
      experiment="frechet",
      description="(g) 2D Frechet distance of samples to the train and validation sets vs delta",
      protocol=_protocol(
          config, section, solver=section.solver, num_steps=int(section.num_steps),
          num_samples=int(section.num_samples),
          ddof=int(section.ddof),
          notes=["FD: squared 2-Wasserstein distance between Gaussian fits (mean, covariance) of "
                 "the samples and of each set, as in FID",
                 "(ours) ddof=0: the moments of each point set's empirical distribution; with "
                 "ddof=1 a 10-point set's covariance is inflated by 10/9, and that mismatch alone "
                 "would dominate FD_train of exact copies",
                 "(ours) the random data set: on a symmetric set both halves have mean 0 and "
                 "covariance r^2/2 I, so FD_train == FD_val for any samples"]),
      axis=dict(name="delta", values=deltas),
      curves=[dict(label="FD_train", values=fd["fd_train"]),
              dict(label="FD_val", values=fd["fd_val"]), dict(label="G_FD", values=fd["g_fd"]),
              dict(label="fraction_within_1e-2_of_train", values=fd["copies"])],
      fd_train_set_to_val_set=fd["fd_sets"], train_points=split.train, val_points=split.val)
  return results, dict(deltas=deltas, fd_train=fd["fd_train"], fd_val=fd["fd_val"],
                       g_fd=fd["g_fd"], fd_sets=fd["fd_sets"], dataset=section.dataset)


_RUNNERS: Dict[str, Callable] = {
    "flow_field": experiment_flow_field,
    "relative_error": experiment_relative_error,
    "gap_vs_delta": experiment_gap_vs_delta,
    "gap_vs_density": experiment_gap_vs_density,
    "guidance": experiment_guidance,
    "trajectories": experiment_trajectories,
    "frechet": experiment_frechet,
}


# ----------------------------------------------------------------------------------------------
# Results, summaries, config validation and the job entry point.


def summarize(results: Dict) -> List[str]:
  """A few human-readable lines per experiment."""
  name = results["experiment"]
  lines = []
  if name == "flow_field":
    for f in results["fields"]:
      lines.append(f"sigma={f['sigma']:.3g}: mean |y* - train mean|="
                   f"{f['mean_distance_prediction_to_train_mean']:.3g}, fraction of predictions on a "
                   f"training point={f['fraction_predictions_within_1e-2_of_train']:.3f}")
  elif name == "relative_error":
    for c in results["curves"]:
      at_train = (f", max |rel| at train angles {c['max_abs_at_train_angles']:.2g}"
                  if "max_abs_at_train_angles" in c else "")
      lines.append(f"{c['label']}: max rel. error {c['max_value']:.4g} at "
                   f"{np.degrees(c['angle_at_max']):.1f} deg{at_train}")
  elif name in GAP_EXPERIMENTS:
    for c in results["curves"]:
      spread = (f" (+-{c['spread_at_peak']:.2g} for {results['protocol']['spread_draws']} draws)"
                if "spread_at_peak" in c else "")
      if "expected" in c:
        spread = (f" (expected {c['expected']['peak_value']:.4g} at sigma="
                  f"{c['expected']['peak_sigma']:.4g} +-{c['expected']['spread_at_peak']:.2g})")
      lines.append(f"{c['label']}: peak G={c['peak_value']:.4g} at sigma={c['peak_sigma']:.4g}"
                   f"{spread}")
  elif name == "trajectories":
    for r in results["runs"]:
      lines.append(f"{r['label']}: endpoints within tol of train={r['fraction_within_tol_of_train']:.3f}"
                   f", of val={r['fraction_within_tol_of_val']:.3f}, mean dist to nearest train="
                   f"{r['mean_distance_to_nearest_train']:.3g}")
  elif name == "frechet":
    deltas = results["axis"]["values"]
    curves = {c["label"]: c["values"] for c in results["curves"]}
    for i, d in enumerate(deltas):
      lines.append(f"delta={d:g}: FD_train={curves['FD_train'][i]:.4g} FD_val={curves['FD_val'][i]:.4g}"
                   f" G_FD={curves['G_FD'][i]:.4g}")
  return lines


def validate_config(config) -> None:
  """The rules between the fields the chosen experiments read (each field alone:
  `defaults.TOY2D`); raises ConfigError naming field and values."""
  config_checks.choice(config, "job", ("toy2d",))
  experiments = config_checks.entries(config.experiments)
  if config.estimate == "expected" or config.compare_expected:
    spacing, radius = config.quadrature.spacing, config.quadrature.radius
    if radius <= spacing:
      _fail("quadrature.radius", radius, f"must be > quadrature.spacing={spacing}")
  indices = tuple(config.flow_field.get("sigma_indices", ()))
  if "flow_field" in experiments and indices and max(indices) >= config.sigma_grid_steps:
    _fail("flow_field.sigma_indices", indices,
          f"must be indices into the {config.sigma_grid_steps}-step grid (< sigma_grid_steps)")
  t = config.trajectories
  if "trajectories" in experiments and t.num_plotted > t.num_samples:
    _fail("trajectories.num_plotted", t.num_plotted,
          f"must be <= trajectories.num_samples={t.num_samples}")


def run(config, workdir: str) -> Dict[str, Dict]:
  """Runs the configured experiments; writes WORKDIR/results.json after each (+ PNGs)."""
  experiments = config_checks.entries(config.experiments)
  make_plots = bool(config.get("make_plots", True))
  if make_plots:
    from diffgen_jax.plots import toy2d as toy_plots  # matplotlib only when plotting
  all_results = {}
  for name in experiments:
    start = time.perf_counter()
    results, plot_data = _RUNNERS[name](config)
    results["wall_time_s"] = time.perf_counter() - start
    all_results[name] = results
    results_lib.write(workdir, "toy2d", {"experiments": all_results})
    out_dir = os.path.join(workdir, name)
    os.makedirs(out_dir, exist_ok=True)
    if name == "flow_field":
      with jsonio.atomic_open(os.path.join(out_dir, "fields.npz"), "wb") as f:
        np.savez_compressed(f, axis=plot_data["axis"], sigmas=plot_data["sigmas"],
                            field=plot_data["field"])
    if make_plots:
      toy_plots.plot_experiment(name, plot_data, os.path.join(out_dir, f"{name}.png"))
    console.progress(f"toy2d {name} ({results['wall_time_s']:.1f} s)")
    for line in summarize(results):
      console.progress(f"  {name}: {line}")
  console.summary(f"toy2d: results in {results_lib.path(workdir)}")
  return all_results
