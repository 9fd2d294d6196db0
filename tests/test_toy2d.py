"""The 2D toy model: data, the gap metric's known answers, the expected curve (quadrature) against
brute-force draws, the authors' realization against their published numbers, trends, results and
config."""

import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import edm, jsonio, toy2d
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.jobs import toy2d as toy2d_job
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser

_CONFIG_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "toy2d.py")


def get_config(variant=None):
  spec = importlib.util.spec_from_file_location("toy2d_config", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def fast_config(variant=None):
  """The default config with a coarser lattice (h = 0.25, 3,228 nodes): the trends do not need
  the default's 1e-3 accuracy, and it runs 6x faster."""
  config = get_config(variant)
  config.quadrature.spacing = 0.25
  return config


SIGMAS = edm.toy_sigma_grid()
# A few sigmas of the grid: both ends, the rise, the peak (index 50, sigma 1.18) and the fall.
SOME = np.array([0, 30, 42, 46, 50, 54, 60, 75, 96, 119])
FEW = np.array([0, 42, 50, 54, 60, 119])
SYMMETRIC_20 = toy2d.make_dataset("symmetric", 20, 10.0, 0.01)


def _denoiser(delta, split=SYMMETRIC_20, dtype=jnp.float32):
  return error_prone_denoiser(empirical_optimal_denoiser(split.train, dtype=dtype), delta)


def _sampled(delta, draws=50, sigmas=SIGMAS, local_frame=True, split=SYMMETRIC_20):
  points = np.concatenate([split.train, split.val])
  noise = toy2d.noise_draws(toy2d_job._gap_key(get_config()), points, draws, local_frame)
  return toy2d.sampled_gap(_denoiser(delta, split), split, sigmas, noise)


def _expected(delta, sigmas=SIGMAS, spacing=0.25, split=SYMMETRIC_20, by_symmetry=True):
  return toy2d.expected_gap(_denoiser(delta, split), split, sigmas, toy2d.lattice_rule(spacing),
                            by_symmetry=by_symmetry)


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


def test_local_frames_known_values():
  frames = toy2d.local_frames(np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]]))
  np.testing.assert_allclose(frames[0], [[0.6, 0.8], [-0.8, 0.6]], atol=1e-12)
  np.testing.assert_array_equal(frames[1], np.eye(2))  # the origin: the identity
  assert np.all(np.isnan(frames[2]))  # a NaN point: NaN, not the origin's identity
  # Tiny and huge radii keep their direction (the squared norm would underflow to 0 / overflow).
  frames = toy2d.local_frames(np.array([[0.0, 1e-200], [3e200, 4e200], [-1e-300, 0.0]]))
  np.testing.assert_allclose(frames[0], [[0.0, 1.0], [-1.0, 0.0]], atol=1e-12)
  np.testing.assert_allclose(frames[1], [[0.6, 0.8], [-0.8, 0.6]], atol=1e-12)
  np.testing.assert_allclose(frames[2], [[-1.0, 0.0], [0.0, -1.0]], atol=1e-12)
  # ... also at the very ends of the range (hypot alone overflowed at 1.7e308 and lost precision
  # on subnormals); a non-finite coordinate gives NaN; a wrong shape is refused.
  edge = toy2d.local_frames(np.array([[1.7e308, 1.7e308], [5e-324, 5e-324], [3e-323, 1e-323]]))
  np.testing.assert_allclose(edge[:2, 0], [[np.sqrt(0.5)] * 2] * 2, atol=1e-12)
  np.testing.assert_allclose(edge[2, 0], [3 / np.sqrt(10), 1 / np.sqrt(10)], atol=1e-12)
  np.testing.assert_allclose(np.einsum("pij,pkj->pik", edge, edge), [np.eye(2)] * 3, atol=1e-12)
  assert np.all(np.isnan(toy2d.local_frames(np.array([[np.inf, 0.0]]))))
  for bad in (np.array([1.0, 2.0]), np.ones((3, 3))):
    with pytest.raises(ValueError, match=r"points must be \(P, 2\)"):
      toy2d.local_frames(bad)


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
  split = SYMMETRIC_20
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
  # The same two by quadrature: sigma E||n|| = sigma sqrt(pi / 2) (Rayleigh), and the radius.
  rule = toy2d.lattice_rule(0.05)
  mean, mean_square = toy2d.expected_errors(lambda x, s, labels=None: x, points[:3], sigmas, rule)
  np.testing.assert_allclose(mean, sigmas[:, None] * math.sqrt(math.pi / 2) * np.ones((1, 3)),
                             rtol=1e-5)
  np.testing.assert_allclose(mean_square, 2 * sigmas[:, None] ** 2 * np.ones((1, 3)), rtol=1e-5)
  mean, _ = toy2d.expected_errors(lambda x, s, labels=None: jnp.zeros_like(x), points[:3], sigmas,
                                  rule)
  np.testing.assert_allclose(mean, 10.0, rtol=1e-5)


