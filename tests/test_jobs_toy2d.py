"""The `toy2d` job (jobs/toy2d.py): each experiment's results, the authors' realization
(configs/toy2d.py:paper) against their published numbers, the paper's trends, results.json, the
plots and config validation. The numbers themselves are tested in test_toy2d.py."""

import json

import numpy as np
import pytest

from diffgen_jax import edm, jobs, toy2d
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.jobs import toy2d as toy2d_job
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from config_files import config_file  # tests/config_files.py

SIGMAS = edm.toy_sigma_grid()


def get_config(variant=None):
  return config_file("toy2d", variant)


def fast_config(variant=None):
  """The default config with a coarser lattice (h = 0.25, 3,228 nodes): the trends do not need
  the default's 1e-3 accuracy, and it runs 6x faster."""
  config = get_config(variant)
  config.quadrature.spacing = 0.25
  return config


def _expected(delta, sigmas=SIGMAS):
  """The expected curve of y_delta on the symmetric N = 20 set (lattice h = 0.25, symmetry)."""
  split = toy2d.make_dataset("symmetric", 20, 10.0, 0.01)
  denoise = error_prone_denoiser(empirical_optimal_denoiser(split.train), delta)
  return toy2d.expected_gap(denoise, split, sigmas, toy2d.lattice_rule(0.25), by_symmetry=True)


def test_draws_estimate_lands_within_its_spread():
  """config.estimate = "draws" (independent jax draws per point): a 50-draw estimate of the peak
  lies within 3 spreads of the expected peak."""
  config = get_config("gap_vs_delta")
  config.gap_vs_delta.deltas = (2.2, 1.2)
  config.estimate, config.local_frame_draws = "draws", False
  sampled, _ = toy2d_job.experiment_gap_vs_delta(config)
  assert sampled["protocol"]["estimate"] == "draws" and sampled["protocol"]["draws"] == 50
  for s in sampled["curves"]:
    e = _expected(s["parameter"]["delta"], sigmas=SIGMAS[50:51])
    assert "spread" not in s
    assert abs(s["values"][50] - e.gap[0]) < 3 * e.spread[0]
    assert abs(s["values"][50] - e.gap[0]) > 1e-4  # an estimate, not the expectation


# ---------------------------------------------------------------------------------------------
# The authors' realization (configs/toy2d.py:paper) against their published numbers.


def _reference_paper_gap(delta, num_points=20):
  """The authors' computation, written out independently in float64 numpy: dense y*, y_delta,
  np.random.seed(0) then a (50, N, 2) standard normal array, point k taking [:, k, :]."""
  angles = 2 * np.pi * (np.arange(num_points) / num_points + 0.01)
  points = 10.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  train = points[0::2]
  state = np.random.get_state()
  try:
    np.random.seed(0)
    noise = np.random.randn(50, num_points, 2)
  finally:
    np.random.set_state(state)
  gaps = []
  for sigma in SIGMAS:
    x = points[None] + sigma * noise  # (50, N, 2)
    s2 = sigma ** 2 + delta ** 2
    logits = -np.sum((x[..., None, :] - train) ** 2, axis=-1) / (2 * s2)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    y_star = (w / w.sum(-1, keepdims=True)) @ train
    y_delta = (delta ** 2 * x + sigma ** 2 * y_star) / (sigma ** 2 + delta ** 2)
    err = np.linalg.norm(y_delta - points[None], axis=-1).mean(0)
    gaps.append(err[1::2].mean() / err[0::2].mean() - 1)
  return np.asarray(gaps)


