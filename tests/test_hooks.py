"""hooks: MODULE:FUNCTION factories imported (module or file) and checked on a tiny batch, every
error a ConfigError naming the field and the value."""

import os
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import hooks
from diffgen_jax.config_checks import ConfigError

SHAPE = (4, 4, 1)

HOOKS = """
import jax.numpy as jnp
import numpy as np

MU = 0.25  # data: N(MU, S^2) per pixel; the posterior mean is the optimal denoiser
S = 0.5

def gaussian(x, sigma, labels=None):
  sigma = jnp.asarray(sigma, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)

def make(snapshot_path):
  return gaussian, {"images_seen": int(snapshot_path.split("-")[-1])}

def make_bare(snapshot_path):
  return gaussian

def make_wrong_shape(snapshot_path):
  return lambda x, sigma, labels=None: x[:, :2]

def make_nan(snapshot_path):
  return lambda x, sigma, labels=None: x * jnp.nan

def make_numpy(snapshot_path):  # not traceable: np.asarray of a tracer
  return lambda x, sigma, labels=None: np.asarray(x) * 0.5

def make_vector_only(snapshot_path):  # indexes sigma: fails on a scalar sigma
  return lambda x, sigma, labels=None: x / (1 + sigma[:, None, None, None] ** 2)

def make_needs_labels(snapshot_path):
  return lambda x, sigma, labels: x + labels[:, None, None, None].astype(x.dtype) * 0

def make_raises(snapshot_path):
  raise RuntimeError(f"cannot read {snapshot_path}")

def make_bad_info(snapshot_path):
  return gaussian, {"steps": 3}

def make_triple(snapshot_path):
  return gaussian, {"images_seen": 1}, None

def features():
  return lambda images: jnp.concatenate([images.reshape(len(images), -1).mean(1, keepdims=True),
                                         images.reshape(len(images), -1).std(1, keepdims=True)], 1)

def features_flat():
  return lambda images: images.reshape(-1)

def features_nan():
  return lambda images: jnp.full((len(images), 3), jnp.nan)

def features_3d():
  return lambda images: images

def features_raises():
  def f(images):
    raise ValueError("no weights")
  return f

NOT_CALLABLE = 3

class Zoo:
  @staticmethod
  def make(snapshot_path):
    return gaussian
"""


