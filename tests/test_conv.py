"""The Winograd F(2x2, 3x3) convolution path (diffgen_jax.models.conv) against XLA's convolution."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import models
from diffgen_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")
# XLA compile options for compile-bound checks of tiny programs (LLVM -O0).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _reference(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                      precision=jax.lax.Precision.HIGHEST)


def _inputs(shape, c_out, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], c_out)) / np.sqrt(9 * shape[-1]),
                  jnp.float32)
  return x, w


def _eqns(jaxpr):
  """Every equation of a jaxpr, nested ones (jit, custom_jvp, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)}


def test_filter_transform_matches_lavin_gray():
  """G g G^T for a delta filter at the centre: the outer product of G's middle column (eq. 7)."""
  g = np.zeros((3, 3, 1, 1), np.float32)
  g[1, 1] = 1.0
  col = np.array([0.0, 0.5, -0.5, 0.0])
  np.testing.assert_array_equal(np.asarray(conv.winograd_filter(jnp.asarray(g), 2))[..., 0, 0],
                                np.outer(col, col))


@pytest.mark.parametrize("tile", conv.TILES)
def test_one_dimensional_transforms_compute_a_correlation(tile):
  """A^T [(G g) * (B^T d)] = the valid correlation of d (m + 2 samples) with g (3 taps)."""
  t = conv._TRANSFORMS[tile]  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  d, g = rng.standard_normal(tile + 2), rng.standard_normal(3)
  got = np.array(t["AT"]) @ ((np.array(t["G"]) @ g) * (np.array(t["BT"]) @ d))
  np.testing.assert_allclose(got, np.correlate(d, g, "valid"), rtol=1e-12, atol=1e-12)


# float32 tolerance per tile: F(2x2) transforms have exact coefficients (0, +-1, +-1/2); F(4x4)
# multiplies by up to 8 and 1/24, so its rounding error is about 10x larger (still ~1e-5 relative).
TOL = {2: 1e-5, 4: 1e-4}


@pytest.mark.parametrize("tile", conv.TILES)
@pytest.mark.parametrize("shape,c_out", [
    ((2, 8, 8, 1), 32),     # even size, one input channel (the quickstart's first conv)
    ((3, 7, 7, 16), 8),     # odd size
    ((2, 5, 6, 3), 5),      # odd height, even width
    ((1, 1, 1, 4), 4),      # a single pixel: only the centre tap sees data
    ((2, 4, 9, 64), 64),    # wider channels
])
def test_value_equals_xla_convolution(shape, c_out, tile):
  x, w = _inputs(shape, c_out)
  got = jax.jit(conv.winograd_conv3x3, static_argnames="tile")(x, w, tile=tile)
  want = _reference(x, w)
  assert got.shape == want.shape == shape[:3] + (c_out,)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=TOL[tile], atol=TOL[tile])


@pytest.mark.parametrize("tile", conv.TILES)
@pytest.mark.parametrize("shape,c_out", [((2, 8, 8, 4), 6), ((2, 7, 5, 3), 8), ((1, 3, 3, 32), 16)])
def test_input_and_weight_gradients_equal_xla(shape, c_out, tile):
  x, w = _inputs(shape, c_out, seed=1)
  probe = jnp.asarray(np.random.default_rng(2).standard_normal(shape[:3] + (c_out,)), jnp.float32)
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * probe))
  gx, gw = jax.jit(jax.grad(loss(lambda x, w: conv.winograd_conv3x3(x, w, tile=tile)),
                            argnums=(0, 1)))(x, w)
  rx, rw = jax.jit(jax.grad(loss(_reference), argnums=(0, 1)))(x, w)
  tol = TOL[tile]
  np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=tol,
                             atol=tol * float(np.abs(np.asarray(rw)).max()))


