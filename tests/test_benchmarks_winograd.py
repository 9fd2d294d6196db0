"""benchmarks/winograd.py: the Winograd F(m x m, 3x3) convolution experiment, against XLA's."""

import os
import sys

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import winograd  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
TOL = {2: 1e-5, 4: 1e-4}  # F(4x4) multiplies by up to 8 and 1/24: ~10x F(2x2)'s rounding


def _reference(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                      precision=jax.lax.Precision.HIGHEST)


def _conv3x3_primitives(fn, *args):
  """How many 3x3 conv_general_dilated equations the traced fn holds (nested jaxprs included)."""
  def eqns(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from eqns(sub)
  return sum(e.primitive.name == "conv_general_dilated" and e.invars[1].aval.shape[:2] == (3, 3)
             for e in eqns(jax.make_jaxpr(fn)(*args).jaxpr))


def test_filter_transform_matches_lavin_gray():
  """G g G^T for a delta filter at the centre: the outer product of G's middle column (eq. 7)."""
  g = np.zeros((3, 3, 1, 1), np.float32)
  g[1, 1] = 1.0
  col = np.array([0.0, 0.5, -0.5, 0.0])
  np.testing.assert_array_equal(np.asarray(winograd.winograd_filter(jnp.asarray(g), 2))[..., 0, 0],
                                np.outer(col, col))


@pytest.mark.parametrize("tile", winograd.TILES)
def test_one_dimensional_transforms_compute_a_correlation(tile):
  """A^T [(G g) * (B^T d)] = the valid correlation of d (m + 2 samples) with g (3 taps)."""
  t = winograd._TRANSFORMS[tile]  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  d, g = rng.standard_normal(tile + 2), rng.standard_normal(3)
  got = np.array(t["AT"]) @ ((np.array(t["G"]) @ g) * (np.array(t["BT"]) @ d))
  np.testing.assert_allclose(got, np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", winograd.TILES)
def test_value_and_gradients_equal_xla_convolution(tile):
  """Odd height, even width (padding to whole tiles and cropping), both gradients by autodiff."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)) / np.sqrt(27), jnp.float32)
  probe = jnp.asarray(rng.standard_normal((2, 7, 6, 5)), jnp.float32)
  conv = lambda x, w: winograd.winograd_conv3x3(x, w, tile=tile)
  np.testing.assert_allclose(np.asarray(conv(x, w)), np.asarray(_reference(x, w)),
                             rtol=TOL[tile], atol=TOL[tile])
  loss = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), argnums=(0, 1))(x, w)
  for got, want in zip(loss(conv), loss(_reference)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=TOL[tile],
                               atol=TOL[tile] * float(np.abs(np.asarray(want)).max()))
  for bad in (3, 2.0, True, float("nan")):  # an integer in TILES only
    with pytest.raises(ValueError, match="tile="):
      winograd.winograd_conv3x3(x, w, tile=bad)
    with pytest.raises(ValueError, match="tile="):
      winograd.winograd_filter(w, tile=bad)


def test_algorithm_routes_a_network_s_3x3_convolutions_and_restores_lax():
  """Inside algorithm("winograd") a DDPM++ network traces no 3x3 XLA convolution (its 1x1 ones
  stay), a stride-2 convolution keeps XLA's, and jax.lax is restored after the block."""
  config = models.default_model_config("ddpmpp")
  config.update(img_resolution=8, img_channels=1, num_classes=0, model_channels=8,
                channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
  model = models.build(config)
  params = models.init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
  # A fresh function per trace: jax caches traces by function, and the patch acts at trace time.
  net = lambda: (lambda x, c: models.raw_network(model, params)(x, c, None))
  x, c = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
  original = jax.lax.conv_general_dilated
  assert _conv3x3_primitives(net(), x, c) > 0
  w = jnp.zeros((3, 3, 1, 2))
  strided = lambda: (lambda x: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME",
                                                           dimension_numbers=NHWC))
  for name in ("winograd", "winograd4"):
    with winograd.algorithm(name):
      assert _conv3x3_primitives(net(), x, c) == 0
      assert _conv3x3_primitives(strided(), x) == 1
  with winograd.algorithm("xla"):
    assert _conv3x3_primitives(net(), x, c) > 0
  assert jax.lax.conv_general_dilated is original
  with pytest.raises(ValueError, match="cudnn"):
    with winograd.algorithm("cudnn"):
      pass