def test_optimal_denoiser_limits_at_small_sigma():
  # y* at sigma -> 0 returns the nearest training point: zero error on training points, and on
  # validation points the distance to the neighbouring training point, 2 r sin(pi / N).
  for gap in (_sampled(0.0, sigmas=SIGMAS[:1]), _expected(0.0, sigmas=SIGMAS[:1])):
    assert gap.error_train[0] < 1e-6
    np.testing.assert_allclose(gap.error_val[0], 2 * 10 * math.sin(math.pi / 20), rtol=1e-4)


def test_gap_vanishes_at_both_ends_for_delta_positive():
  gap = _expected(1.6)
  assert gap.gap.shape == (120,) and gap.spread.shape == (120,)
  # sigma -> 0: y_delta(x) -> x for training and validation points alike.
  assert abs(gap.gap[0]) < 1e-4
  # Largest sigma: y_delta -> the mean, and every point of the symmetric set is at the same radius.
  assert abs(gap.gap[-1]) < 1e-4
  # In between the validation error is larger: one interior peak near sigma ~ 1.
  s_max, g_max = toy2d.peak(gap.sigmas, gap.gap)  # (sigma, value), as evaluation.gap.peak
  assert g_max > 0.1 and 0.3 < s_max < 3.0
  assert np.all(gap.gap > -1e-3)


def test_gap_vanishes_for_huge_delta():
  # delta -> inf: y_delta(x) -> x, so train and validation errors coincide at every sigma.
  assert np.max(np.abs(_expected(1e4, sigmas=SIGMAS[SOME]).gap)) < 1e-4
  assert np.max(np.abs(_sampled(1e4, sigmas=SIGMAS[SOME]).gap)) < 1e-3


# ---------------------------------------------------------------------------------------------
# The expected curve: quadrature, its convergence, brute-force draws, the spread of 50 draws.


def _gauss_hermite_rule(num_nodes: int) -> toy2d.NoiseRule:
  """Tensor Gauss-Hermite rule with num_nodes per axis (the alternative toy2d's lattice beats)."""
  x, w = np.polynomial.hermite.hermgauss(num_nodes)
  x, w = math.sqrt(2.0) * x, w / math.sqrt(math.pi)  # physicists' weight e^{-x^2} -> N(0, 1)
  nodes = np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)
  return toy2d.NoiseRule(nodes, np.outer(w, w).reshape(-1))


def test_lattice_rule_moments_and_convergence_on_a_cone():
  for spacing in (0.2, 0.1):
    rule = toy2d.lattice_rule(spacing)
    n, w = rule.nodes, rule.weights
    assert abs(w.sum() - 1) < 1e-12
    np.testing.assert_allclose(w @ n, 0.0, atol=1e-14)
    np.testing.assert_allclose((n * w[:, None]).T @ n, np.eye(2), atol=1e-12)  # E[n n^T] = I
  # E||n|| = sqrt(pi / 2) has a cone at n = 0, like the gap's integrand at each zero of the error:
  # the lattice error falls ~8x per halving of h (h^3), Gauss-Hermite's only ~2.8x per doubling
  # of the nodes per axis (Q^(-3/2)), and at equal cost the lattice is far ahead.
  exact = math.sqrt(math.pi / 2)
  cone = lambda rule: abs(rule.weights @ np.linalg.norm(rule.nodes, axis=-1) - exact)
  lattice = [cone(toy2d.lattice_rule(h)) for h in (0.4, 0.2, 0.1, 0.05)]
  assert all(5 < a / b < 12 for a, b in zip(lattice, lattice[1:])), lattice
  assert lattice[2] < 5e-5
  hermite = [cone(_gauss_hermite_rule(q)) for q in (36, 72, 144)]
  assert all(2 < a / b < 4 for a, b in zip(hermite, hermite[1:])), hermite
  assert _gauss_hermite_rule(144).weights.size > toy2d.lattice_rule(0.1).weights.size
  assert hermite[2] > 3 * lattice[2]
  with pytest.raises(ValueError, match="spacing"):
    toy2d.lattice_rule(0.0)


