"""Crop-averaged denoisers, guidance helpers, analytic baselines and the gradient correlation score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.evaluation import factors
from diffgen_jax.optimal import empirical_optimal_denoiser

H = 8


def _uniform(seed, n, shape=(H, H, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _crops(images, s):
  return np.concatenate([images[:, i:i + s, j:j + s]
                         for i, j in factors.crop_offsets(s, images.shape[1:3])])


def _shape_dispatch(train, sizes):
  """Optimal denoisers of the full images and of their corner crops, chosen by the input size."""
  by_size = {H: empirical_optimal_denoiser(train)}
  for s in sizes:
    by_size[s] = empirical_optimal_denoiser(_crops(train, s))
  return lambda x, sigma, labels=None: by_size[x.shape[1]](x, sigma, labels)


def test_crop_wrapper_identity_and_exact_overlap_average():
  x = jnp.asarray(_uniform(0, 3, (H, H, 2)))
  train = _uniform(1, 6, (H, H, 2))
  optimal = empirical_optimal_denoiser(train)
  full = factors.crop_averaged(optimal, H, H)
  np.testing.assert_array_equal(full(x, 0.7), optimal(x, 0.7))
  pixelwise = lambda x, sigma, labels=None: x * 0.5 + 0.1 * jnp.sin(3 * x)
  for s in (4, 5, 7):
    wrapped = factors.crop_averaged(pixelwise, s, (H, H))
    np.testing.assert_array_equal(wrapped(x, jnp.ones(3)), pixelwise(x, 1.0))
  with pytest.raises(ValueError):
    factors.crop_averaged(pixelwise, 3, H)  # crops would not cover the image


def test_crop_wrapper_passes_per_example_sigma_and_labels():
  seen = {}

  def spy(x, sigma, labels=None):
    seen["sigma"], seen["labels"] = sigma, labels
    return x * sigma[:, None, None, None]

  x = jnp.ones((2, H, H, 1))
  out = factors.crop_averaged(spy, 6, H)(x, jnp.array([1.0, 2.0]), jnp.array([3, 4]))
  np.testing.assert_array_equal(seen["labels"], [3, 4] * 4)
  np.testing.assert_allclose(out[:, 0, 0, 0], [1.0, 2.0])


def test_gradient_score_pixelwise_is_zero_and_box_blur_is_analytic():
  x = jnp.asarray(_uniform(2, 2, (6, 5, 2)))
  score = factors.gradient_correlation_score(lambda x, s, l=None: 0.3 * x, x, 1.0, chunk_size=16)
  np.testing.assert_allclose(score, 0.0, atol=1e-7)

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
  got = factors.gradient_correlation_score(blur, x, 1.0, chunk_size=16)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def test_crop_averaging_shrinks_the_receptive_field():
  train = _uniform(3, 8)
  denoise = _shape_dispatch(train, [4])
  x = jnp.asarray(train[:2] + 1.0 * np.random.default_rng(4).standard_normal((2, H, H, 1)))
  full = factors.gradient_correlation_score(denoise, x, 1.0, chunk_size=64)
  small = factors.gradient_correlation_score(factors.crop_averaged(denoise, 4, H), x, 1.0,
                                             chunk_size=64)
  assert np.all(full > 2.0)
  assert np.all(small < 0.8 * full)
  vs = factors.gradient_correlation_vs_sigma(denoise, train[:2], [0.5, 2.0], chunk_size=64)
  assert vs.shape == (2, 2) and np.all(np.isfinite(vs))


def test_cfg_pair_and_analytic_denoisers():
  def labelled(x, sigma, labels=None):
    return x * 0 + labels.astype(x.dtype)[:, None]

  x = jnp.zeros((3, 2))
  labels = jnp.array([1, 2, 3])
  negative = factors.cfg_pair(labelled, null_label=0)
  np.testing.assert_array_equal(negative(x, 1.0, labels), 0.0)
  guided = factors.cfg_denoiser(labelled, 0, 2.0)
  np.testing.assert_allclose(guided(x, 1.0, labels)[:, 0], 3.0 * np.array([1, 2, 3]))

  train = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [11.0, 10.0]], np.float32)
  classes = np.array([0, 1, 0, 1])
  clusters = np.array([0, 0, 1, 1])
  ds = factors.analytic_denoisers(train, classes, deltas=(0.0, 0.5), cluster_labels=clusters)
  assert set(ds) == {(c, d) for c in ("unconditional", "class", "cluster") for d in (0.0, 0.5)}
  q = jnp.asarray([[0.1, 0.0]])
  np.testing.assert_allclose(ds[("unconditional", 0.0)](q, 0.01), [[0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ds[("class", 0.0)](q, 0.01, jnp.array([1])), [[1.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ds[("cluster", 0.0)](q, 0.01, jnp.array([1])), [[10.0, 10.0]],
                             atol=1e-5)
  # y_delta at sigma -> 0 keeps the input (the model error broadens every point).
  np.testing.assert_allclose(ds[("class", 0.5)](q, 1e-4, jnp.array([0])), q, atol=1e-4)
