"""Tests of the network families (DDPM++, EDM2, DiT), the presets and the model API.

Shapes are tiny (8x8 and 28x28 single channel, a few channels) so the file runs in well under a
minute and a half on 2 CPU cores. Compiled functions use light XLA optimization (compile time
dominates at these sizes).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import edm, models
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.models import dit, edm2, presets

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
NUM_CLASSES = 3


def fast_jit(fn, *args):
  """jit + compile with light optimization; returns the compiled callable for these arg shapes."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


def tiny_config(family: str, res: int = 8, num_classes: int = NUM_CLASSES, **overrides):
  config = models.default_model_config(family)
  config.update(img_resolution=res, img_channels=1, num_classes=num_classes)
  if family == "ddpmpp":
    config.update(model_channels=8, channel_mult=(1, 2), num_blocks=1,
                  attn_resolutions=(res // 2,), dropout=0.3)
  elif family == "edm2":
    config.update(model_channels=8, channel_mult=(1, 2), num_blocks=1,
                  attn_resolutions=(res // 2,), channels_per_head=8, dropout=0.3)
  else:
    config.update(patch_size=2, hidden_size=16, depth=2, num_heads=2)
  config.update(overrides)
  return config


class Built:
  """A built model, its initial params and a compiled F(params, x, c_noise, labels, key)."""

  def __init__(self, config, batch: int = 2, train: bool = False):
    self.config = config
    self.model = models.build(config)
    res, ch = config.img_resolution, config.img_channels
    self.shape = (batch, res, res, ch)
    self.params = models.init_variables(self.model, jax.random.PRNGKey(0), self.shape)
    key = jax.random.PRNGKey(1)
    self.x = jax.random.normal(key, self.shape)
    self.c_noise = jnp.linspace(-1.0, 1.0, batch)
    self.labels = jnp.arange(batch) % max(config.num_classes, 1)

    def f(params, x, c_noise, labels, key):
      net = models.raw_network(self.model, params, train=train, rngs={"dropout": key})
      return net(x, c_noise, labels)

    self.f = fast_jit(f, self.params, self.x, self.c_noise, self.labels, key)

  def __call__(self, params=None, labels=None, key=0):
    params = self.params if params is None else params
    labels = self.labels if labels is None else labels
    return np.asarray(self.f(params, self.x, self.c_noise, labels, jax.random.PRNGKey(key)))


_CACHE = {}


def built(family, res=8, train=False, **overrides):
  key = (family, res, train, tuple(sorted(overrides.items())))
  if key not in _CACHE:
    _CACHE[key] = Built(tiny_config(family, res, **overrides), train=train)
  return _CACHE[key]


def perturbed(params, scale=0.1, seed=0):
  """All params plus Gaussian noise: switches on the zero-initialized gains and gates."""
  rs = np.random.RandomState(seed)  # host-side noise: no per-shape compilation
  return jax.tree_util.tree_map(
      lambda l: np.asarray(l) + np.float32(scale) * rs.standard_normal(l.shape).astype(np.float32), params)


# ----------------------------------------------------------------------------------------------
# Shapes, jit, compute dtype.


@pytest.mark.parametrize("family,res", [("ddpmpp", 8), ("ddpmpp", 28), ("edm2", 8), ("edm2", 28),
                                        ("dit", 8)])
def test_output_shape(family, res):
  b = built(family, res)
  out = b()
  assert out.shape == b.shape and out.dtype == np.float32
  assert np.all(np.isfinite(out))


def test_preconditioned_denoiser_under_jit():
  b = built("ddpmpp")
  denoise = edm.precondition(models.raw_network(b.model, b.params))
  out = jax.jit(denoise)(b.x, jnp.array([0.1, 5.0]), b.labels)
  assert out.shape == b.shape and np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("family", models.FAMILIES)
def test_bf16_compute_keeps_float32_params(family):
  config = tiny_config(family, dtype="bfloat16", dropout=0.0)
  model = models.build(config)
  shapes = jax.eval_shape(models.init_fn(model, (2, 8, 8, 1)), jax.random.PRNGKey(0))
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(shapes))
  if family == "edm2":  # the MP layers are the delicate case; one forward pass in bf16 suffices
    b = Built(config)
    out = b(params=perturbed(b.params))
    assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.any(out != 0)


# ----------------------------------------------------------------------------------------------
# Class conditioning, unconditional models, dropout.


@pytest.mark.parametrize("family", models.FAMILIES)
def test_labels_change_output_and_null_label_works(family):
  b = built(family)
  # EDM2 (output gain 0) and DiT (adaLN-Zero) output exactly 0 at init, DDPM++ nearly 0.
  params = perturbed(b.params)
  out0 = b(params, labels=jnp.array([0, 0]))
  out1 = b(params, labels=jnp.array([1, 1]))
  null = b(params, labels=jnp.array([NUM_CLASSES, NUM_CLASSES]))
  scale = np.abs(out0).max()
  assert scale > 0
  assert np.abs(out0 - out1).max() > 1e-4 * scale
  assert np.abs(out0 - null).max() > 1e-4 * scale and np.all(np.isfinite(null))
  # Out-of-range labels act as the null label in every family.
  np.testing.assert_allclose(b(params, labels=jnp.array([99, -1])), null, rtol=1e-5,
                             atol=1e-6 * scale)
  # labels=None is the null label.
  net = models.raw_network(b.model, params)
  none = np.asarray(fast_jit(lambda x, c: net(x, c, None), b.x, b.c_noise)(b.x, b.c_noise))
  np.testing.assert_allclose(none, null, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_unconditional_has_no_label_params(family):
  model = models.build(tiny_config(family, num_classes=0))
  shapes = jax.eval_shape(models.init_fn(model, (2, 8, 8, 1)), jax.random.PRNGKey(0))
  names = {str(k) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0] for k in path}
  assert not any(("label" in n) or ("y_embedder" in n) for n in names)


def test_unconditional_ignores_labels():
  b = built("dit", num_classes=0)
  params = perturbed(b.params)
  out = b(params, labels=jnp.array([0, 1]))
  assert np.abs(out).max() > 0
  np.testing.assert_array_equal(out, b(params, labels=jnp.array([5, 7])))
  net = models.raw_network(b.model, params)
  none = fast_jit(lambda x, c: net(x, c, None), b.x, b.c_noise)(b.x, b.c_noise)
  np.testing.assert_allclose(np.asarray(none), out, rtol=1e-5, atol=1e-7)


def test_dropout():
  train = built("ddpmpp", train=True)
  a, a_again, c = train(key=0), train(key=0), train(key=1)
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(a - c).max() > 0
  evaluate = built("ddpmpp")  # train=False: the dropout key is irrelevant
  np.testing.assert_array_equal(evaluate(key=0), evaluate(key=1))


# ----------------------------------------------------------------------------------------------
# DiT: adaLN-Zero.


def test_dit_blocks_are_identity_and_final_layer_zero_at_init():
  b = built("dit")
  params = b.params["params"]
  config = b.config
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, config.hidden_size))
  c = jax.random.normal(jax.random.PRNGKey(3), (2, config.hidden_size))
  for i in range(config.depth):
    block = dit.DiTBlock(config.hidden_size, config.num_heads)
    y = block.apply({"params": params[f"blocks_{i}"]}, x, c)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  final = dit.FinalLayer(config.hidden_size, config.patch_size, config.img_channels)
  out = final.apply({"params": params["final_layer"]}, x, c)
  assert np.all(np.asarray(out) == 0)
  assert np.all(b() == 0)  # so the whole network outputs exactly 0


def test_dit_patch_must_divide_image():
  with pytest.raises(ConfigError, match="patch_size"):
    models.build(tiny_config("dit", res=8, patch_size=3))


# ----------------------------------------------------------------------------------------------
# EDM2: magnitude preservation, forced weight normalization, log-variance head.


def _ms(x):
  return float(jnp.mean(jnp.square(x)))


def test_mp_ops_preserve_unit_magnitude():
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (4000, 64))
  b = jax.random.normal(kb, (4000, 192))
  assert abs(_ms(edm2.mp_silu(a)) - 1) < 0.02
  for t in (0.3, 0.5):
    assert abs(_ms(edm2.mp_sum(a, b[:, :64], t)) - 1) < 0.02
    assert abs(_ms(edm2.mp_cat(a, b, t)) - 1) < 0.02
  fourier, _ = edm2.MPFourier(256).init_with_output(ka, jax.random.normal(ka, (400,)) * 2)
  assert abs(_ms(fourier) - 1) < 0.05


