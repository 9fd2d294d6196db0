"""Disjoint-subset reproducibility: model variance, sample similarity, cross copies (known answers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.evaluation import reproducibility as rep
from diffgen_jax.optimal import empirical_optimal_denoiser


def _uniform(seed, n, shape=(4, 4, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _shrink(mean, scale, x, sigma, labels=None):
  """Posterior mean of an isotropic Gaussian prior N(mean, scale^2 I): it never saw any data."""
  s = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1,) + (1,) * (x.ndim - 1))
  return mean + scale ** 2 / (scale ** 2 + s ** 2) * (x - mean)


def _data_independent(mean=0.1, scale=0.5):
  return jax.tree_util.Partial(_shrink, jnp.float32(mean), jnp.float32(scale))


def test_model_variance_of_optimal_denoisers_at_large_sigma_is_distance_of_means():
  s1, s2, queries = _uniform(0, 12), _uniform(1, 12), _uniform(2, 10)
  d1, d2 = empirical_optimal_denoiser(s1), empirical_optimal_denoiser(s2)
  mv = rep.model_variance(d1, d2, queries, sigmas=[1e4])
  expected = np.sum((s1.mean(0).astype(np.float64) - s2.mean(0)) ** 2) / s1[0].size
  np.testing.assert_allclose(mv.numerator[0], expected, rtol=1e-3)
  # The denominator is D1's own error E(sigma) = mean over images of ||mean(S1) - y||^2 / D.
  direct = np.mean(np.sum((s1.mean(0) - queries.astype(np.float64)) ** 2, axis=(1, 2, 3))) / 16
  np.testing.assert_allclose(mv.denominator[0], direct, rtol=1e-3)
  np.testing.assert_allclose(mv.variance, mv.numerator / mv.denominator)


def test_model_variance_of_optimal_denoisers_at_small_sigma_is_distance_of_nearest_points():
  s1, s2, queries = _uniform(3, 15), _uniform(4, 15), _uniform(5, 9)
  d1, d2 = empirical_optimal_denoiser(s1), empirical_optimal_denoiser(s2)
  mv = rep.model_variance(d1, d2, queries, sigmas=[1e-4], return_per_image=True)
  flat = lambda a: a.reshape(len(a), -1).astype(np.float64)
  q, a, b = flat(queries), flat(s1), flat(s2)
  nn1 = a[np.argmin(((q[:, None] - a[None]) ** 2).sum(-1), axis=1)]
  nn2 = b[np.argmin(((q[:, None] - b[None]) ** 2).sum(-1), axis=1)]
  per_query = ((nn1 - nn2) ** 2).mean(axis=1)
  np.testing.assert_allclose(mv.per_image_numerator[:, 0], per_query, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(mv.numerator[0], per_query.mean(), rtol=1e-4)


def test_model_variance_is_zero_for_a_data_independent_denoiser_and_c2_for_a_shift():
  queries = _uniform(6, 8)
  sigmas = [0.01, 0.5, 3.0, 40.0]
  same = rep.model_variance(_data_independent(), _data_independent(), queries, sigmas=sigmas)
  np.testing.assert_array_equal(same.numerator, 0.0)
  np.testing.assert_array_equal(same.variance, 0.0)
  shifted = rep.model_variance(_data_independent(0.1), _data_independent(0.35), queries,
                               sigmas=sigmas)
  # Both models' outputs differ by (0.25) * sigma^2 / (scale^2 + sigma^2) in every pixel.
  s = np.asarray(sigmas)
  np.testing.assert_allclose(shifted.numerator, (0.25 * s ** 2 / (0.25 + s ** 2)) ** 2,
                             rtol=1e-5, atol=1e-10)  # float32 outputs: ~1e-7 of each


def test_ratio_of_means_interval_pairs_the_items_and_matches_independent_draws():
  """Paired: a numerator proportional to its denominator item by item has the ratio in every
  resample (a zero-width interval; resampling the two independently would not). Calibrated: the
  95% width is close to the 2.5-97.5% range of the ratio over independent item sets."""
  rng = np.random.default_rng(0)
  den = rng.gamma(2.0, 1.0, (40, 3))
  low, high = rep.bootstrap_ratio_of_means(0.3 * den, den, num_resamples=200)
  np.testing.assert_allclose(low, 0.3, rtol=1e-12)
  np.testing.assert_allclose(high, 0.3, rtol=1e-12)
  draw = lambda g, n: (lambda d: (d * g.uniform(0.2, 0.6, n), d))(g.gamma(2.0, 1.0, n))
  ratios = [np.mean(a) / np.mean(b) for a, b in (draw(rng, 60) for _ in range(2000))]
  spread = np.subtract(*np.percentile(ratios, [97.5, 2.5]))
  widths = []
  for seed in range(5):
    a, b = draw(np.random.default_rng(100 + seed), 60)
    lo, hi = rep.bootstrap_ratio_of_means(a, b, num_resamples=400, seed=seed)
    assert lo < np.mean(a) / np.mean(b) < hi
    widths.append((hi - lo) / spread)
  assert 0.7 <= np.median(widths) <= 1.4, widths
  # The definition, written out on the same seeded resamples: a ratio of means, 95%.
  from diffgen_jax.evaluation import timescales  # pylint: disable=import-outside-toplevel
  a, b = draw(np.random.default_rng(9), 30)
  counts = timescales.resample_counts(30, 80, 2)
  ratios = (counts @ a) / (counts @ b)
  np.testing.assert_allclose(rep.bootstrap_ratio_of_means(a, b, num_resamples=80, seed=2),
                             np.percentile(ratios, [2.5, 97.5]), rtol=1e-12)
  for bad_a, bad_b, named in ((den, den[:, :2], "must match"), (den[:1], den[:1], "M >= 2"),
                              (den * np.nan, den, "finite"), (den, -den, ">= 0")):
    with pytest.raises(ValueError, match=named):
      rep.bootstrap_ratio_of_means(bad_a, bad_b)
  with pytest.raises(ValueError, match="num_resamples=39 must be >= 40"):
    rep.bootstrap_ratio_of_means(den, den, num_resamples=39)


def test_model_variance_interval_is_the_paired_bootstrap_of_its_per_image_terms():
  s1, s2, queries = _uniform(7, 12), _uniform(8, 12), _uniform(9, 16)
  d1, d2 = empirical_optimal_denoiser(s1), empirical_optimal_denoiser(s2)
  mv = rep.model_variance(d1, d2, queries, sigmas=[0.05, 0.5, 5.0], return_per_image=True,
                          num_resamples=300, seed=4)
  low, high = rep.bootstrap_ratio_of_means(mv.per_image_numerator, mv.per_image_denominator,
                                           num_resamples=300, seed=4)
  np.testing.assert_array_equal(mv.variance_low, low)
  np.testing.assert_array_equal(mv.variance_high, high)
  assert np.all(low <= mv.variance) and np.all(mv.variance <= high) and np.all(low < high)
  assert rep.model_variance(d1, d2, queries, sigmas=[0.5]).variance_low is None


def test_pair_cosines_known_values():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
  b = np.array([[2.0, 0.0], [-1.0, -1.0], [3.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(rep.pair_cosines(a, b), [1.0, -1.0, 0.0, 0.0], atol=1e-12)
  # Centring at (1, 1): rows become (0,-1)/(1,-1), (0,0)/(-2,-2), (-1,1)/(2,-1), (-1,-1)/(0,0).
  np.testing.assert_allclose(rep.pair_cosines(a, b, centre=[1.0, 1.0]),
                             [1 / np.sqrt(2), 0.0, -3 / np.sqrt(10), 0.0], atol=1e-12)
  # A NaN row is NaN, not the 0 of an all-zero row; the other rows keep their values.
  a_nan = a.copy()
  a_nan[1, 0] = np.nan
  got = rep.pair_cosines(a_nan, b)
  assert np.isnan(got[1]), got
  np.testing.assert_allclose(got[[0, 2, 3]], [1.0, 0.0, 0.0], atol=1e-12)
  with pytest.raises(ValueError, match="same shape"):
    rep.pair_cosines(a, b[:3])


def test_samples_of_a_data_independent_denoiser_are_identical_across_models():
  noise = np.asarray(jax.random.normal(jax.random.key(0), (6, 4, 4, 1)))
  one, two = rep.paired_samples(_data_independent(), _data_independent(), noise, num_steps=6)
  sim = rep.sample_similarity(one, two, features_fn=lambda x: x.reshape(len(x), -1)[:, :5] ** 2,
                              threshold=0.99)
  for space in ("pixels", "features"):
    np.testing.assert_allclose(sim[space]["cosine"], 1.0, rtol=1e-6)
    assert sim[space]["fraction_above"] == sim[space]["fraction_high"] == 1.0
    # Wilson: 6 of 6 pairs is [6 / (6 + z^2), 1], not the bootstrap's empty [1, 1]
    np.testing.assert_allclose(sim[space]["fraction_low"], 6 / (6 + 1.959964 ** 2), rtol=1e-6)


def test_sample_similarity_fraction_and_feature_space():
  rng = np.random.default_rng(7)
  one = rng.standard_normal((40, 3, 3, 1))
  two = one.copy()
  two[20:] = -one[20:]  # half the pairs are exact opposites
  feats = lambda x: jnp.abs(x.reshape(len(x), -1))  # sign-blind features: all pairs equal
  sim = rep.sample_similarity(one, two, features_fn=feats, threshold=0.5)
  np.testing.assert_allclose(sim["pixels"]["cosine"][:20], 1.0)
  np.testing.assert_allclose(sim["pixels"]["cosine"][20:], -1.0)
  assert sim["pixels"]["fraction_above"] == 0.5
  assert sim["pixels"]["fraction_low"] < 0.5 < sim["pixels"]["fraction_high"]
  assert sim["features"]["fraction_above"] == 1.0
  with pytest.raises(ValueError, match="threshold"):
    rep.sample_similarity(one, two, threshold=1.5)


def test_cross_copy_fractions_own_and_other():
  s1, s2 = _uniform(8, 20), _uniform(9, 20)
  jitter = 1e-3 * np.random.default_rng(10).standard_normal(s1.shape).astype(np.float32)
  samples_1 = s1 + jitter  # model 1 copies its own set
  samples_2 = np.concatenate([s2[:10] + jitter[:10], _uniform(11, 10)])  # half copies
  out = rep.cross_copy_fractions(samples_1, samples_2, s1, s2)
  assert out["1/own"]["fraction"] == 1.0 and out["1/other"]["fraction"] == 0.0
  assert out["2/own"]["fraction"] == 0.5 and out["2/other"]["fraction"] == 0.0
  assert out["2/own"]["low"] < 0.5 < out["2/own"]["high"]
  # 0 of 20 copies: [0, z^2 / (20 + z^2)] (Wilson), not an empty interval
  assert out["1/other"]["low"] == 0.0
  np.testing.assert_allclose(out["1/other"]["high"], 1.959964 ** 2 / (20 + 1.959964 ** 2), rtol=1e-6)


def test_a_nan_cosine_makes_the_fractions_nan_not_a_miss():
  """Newcomer: one NaN pair of four -> mean_cosine NaN but fraction_above 0.75 (the NaN pair read
  as 'not reproduced'). A NaN feature row (features_fn) now makes that space's fractions NaN."""
  rng = np.random.default_rng(3)
  one = rng.uniform(-1, 1, (4, 3, 3, 1))

  def feats(x):  # the identity on pixels, NaN for the pair whose first pixel is the largest
    f = np.asarray(x).reshape(len(x), -1).copy()
    f[np.argmax(one[:, 0, 0, 0])] = np.nan
    return f

  sim = rep.sample_similarity(one, one.copy(), features_fn=feats)
  assert sim["pixels"]["fraction_above"] == sim["pixels"]["fraction_high"] == 1.0
  assert 0.5 < sim["pixels"]["fraction_low"] < 1.0
  cos = sim["features"]["cosine"]
  assert np.isnan(cos).sum() == 1 and np.allclose(cos[~np.isnan(cos)], 1.0)
  for key in ("mean_cosine", "fraction_above", "fraction_low", "fraction_high"):
    assert np.isnan(sim["features"][key]), (key, sim["features"])
  # A NaN centre makes every pixel cosine NaN: NaN, not 0 of 4 reproduced.
  sim = rep.sample_similarity(one, one, centre=np.full((3, 3, 1), np.nan))
  assert np.isnan(sim["pixels"]["fraction_above"])


@pytest.mark.parametrize("name", ["samples_1", "samples_2"])
def test_sample_similarity_and_cross_copies_refuse_images_off_the_convention(name):
  good = _uniform(0, 4)
  for bad, message in ((np.round((good + 1) * 127.5).astype(np.uint8), "uint8 pixels"),
                       ((good + 1) * 127.5, r"0\.\.255 scale"),
                       (np.where(np.arange(16).reshape(4, 4, 1) == 5, np.nan, good),
                        "NaN or Inf")):
    pair = {"samples_1": good, "samples_2": good, name: bad}
    with pytest.raises(ValueError, match=rf"{name} must be .*{message}"):
      rep.sample_similarity(pair["samples_1"], pair["samples_2"])
    with pytest.raises(ValueError, match=rf"{name} must be .*{message}"):
      rep.cross_copy_fractions(pair["samples_1"], pair["samples_2"], _uniform(1, 5), _uniform(2, 5))
