"""The 2D toy model (diffgen_jax/toy2d.py): data, the gap metric's known answers, the expected
curve (quadrature) against brute-force draws, the authors' draws, and each experiment's numbers
on known answers. The job that runs the experiments is tested in test_jobs_toy2d.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import edm, toy2d
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser

# A fixed key for jax draws (the job's gap draws with seed 0: fold_in(key(0), 1)).
KEY = jax.random.fold_in(jax.random.key(0), 1)
SIGMAS = edm.toy_sigma_grid()
# A few sigmas of the grid: both ends, the rise, the peak (index 50, sigma 1.18) and the fall.
SOME = np.array([0, 30, 42, 46, 50, 54, 60, 75, 96, 119])
FEW = np.array([0, 42, 50, 54, 60, 119])
SYMMETRIC_20 = toy2d.make_dataset("symmetric", 20, 10.0, 0.01)


def _denoiser(delta, split=SYMMETRIC_20, dtype=jnp.float32):
  return error_prone_denoiser(empirical_optimal_denoiser(split.train, dtype=dtype), delta)


def _sampled(delta, draws=50, sigmas=SIGMAS, local_frame=True, split=SYMMETRIC_20):
  points = np.concatenate([split.train, split.val])
  noise = toy2d.noise_draws(KEY, points, draws, local_frame)
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
  noise = np.asarray(toy2d.noise_draws(KEY, points, 30), np.float64)
  e_r = points / np.linalg.norm(points, axis=1, keepdims=True)
  e_t = np.stack([-e_r[:, 1], e_r[:, 0]], axis=1)
  radial = np.einsum("pdk,pk->pd", noise, e_r)
  tangential = np.einsum("pdk,pk->pd", noise, e_t)
  np.testing.assert_allclose(radial, np.broadcast_to(radial[0], radial.shape), atol=1e-6)
  np.testing.assert_allclose(tangential, np.broadcast_to(tangential[0], radial.shape), atol=1e-6)
  independent = toy2d.noise_draws(KEY, points, 30, local_frame=False)
  assert independent.shape == (6, 30, 2)


# ---------------------------------------------------------------------------------------------
# Gap metric: known answers.


def test_errors_of_trivial_denoisers():
  split = SYMMETRIC_20
  points = np.concatenate([split.train, split.val])
  noise = toy2d.noise_draws(KEY, points, 50)
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


def _authors_randn(seed, shape):
  """np.random.seed(seed); np.random.randn(*shape), as the authors drew, numpy's state restored."""
  state = np.random.get_state()
  try:
    np.random.seed(seed)
    return np.random.randn(*shape)
  finally:
    np.random.set_state(state)


def test_legacy_numpy_draws_are_the_authors():
  angles = np.array([3.0, 0.5, 6.0, 1.5])  # angle order: 0.5, 1.5, 3.0, 6.0
  theirs = _authors_randn(5, (7, 4, 2))
  ours = toy2d.legacy_numpy_draws(angles, 7, seed=5)
  assert ours.shape == (4, 7, 2)
  for p, k in enumerate([2, 0, 3, 1]):
    np.testing.assert_array_equal(ours[p], theirs[:, k, :])


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


def test_curve_summary_and_value_at_peak_ignore_nan():
  """spread_at_peak and the relative-error curve's max / angle_at_max are read at the peak
  `toy2d.peak` reports (np.argmax would point at the first NaN)."""
  gaps = toy2d.Gap(np.array([0.1, 1.0, 10.0]), np.array([np.nan, 0.5, 2.0]), np.ones(3),
                   2 * np.ones(3), np.array([0.7, 0.8, 0.9]))
  curve = toy2d.curve_summary(gaps)
  assert (curve["peak_sigma"], curve["peak_value"], curve["spread_at_peak"]) == (10.0, 2.0, 0.9)
  assert list(curve) == ["values", "error_train", "error_val", "peak_value", "peak_sigma",
                         "spread", "spread_at_peak"]
  np.testing.assert_array_equal(curve["error_val"], 2.0)
  assert "spread" not in toy2d.curve_summary(gaps._replace(spread=None))
  assert np.isnan(toy2d.value_at_peak([np.nan, np.nan], [1.0, 2.0]))
  assert toy2d.value_at_peak([np.nan, 3.0, 1.0], [10.0, 20.0, 30.0]) == 20.0
  assert toy2d.peak_index([np.nan, np.nan]) == -1 and toy2d.peak_index([1.0, np.nan, 4.0]) == 2


# ---------------------------------------------------------------------------------------------
# The experiments' numbers on known answers (the job maps its config to these).