def test_normalize_weights_unit_rows_and_idempotent():
  b = built("edm2")
  params = perturbed(b.params, scale=3.0)
  project = fast_jit(edm2.normalize_weights, params)
  normed = project(params)
  flat = dict(jax.tree_util.tree_flatten_with_path(normed)[0])
  flat_in = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  n_mp = 0
  for path, w in flat.items():
    if path[-1].key == edm2.MP_WEIGHT:
      n_mp += 1
      rows = np.asarray(w).reshape(-1, w.shape[-1])
      np.testing.assert_allclose(np.linalg.norm(rows, axis=0), np.sqrt(rows.shape[0]), rtol=1e-3)
      eff = np.asarray(edm2.effective_weight(w)).reshape(-1, w.shape[-1])
      np.testing.assert_allclose(np.linalg.norm(eff, axis=0), 1.0, rtol=1e-3)
    else:  # gains and everything else pass through untouched
      np.testing.assert_array_equal(np.asarray(w), np.asarray(flat_in[path]))
  assert n_mp > 5
  again = project(normed)
  for x, y in zip(jax.tree_util.tree_leaves(normed), jax.tree_util.tree_leaves(again)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-6)
  assert models.weight_projection(b.config) is edm2.normalize_weights
  identity = models.weight_projection(tiny_config("dit"))
  assert identity(params) is params


