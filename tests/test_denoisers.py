"""The denoiser combinators: per_example broadcasting, guidance, fixed labels, crop averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.denoisers import (classifier_free_guided, crop_averaged, guided, null_labelled,
                                   per_example, with_labels)
from diffgen_jax.optimal import empirical_optimal_denoiser

H = 8


def _uniform(seed, n, shape=(H, H, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _linear(matrix, bias):
  matrix, bias = jnp.asarray(matrix), jnp.asarray(bias)
  return lambda x, sigma, labels=None: x @ matrix.T * sigma + bias


def test_per_example_broadcasting():
  x = jnp.ones((3, 2, 4))
  assert per_example(2.0, x).shape == (3, 1, 1)
  v = per_example(jnp.asarray([1.0, 2.0, 3.0]), x)
  assert v.shape == (3, 1, 1)
  np.testing.assert_array_equal((v * x)[:, 1, 2], [1.0, 2.0, 3.0])


def test_guidance_weight_zero_is_positive():
  # D_pos = A x s + a: at w = 0 (a Python or numpy zero) the guided output is A x s + a,
  # computed here in numpy, whatever the negative returns (here NaN: it must not leak in).
  rng = np.random.default_rng(0)
  a_mat, a_vec = rng.standard_normal((3, 3)), rng.standard_normal(3)
  pos = _linear(a_mat, a_vec)
  neg = lambda x, sigma, labels=None: jnp.full_like(x, jnp.nan)
  x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  want = np.asarray(x, np.float64) @ a_mat.T * 0.7 + a_vec
  for w in (0, 0.0, np.float32(0.0)):
    np.testing.assert_allclose(guided(pos, neg, w)(x, 0.7), want, rtol=1e-5, atol=1e-5)


def test_guidance_of_linear_denoisers_is_linear():
  # D_pos = A x s + a, D_neg = B x s + b  =>  guided = ((1+w) A - w B) x s + (1+w) a - w b.
  rng = np.random.default_rng(1)
  a_mat, b_mat = rng.standard_normal((2, 3, 3))
  a_vec, b_vec = rng.standard_normal((2, 3))
  x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  for w in (0.5, 1.0, 2.0):
    got = guided(_linear(a_mat, a_vec), _linear(b_mat, b_vec), w)(x, 1.5)
    want = np.asarray(x) @ ((1 + w) * a_mat - w * b_mat).T * 1.5 + (1 + w) * a_vec - w * b_vec
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Guided denoisers are denoisers: they compose and jit.
  twice = guided(guided(_linear(a_mat, a_vec), _linear(b_mat, b_vec), 1.0), _linear(b_mat, b_vec), 1.0)
  want = np.asarray(x) @ (2 * (2 * a_mat - b_mat) - b_mat).T + 2 * (2 * a_vec - b_vec) - b_vec
  np.testing.assert_allclose(jax.jit(twice)(x, 1.0), want, rtol=1e-5, atol=1e-5)


def test_guidance_and_with_labels_pass_labels():
  def by_label(x, sigma, labels):
    return x + jnp.asarray(labels, x.dtype)[:, None]

  x = jnp.zeros((3, 2))
  labels = jnp.asarray([1, 2, 3])
  null = with_labels(by_label, jnp.zeros(3, jnp.int32))  # the classifier-free negative
  np.testing.assert_array_equal(null(x, 1.0, labels), np.zeros((3, 2)))
  # D_pos + w (D_pos - D_null) with D_pos = labels, D_null = 0.
  got = guided(by_label, null, 2.0)(x, 1.0, labels)
  np.testing.assert_array_equal(got, np.repeat([[3.0], [6.0], [9.0]], 2, axis=1))


def test_crop_wrapper_identity_and_exact_overlap_average():
  x = jnp.asarray(_uniform(0, 3, (H, H, 2)))
  train = _uniform(1, 6, (H, H, 2))
  optimal = empirical_optimal_denoiser(train)
  full = crop_averaged(optimal, H, H)
  np.testing.assert_array_equal(full(x, 0.7), optimal(x, 0.7))
  pixelwise = lambda x, sigma, labels=None: x * 0.5 + 0.1 * jnp.sin(3 * x)
  for s in (4, 5, 7):
    wrapped = crop_averaged(pixelwise, s, (H, H))
    np.testing.assert_array_equal(wrapped(x, jnp.ones(3)), pixelwise(x, 1.0))
  with pytest.raises(ValueError):
    crop_averaged(pixelwise, 3, H)  # crops would not cover the image


def test_crop_wrapper_passes_per_example_sigma_and_labels():
  seen = {}

  def spy(x, sigma, labels=None):
    seen["sigma"], seen["labels"] = sigma, labels
    return x * sigma[:, None, None, None]

  x = jnp.ones((2, H, H, 1))
  out = crop_averaged(spy, 6, H)(x, jnp.array([1.0, 2.0]), jnp.array([3, 4]))
  np.testing.assert_array_equal(seen["labels"], [3, 4] * 4)
  np.testing.assert_allclose(out[:, 0, 0, 0], [1.0, 2.0])


def test_null_labelled_and_classifier_free_guidance():
  def labelled(x, sigma, labels=None):
    return x * 0 + labels.astype(x.dtype)[:, None]

  x = jnp.zeros((3, 2))
  labels = jnp.array([1, 2, 3])
  negative = null_labelled(labelled, null_label=0)
  np.testing.assert_array_equal(negative(x, 1.0, labels), 0.0)
  guided = classifier_free_guided(labelled, 0, 2.0)
  np.testing.assert_allclose(guided(x, 1.0, labels)[:, 0], 3.0 * np.array([1, 2, 3]))