def test_gap_noise_is_the_authors_draws_or_jax_draws():
  """paper_draws: np.random.seed(s); randn(draws, N, 2), the point k-th in angle order taking
  [:, k, :]; on the symmetric set the training points are the even k, the validation the odd."""
  theirs = _authors_randn(3, (7, 20, 2))
  ours = toy2d.gap_noise("paper_draws", SYMMETRIC_20, 7, legacy_seed=3)
  assert ours.shape == (20, 7, 2)
  np.testing.assert_array_equal(ours[:10], np.transpose(theirs[:, 0::2], (1, 0, 2)))
  np.testing.assert_array_equal(ours[10:], np.transpose(theirs[:, 1::2], (1, 0, 2)))
  points = np.concatenate([SYMMETRIC_20.train, SYMMETRIC_20.val])
  for local_frame in (True, False):
    np.testing.assert_array_equal(
        toy2d.gap_noise("draws", SYMMETRIC_20, 5, key=KEY, local_frame=local_frame),
        toy2d.noise_draws(KEY, points, 5, local_frame))
  with pytest.raises(ValueError, match="estimate"):
    toy2d.gap_noise("expected", SYMMETRIC_20, 5)
  with pytest.raises(ValueError, match="key"):
    toy2d.gap_noise("draws", SYMMETRIC_20, 5)


def test_flow_field_and_its_statistics_of_known_denoisers():
  # D = 0: the field is -x and every prediction sits at the mean of two opposite training points,
  # at distance 1 from each of them.
  train = np.array([[1.0, 0.0], [-1.0, 0.0]])
  zero = lambda x, sigma, labels=None: jnp.zeros_like(x)
  flow = toy2d.flow_field(zero, [0.5, 2.0], 3.0, 4)
  np.testing.assert_array_equal(flow.axis, [-3.0, -1.0, 1.0, 3.0])
  assert flow.predictions.shape == (2, 16, 2) and flow.field.shape == (2, 4, 4, 2)
  np.testing.assert_array_equal(flow.field[1, 0, 3], [-3.0, 3.0])  # row y = -3, column x = 3
  (stats, _) = toy2d.flow_field_statistics(flow, train)
  assert stats == {"mean_distance_prediction_to_train_mean": 0.0,
                   "mean_distance_prediction_to_nearest_train_point": 1.0,
                   "fraction_predictions_within_1e-2_of_train": 0.0,
                   "max_magnitude": pytest.approx(3.0 * math.sqrt(2.0))}
  # D(x; sigma) = x / (1 + sigma): the field is -sigma x / (1 + sigma), each sigma in one call.
  shrink = lambda x, sigma, labels=None: x / (1.0 + sigma[:, None])
  flow = toy2d.flow_field(shrink, [0.5, 2.0], 3.0, 4)
  queries = flow.predictions[0] * 1.5
  for i, s in enumerate((0.5, 2.0)):
    np.testing.assert_allclose(flow.field[i].reshape(-1, 2), -s * queries / (1 + s), rtol=1e-6)
  with pytest.raises(ValueError, match="grid_size"):
    toy2d.flow_field(zero, [1.0], 3.0, 1)


def test_all_training_and_matching_angles():
  split = toy2d.make_dataset("symmetric", 6, 2.0, 0.0)
  merged = toy2d.all_training(split, 2.0)
  np.testing.assert_allclose(merged.train_angles, 2 * np.pi * np.arange(6) / 6)  # angle order
  np.testing.assert_allclose(merged.train, toy2d.circle_points(merged.train_angles, 2.0))
  assert merged.val.shape == (0, 2) and merged.val_angles.shape == (0,)
  angles = np.array([0.0, 1.0, 2.0 * np.pi + 2.0, 3.0])
  np.testing.assert_array_equal(toy2d.matching_angles(angles, [2.0, -2.0 * np.pi]), [0, 2])
  assert toy2d.matching_angles(angles, [2.5]).size == 0


