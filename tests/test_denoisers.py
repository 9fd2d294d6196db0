"""The denoiser combinators: per_example broadcasting, guidance and fixed labels."""

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax.denoisers import guided, per_example, with_labels


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
  rng = np.random.default_rng(0)
  pos = _linear(rng.standard_normal((3, 3)), rng.standard_normal(3))
  neg = _linear(rng.standard_normal((3, 3)), rng.standard_normal(3))
  x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
  np.testing.assert_array_equal(guided(pos, neg, 0.0)(x, 0.7), pos(x, 0.7))


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
