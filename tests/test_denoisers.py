"""The denoiser combinators: per_example broadcasting, guidance, the null label, crop averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import denoisers
from diffgen_jax.denoisers import (classifier_free_guided, compiled, crop_averaged, guided,
                                   null_labelled, per_example)
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


def _scaled_by(a, x, sigma, labels=None):
  return a * x


def test_compiled_takes_pytree_denoisers_as_arguments_and_closures_as_constants():
  traces = []

  def fn(denoise, x, *, power):
    traces.append(1)
    return denoise(x, 1.0) ** power

  jitted = jax.jit(fn, static_argnames=("power",))
  x = jnp.arange(3.0)
  for a in (2.0, 3.0):  # two "checkpoints" of one network: one trace
    pytree = jax.tree_util.Partial(_scaled_by, jnp.float32(a))
    np.testing.assert_array_equal(compiled(fn, jitted, pytree, power=2)(x), (a * x) ** 2)
  assert len(traces) == 1
  for a in (2.0, 3.0):  # closures: traced for each call, their arrays as constants
    closure = lambda x, sigma, labels=None, a=jnp.float32(a): a * x
    np.testing.assert_array_equal(compiled(fn, jitted, closure, power=2)(x), (a * x) ** 2)
  assert len(traces) == 3


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


# ------------------------------------------------------------------------------------------------
# The PyTorch bridge: a small network written in torch and the same network written in jax.

LABEL_DIM = 3


def _torch_nets():
  """(raw F(x, c_noise, labels) in torch, the EDMPrecond-style D(x, sigma, labels) around it)."""
  torch = pytest.importorskip("torch")

  class Raw(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
      self.noise = torch.nn.Linear(1, 4)
      self.label = torch.nn.Linear(LABEL_DIM, 4, bias=False)
      self.conv2 = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x, c_noise, class_labels=None):
      h = self.conv1(x) + self.noise(c_noise[:, None])[:, :, None, None]
      if class_labels is not None:
        h = h + self.label(class_labels)[:, :, None, None]
      return self.conv2(torch.nn.functional.silu(h))

  class Precond(torch.nn.Module):  # as EDM's EDMPrecond
    def __init__(self, model, sigma_data=0.5):
      super().__init__()
      self.model, self.sigma_data = model, sigma_data

    def forward(self, x, sigma, class_labels=None):
      sigma = sigma.reshape(-1, 1, 1, 1)
      sd = self.sigma_data
      c_skip = sd**2 / (sigma**2 + sd**2)
      c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
      c_in = 1 / (sd**2 + sigma**2).sqrt()
      f = self.model(c_in * x, sigma.log().flatten() / 4, class_labels)
      return c_skip * x + c_out * f

  torch.manual_seed(0)
  raw = Raw()
  return raw, Precond(raw)


def _jax_twin(raw):
  """The same raw network in jax, with the torch module's weights."""
  w = {k: jnp.asarray(v.detach().numpy()) for k, v in raw.state_dict().items()}
  hwio = lambda k: jnp.transpose(w[k], (2, 3, 1, 0))  # OIHW -> HWIO

  def conv(x, kernel, bias):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias

  def f(x, c_noise, labels=None):
    h = conv(x, hwio("conv1.weight"), w["conv1.bias"])
    h = h + (c_noise[:, None] * w["noise.weight"][:, 0] + w["noise.bias"])[:, None, None, :]
    if labels is not None:  # the null label LABEL_DIM is a row of zeros
      h = h + (jax.nn.one_hot(labels, LABEL_DIM) @ w["label.weight"].T)[:, None, None, :]
    return conv(jax.nn.silu(h), hwio("conv2.weight"), w["conv2.bias"])

  from diffgen_jax import edm
  return edm.precondition(f, 0.5)


def test_torch_network_matches_its_jax_twin_under_jit_vmap_and_scan():
  from diffgen_jax import samplers
  from diffgen_jax.denoisers import from_torch
  raw, precond = _torch_nets()
  twin = _jax_twin(raw)
  by_raw = from_torch(raw, preconditioning="edm", label_dim=LABEL_DIM)
  by_precond = from_torch(precond, preconditioning="none", label_dim=LABEL_DIM)
  x = jnp.asarray(_uniform(0, 4) * 2.0)
  sigma = jnp.asarray([0.01, 0.5, 2.0, 40.0])
  labels = jnp.asarray([0, 1, 2, LABEL_DIM], jnp.int32)  # the last one the null label
  expected = np.asarray(twin(x, sigma, labels))
  for denoise in (by_raw, by_precond):
    np.testing.assert_allclose(denoise(x, sigma, labels), expected, atol=1e-5)
    np.testing.assert_allclose(jax.jit(denoise)(x, sigma, labels), expected, atol=1e-5)
    np.testing.assert_allclose(denoise(x, 0.7), twin(x, 0.7), atol=1e-5)  # scalar sigma, no labels
  # vmap: one module call on the flattened (2 x 4) batch, equal to the calls one by one.
  xs, sigmas = jnp.stack([x, -x]), jnp.stack([sigma, sigma[::-1]])
  out = jax.vmap(lambda a, s: by_raw(a, s, labels))(xs, sigmas)
  np.testing.assert_allclose(out[1], twin(-x, sigma[::-1], labels), atol=1e-5)
  # The sampler's lax.scan over Heun steps.
  noise = jnp.asarray(np.random.default_rng(1).standard_normal((4, H, H, 1)), jnp.float32)
  a = samplers.sample(by_raw, noise, labels, num_steps=4).samples
  b = samplers.sample(twin, noise, labels, num_steps=4).samples
  np.testing.assert_allclose(a, b, atol=1e-4)
  assert float(jnp.abs(a).max()) > 0.1  # a real run, not zeros