def test_quadrature_converges_on_the_gap_to_1e_3_of_the_peak():
  # float64, so that rounding does not blur the finest differences.
  peaks = {}
  with jax.enable_x64(True):
    for delta in (2.2, 1.2):
      denoise = _denoiser(delta, dtype=jnp.float64)
      curves = [toy2d.expected_gap(denoise, SYMMETRIC_20, SIGMAS[FEW], toy2d.lattice_rule(h),
                                   by_symmetry=True, dtype=jnp.float64).gap
                for h in (0.4, 0.2, 0.1, 0.05)]
      changes = [np.max(np.abs(a - b)) for a, b in zip(curves, curves[1:])]
      top = np.max(curves[-1])
      # h^3: every halving of h shrinks the change ~8x (at least 5x) ...
      assert all(a / b > 5 for a, b in zip(changes, changes[1:])), changes
      # ... so the default h = 0.1 is within (1/5 + 1/25 + ...) = 1/4 of its change to h = 0.05 of
      # the limit: far below 1e-3 of the peak.
      assert changes[-1] / 4 < 1e-4 * top, (changes, top)
      peaks[delta] = (curves[2].max(), SIGMAS[FEW][np.argmax(curves[2])])
  # The peak for delta = 2.2: 0.0901 at sigma 1.184, as issue 14 expected.
  np.testing.assert_allclose(peaks[2.2], (0.0901, SIGMAS[50]), atol=1e-4)


@pytest.mark.parametrize("kind, by_symmetry", [("symmetric", True), ("random", False)])
def test_expected_gap_matches_brute_force_draws(kind, by_symmetry):
  """The expected curve against a many-draw estimate: within 4 of its standard errors, which are
  small enough (< 3% of G at the peak) for the comparison to bite."""
  split = toy2d.make_dataset(kind, 20, 10.0, 0.01, seed=2)
  sigmas = SIGMAS[[40, 46, 50, 54, 60]]
  denoise = _denoiser(1.6, split)
  expected = toy2d.expected_gap(denoise, split, sigmas, toy2d.lattice_rule(0.1),
                                by_symmetry=by_symmetry)
  draws = 10_000
  points = np.concatenate([split.train, split.val])
  noise = toy2d.noise_draws(jax.random.key(7), points, draws, local_frame=False)
  err = np.asarray(toy2d._errors(denoise, points, sigmas, noise, jnp.float32), np.float64)
  n_train = split.train.shape[0]
  halves = [err[:, :n_train].reshape(sigmas.size, -1), err[:, n_train:].reshape(sigmas.size, -1)]
  (e_t, e_v), (v_t, v_v) = ([h.mean(1) for h in halves], [h.var(1, ddof=1) / h.shape[1]
                                                           for h in halves])
  brute = e_v / e_t - 1
  se = (e_v / e_t) * np.sqrt(v_v / e_v ** 2 + v_t / e_t ** 2)
  assert np.max(se[1:4] / brute[1:4]) < 0.03  # the comparison has teeth
  assert np.all(np.abs(expected.gap - brute) < 4 * se), (expected.gap, brute, se)
  assert np.all(np.abs(expected.error_train - e_t) < 4 * np.sqrt(v_t))
  assert np.all(np.abs(expected.error_val - e_v) < 4 * np.sqrt(v_v))


def test_spread_is_the_standard_deviation_of_50_draw_estimates():
  """The band: the std of G over many independent 50-draw estimates (the authors' scheme, every
  point its own draws) agrees with the first-order spread, and their mean with the expected G."""
  sigmas = SIGMAS[[30, 50]]
  expected = _expected(2.2, sigmas=sigmas, spacing=0.1)
  denoise = _denoiser(2.2)
  points = np.concatenate([SYMMETRIC_20.train, SYMMETRIC_20.val])
  replicas = 300
  noise = toy2d.noise_draws(jax.random.key(11), points, replicas * 50, local_frame=False)
  err = np.asarray(toy2d._errors(denoise, points, sigmas, noise, jnp.float32), np.float64)
  err = err.reshape(sigmas.size, 20, replicas, 50).mean(-1)  # (S, points, replicas)
  gaps = err[:, 10:].mean(1) / err[:, :10].mean(1) - 1  # (S, replicas)
  # std of a sample std over 300 replicas: ~4%; allow 15%.
  np.testing.assert_allclose(gaps.std(1, ddof=1), expected.spread, rtol=0.15)
  assert np.all(np.abs(gaps.mean(1) - expected.gap) < 4 * expected.spread / math.sqrt(replicas))
  assert 0.02 < expected.spread[1] < 0.06  # at the peak: 0.037, 40% of G = 0.090


