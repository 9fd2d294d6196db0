"""The `toy2d` job: the 2D toy model's experiments (a)-(g) of paper.md section 5 (the model and its
gap metric are `diffgen_jax.toy2d`).

  flow_field      (a) the field y*(x) - x at large, medium and small sigma
  relative_error  (b) the denoising error along the circle, relative to the training points
  gap_vs_delta    (c) the relative generalization gap G(sigma) as delta varies
  gap_vs_density  (d) G(sigma) as the number of training points varies
  guidance        (e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies
  trajectories    (f) Euler sampling with y* and with y_delta: where the endpoints land
  frechet         (g) 2D Frechet distance of samples to the train and validation sets vs delta

Writes WORKDIR/results.json (`jobs.results`: {"job": "toy2d", "experiments": {name: results}})
and WORKDIR/<experiment>/<experiment>.png (+ fields.npz for the flow field).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import config_checks, edm, samplers
from diffgen_jax.config_checks import fail as _fail, integer as _int
from diffgen_jax.denoisers import guided
from diffgen_jax.evaluation import frechet
from diffgen_jax.jobs import console, results as results_lib
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from diffgen_jax.toy2d import (DATASETS, Gap, Split, circle_points, denoising_errors, make_dataset,
                               nearest_distances, nearest_grid_sigma, noise_draws, peak,
                               symmetric_angles,
                               relative_gap)

EXPERIMENTS = ("flow_field", "relative_error", "gap_vs_delta", "gap_vs_density", "guidance",
               "trajectories", "frechet")
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


def _protocol(config, section=None, **extra) -> Dict:
  proto = dict(seed=int(config.seed), radius=float(config.radius))
  if section is not None:
    proto.update(dataset=section.dataset)
    if "num_points" in section:
      proto["num_points"] = section.num_points
    if section.dataset == "symmetric":
      proto["offset"] = float(section.get("offset", config.offset))
      proto["split"] = "angles 2 pi (k/N + offset); train = even k, validation = odd k"
    else:
      proto["split"] = "angles uniform in [0, 2 pi) (numpy default_rng(seed)); first half validation"
  proto.update(extra)
  return proto


def _gap_protocol(config, section, **extra) -> Dict:
  return _protocol(
      config, section, draws=int(config.draws), local_frame_draws=bool(config.local_frame_draws),
      sigma_grid=f"edm.toy_sigma_grid({config.sigma_grid_steps}): the EDM schedule, ascending",
      error="per point the mean over draws of ||y(y_p + sigma n) - y_p|| (not squared)",
      gap="G = (mean_val - mean_train) / mean_train",
      draws_note=("(ours) one draw set of (radial, tangential) vectors shared by all points in each "
                  "point's local frame, reused at every sigma" if config.local_frame_draws else
                  "independent draws per point, reused at every sigma"), **extra)


def _gap_curve(label: str, name: str, value, gap: Gap) -> Dict:
  peak_sigma, peak_value = peak(gap.sigmas, gap.gap)
  return dict(label=label, parameter={name: value}, values=gap.gap, error_train=gap.error_train,
              error_val=gap.error_val, peak_value=peak_value, peak_sigma=peak_sigma)


def experiment_flow_field(config):
  section = config.flow_field
  split = _split_from(section, config)
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  sigmas = [nearest_grid_sigma(grid, s) for s in section.sigmas]
  optimal = empirical_optimal_denoiser(split.train)
  axis = np.linspace(-section.extent, section.extent, section.grid_size)
  xx, yy = np.meshgrid(axis, axis)
  queries = np.stack([xx.ravel(), yy.ravel()], axis=-1)
  q = queries.shape[0]
  x_all = jnp.asarray(np.tile(queries, (len(sigmas), 1)), jnp.float32)
  sigma_all = jnp.asarray(np.repeat(sigmas, q), jnp.float32)
  pred = np.asarray(optimal(x_all, sigma_all), np.float64).reshape(len(sigmas), q, 2)
  field = pred - queries[None]
  magnitude = np.linalg.norm(field, axis=-1)
  centre = split.train.mean(axis=0)
  fields = []
  for i, (requested, used) in enumerate(zip(section.sigmas, sigmas)):
    to_point = nearest_distances(pred[i], split.train)
    fields.append({
        "sigma_requested": float(requested), "sigma": used,
        "mean_distance_prediction_to_train_mean":
            float(np.mean(np.linalg.norm(pred[i] - centre, axis=-1))),
        "mean_distance_prediction_to_nearest_train_point": float(np.mean(to_point)),
        "fraction_predictions_within_1e-2_of_train": float(np.mean(to_point < 1e-2)),
        "max_magnitude": float(magnitude[i].max())})
  results = dict(
      experiment="flow_field",
      description="(a) the flow field y*(x) - x of the empirical optimal denoiser (delta = 0)",
      protocol=_protocol(config, section, grid_size=int(section.grid_size),
                         extent=float(section.extent), delta=0.0,
                         notes=["(ours) 10 training points: the train half (even k) of the "
                                "symmetric N=20 set with offset 0.001",
                                "sigmas: the toy-grid values nearest (in log) to the requested ones",
                                "the fields themselves are in fields.npz (axis, sigmas, field)"]),
      train_points=split.train, val_points=split.val, fields=fields)
  plot_data = dict(axis=axis, sigmas=np.asarray(sigmas), field=field.reshape(
      len(sigmas), section.grid_size, section.grid_size, 2), train=split.train, val=split.val)
  return results, plot_data


def experiment_relative_error(config):
  section = config.relative_error
  split = _split_from(section, config)
  grid = edm.toy_sigma_grid(config.sigma_grid_steps)
  sigma = nearest_grid_sigma(grid, section.sigma)
  offset = float(section.get("offset", config.offset))
  angles = symmetric_angles(section.num_angles, offset)
  test_points = circle_points(angles, config.radius)
  key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_RELATIVE_ERROR)
  # Local-frame draws: the same (radial, tangential) draws at every angle and training point.
  points = np.concatenate([test_points, split.train])
  noise = noise_draws(key, points, section.draws, local_frame=True)
  optimal = empirical_optimal_denoiser(split.train)
  n_test = angles.size
  train_index = _matching_angles(angles, split.train_angles)
  val_index = _matching_angles(angles, split.val_angles)
  curves = []
  for delta in section.deltas:
    errors = denoising_errors(error_prone_denoiser(optimal, float(delta)), points, [sigma], noise)[0]
    e_theta, e_train = errors[:n_test], errors[n_test:].mean()
    rel = (e_theta - e_train) / e_train
    i = int(np.argmax(rel))
    curve = dict(label=f"delta={delta:g}", parameter={"delta": float(delta)}, values=rel,
                 error=e_theta, error_train=float(e_train), max_value=float(rel[i]),
                 angle_at_max=float(angles[i]))
    if train_index.size:
      curve["max_abs_at_train_angles"] = float(np.max(np.abs(rel[train_index])))
    if val_index.size:
      curve["mean_at_val_angles"] = float(np.mean(rel[val_index]))
    curves.append(curve)
  results = dict(
      experiment="relative_error",
      description="(b) relative denoising error along the circle at sigma ~ 1",
      protocol=_protocol(
          config, section, sigma_requested=float(section.sigma), sigma=sigma,
          num_angles=int(section.num_angles), angle_offset=offset, draws=int(section.draws),
          notes=["(ours) relative error (E(theta) - E_train) / E_train, E(theta) the mean over "
                 "draws of ||y_delta(y_theta + sigma n) - y_theta||, E_train the mean of E over the "
                 "training points with the same draws",
                 "(ours) one set of draws in the local (radial, tangential) frame of each angle, so "
                 "every training point has the same error and the curve is 0 at training angles",
                 "test angles 2 pi (k / num_angles + offset): they contain the training angles"]),
      axis=dict(name="angle", unit="radians", values=angles),
      train_angles=split.train_angles, val_angles=split.val_angles, curves=curves)
  return results, dict(angles=angles, curves=curves, train_angles=split.train_angles,
                       val_angles=split.val_angles, sigma=sigma)


def _matching_angles(angles, targets, tol: float = 1e-9) -> np.ndarray:
  """Indices i with angles[i] equal (mod 2 pi) to one of targets."""
  diff = np.angle(np.exp(1j * (np.asarray(angles)[:, None] - np.asarray(targets)[None, :])))
  return np.nonzero(np.any(np.abs(diff) < tol, axis=1))[0]


def _gap_key(config):
  return jax.random.fold_in(jax.random.key(config.seed), _STREAM_GAP_DRAWS)


def experiment_gap_vs_delta(config):
  section = config.gap_vs_delta
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = empirical_optimal_denoiser(split.train)
  curves = []
  for delta in section.deltas:
    gap = relative_gap(error_prone_denoiser(optimal, float(delta)), split, sigmas, _gap_key(config),
                       config.draws, config.local_frame_draws)
    curves.append(_gap_curve(f"delta={delta:g}", "delta", float(delta), gap))
  results = dict(experiment="gap_vs_delta", description="(c) G(sigma) of y_delta as delta varies",
                 protocol=_gap_protocol(config, section), axis=dict(name="sigma", values=sigmas),
                 curves=curves)
  return results, dict(sigmas=sigmas, curves=curves, name="delta", title="G(sigma) vs model error")


def experiment_gap_vs_density(config):
  section = config.gap_vs_density
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  curves = []
  for n in section.num_points:
    split = make_dataset(section.dataset, int(n), config.radius,
                         float(section.get("offset", config.offset)), config.seed)
    denoise = error_prone_denoiser(empirical_optimal_denoiser(split.train), float(section.delta))
    gap = relative_gap(denoise, split, sigmas, _gap_key(config), config.draws,
                       config.local_frame_draws)
    curve = _gap_curve(f"{split.train.shape[0]} train (N={n})", "num_train",
                       int(split.train.shape[0]), gap)
    curve["parameter"]["num_points"] = int(n)
    curves.append(curve)
  results = dict(experiment="gap_vs_density",
                 description="(d) G(sigma) as the number of points on the circle varies",
                 protocol=_gap_protocol(config, section, delta=float(section.delta)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, dict(sigmas=sigmas, curves=curves, name="num_train",
                       title=f"G(sigma) vs data density (delta={section.delta:g})")


def experiment_guidance(config):
  section = config.guidance
  split = _split_from(section, config)
  sigmas = edm.toy_sigma_grid(config.sigma_grid_steps)
  optimal = empirical_optimal_denoiser(split.train)
  positive = error_prone_denoiser(optimal, float(section.delta_pos))
  negative = error_prone_denoiser(optimal, float(section.delta_neg))
  curves = []
  for w in section.weights:
    gap = relative_gap(guided(positive, negative, float(w)), split, sigmas, _gap_key(config),
                       config.draws, config.local_frame_draws)
    curves.append(_gap_curve(f"w={w:g}", "w", float(w), gap))
  results = dict(experiment="guidance",
                 description="(e) G(sigma) of y_pos + w (y_pos - y_neg) as w varies",
                 protocol=_gap_protocol(config, section, delta_pos=float(section.delta_pos),
                                        delta_neg=float(section.delta_neg)),
                 axis=dict(name="sigma", values=sigmas), curves=curves)
  return results, dict(sigmas=sigmas, curves=curves, name="w",
                       title=f"G(sigma) with guidance (delta_pos={section.delta_pos:g}, "
                             f"delta_neg={section.delta_neg:g})")


def _sample(optimal, delta, noise, section):
  denoise = error_prone_denoiser(optimal, float(delta))
  return samplers.sample(denoise, noise, num_steps=int(section.num_steps), solver=section.solver,
                         return_trajectory=True)


def experiment_trajectories(config):
  section = config.trajectories
  split = _split_from(section, config)
  optimal = empirical_optimal_denoiser(split.train)
  key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_TRAJECTORIES)
  noise = jax.random.normal(key, (section.num_samples, 2), jnp.float32)
  k = int(section.num_plotted)
  runs = []
  for delta in section.deltas:
    out = _sample(optimal, delta, noise, section)
    samples = np.asarray(out.samples, np.float64)
    to_train = nearest_distances(samples, split.train)
    to_val = nearest_distances(samples, split.val)
    paths = np.concatenate([np.asarray(out.trajectory.x[:, :k], np.float64), samples[None, :k]])
    runs.append(dict(
        label=f"delta={delta:g}", parameter={"delta": float(delta)},
        fraction_within_tol_of_train=float(np.mean(to_train < section.tolerance)),
        fraction_within_tol_of_val=float(np.mean(to_val < section.tolerance)),
        mean_distance_to_nearest_train=float(np.mean(to_train)),
        mean_distance_to_nearest_val=float(np.mean(to_val)),
        mean_radius=float(np.mean(np.linalg.norm(samples, axis=-1))),
        plotted_trajectories=np.transpose(paths, (1, 0, 2)),  # (k, steps + 1, 2)
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


def experiment_frechet(config):
  section = config.frechet
  split = _split_from(section, config)
  optimal = empirical_optimal_denoiser(split.train)
  key = jax.random.fold_in(jax.random.key(config.seed), _STREAM_FRECHET)
  noise = jax.random.normal(key, (section.num_samples, 2), jnp.float32)
  fd_train, fd_val, copies = [], [], []
  for delta in section.deltas:
    denoise = error_prone_denoiser(optimal, float(delta))
    samples = np.asarray(samplers.sample(denoise, noise, num_steps=int(section.num_steps),
                                         solver=section.solver).samples, np.float64)
    fd_train.append(frechet.frechet_distance(samples, split.train, ddof=section.ddof))
    fd_val.append(frechet.frechet_distance(samples, split.val, ddof=section.ddof))
    copies.append(float(np.mean(nearest_distances(samples, split.train) < 1e-2)))
  fd_train, fd_val = np.asarray(fd_train), np.asarray(fd_val)
  g_fd = (fd_val - fd_train) / fd_train
  fd_sets = frechet.frechet_distance(split.train, split.val, ddof=section.ddof)
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
      curves=[dict(label="FD_train", values=fd_train), dict(label="FD_val", values=fd_val),
              dict(label="G_FD", values=g_fd),
              dict(label="fraction_within_1e-2_of_train", values=np.asarray(copies))],
      fd_train_set_to_val_set=fd_sets, train_points=split.train, val_points=split.val)
  return results, dict(deltas=deltas, fd_train=fd_train, fd_val=fd_val, g_fd=g_fd, fd_sets=fd_sets,
                       dataset=section.dataset)


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
      lines.append(f"{c['label']}: max rel. error {c['max_value']:.3g} at "
                   f"{np.degrees(c['angle_at_max']):.1f} deg, max |rel| at train angles "
                   f"{c.get('max_abs_at_train_angles', float('nan')):.2g}")
  elif name in GAP_EXPERIMENTS:
    for c in results["curves"]:
      lines.append(f"{c['label']}: peak G={c['peak_value']:.4g} at sigma={c['peak_sigma']:.3g}")
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


def _number(config, field: str, minimum: float = 0.0, strict: bool = True):
  return config_checks.number(config, field, minimum, strict=strict)


def _numbers(config, field: str, minimum: float = 0.0, strict: bool = True, integer=False):
  return config_checks.numbers(config, field, minimum, strict=strict, integer=integer)


def validate_config(config) -> None:
  """Checks every field the chosen experiments read; raises ConfigError naming field and values."""
  config_checks.choice(config, "job", ("toy2d",))
  experiments = config_checks.subset(config, "experiments", EXPERIMENTS)
  _int(config, "seed", 0)
  _number(config, "radius")
  _number(config, "offset", 0.0, strict=False)
  _int(config, "draws", 1)
  _int(config, "sigma_grid_steps", 2)
  config_checks.flag(config, "local_frame_draws")
  for name in experiments:
    config_checks.get(config, name)
    config_checks.choice(config, f"{name}.dataset", DATASETS)
    if "offset" in config[name]:
      _number(config, f"{name}.offset", 0.0, strict=False)
    if name == "gap_vs_density":
      _numbers(config, f"{name}.num_points", 2, strict=False, integer=True)
    else:
      _int(config, f"{name}.num_points", 2)
  if "flow_field" in experiments:
    _numbers(config, "flow_field.sigmas")
    _int(config, "flow_field.grid_size", 2)
    _number(config, "flow_field.extent")
  if "relative_error" in experiments:
    _int(config, "relative_error.num_angles", 1)
    _int(config, "relative_error.draws", 1)
    _number(config, "relative_error.sigma")
    _numbers(config, "relative_error.deltas", strict=False)
  if "gap_vs_delta" in experiments:
    _numbers(config, "gap_vs_delta.deltas")  # > 0: with delta = 0 the train error vanishes
  if "gap_vs_density" in experiments:
    _number(config, "gap_vs_density.delta")
  if "guidance" in experiments:
    _number(config, "guidance.delta_pos")
    _number(config, "guidance.delta_neg")
    _numbers(config, "guidance.weights", strict=False)
  for name, min_samples in (("trajectories", 1), ("frechet", 2)):
    if name in experiments:
      _numbers(config, f"{name}.deltas", strict=False)
      _int(config, f"{name}.num_samples", min_samples)
      _int(config, f"{name}.num_steps", 1)
      if name == "frechet":
        config_checks.choice(config, "frechet.ddof", (0, 1))
      config_checks.choice(config, f"{name}.solver", samplers.SOLVERS)
  if "trajectories" in experiments:
    plotted = _int(config, "trajectories.num_plotted", 0)
    if plotted > config.trajectories.num_samples:
      _fail("trajectories.num_plotted", plotted,
            f"must be <= trajectories.num_samples={config.trajectories.num_samples}")
    _number(config, "trajectories.tolerance")


def run(config, workdir: str) -> Dict[str, Dict]:
  """Runs the configured experiments; writes WORKDIR/results.json after each (+ PNGs)."""
  experiments = config_checks.subset(config, "experiments", EXPERIMENTS)
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
      np.savez_compressed(os.path.join(out_dir, "fields.npz"), axis=plot_data["axis"],
                          sigmas=plot_data["sigmas"], field=plot_data["field"])
    if make_plots:
      toy_plots.plot_experiment(name, plot_data, os.path.join(out_dir, f"{name}.png"))
    console.progress(f"toy2d {name} ({results['wall_time_s']:.1f} s)")
    for line in summarize(results):
      console.progress(f"  {name}: {line}")
  console.summary(f"toy2d: results in {results_lib.path(workdir)}")
  return all_results
