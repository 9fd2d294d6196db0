"""The input-gradient correlation score: known answers (pixelwise 0, box blur analytic) and the
effect of a restricted receptive field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.denoisers import crop_averaged, crop_offsets
from diffgen_jax.evaluation import gradient_score
from diffgen_jax.optimal import empirical_optimal_denoiser

H = 8


def _uniform(seed, n, shape=(H, H, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _crops(images, s):
  return np.concatenate([images[:, i:i + s, j:j + s]
                         for i, j in crop_offsets(s, images.shape[1:3])])


def _shape_dispatch(train, sizes):
  """Optimal denoisers of the full images and of their corner crops, chosen by the input size."""
  by_size = {H: empirical_optimal_denoiser(train)}
  for s in sizes:
    by_size[s] = empirical_optimal_denoiser(_crops(train, s))
  return lambda x, sigma, labels=None: by_size[x.shape[1]](x, sigma, labels)


def test_gradient_score_pixelwise_is_zero_and_box_blur_is_analytic():
  x = jnp.asarray(_uniform(2, 2, (6, 5, 2)))
  score = gradient_score.gradient_correlation_score(lambda x, s, l=None: 0.3 * x, x, 1.0, chunk_size=16)
  np.testing.assert_allclose(score, 0.0, atol=1e-7)
  # One output pixel whose gradient row is NaN (the other rows finite) makes the score NaN; it used
  # to be left out as if it were an all-zero row.
  @jax.custom_vjp
  def nan_row(x):
    return 0.3 * x

  def nan_row_bwd(_, ct):
    hit = jnp.zeros(ct.shape, bool).at[:, 0, 0, 0].set(True) & (ct != 0)
    return (jnp.where(hit, jnp.nan, 0.3 * ct),)

  nan_row.defvjp(lambda x: (nan_row(x), None), nan_row_bwd)
  nan_score = gradient_score.gradient_correlation_score(lambda x, s, l=None: nan_row(x), x, 1.0,
                                                        chunk_size=16)
  assert np.all(np.isnan(nan_score)), nan_score

  r = 1
  kernel = jnp.ones((2 * r + 1, 2 * r + 1, 1, 1)) / (2 * r + 1) ** 2

  def blur(x, sigma, labels=None):  # per channel, zero padding
    c = x.shape[-1]
    y = jax.lax.conv_general_dilated(
        jnp.moveaxis(x, -1, 0).reshape((-1,) + x.shape[1:3] + (1,)), kernel, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.moveaxis(y.reshape((c, -1) + x.shape[1:3]), 0, -1)

  h, w = 6, 5
  want = []
  for pi in range(h):
    for pj in range(w):
      d = [np.hypot(qi - pi, qj - pj) for qi in range(max(0, pi - r), min(h, pi + r + 1))
           for qj in range(max(0, pj - r), min(w, pj + r + 1))]
      want.append(np.mean(d))
  got = gradient_score.gradient_correlation_score(blur, x, 1.0, chunk_size=16)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def test_crop_averaging_shrinks_the_receptive_field():
  train = _uniform(3, 8)
  denoise = _shape_dispatch(train, [4])
  x = jnp.asarray(train[:2] + 1.0 * np.random.default_rng(4).standard_normal((2, H, H, 1)))
  full = gradient_score.gradient_correlation_score(denoise, x, 1.0, chunk_size=64)
  small = gradient_score.gradient_correlation_score(crop_averaged(denoise, 4, H), x, 1.0,
                                             chunk_size=64)
  assert np.all(full > 2.0)
  assert np.all(small < 0.8 * full)
  vs = gradient_score.gradient_correlation_vs_sigma(denoise, train[:2], [0.5, 2.0], chunk_size=64)
  assert vs.shape == (2, 2) and np.all(np.isfinite(vs))


def test_gradient_score_refuses_a_nan_or_inf_query():
  """Newcomer: a NaN pixel in x gave a finite score (0 for D = 0.3 x, whose gradient ignores x)."""
  x = np.asarray(_uniform(2, 2, (6, 5, 2)))
  linear = lambda x, s, l=None: 0.3 * x
  np.testing.assert_allclose(gradient_score.gradient_correlation_score(linear, x, 1.0), 0.0,
                             atol=1e-7)
  for bad_value in (np.nan, np.inf):
    bad = x.copy()
    bad[1, 2, 3, 0] = bad_value
    for query in (bad, jnp.asarray(bad)):  # host and device arrays alike
      with pytest.raises(ValueError, match=r"x must be .* got NaN or Inf"):
        gradient_score.gradient_correlation_score(linear, query, 1.0)
  # A noisy query far outside [-1, 1] is still taken (no pixel range for queries).
  assert np.isfinite(gradient_score.gradient_correlation_score(linear, 80.0 * x, 1.0)).all()