@pytest.fixture
def hook_dir(tmp_path, monkeypatch):
  """A directory (the current one) holding the hook module under a name unique to the test."""
  name = f"hooks_{os.path.basename(tmp_path)}".replace("-", "_")
  (tmp_path / f"{name}.py").write_text(HOOKS)
  (tmp_path / "broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
  (tmp_path / "needs_missing.py").write_text("import no_such_package_xyz\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  yield tmp_path, name
  for mod in (name, "broken_mod", "needs_missing"):
    sys.modules.pop(mod, None)


def _expected(x, sigma):
  sigma = np.asarray(sigma, np.float64).reshape(-1, 1, 1, 1)
  return (0.25 * x + sigma**2 * 0.25) / (0.25 + sigma**2)


def test_module_and_file_hooks_load_the_named_function(hook_dir):
  tmp, name = hook_dir
  by_module = hooks.load_factory(f"{name}:make", field="model.denoiser")
  assert str(tmp) in sys.path  # the current directory is searched, as `python -m` would
  by_file = hooks.load_factory(f"{tmp / name}.py:make", field="model.denoiser")
  again = hooks.load_factory(f"./{name}.py:make", field="model.denoiser")
  assert by_file is again  # one module per file, imported once
  assert by_module.__name__ == by_file.__name__ == "make"
  zoo = hooks.load_factory(f"{name}:Zoo.make", field="model.denoiser")
  x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 4, 4, 1)
  np.testing.assert_allclose(zoo("s")(jnp.asarray(x), 2.0), _expected(x, 2.0), rtol=1e-6)


@pytest.mark.parametrize("spec, words", [
    ("no_colon", "must be written MODULE:FUNCTION"),
    (":make", "must be written MODULE:FUNCTION"),
    ("{name}:", "must be written MODULE:FUNCTION"),
    ("{name}:not a name", "FUNCTION must be a Python name"),
    ("no_such_module_abc:make", "no module named 'no_such_module_abc' on sys.path"),
    ("broken_mod:make", "importing 'broken_mod' failed (RuntimeError: boom at import)"),
    ("needs_missing:make", "importing 'needs_missing' failed: ModuleNotFoundError"),
    ("{name}:nothing_here", "has no attribute 'nothing_here'"),
    ("{name}:Zoo.nope", "'Zoo' has no attribute 'nope'"),
    ("{name}:NOT_CALLABLE", "a int, not a callable factory"),
    ("missing/file.py:make", "which does not exist"),
])
def test_bad_hooks_name_the_field_and_value(hook_dir, spec, words):
  spec = spec.format(name=hook_dir[1])
  with pytest.raises(ConfigError) as err:
    hooks.load_factory(spec, field="model.denoiser")
  assert str(err.value).startswith(f"config.model.denoiser={spec!r}")
  assert words in str(err.value)


def _load_denoiser(spec, snapshot, classes):
  factory = hooks.load_factory(spec, field="model.denoiser")
  denoise, info = hooks.check_denoiser_factory(factory, snapshot, SHAPE, classes,
                                               field="model.denoiser", value=spec)
  return factory, denoise, info


def test_denoiser_factory_checked_and_info_returned(hook_dir):
  _, name = hook_dir
  factory, denoise, info = _load_denoiser(f"{name}:make", "net-000300", 0)
  assert info == {"images_seen": 300}
  x = np.full((2,) + SHAPE, 0.5, np.float32)
  np.testing.assert_allclose(denoise(jnp.asarray(x), jnp.asarray([0.5, 2.0])),
                             _expected(x, [0.5, 2.0]), rtol=1e-6)
  bare, info = hooks.check_denoiser_factory(hooks.load_factory(f"{name}:make_bare", field="f"),
                                            "s", SHAPE, 10)
  assert info == {} and bare is denoise
  assert factory("net-7")[1] == {"images_seen": 7}


@pytest.mark.parametrize("function, classes, words", [
    ("make_wrong_shape", 0, "returns shape (2, 2, 4, 1) dtype float32"),
    ("make_nan", 0, "output holds NaN or Inf"),
    ("make_numpy", 0, "fails when traced by jax"),
    ("make_vector_only", 0, "sigma 1.0 (a scalar)"),
    ("make_needs_labels", 0, "fails when traced by jax"),  # unconditional: labels None
    ("make_raises", 0, "the factory fails on the snapshot 'snap-1': RuntimeError: cannot read"),
    ("make_bad_info", 0, "info['images_seen']=None"),
    ("make_triple", 0, "returned a tuple of 3 values"),
])
def test_bad_denoisers_fail_at_start_up_naming_the_field(hook_dir, function, classes, words):
  spec = f"{hook_dir[1]}:{function}"
  with pytest.raises(ConfigError) as err:
    _load_denoiser(spec, "snap-1", classes)
  assert str(err.value).startswith(f"config.model.denoiser={spec!r}"), str(err.value)
  assert words in str(err.value), str(err.value)


def test_conditional_check_passes_labels(hook_dir):
  _, denoise, _ = _load_denoiser(f"{hook_dir[1]}:make_needs_labels", "s", 3)
  assert callable(denoise)


def test_feature_factories(hook_dir):
  _, name = hook_dir
  field = "evaluation.samples.features"
  features = hooks.load_features_factory(f"{name}:features", SHAPE)
  images = hooks.probe_images(SHAPE)
  flat = images.reshape(2, -1)
  np.testing.assert_allclose(np.asarray(features(jnp.asarray(images))),
                             np.stack([flat.mean(1), flat.std(1)], 1), rtol=1e-5)
  for function, words in (("features_flat", "features of shape (32,)"),
                          ("features_3d", "features of shape (2, 4, 4, 1)"),
                          ("features_nan", "holding NaN or Inf"),
                          ("features_raises", "the feature extractor fails for 2 images of shape "
                                              "(2, 4, 4, 1) float32 in [-1, 1]: ValueError: no "
                                              "weights"),
                          ("make_raises", "the factory fails: TypeError")):
    spec = f"{name}:{function}"
    with pytest.raises(ConfigError) as err:
      hooks.load_features_factory(spec, SHAPE)
    assert str(err.value).startswith(f"config.{field}={spec!r}"), str(err.value)
    assert words in str(err.value), str(err.value)


def test_probe_images_and_shape_errors():
  a = hooks.probe_images((3, 5, 2))
  assert a.shape == (2, 3, 5, 2) and a.dtype == np.float32 and -1 <= a.min() and a.max() <= 1
  with pytest.raises(ValueError, match="image_shape must be"):
    hooks.probe_images((3, 5))
  with pytest.raises(ConfigError, match=textwrap.shorten("not a denoiser", 40)):
    hooks.check_denoiser(3, SHAPE, 0, value="x")