@pytest.mark.parametrize("kernel", [(), (3, 3)])
def test_mp_conv_keeps_unit_variance(kernel):
  conv = edm2.MPConv(48, kernel)
  shape = (4096, 96) if not kernel else (16, 20, 20, 96)
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  params = conv.init(jax.random.PRNGKey(1), x)
  y = np.asarray(conv.apply(params, x))
  if kernel:
    y = y[:, 1:-1, 1:-1]  # zero padding lowers the magnitude at the border
  assert abs(y.var() - 1) < 0.05


def test_edm2_logvar_head():
  b = built("edm2")
  assert "logvar_linear" in b.params["params"]
  # The same tree whatever return_logvar was at init.
  plain = jax.eval_shape(lambda k: b.model.init(k, b.x, b.c_noise, b.labels),
                         jax.random.PRNGKey(0))
  assert (jax.tree_util.tree_structure(plain["params"])
          == jax.tree_util.tree_structure(b.params["params"]))
  net = models.raw_network(b.model, b.params, return_logvar=True)
  out, logvar = fast_jit(net, b.x, b.c_noise, b.labels)(b.x, b.c_noise, b.labels)
  assert out.shape == b.shape and logvar.shape == (2,)
  assert np.all(np.isfinite(np.asarray(logvar)))
  with pytest.raises(ValueError):
    models.raw_network(built("ddpmpp").model, {}, return_logvar=True)


# ----------------------------------------------------------------------------------------------
# Presets and published parameter counts.


@pytest.mark.parametrize("name", [n for n, p in presets.PRESETS.items()
                                  if p.published_params is not None])
def test_published_parameter_counts(name):
  preset = presets.PRESETS[name]
  config = models.preset_config(name)
  model = models.build(config)
  count = models.param_count(model, (1, config.img_resolution, config.img_resolution,
                                     config.img_channels))
  assert abs(count / preset.published_params - 1) < 0.01, (name, count)


@pytest.mark.parametrize("name", ["ddpmpp-tiny", "edm2-tiny", "dit-tiny", "dit-tiny/4"])
@pytest.mark.parametrize("res", [8, 28])
def test_tiny_presets_fit_local_data(name, res):
  config = models.preset_config(name)
  config.img_resolution = res
  models.validate_config(config, (res, res, 1), 10)
  model = models.build(config)
  shapes = jax.eval_shape(
      lambda k: model.apply(models.init_fn(model, (1, res, res, 1))(k),
                            jnp.zeros((1, res, res, 1)), jnp.zeros((1,)), jnp.zeros((1,), int)),
      jax.random.PRNGKey(0))
  assert shapes.shape == (1, res, res, 1)


def test_preset_fixes_architecture_only():
  config = models.default_model_config("dit")
  config.update(img_resolution=8, img_channels=1, num_classes=0)
  models.apply_preset(config, "DiT-XL/2")
  model = models.build(config)
  assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (1152, 28, 16, 2)
  assert (model.img_channels, model.num_classes) == (1, 0)