def test_torch_gap_evaluation_matches_the_jax_twin_on_a_mesh():
  from diffgen_jax import sharding
  from diffgen_jax.denoisers import from_torch
  from diffgen_jax.evaluation import gap
  raw, _ = _torch_nets()
  twin = _jax_twin(raw)
  images = _uniform(2, 12)
  labels = np.arange(12, dtype=np.int32) % LABEL_DIM
  sigmas = np.asarray([0.05, 0.5, 5.0])
  mesh = sharding.make_mesh(-1, 1)  # the batch split over the 8 simulated devices
  kw = dict(sigmas=sigmas, batch_size=8, mesh=mesh, noise_seed=3)
  e_torch = gap.denoising_errors(from_torch(raw, label_dim=LABEL_DIM), images, labels, **kw)
  e_jax = gap.denoising_errors(twin, images, labels, **kw)
  np.testing.assert_allclose(e_torch, e_jax, rtol=1e-5)
  assert np.all(e_jax > 0)


def test_torch_bridge_errors():
  from diffgen_jax.denoisers import from_torch, check_labels
  raw, _ = _torch_nets()
  with pytest.raises(ValueError, match="preconditioning must be one of"):
    from_torch(raw, preconditioning="karras")
  with pytest.raises(ValueError, match="dtype must be one of"):
    from_torch(raw, dtype="int8")
  with pytest.raises(ValueError, match="label_dim"):
    from_torch(raw, label_dim=-1)
  denoise = from_torch(raw, label_dim=LABEL_DIM)
  x = jnp.asarray(_uniform(0, 2))
  with pytest.raises(ValueError, match=r"labels \[4\] are out of range"):
    check_labels(denoise, np.asarray([0, 4]))
  with pytest.raises(ValueError, match="x must be a floating-point array"):
    denoise(x[0], 1.0)
  shrink = from_torch(lambda a, s, lab: a[:, :, :4], preconditioning="none")
  with pytest.raises(Exception, match=r"returned shape \(2, 1, 4, 8\)"):
    np.asarray(shrink(x, 1.0))


def test_a_torch_denoiser_passes_the_hook_check_and_a_broken_one_fails_it():
  from diffgen_jax import hooks
  from diffgen_jax.config_checks import ConfigError
  from diffgen_jax.denoisers import from_torch
  raw, _ = _torch_nets()
  hooks.check_denoiser(from_torch(raw, label_dim=LABEL_DIM), (H, H, 1), LABEL_DIM)
  nan = from_torch(lambda a, s, lab: a * float("nan"), preconditioning="none")
  with pytest.raises(ConfigError, match="config.model.denoiser='torch_hook:make' gave a denoiser "
                                        "whose output holds NaN"):
    hooks.check_denoiser(nan, (H, H, 1), 0, value="torch_hook:make")


def test_from_torch_without_torch_says_how_to_install(monkeypatch):
  import sys
  from diffgen_jax.denoisers import from_torch
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
  with pytest.raises(ImportError, match=r"pip install 'diffgen_jax\[torch\]'"):
    from_torch(object())


def test_caller_compiles_an_array_pytree_denoiser_once_and_calls_a_closure_as_written():
  """The ladder's outputs used to wrap each call in a fresh jax.jit: one compilation per call
  (per rung, set and calibration size). Through `caller` the module-level program is reused."""
  from diffgen_jax.evaluation import ladder  # pylint: disable=import-outside-toplevel
  train = np.random.default_rng(0).uniform(-1, 1, (5, 3, 5, 1)).astype(np.float32)
  denoise = empirical_optimal_denoiser(train)
  inputs = np.random.default_rng(1).uniform(-1, 1, (2, 4, 3, 5, 1)).astype(np.float32)
  before = denoisers._call_jit._cache_size()  # pylint: disable=protected-access
  first = ladder.network_outputs(denoise, inputs, [0.5, 1.0], batch_size=8)
  second = ladder.network_outputs(denoise, inputs, [0.5, 1.0], batch_size=8)
  assert denoisers._call_jit._cache_size() == before + 1  # pylint: disable=protected-access
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first[1], np.asarray(denoise(inputs[1], 1.0)), rtol=1e-6, atol=1e-7)
  closure = lambda x, sigma, labels=None: x  # not an array pytree (e.g. a bridge): run as written
  assert denoisers.caller(closure) is closure
