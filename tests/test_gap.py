"""Denoising errors over a sigma grid, the relative gap and its summaries (known answers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.evaluation import gap
from diffgen_jax.optimal import empirical_optimal_denoiser
from diffgen_jax.sharding import make_mesh

SIGMAS = np.array([0.002, 0.05, 0.5, 2.0, 1e4])


def _uniform(seed, n, shape=(4, 4, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def test_optimal_denoiser_known_limits():
  train = _uniform(0, 24)
  optimal = empirical_optimal_denoiser(train, chunk_size=8)
  e = gap.denoising_errors(optimal, train, sigmas=SIGMAS, batch_size=16, sigma_chunk=2)
  assert e.shape == (5,)
  # sigma -> 0: every noisy training image is denoised to itself.
  assert e[0] < 1e-10
  # sigma -> inf: y* is the training mean; E = mean squared distance of the images to it.
  analytic = np.mean((train - train.mean(axis=0)) ** 2)
  np.testing.assert_allclose(e[-1], analytic, rtol=1e-2)
  # The distance of the training-mean denoiser to y*, against y* by brute force in float64 numpy
  # (softmax of -|x - y_i|^2 / (2 sigma^2) over the training images) on the documented noise n_y:
  # at sigma -> 0 it is the images' spread about their mean, at sigma -> inf it vanishes.
  mean = train.mean(axis=0)
  mean_denoiser = lambda x, sigma, labels=None: jnp.broadcast_to(jnp.asarray(mean), x.shape)
  _, dist = gap.errors_and_distance(mean_denoiser, optimal, train, sigmas=SIGMAS, batch_size=16)
  noise = np.asarray(gap.image_noise(0, np.arange(len(train)), train.shape[1:]), np.float64)
  flat = train.reshape(len(train), -1).astype(np.float64)
  want = []
  for s in SIGMAS:
    x = flat + s * noise.reshape(len(train), -1)
    logits = -((x[:, None, :] - flat[None]) ** 2).sum(-1) / (2 * s * s)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    y_star = (weights / weights.sum(axis=1, keepdims=True)) @ flat
    want.append(np.mean((y_star - mean.reshape(-1)) ** 2))
  np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-10)
  np.testing.assert_allclose(want[0], analytic, rtol=1e-6)
  assert want[-1] < 1e-6 * want[0]


def test_single_training_image_has_zero_error_everywhere():
  train = _uniform(1, 1)
  optimal = empirical_optimal_denoiser(train)
  images = np.repeat(train, 3, axis=0)  # the one image under three noise draws
  e = gap.denoising_errors(optimal, images, sigmas=SIGMAS, batch_size=3)
  np.testing.assert_array_equal(e, 0.0)


def test_linear_gaussian_error_matches_closed_form():
  # y ~ N(0, s^2 I), D(x) = s^2 / (s^2 + sigma^2) x: E = s^2 sigma^2 / (s^2 + sigma^2) per pixel.
  # Each per-pixel squared residual is v chi^2_1 with v = E, so the mean of M = N*D of them has
  # relative standard deviation sqrt(2 / M) = 0.0078 for M = 512 * 64; 4% is > 5 standard deviations.
  s = 0.5
  images = (s * np.random.default_rng(2).standard_normal((512, 8, 8, 1))).astype(np.float32)
  linear = lambda x, sigma, labels=None: x * (s ** 2 / (s ** 2 + sigma ** 2))[:, None, None, None]
  sigmas = np.array([0.1, 0.5, 2.0])
  e = gap.denoising_errors(linear, images, sigmas=sigmas, batch_size=256, noise_seed=3)
  np.testing.assert_allclose(e, s ** 2 * sigmas ** 2 / (s ** 2 + sigmas ** 2), rtol=0.04)


def test_noise_depends_only_on_image_ids_and_sharding_is_transparent():
  train = _uniform(3, 16)
  images = _uniform(4, 11)
  ids = np.arange(100, 111)
  optimal = empirical_optimal_denoiser(train)
  _, per_image = gap.denoising_errors(optimal, images, sigmas=SIGMAS, ids=ids, batch_size=4,
                                      return_per_image=True)
  perm = np.random.default_rng(0).permutation(11)
  _, shuffled = gap.denoising_errors(optimal, images[perm], sigmas=SIGMAS, ids=ids[perm],
                                     batch_size=8, sigma_chunk=None, return_per_image=True)
  np.testing.assert_allclose(shuffled, per_image[perm], rtol=1e-5, atol=1e-7)
  mesh = make_mesh()
  assert mesh.shape["data"] == 8
  _, sharded = gap.denoising_errors(optimal, images, sigmas=SIGMAS, ids=ids, batch_size=8,
                                    mesh=mesh, return_per_image=True)
  np.testing.assert_allclose(sharded, per_image, rtol=1e-5, atol=1e-7)


def test_partial_over_params_compiles_once_across_checkpoints():
  traces = []

  def apply(params, x, sigma, labels=None):
    traces.append(1)
    return x * params["scale"]

  images = _uniform(5, 6)
  checkpoint = lambda scale: jax.tree_util.Partial(apply, {"scale": jnp.float32(scale)})
  e1 = gap.denoising_errors(checkpoint(0.0), images, sigmas=SIGMAS, batch_size=4)
  e2 = gap.denoising_errors(checkpoint(1.0), images, sigmas=SIGMAS, batch_size=4)
  assert len(traces) == 1
  np.testing.assert_allclose(e1, np.mean(images ** 2), rtol=1e-5)  # D = 0: E = mean y^2
  # D = x: E = sigma^2 mean(n^2) with the same noise at every sigma.
  ratio = e2 / SIGMAS ** 2
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  assert 0.5 < ratio[0] < 1.5


def test_overfit_half_a_shows_positive_gap():
  data = _uniform(6, 128)
  train, val = data[:64], data[64:]
  optimal = empirical_optimal_denoiser(train)
  sigmas = np.array([0.5, 1e3])
  e_train = gap.denoising_errors(optimal, train, sigmas=sigmas, batch_size=64)
  e_val = gap.denoising_errors(optimal, val, sigmas=sigmas, batch_size=64)
  g = gap.relative_gap(e_val, e_train)
  assert g[0] > 1.0
  # Largest sigma: y* is the training mean for both splits; E_val / E_train - 1 is a sampling
  # fluctuation of relative size ~ sqrt(2 / (64 * 16)) + 1/64.
  assert abs(g[1]) < 0.2
  lo, hi = gap.bootstrap_relative_gap(*[
      gap.denoising_errors(optimal, x, sigmas=sigmas, batch_size=64, return_per_image=True)[1]
      for x in (val, train)], num_resamples=200)
  assert lo[0] < g[0] < hi[0] and lo[0] > 0


def test_relative_gap_treats_rounding_level_errors_as_exact_recall():
  """y* on the same training set, 1 device and 8: at sigma 0.002 it recalls its training images
  exactly up to float32 rounding, E_train ~1e-17 either way but a different 1e-17, so G was ~1e12
  and changed with the device count. At or below FLOAT32_ERROR_FLOOR G is now +inf, as for an exact
  E_train = 0; measured errors are untouched."""
  assert gap.FLOAT32_ERROR_FLOOR == float(np.finfo(np.float32).eps) ** 2
  g = gap.relative_gap([3.0, 3.0, 3.0, 1e-16, 2.0, np.nan], [1e-17, 0.0, 1.0, 1e-17, 1e-13, 1.0])
  assert g[0] == np.inf and g[1] == np.inf and g[2] == 2.0
  assert np.isnan(g[3])  # both at the floor: nothing measured
  assert g[4] == pytest.approx(2.0 / 1e-13 - 1.0)  # above the floor: a real (tiny) error
  assert np.isnan(g[5])
  # floor=0 divides whatever the values (the old behaviour).
  assert gap.relative_gap([3.0], [1e-17], floor=0.0)[0] == pytest.approx(3e17 - 1.0)
  # E_val at the floor, E_train measured: G = -1 (stable, not rounding-dependent).
  assert gap.relative_gap([1e-16], [1.0])[0] == pytest.approx(-1.0)
  for floor, message in ((np.nan, "floor=nan"), (np.inf, "floor=inf"), (-1.0, "floor=-1.0"),
                         ("1e-14", "floor='1e-14'"), (None, "floor=None")):
    with pytest.raises(ValueError, match=message):
      gap.relative_gap([1.0], [1.0], floor=floor)
  with pytest.raises(ValueError, match="e_train must be mean squared errors >= 0"):
    gap.relative_gap([1.0], [-1.0])
  with pytest.raises(ValueError, match="e_val must be mean squared errors >= 0"):
    gap.relative_gap([-2.0], [1.0])

  train = _uniform(3, 16)
  val = _uniform(4, 16)
  sigmas = np.array([0.002, 0.5])
  curves = []
  for mesh in (None, make_mesh(-1, 1)):
    optimal = empirical_optimal_denoiser(train, mesh=mesh)
    e_train = gap.denoising_errors(optimal, train, sigmas=sigmas, batch_size=16)
    e_val = gap.denoising_errors(optimal, val, sigmas=sigmas, batch_size=16)
    assert e_train[0] <= gap.FLOAT32_ERROR_FLOOR < e_val[0]
    curves.append(gap.relative_gap(e_val, e_train))
  assert curves[0][0] == curves[1][0] == np.inf
  np.testing.assert_allclose(curves[0][1], curves[1][1], rtol=1e-4)


def test_overfitting_onset_and_peak_on_synthetic_curves():
  k = np.arange(10)
  seen = 1000 * (k + 1)
  minima = np.array([2, 5, 9])  # per sigma; the last never rises (monotone decrease)
  e_val = (k[:, None] - minima[None, :]) ** 2 + 1.0
  onset = gap.overfitting_onset(e_val, seen)
  np.testing.assert_array_equal(onset.index, minima)
  np.testing.assert_array_equal(onset.images_seen, seen[minima])
  np.testing.assert_array_equal(onset.rises, [True, True, False])
  with pytest.raises(ValueError):
    gap.overfitting_onset(e_val, seen[::-1])
  # A diverged (NaN) checkpoint is never the minimum nor a rise: NaN at the 1st and 4th checkpoint
  # of sigma 0 (minimum still at 2, rising after), a NaN after the minimum of sigma 2 (never
  # rises); a sigma whose every checkpoint is NaN has no onset (-1).
  e_nan = np.concatenate([e_val, np.ones((10, 1))], axis=1)
  e_nan[[0, 3], 0] = np.nan
  e_nan[4, 2] = e_nan[9, 2] = np.nan  # sigma 2: its minimum (last) is NaN -> the one before
  e_nan[:, 3] = np.nan
  onset = gap.overfitting_onset(e_nan, seen)
  np.testing.assert_array_equal(onset.index, [2, 5, 8, -1])
  np.testing.assert_array_equal(onset.images_seen, [seen[2], seen[5], seen[8], -1])
  np.testing.assert_array_equal(onset.rises, [True, True, False, False])
  # inf (an overflowed E_val) counts as diverged like NaN: never the minimum (sigma 0: the only
  # non-NaN checkpoint is inf -> no onset; was index 0), never a rise (sigma 1: minimum at 5, an
  # inf after it and nothing else above it -> no rise); -inf is never the minimum (sigma 2).
  e_inf = np.full((10, 3), np.nan)
  e_inf[0, 0] = np.inf
  e_inf[:, 1] = [2, 2, 2, 2, 2, 1, 1, np.inf, 1, 1]
  e_inf[:, 2] = e_val[:, 0]
  e_inf[6, 2] = -np.inf
  onset = gap.overfitting_onset(e_inf, seen)
  np.testing.assert_array_equal(onset.index, [-1, 5, 2])
  np.testing.assert_array_equal(onset.rises, [False, False, True])
  for bad_seen in (np.where(k == 3, np.nan, seen), np.where(k == 9, np.inf, seen)):
    with pytest.raises(ValueError, match="images_seen must be finite and strictly increasing"):
      gap.overfitting_onset(e_val, bad_seen)
  # Newcomer's probes: no checkpoints, a bad rtol, text images_seen (numpy's errors before).
  with pytest.raises(ValueError, match="K >= 1 checkpoints"):
    gap.overfitting_onset(np.zeros((0, 3)), [])
  for rtol in (np.nan, -5.0):
    with pytest.raises(ValueError, match="rtol="):
      gap.overfitting_onset(e_val, seen, rtol=rtol)
  with pytest.raises(ValueError, match="images_seen must be numbers"):
    gap.overfitting_onset(e_val[:3], ["a", "b", "c"])

  assert all(np.isnan(gap.peak([0.1, 1.0], [np.nan, np.nan])))  # was numpy's "All-NaN slice"
  assert gap.peak([0.1, 1.0, 10.0], [1.0, np.inf, np.nan]) == (1.0, np.inf)  # E_train = 0: G = inf

  sigmas = np.geomspace(0.01, 100, 41)
  curve = 0.3 * np.exp(-(np.log(sigmas) - np.log(1.0)) ** 2)
  s, v = gap.peak(sigmas, curve)
  assert s == pytest.approx(1.0) and v == pytest.approx(0.3)

  gaps = np.stack([curve * (i + 1) for i in range(3)])
  _, at = gap.gap_vs_images(sigmas, gaps, seen[:3], [1.0, 0.01])
  np.testing.assert_allclose(at[:, 0], 0.3 * np.arange(1, 4))
  np.testing.assert_allclose(at[:, 1], curve[0] * np.arange(1, 4))


def test_rejects_integer_images():
  with pytest.raises(ValueError, match="floating"):
    gap.denoising_errors(lambda x, s, l=None: x, np.zeros((2, 4, 4, 1), np.uint8), sigmas=[1.0])


def _scaled(params, x, sigma, labels=None):
  return x * params["scale"]


def test_pytree_denoisers_share_one_compilation():
  images = _uniform(7, 5)
  before = gap._per_image_values_jit._cache_size()
  for scale in (0.5, 0.25):  # two "checkpoints": same program, different arguments
    denoise = jax.tree_util.Partial(_scaled, {"scale": jnp.float32(scale)})
    e = gap.denoising_errors(denoise, images, sigmas=SIGMAS, batch_size=8, noise_seed=1)
    assert e.shape == SIGMAS.shape
  assert gap._per_image_values_jit._cache_size() == before + 1


def test_errors_and_distance_in_one_pass_match_independent_references():
  train = _uniform(3, 16)
  queries = _uniform(4, 10)
  optimal = empirical_optimal_denoiser(train, chunk_size=8)
  network = lambda x, sigma, labels=None: 0.9 * optimal(x, sigma, labels)  # a biased "network"
  e, d = gap.errors_and_distance(network, optimal, queries, sigmas=SIGMAS, batch_size=4)
  # Independent reference, computed here in float64 from the documented noise n_y: the network is
  # 0.9 y*, so its squared distance to y* is 0.01 |y*(x)|^2 and its error |0.9 y*(x) - y|^2.
  noise = np.asarray(gap.image_noise(0, np.arange(len(queries)), queries.shape[1:]), np.float64)
  want_e, want_d = [], []
  for s in SIGMAS:
    x = queries + s * noise
    y_star = np.asarray(optimal(jnp.asarray(x, jnp.float32), float(s)), np.float64)
    want_e.append(np.mean((0.9 * y_star - queries) ** 2))
    want_d.append(np.mean((0.1 * y_star) ** 2))
  np.testing.assert_allclose(e, want_e, rtol=1e-4)
  np.testing.assert_allclose(d, want_d, rtol=1e-4)
  assert np.all(d > 0)


_TWO_PROCESS_GAP = """
from diffgen_jax import optimal
from diffgen_jax.evaluation import gap
rng = np.random.default_rng(0)
train = rng.uniform(-1, 1, (40, 4, 4, 1)).astype(np.float32)
images = rng.uniform(-1, 1, (20, 4, 4, 1)).astype(np.float32)
mesh = sharding.make_mesh()
exact = optimal.empirical_optimal_denoiser(train, mesh=mesh)  # the training set split too
sharding.rows_built.clear()
errors, per_image = gap.denoising_errors(exact, images, None, np.geomspace(0.01, 10, 5),
                                         batch_size=8, mesh=mesh, return_per_image=True)