@pytest.mark.parametrize("family,preset,field,value,preset_value", [
    ("ddpmpp", "ddpmpp-tiny", "model_channels", 64, 32),  # the quickstart's --config override
    ("ddpmpp", "ddpmpp-cifar10", "channel_mult", (1, 2), (2, 2, 2)),
    ("edm2", "edm2-img64-xs", "num_blocks", 2, 3),
    ("dit", "DiT-XL/2", "depth", 1, 28),
])
def test_a_field_that_conflicts_with_its_preset_is_refused(family, preset, field, value,
                                                           preset_value):
  """Issue 22, kind 7: an override of a preset's field is refused, naming both values, not dropped
  (it was: the preset's value was built while the config showed the override)."""
  config = models.apply_preset(models.default_model_config(family), preset)
  config[field] = value
  expected = (f"config.model.{field}={value!r} conflicts with preset {preset!r} "
              f"({preset_value!r})")
  for call in (models.resolve, models.build):
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
      call(config)
    assert "config.model.preset=''" in str(info.value)  # what to do
  # Built from the fields instead: the override is what is built.
  config.preset = ""
  assert _plain(models.resolve(config)[field]) == _plain(value)
  # A run recorded before the refusal existed is read as what it built (the preset's value).
  assert _plain(models.resolve(config.to_dict() | {"preset": preset},
                               preset_wins=True)[field]) == _plain(preset_value)


def test_every_config_file_agrees_with_its_presets():
  """The configs choose presets with models.apply_preset: every variant validates (no conflict)."""
  from config_files import config_file  # pylint: disable=import-outside-toplevel
  quickstart = config_file("quickstart")
  assert quickstart.model.preset == "ddpmpp-tiny" and quickstart.model.model_channels == 32
  models.resolve(quickstart.model)


def _plain(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------
# Config errors name the field.


def _bad(family, **overrides):
  config = models.default_model_config(family)
  config.update(img_resolution=8, img_channels=1)
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize("config_fn,field", [
    (lambda: _bad("dit", patch_size=3), "patch_size"),
    (lambda: _bad("dit", num_heads=5), "num_heads"),
    (lambda: _bad("dit", hidden_size=6, num_heads=2), "hidden_size"),
    (lambda: _bad("ddpmpp", channel_mult=(1, 2, 2, 2, 2)), "img_resolution"),
    (lambda: _bad("ddpmpp", model_channels=0), "model_channels"),
    (lambda: _bad("ddpmpp", embedding_type="learned"), "embedding_type"),
    (lambda: _bad("edm2", channels_per_head=100), "channels_per_head"),
    (lambda: _bad("edm2", dtype="float16"), "dtype"),
    (lambda: _bad("edm2", dropout=1.5), "dropout"),
    (lambda: _bad("ddpmpp", preset="DiT-S/2"), "preset"),
    (lambda: _bad("ddpmpp", preset="ddpmpp-huge"), "preset"),
])
def test_bad_configs_name_the_field(config_fn, field):
  with pytest.raises(ConfigError, match=field):
    models.build(config_fn())


def test_unknown_family_and_field():
  config = models.default_model_config("dit")
  config.family = "unet"
  with pytest.raises(ConfigError, match="family"):
    models.build(config)
  with pytest.raises(ConfigError, match="family"):
    models.default_model_config("unet")
  config = models.default_model_config("dit")
  config.model_channels = 3  # an edm2/ddpmpp field
  with pytest.raises(ConfigError, match="model_channels"):
    models.build(config)


@pytest.mark.parametrize("data_shape,num_classes,field", [
    ((16, 16, 1), 10, "img_resolution"),
    ((8, 8, 3), 10, "img_channels"),
    ((4, 8, 8, 1), 7, "num_classes"),
])
def test_validate_config_against_data(data_shape, num_classes, field):
  config = tiny_config("ddpmpp", num_classes=10)
  models.validate_config(config, (8, 8, 1), 10)
  with pytest.raises(ConfigError, match=field):
    models.validate_config(config, data_shape, num_classes)
  unconditional = tiny_config("ddpmpp", num_classes=0)
  models.validate_config(unconditional, (8, 8, 1), 10)  # unconditional models accept labelled data