def test_dispatch_takes_winograd_only_where_eligible():
  x, w = _inputs((2, 6, 6, 4), 4)
  # A fresh function per trace: jax caches traces by function, and the algorithm is read at trace
  # time, so a function traced once keeps its algorithm.
  same = lambda: (lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=NHWC))
  with conv.algorithm("winograd"):
    assert "conv_general_dilated" not in _primitives(same(), x, w)
    explicit = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                      dimension_numbers=NHWC)
    assert "conv_general_dilated" not in _primitives(explicit, x, w)
    np.testing.assert_allclose(np.asarray(same()(x, w)), np.asarray(_reference(x, w)), atol=1e-5)
    # Not eligible: stride 2, VALID padding, a 1x1 kernel, NCHW layout, feature groups.
    ineligible = [
        lambda x, w: conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC),
        lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC),
        lambda x, w: conv.conv_general_dilated(x, w[1:2, 1:2], (1, 1), "SAME",
                                               dimension_numbers=NHWC),
        lambda x, w: conv.conv_general_dilated(x.transpose(0, 3, 1, 2), w, (1, 1), "SAME",
                                               dimension_numbers=("NCHW", "HWIO", "NCHW")),
        lambda x, w: conv.conv_general_dilated(x, w[:, :, :2], (1, 1), "SAME",
                                               dimension_numbers=NHWC, feature_group_count=2),
    ]
    for fn in ineligible:
      assert "conv_general_dilated" in _primitives(fn, x, w)
  with conv.algorithm("xla"):
    assert "conv_general_dilated" in _primitives(same(), x, w)
  with conv.algorithm("winograd4"):
    assert "conv_general_dilated" not in _primitives(same(), x, w)
  with conv.algorithm("auto"):  # these tests run on CPU: auto means conv.AUTO_CPU
    assert jax.default_backend() == "cpu"
    assert conv.winograd_tile() == conv.WINOGRAD_TILES.get(conv.AUTO_CPU, 0)
    assert ("conv_general_dilated" in _primitives(same(), x, w)) == (conv.AUTO_CPU == "xla")


def test_algorithm_names_are_checked(monkeypatch):
  with pytest.raises(ValueError, match="cudnn"):
    with conv.algorithm("cudnn"):
      pass
  monkeypatch.setenv(conv.ENV_VAR, "xla")
  assert conv.current_algorithm() == "xla"
  with conv.algorithm("winograd"):
    assert conv.current_algorithm() == "winograd"
  monkeypatch.setenv(conv.ENV_VAR, "fast")
  with pytest.raises(ValueError, match="DIFFGEN_JAX_CONV"):
    conv.current_algorithm()


def test_winograd_conv_rejects_other_kernels_and_tiles():
  x, w = _inputs((1, 4, 4, 2), 2)
  with pytest.raises(ValueError, match="w \\(3,3,C_in,C_out\\)"):
    conv.winograd_conv3x3(x, w[:2])
  with pytest.raises(ValueError, match="tile=3"):
    conv.winograd_conv3x3(x, w, tile=3)


@pytest.mark.parametrize("family", ["ddpmpp", "edm2"])
def test_networks_agree_across_algorithms(family):
  """A whole small network (output and parameter gradient) is the same function on both paths."""
  config = models.default_model_config(family)
  config.update(img_resolution=8, img_channels=1, num_classes=3, model_channels=8,
                channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0)
  if family == "edm2":
    config.update(channels_per_head=8)
  model = models.build(config)
  shape = (2, 8, 8, 1)
  params = models.init_variables(model, jax.random.PRNGKey(0), shape)
  # Move every parameter off its initial value (switches on zero-initialized gains and convs).
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  c_noise, labels = jnp.array([-0.5, 0.7]), jnp.array([0, 2])

  def loss(params):
    return jnp.mean(models.raw_network(model, params)(x, c_noise, labels) ** 2)

  results = {}
  for name in ("xla", "winograd", "winograd4"):
    with conv.algorithm(name):
      # One trace gives both the jaxpr checked below and the program run. LLVM's optimization level
      # 0: this test is compile-bound (a whole network's value and gradient, three times), and the
      # property is the agreement of the two paths, compiled alike, not the speed of the code.
      traced = jax.jit(jax.value_and_grad(loss)).trace(params)
      results[name] = traced.lower().compile(compiler_options=FAST_COMPILE)(params)
    has_conv3x3 = any(e.primitive.name == "conv_general_dilated"
                      and e.invars[1].aval.shape[:2] == (3, 3) for e in _eqns(traced.jaxpr.jaxpr))
    assert has_conv3x3 == (name == "xla")
  lx, gx = results["xla"]
  for name in ("winograd", "winograd4"):
    lw, gw = results[name]
    np.testing.assert_allclose(float(lw), float(lx), rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(gw), jax.tree_util.tree_leaves(gx)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3,
                                 atol=1e-4 * float(np.abs(np.asarray(b)).max() + 1e-6))