def test_symmetry_reduction_equals_all_points():
  sigmas = SIGMAS[SOME]
  with jax.enable_x64(True):
    denoise, rule = _denoiser(1.4, dtype=jnp.float64), toy2d.lattice_rule(0.25)
    one_each, every = (toy2d.expected_gap(denoise, SYMMETRIC_20, sigmas, rule, by_symmetry=b,
                                          dtype=jnp.float64) for b in (True, False))
  np.testing.assert_allclose(one_each.gap, every.gap, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(one_each.spread, every.spread, rtol=1e-9)
  random = toy2d.make_dataset("random", 20, seed=3)
  with pytest.raises(ValueError, match="by_symmetry"):
    toy2d.expected_gap(_denoiser(1.4, random), random, sigmas, toy2d.lattice_rule(0.5),
                       by_symmetry=True)
  assert toy2d.is_rotation_orbit(SYMMETRIC_20.train) and toy2d.is_rotation_orbit(SYMMETRIC_20.val)
  odd = toy2d.make_dataset("symmetric", 21)  # 11 training and 10 validation points: one wider gap
  assert not toy2d.is_rotation_orbit(odd.train) and not toy2d.is_rotation_orbit(odd.val)


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


def test_legacy_numpy_draws_are_the_authors():
  angles = np.array([3.0, 0.5, 6.0, 1.5])  # angle order: 0.5, 1.5, 3.0, 6.0
  state = np.random.get_state()
  try:
    np.random.seed(5)
    theirs = np.random.randn(7, 4, 2)
  finally:
    np.random.set_state(state)
  ours = toy2d.legacy_numpy_draws(angles, 7, seed=5)
  assert ours.shape == (4, 7, 2)
  for p, k in enumerate([2, 0, 3, 1]):
    np.testing.assert_array_equal(ours[p], theirs[:, k, :])


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
    toy2d_job.validate_config(config)
  if field == "experiments":
    assert "flow_field" in str(info.value) and "frechet" in str(info.value)  # allowed values


def test_validate_config_rejects_wrong_job():
  config = get_config()
  config.job = "train"
  with pytest.raises(ConfigError, match="config.job"):
    toy2d_job.validate_config(config)


def test_peak_ignores_nan_like_the_gap_peak():
  from diffgen_jax.evaluation import gap  # pylint: disable=import-outside-toplevel
  sigmas, values = [0.1, 1.0, 10.0], [0.5, np.nan, 2.0]
  assert toy2d.peak(sigmas, values) == gap.peak(sigmas, values) == (10.0, 2.0)  # was (1.0, nan)
  assert all(np.isnan(toy2d.peak(sigmas, [np.nan] * 3)))
  # One home (edm.peak), one set of checks: empty, mismatched or 2-D curves are refused (toy2d's
  # returned a wrong peak for 4 sigmas and 3 values, and gap's an IndexError for 2-D input).
  assert toy2d.peak is gap.peak is edm.peak
  for bad_sigmas, bad_values in (([], []), ([0.1, 1, 2, 3], [1, 2, 3]), ([0.1, 1], [1, 2, 3]),
                                 (np.ones((2, 3)), np.arange(6.0).reshape(2, 3))):
    with pytest.raises(ValueError, match="sigmas .* and values .* must have the same shape|"
                                         "values must be a non-empty 1-D curve"):
      toy2d.peak(bad_sigmas, bad_values)


def test_spread_and_angle_at_the_peak_ignore_nan():
  """The job's spread_at_peak and the relative-error curve's max / angle_at_max are read at the
  peak `toy2d.peak` reports (np.argmax would point at the first NaN)."""
  gaps = toy2d.Gap(np.array([0.1, 1.0, 10.0]), np.array([np.nan, 0.5, 2.0]), np.ones(3),
                   np.ones(3), np.array([0.7, 0.8, 0.9]))
  curve = toy2d_job._gap_curve("c", "delta", 1.0, (gaps, gaps))
  assert (curve["peak_sigma"], curve["peak_value"], curve["spread_at_peak"]) == (10.0, 2.0, 0.9)
  assert curve["expected"]["spread_at_peak"] == 0.9
  assert np.isnan(toy2d_job._at_peak([np.nan, np.nan], [1.0, 2.0]))
  assert toy2d_job._at_peak([np.nan, 3.0, 1.0], [10.0, 20.0, 30.0]) == 20.0
  assert toy2d.peak_index([np.nan, np.nan]) == -1 and toy2d.peak_index([1.0, np.nan, 4.0]) == 2
