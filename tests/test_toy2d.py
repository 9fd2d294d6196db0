"""The 2D toy model: data, the gap metric's known answers, the experiments' trends, results, config."""

import importlib.util
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import edm, jsonio, toy2d
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.jobs import toy2d as toy2d_job
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser

_CONFIG_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "toy2d.py")


def get_config(variant=None):
  spec = importlib.util.spec_from_file_location("toy2d_config", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


SIGMAS = edm.toy_sigma_grid()


def _gap(delta, num_points=20, draws=50, sigmas=SIGMAS, local_frame=True, config=None):
  config = config or get_config()
  split = toy2d.make_dataset("symmetric", num_points, 10.0, 0.01)
  denoise = error_prone_denoiser(empirical_optimal_denoiser(split.train), delta)
  return toy2d.relative_gap(denoise, split, sigmas, toy2d_job._gap_key(config), draws, local_frame)


# ---------------------------------------------------------------------------------------------
# Data.


def test_symmetric_dataset_counts_radius_parity_offset():
  split = toy2d.make_dataset("symmetric", 20, radius=10.0, offset=0.01)
  assert split.train.shape == (10, 2) and split.val.shape == (10, 2)
  np.testing.assert_allclose(np.linalg.norm(split.train, axis=1), 10.0, rtol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(split.val, axis=1), 10.0, rtol=1e-12)
  k = np.arange(20)
  np.testing.assert_allclose(split.train_angles, 2 * np.pi * (k[0::2] / 20 + 0.01))
  np.testing.assert_allclose(split.val_angles, 2 * np.pi * (k[1::2] / 20 + 0.01))
  np.testing.assert_allclose(split.train[0], 10 * np.array([np.cos(0.02 * np.pi),
                                                             np.sin(0.02 * np.pi)]))
  flow = toy2d.make_dataset("symmetric", 20, radius=10.0, offset=0.001)
  np.testing.assert_allclose(flow.train_angles[0], 2 * np.pi * 0.001)
  odd = toy2d.make_dataset("symmetric", 7)
  assert odd.train.shape == (4, 2) and odd.val.shape == (3, 2)


def test_random_dataset_split_and_seed():
  a = toy2d.make_dataset("random", 20, radius=10.0, seed=3)
  b = toy2d.make_dataset("random", 20, radius=10.0, seed=3)
  c = toy2d.make_dataset("random", 20, radius=10.0, seed=4)
  angles = np.random.default_rng(3).uniform(0, 2 * np.pi, 20)
  np.testing.assert_allclose(a.val_angles, angles[:10])  # first half validation
  np.testing.assert_allclose(a.train_angles, angles[10:])
  np.testing.assert_array_equal(a.train, b.train)
  assert not np.allclose(a.train, c.train)
  np.testing.assert_allclose(np.linalg.norm(a.train, axis=1), 10.0)
  with pytest.raises(ValueError, match="dataset kind"):
    toy2d.make_dataset("spiral", 20)


def test_local_frame_draws_are_the_same_in_every_frame():
  points = toy2d.make_dataset("random", 12, seed=1).train
  noise = np.asarray(toy2d.noise_draws(toy2d_job._gap_key(get_config()), points, 30), np.float64)
  e_r = points / np.linalg.norm(points, axis=1, keepdims=True)
  e_t = np.stack([-e_r[:, 1], e_r[:, 0]], axis=1)
  radial = np.einsum("pdk,pk->pd", noise, e_r)
  tangential = np.einsum("pdk,pk->pd", noise, e_t)
  np.testing.assert_allclose(radial, np.broadcast_to(radial[0], radial.shape), atol=1e-6)
  np.testing.assert_allclose(tangential, np.broadcast_to(tangential[0], radial.shape), atol=1e-6)
  independent = toy2d.noise_draws(toy2d_job._gap_key(get_config()), points, 30, local_frame=False)
  assert independent.shape == (6, 30, 2)


# ---------------------------------------------------------------------------------------------
# Gap metric: known answers.


def test_errors_of_trivial_denoisers():
  split = toy2d.make_dataset("symmetric", 20)
  points = np.concatenate([split.train, split.val])
  noise = toy2d.noise_draws(toy2d_job._gap_key(get_config()), points, 50)
  sigmas = np.array([0.01, 1.0, 50.0])
  # Identity: the error is sigma * mean ||n||, the same for every point, so G = 0.
  identity = toy2d.denoising_errors(lambda x, s, labels=None: x, points, sigmas, noise)
  mean_norm = float(np.mean(np.linalg.norm(np.asarray(noise[0]), axis=-1)))
  np.testing.assert_allclose(identity, sigmas[:, None] * mean_norm * np.ones((1, 20)), rtol=1e-5)
  # Predicting the origin: the error is the radius, whatever sigma.
  zero = toy2d.denoising_errors(lambda x, s, labels=None: jnp.zeros_like(x), points, sigmas, noise)
  np.testing.assert_allclose(zero, 10.0, rtol=1e-6)


def test_optimal_denoiser_limits_at_small_sigma():
  # y* at sigma -> 0 returns the nearest training point: zero error on training points, and on
  # validation points the distance to the neighbouring training point, 2 r sin(pi / N).
  gap = _gap(0.0, sigmas=SIGMAS[:1])
  assert gap.error_train[0] < 1e-6
  np.testing.assert_allclose(gap.error_val[0], 2 * 10 * math.sin(math.pi / 20), rtol=1e-4)


def test_gap_vanishes_at_both_ends_for_delta_positive():
  gap = _gap(1.6)
  assert gap.gap.shape == (120,)
  # sigma -> 0: y_delta(x) -> x for training and validation points alike.
  assert abs(gap.gap[0]) < 1e-2
  # Largest sigma: y_delta -> the mean, and every point of the symmetric set is at the same radius.
  assert abs(gap.gap[-1]) < 1e-3
  # In between the validation error is larger: one interior peak near sigma ~ 1.
  s_max, g_max = toy2d.peak(gap.sigmas, gap.gap)  # (sigma, value), as evaluation.gap.peak
  assert g_max > 0.1 and 0.3 < s_max < 3.0
  assert np.all(gap.gap > -1e-3)


def test_gap_vanishes_for_huge_delta():
  # delta -> inf: y_delta(x) -> x, so train and validation errors coincide at every sigma.
  gap = _gap(1e4)
  assert np.max(np.abs(gap.gap)) < 1e-3


def test_independent_draws_agree_with_local_frame_draws_at_the_peak():
  local = _gap(1.4, draws=50)
  independent = _gap(1.4, draws=200, local_frame=False)
  i = int(np.argmax(local.gap))
  np.testing.assert_allclose(independent.gap[i], local.gap[i], rtol=0.15)


# ---------------------------------------------------------------------------------------------
# Experiments: the paper's trends.


def test_gap_peak_grows_as_delta_falls():
  results, _ = toy2d_job.experiment_gap_vs_delta(get_config())
  peaks = [c["peak_value"] for c in results["curves"]]
  deltas = [c["parameter"]["delta"] for c in results["curves"]]
  assert deltas == sorted(deltas, reverse=True) and len(deltas) == 11
  assert np.all(np.diff(peaks) > 0)
  assert all(0.5 < c["peak_sigma"] < 3.0 for c in results["curves"])


def test_gap_peak_falls_with_density():
  config = get_config()
  config.gap_vs_density.num_points = (16, 20, 26, 30)
  results, _ = toy2d_job.experiment_gap_vs_density(config)
  peaks = [c["peak_value"] for c in results["curves"]]
  assert [c["parameter"]["num_train"] for c in results["curves"]] == [8, 10, 13, 15]
  assert np.all(np.diff(peaks) < 0)


def test_gap_peak_grows_with_guidance():
  results, _ = toy2d_job.experiment_guidance(get_config())
  peaks = [c["peak_value"] for c in results["curves"]]
  assert np.all(np.diff(peaks) > 0)
  # w = 0 is the positive model alone.
  np.testing.assert_allclose(peaks[0], _gap(1.8).gap.max(), rtol=1e-5)


def test_relative_error_is_zero_at_training_angles():
  config = get_config()
  config.relative_error.draws = 100
  results, _ = toy2d_job.experiment_relative_error(config)
  for curve in results["curves"]:
    values = np.asarray(curve["values"])
    assert curve["max_abs_at_train_angles"] < 1e-5
    assert values.min() > -1e-5
    assert curve["mean_at_val_angles"] > 0.05  # peaks between the training points
  peaks = [c["max_value"] for c in results["curves"]]  # deltas 2.0, 1.6, 1.2
  assert np.all(np.diff(peaks) > 0)


def test_trajectories_with_optimal_denoiser_end_on_training_points():
  config = get_config()
  config.trajectories.num_samples = 200
  config.trajectories.num_plotted = 5
  config.trajectories.deltas = (0.0, 1.2)
  results, _ = toy2d_job.experiment_trajectories(config)
  exact, noisy = results["runs"]
  assert exact["fraction_within_tol_of_train"] == 1.0
  assert exact["fraction_within_tol_of_val"] == 0.0
  assert noisy["fraction_within_tol_of_train"] < 0.1
  assert noisy["mean_distance_to_nearest_train"] > 0.3
  assert np.asarray(exact["plotted_trajectories"]).shape == (5, 121, 2)


def test_flow_field_regimes():
  config = get_config()
  config.flow_field.grid_size = 41
  results, data = toy2d_job.experiment_flow_field(config)
  large, medium, small = results["fields"]
  assert [f["sigma_requested"] for f in results["fields"]] == [28.0, 2.8, 0.63]
  for f in results["fields"]:
    assert np.any(np.isclose(SIGMAS, f["sigma"]))
  assert large["mean_distance_prediction_to_train_mean"] < 2.0  # the global average
  assert small["fraction_predictions_within_1e-2_of_train"] > 0.5  # basins
  assert medium["fraction_predictions_within_1e-2_of_train"] < 0.05
  assert data["field"].shape == (3, 41, 41, 2)


# ---------------------------------------------------------------------------------------------
# results.json and the job.


def _no_nan(path):
  def reject(name):
    raise AssertionError(f"{path} holds {name}")
  with open(path) as f:
    return json.load(f, parse_constant=reject)


def test_run_writes_results_and_plots(tmp_path):
  config = get_config("gap_vs_delta,frechet")
  config.gap_vs_delta.deltas = (2.0, 1.4)
  config.frechet.deltas = (0.0, 2.0)
  config.frechet.num_samples = 200
  config.frechet.num_steps = 40
  toy2d_job.run(config, str(tmp_path))
  for name in ("gap_vs_delta", "frechet"):
    assert (tmp_path / name / f"{name}.png").stat().st_size > 10_000
  results = _no_nan(results_lib.path(str(tmp_path)))
  assert results["job"] == "toy2d" and list(results["experiments"]) == ["gap_vs_delta", "frechet"]
  gap = results["experiments"]["gap_vs_delta"]
  assert gap["experiment"] == "gap_vs_delta"
  assert gap["protocol"]["seed"] == 0 and gap["protocol"]["draws"] == 50
  assert gap["protocol"]["offset"] == 0.01
  assert gap["axis"]["name"] == "sigma" and len(gap["axis"]["values"]) == 120
  np.testing.assert_allclose(gap["axis"]["values"], SIGMAS)
  for curve, delta in zip(gap["curves"], (2.0, 1.4)):
    assert curve["label"] == f"delta={delta:g}" and curve["parameter"] == {"delta": delta}
    assert len(curve["values"]) == 120
    assert curve["peak_value"] == max(curve["values"])
    assert curve["peak_sigma"] in gap["axis"]["values"]
  fd = results["experiments"]["frechet"]
  curves = {c["label"]: c["values"] for c in fd["curves"]}
  assert set(curves) >= {"FD_train", "FD_val", "G_FD"}
  assert curves["FD_train"][0] < curves["FD_val"][0]  # delta = 0: copies of training points
  assert curves["G_FD"][0] > 0


def test_to_jsonable_has_no_nan():
  out = jsonio.to_jsonable({"a": np.array([1.0, np.nan, np.inf]), "b": np.float32(2.5),
                           "c": (np.int64(3),)})
  assert out == {"a": [1.0, None, None], "b": 2.5, "c": [3]}
  json.dumps(out, allow_nan=False)


def test_default_config_is_valid_and_runs_all_seven():
  config = get_config()
  toy2d_job.validate_config(config)
  assert tuple(config.experiments) == toy2d_job.EXPERIMENTS
  assert tuple(get_config("guidance").experiments) == ("guidance",)


@pytest.mark.parametrize("field, value, message", [
    ("experiments", ("gap_vs_delta", "spiral"), "config.experiments"),
    ("draws", 0, "config.draws"),
    ("radius", -1.0, "config.radius"),
    ("seed", 1.5, "config.seed"),
    ("gap_vs_delta.deltas", (1.0, 0.0), "config.gap_vs_delta.deltas"),
    ("gap_vs_delta.dataset", "grid", "config.gap_vs_delta.dataset"),
    ("trajectories.solver", "rk4", "config.trajectories.solver"),
    ("trajectories.num_plotted", 5000, "config.trajectories.num_plotted"),
    ("gap_vs_density.num_points", (16, 1), "config.gap_vs_density.num_points"),
    ("relative_error.sigma", float("nan"), "config.relative_error.sigma"),
])
def test_validate_config_rejects(field, value, message):
  config = get_config()
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
    toy2d_job.validate_config(config)
  if field == "experiments":
    assert "flow_field" in str(info.value) and "frechet" in str(info.value)  # allowed values


def test_validate_config_rejects_wrong_job():
  config = get_config()
  config.job = "train"
  with pytest.raises(ConfigError, match="config.job"):
    toy2d_job.validate_config(config)