def test_paper_variant_reproduces_the_published_peaks():
  config = get_config("paper,gap_vs_delta")
  config.gap_vs_delta.deltas = (2.2, 1.2)
  config.quadrature.spacing = 0.25  # of the expected curves beside theirs
  results, _ = toy2d_job.experiment_gap_vs_delta(config)
  assert results["protocol"]["dtype"] == "float64"
  # Their realization lies within one 50-draw standard deviation of the expected peak
  # (0.36 and 0.73 of one), above it.
  for curve, expected_peak in zip(results["curves"], (0.0901, 0.9033)):
    expected = curve["expected"]
    np.testing.assert_allclose(expected["peak_value"], expected_peak, rtol=3e-3)  # h = 0.25
    assert 0 < curve["peak_value"] - expected["peak_value"] < expected["spread_at_peak"]
  for curve, published in zip(results["curves"], (0.1035, 0.9539)):
    delta = curve["parameter"]["delta"]
    reference = _reference_paper_gap(delta)
    np.testing.assert_allclose(curve["values"], reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(curve["peak_value"], reference.max(), rtol=0, atol=1e-6)
    # The published numbers (4 decimals), at the published sigma 1.1838 (grid index 50).
    assert abs(curve["peak_value"] - published) < 5e-5, (delta, curve["peak_value"])
    assert abs(curve["peak_sigma"] - 1.1838) < 5e-5 and curve["peak_sigma"] == SIGMAS[50]


def test_paper_variant_relative_error_and_flow_field_sigmas():
  config = get_config("paper,relative_error,flow_field")
  config.flow_field.grid_size = 11
  results, _ = toy2d_job.experiment_relative_error(config)
  protocol = results["protocol"]
  assert protocol["estimate"] == "paper_draws" and protocol["legacy_seed"] == 1
  assert len(results["val_angles"]) == 0 and len(results["train_angles"]) == 10  # all training
  angles = np.asarray(results["axis"]["values"])
  np.testing.assert_allclose(angles, np.linspace(0, np.pi, 200, endpoint=False))
  maxima = [c["max_value"] for c in results["curves"]]
  np.testing.assert_allclose(maxima, [0.145, 0.359, 0.897], atol=6e-4)  # delta 2.0, 1.6, 1.2
  fields, _ = toy2d_job.experiment_flow_field(config)
  np.testing.assert_allclose([f["sigma"] for f in fields["fields"]], SIGMAS[[96, 60, 42]])
  np.testing.assert_allclose([f["sigma"] for f in fields["fields"]], [25.49, 2.611, 0.5853],
                             rtol=1e-3)


def test_paper_config():
  config = get_config("paper")
  toy2d_job.validate_config(config)
  assert tuple(config.experiments) == toy2d_job.EXPERIMENTS[:5]
  assert config.estimate == "paper_draws" and config.dtype == "float64"
  assert config.compare_expected and not get_config().compare_expected
  np.testing.assert_allclose(config.guidance.weights, np.arange(11) * 0.2, atol=1e-12)
  assert tuple(get_config("paper,guidance").experiments) == ("guidance",)
  assert get_config("guidance").estimate == "expected"


# ---------------------------------------------------------------------------------------------
# Experiments: the paper's trends (expected curves on a coarser lattice).


def test_gap_peak_grows_as_delta_falls():
  results, plot = toy2d_job.experiment_gap_vs_delta(fast_config())
  peaks = [c["peak_value"] for c in results["curves"]]
  deltas = [c["parameter"]["delta"] for c in results["curves"]]
  assert deltas == sorted(deltas, reverse=True) and len(deltas) == 11
  assert np.all(np.diff(peaks) > 0)
  assert all(c["peak_sigma"] == SIGMAS[50] for c in results["curves"])
  assert all(len(c["spread"]) == 120 and c["spread_at_peak"] > 0 for c in results["curves"])
  assert "50-draw" in plot["note"]


def test_gap_peak_falls_with_density():
  config = fast_config()
  config.gap_vs_density.num_points = (16, 20, 26, 30)
  results, _ = toy2d_job.experiment_gap_vs_density(config)
  peaks = [c["peak_value"] for c in results["curves"]]
  assert [c["parameter"]["num_train"] for c in results["curves"]] == [8, 10, 13, 15]
  assert np.all(np.diff(peaks) < 0)


def test_gap_peak_grows_with_guidance():
  config = fast_config()
  config.guidance.weights = (0.0, 1.0, 2.0)
  results, _ = toy2d_job.experiment_guidance(config)
  peaks = [c["peak_value"] for c in results["curves"]]
  assert np.all(np.diff(peaks) > 0)
  # w = 0 is the positive model alone.
  np.testing.assert_allclose(peaks[0], _expected(1.8).gap.max(), rtol=1e-5)


def test_relative_error_is_zero_at_training_angles():
  results, _ = toy2d_job.experiment_relative_error(fast_config())
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
  config = fast_config("gap_vs_delta,frechet")
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
  assert gap["protocol"]["seed"] == 0 and gap["protocol"]["estimate"] == "expected"
  assert gap["protocol"]["spread_draws"] == 50
  assert gap["protocol"]["quadrature"]["nodes"] == toy2d.lattice_rule(0.25).weights.size
  assert gap["protocol"]["offset"] == 0.01
  assert gap["axis"]["name"] == "sigma" and len(gap["axis"]["values"]) == 120
  np.testing.assert_allclose(gap["axis"]["values"], SIGMAS)
  for curve, delta in zip(gap["curves"], (2.0, 1.4)):
    assert curve["label"] == f"delta={delta:g}" and curve["parameter"] == {"delta": delta}
    assert len(curve["values"]) == 120
    assert curve["peak_value"] == max(curve["values"])
    assert curve["peak_sigma"] in gap["axis"]["values"]
    assert len(curve["spread"]) == 120 and curve["spread_at_peak"] > 0
  fd = results["experiments"]["frechet"]
  curves = {c["label"]: c["values"] for c in fd["curves"]}
  assert set(curves) >= {"FD_train", "FD_val", "G_FD"}
  assert curves["FD_train"][0] < curves["FD_val"][0]  # delta = 0: copies of training points
  assert curves["G_FD"][0] > 0


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
    ("estimate", "exact", "config.estimate"),
    ("compare_expected", "yes", "config.compare_expected"),
    ("dtype", "float16", "config.dtype"),
    ("quadrature.spacing", 0.0, "config.quadrature.spacing"),
    ("quadrature.radius", 0.05, "config.quadrature.radius"),
    ("relative_error.test_angles", "quarter", "config.relative_error.test_angles"),
    ("relative_error.all_training", 1, "config.relative_error.all_training"),
    ("flow_field.sigma_indices", (96, 120), "config.flow_field.sigma_indices"),
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
    jobs.validate(config)  # each field's declaration (defaults.TOY2D), then the job's rules
  if field == "experiments":
    assert "flow_field" in str(info.value) and "frechet" in str(info.value)  # allowed values


def test_validate_config_rejects_wrong_job():
  config = get_config()
  config.job = "train"
  with pytest.raises(ConfigError, match="config.job"):
    toy2d_job.validate_config(config)