report(errors=errors, per_image=per_image, rows=np.array(sharding.rows_built["batch"]))
"""


def test_gap_evaluation_over_two_processes_equals_one(tmp_path):
  """2 processes x 4 devices give the numbers of 1 x 8, each process building half of every batch
  (images and ids: 3 batches of 8 rows, 48 rows in one process, 24 in each of two)."""
  import multiprocess  # pylint: disable=import-outside-toplevel  (tests/multiprocess.py)
  two = multiprocess.run(_TWO_PROCESS_GAP, tmp_path / "two", processes=2, devices=4)
  (one,) = multiprocess.run(_TWO_PROCESS_GAP, tmp_path / "one", processes=1, devices=8)
  assert [int(r["rows"]) for r in two] == [24, 24] and int(one["rows"]) == 48
  for r in two:  # every process holds the gathered whole
    np.testing.assert_allclose(r["per_image"], one["per_image"], rtol=1e-5)
    np.testing.assert_allclose(r["errors"], one["errors"], rtol=1e-5)


def test_train_val_gap_interval_is_the_recorded_interval():
  """The sweeps and the ladder record INTERVAL beside the G intervals that `train_val_gap` draws
  with `bootstrap_relative_gap`'s defaults: the two must agree."""
  import inspect
  from diffgen_jax.evaluation import ladder, sweeps
  defaults = {k: p.default for k, p in
              inspect.signature(gap.bootstrap_relative_gap).parameters.items()
              if p.default is not inspect.Parameter.empty}
  for interval in (sweeps.INTERVAL, ladder.INTERVAL):
    assert {k: interval[k] for k in defaults} == defaults
