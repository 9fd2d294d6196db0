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


def _score(denoise, images, sigma=1.0, chunk_size=64):
  """(B,) scores at images + sigma n (the gap evaluation's per-image noise)."""
  return gradient_score.gradient_correlation_vs_sigma(denoise, images, [sigma],
                                                      chunk_size=chunk_size)[0]


def test_gradient_score_pixelwise_is_zero_and_box_blur_is_analytic():
  x = _uniform(2, 2, (6, 5, 2))
  score = _score(lambda x, s, l=None: 0.3 * x, x, chunk_size=16)
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
  nan_score = _score(lambda x, s, l=None: nan_row(x), x, chunk_size=16)
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
  got = _score(blur, x, chunk_size=16)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def test_crop_averaging_shrinks_the_receptive_field():
  train = _uniform(3, 8)
  denoise = _shape_dispatch(train, [4])
  full = _score(denoise, train[:2])
  small = _score(crop_averaged(denoise, 4, H), train[:2])
  assert np.all(full > 2.0)
  assert np.all(small < 0.8 * full)
  vs = gradient_score.gradient_correlation_vs_sigma(denoise, train[:2], [0.5, 1.0, 2.0])
  assert vs.shape == (3, 2) and np.all(np.isfinite(vs))
  np.testing.assert_array_equal(vs[1], full)  # sigma = 1.0, the same per-image noise


def test_gradient_score_refuses_nan_or_inf_images():
  """Newcomer: a NaN pixel gave a finite score (0 for D = 0.3 x, whose gradient ignores x)."""
  x = np.asarray(_uniform(2, 2, (6, 5, 2)))
  linear = lambda x, s, l=None: 0.3 * x
  for bad_value in (np.nan, np.inf):
    bad = x.copy()
    bad[1, 2, 3, 0] = bad_value
    for images in (bad, jnp.asarray(bad)):  # host and device arrays alike
      with pytest.raises(ValueError, match=r"images must be .* got NaN or Inf"):
        _score(linear, images)
  # A noisy query far outside [-1, 1] (sigma = 80) is still scored.
  np.testing.assert_allclose(_score(linear, x, sigma=80.0), 0.0, atol=1e-7)