def test_relative_errors_of_known_denoisers():
  """D = 0: every error is the point's radius, so the relative error of a test point at radius r
  is (r - 10) / 10 (training points at 10). The identity: sigma |n| everywhere, relative error 0."""
  train = toy2d.circle_points([0.0, np.pi], 10.0)
  test = np.array([[12.0, 0.0], [0.0, 9.0], [6.0, 8.0]])
  zero = lambda x, sigma, labels=None: jnp.zeros_like(x)
  identity = lambda x, sigma, labels=None: x
  rule = toy2d.lattice_rule(0.2)
  by_rule = toy2d.relative_errors(zero, test, train, 0.7, rule=rule)
  np.testing.assert_allclose(by_rule.values, [0.2, -0.1, 0.0], atol=1e-6)
  np.testing.assert_allclose(by_rule.error, [12.0, 9.0, 10.0], rtol=1e-6)
  assert by_rule.error_train == pytest.approx(10.0, rel=1e-6)
  noise = toy2d.relative_error_noise("paper_draws", test, train, 40, legacy_seed=1)
  assert noise.shape == (5, 40, 2)
  np.testing.assert_array_equal(noise[0], np.random.RandomState(1).standard_normal((40, 2)))
  np.testing.assert_array_equal(noise[4], noise[0])  # one set shared in world coordinates
  np.testing.assert_allclose(toy2d.relative_errors(zero, test, train, 0.7, noise=noise).values,
                             [0.2, -0.1, 0.0], atol=1e-6)
  local = toy2d.relative_error_noise("draws", test, train, 40, key=KEY)
  np.testing.assert_allclose(toy2d.relative_errors(identity, test, train, 0.7, noise=local).values,
                             0.0, atol=1e-5)
  with pytest.raises(ValueError, match="exactly one"):
    toy2d.relative_errors(zero, test, train, 0.7)
  with pytest.raises(ValueError, match="key"):
    toy2d.relative_error_noise("draws", test, train, 40)


def test_relative_error_summary_reads_maximum_and_angles():
  result = toy2d.RelativeError(np.array([0.0, 0.4, np.nan, -0.2]), np.arange(4.0), 2.0)
  angles = np.array([0.0, 1.0, 2.0, 3.0])
  out = toy2d.relative_error_summary(result, angles, [0.0, 3.0], [1.0])
  assert (out["max_value"], out["angle_at_max"], out["error_train"]) == (0.4, 1.0, 2.0)
  assert out["max_abs_at_train_angles"] == 0.2 and out["mean_at_val_angles"] == 0.4
  assert "mean_at_val_angles" not in toy2d.relative_error_summary(result, angles, [0.0], [])


def test_sampling_with_a_constant_denoiser_lands_on_it():
  """D = c: the probability-flow ODE contracts every sample onto c; the paths start at
  sigma_max n and end at the samples."""
  c = jnp.array([3.0, -1.0])
  const = lambda x, sigma, labels=None: jnp.broadcast_to(c, x.shape)
  noise = toy2d.sampler_noise(KEY, 6)
  assert noise.shape == (6, 2) and noise.dtype == jnp.float32
  samples, paths = toy2d.sample(const, noise, 8, "euler", num_plotted=2)
  assert samples.dtype == np.float64 and samples.shape == (6, 2)
  np.testing.assert_allclose(samples, np.broadcast_to(c, (6, 2)), atol=1e-4)
  assert paths.shape == (2, 9, 2)
  np.testing.assert_allclose(paths[:, 0], edm.SIGMA_MAX * np.asarray(noise[:2]), rtol=1e-6)
  np.testing.assert_array_equal(paths[:, -1], samples[:2])
  np.testing.assert_array_equal(toy2d.sample(const, noise, 8, "euler"), samples)


def test_endpoint_statistics_known_values():
  train, val = np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])
  samples = np.array([[1.0, 0.005], [0.0, 0.0], [-1.0, 0.0], [3.0, 0.0]])
  out = toy2d.endpoint_statistics(samples, train, val, 1e-2)
  assert out["fraction_within_tol_of_train"] == 0.25
  assert out["fraction_within_tol_of_val"] == 0.25
  assert out["mean_distance_to_nearest_train"] == pytest.approx((0.005 + 1 + 2 + 2) / 4)
  assert out["mean_distance_to_nearest_val"] == pytest.approx((np.hypot(2, 0.005) + 1 + 0 + 4) / 4)
  assert out["mean_radius"] == pytest.approx((np.hypot(1, 0.005) + 0 + 1 + 3) / 4)


def test_frechet_curves_of_shifted_sets():
  """Samples = train + (1, 0), val = train + (0, 2): same covariances, so FD is the squared
  distance of the means: FD_train = 1, FD_val = 5, G_FD = 4, train to val 4. Samples within 1e-2
  of the training points (shifted by (0.005, 0)) count as copies."""
  train = np.random.default_rng(0).standard_normal((30, 2))
  val = train + [0.0, 2.0]
  out = toy2d.frechet_curves([train + [1.0, 0.0], train + [0.005, 0.0]], train, val, ddof=0)
  np.testing.assert_allclose(out["fd_train"], [1.0, 0.005 ** 2], rtol=1e-6)
  np.testing.assert_allclose(out["fd_val"], [5.0, 4.0 + 0.005 ** 2], rtol=1e-6)
  np.testing.assert_allclose(out["g_fd"], [4.0, 4.0 / 0.005 ** 2], rtol=1e-5)
  np.testing.assert_array_equal(out["copies"], [0.0, 1.0])
  assert out["fd_sets"] == pytest.approx(4.0, rel=1e-6)
