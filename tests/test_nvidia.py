"""NVIDIA's EDM / EDM2 networks in this package: manifests one to one, parity on NVIDIA's numbers.

References: tests/fixtures/nvidia_networks/ (README.md there): small DDPM++ and EDM2 networks with
every block type, their state dicts, and D(x; sigma) (and EDM2's log-variance) computed in float64
by NVIDIA's own code. Tolerances from that README: float32 within 2e-5 (EDM) / 2e-6 (EDM2) absolute
(NVIDIA's own float32 code is within 4.2e-6 / 1.9e-7), float64 within 1e-9.
"""

import glob
import io
import json
import os
import re
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hostile
from diffgen_jax import edm, models
from diffgen_jax.models import nvidia, presets

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "nvidia_networks")
MANIFESTS = sorted(glob.glob(os.path.join(FIXTURES, "manifests", "*.json")))
PICKLES = os.path.join(FIXTURES, "pickles")
TOL32 = {"ddpmpp": 2e-5, "edm2": 2e-6}
TOL64 = 1e-9
# Little LLVM optimization: the compile dominates these one-shot evaluations on CPU.
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# Denoisers are pytrees (params as arguments): one compilation per architecture and shapes.
_apply = jax.jit(lambda denoise, x, sigma, labels: denoise(x, sigma, labels),
                 compiler_options=_FAST)

def _outputs(denoise, x, sigma, labels, null_label, with_logvar):
  """D(x; sigma, labels), D with the null label, and EDM2's logvar (else zeros): one batched call.

  EDM2 goes through the module with return_logvar (D = c_skip x + c_out F, edm.preconditioning);
  EDM through the denoiser itself.
  """
  b = x.shape[0]
  if null_label is not None:
    x, sigma = jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma])
    labels = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
  if with_logvar:
    c = edm.preconditioning(sigma)
    f, logvar = denoise.func.network.module.apply(
        {"params": denoise.args[0]}, x * c.c_in[:, None, None, None], c.c_noise, labels,
        return_logvar=True)
    d = c.c_skip[:, None, None, None] * x + c.c_out[:, None, None, None] * f
  else:
    d, logvar = denoise(x, sigma, labels), jnp.zeros(x.shape[:1], x.dtype)
  return d[:b], d[b:], logvar[:b]


_outputs_jit = jax.jit(_outputs, static_argnames=("null_label", "with_logvar"),
                       compiler_options=_FAST)


def _load(path, dtype="float32"):
  return nvidia.load_denoiser(path, dtype)


def _run(denoise, network, x, sigma, labels):
  null = network.model_config.num_classes if labels is not None else None
  outs = _outputs_jit(denoise, x, sigma, labels, null_label=null,
                      with_logvar=network.model_config.family == "edm2")
  return [np.asarray(o) for o in outs]


# ----------------------------------------------------------------------------------------------
# Every published configuration maps onto its preset, tensor by tensor (no allocation).


def _preset_for(manifest):
  name = manifest["name"]
  if name.startswith("edm-cifar10"):
    return "ddpmpp-cifar10"
  return name.replace("-uncond", "")


@pytest.mark.parametrize("path", MANIFESTS, ids=[os.path.basename(p)[:-5] for p in MANIFESTS])
def test_each_published_configuration_maps_onto_its_preset_one_to_one(path):
  with open(path) as f:
    manifest = json.load(f)
  kwargs = manifest["constructor_kwargs"]
  cls = manifest["preconditioner_class"].rsplit(".", 1)[-1]
  config, sigma_data = nvidia.model_config_from_kwargs(cls, kwargs)
  assert sigma_data == 0.5
  # The preset (with the file's class count) is the same network as the published one.
  preset = models.preset_config(_preset_for(manifest))
  preset.num_classes = kwargs["label_dim"]
  arch = set(presets.PRESETS[_preset_for(manifest)].arch) | {"img_resolution", "img_channels",
                                                             "num_classes", "dropout"}
  assert {k: preset[k] for k in arch} == {k: config[k] for k in arch}
  model = models.build(preset)
  res, channels = config.img_resolution, config.img_channels
  shapes = jax.eval_shape(models.init_fn(model, (1, res, res, channels)),
                          jax.random.PRNGKey(0))["params"]
  named = manifest["state_dict"]
  mapped = nvidia.map_state_shapes(config.family, named)
  nvidia.compare_to_network(mapped, shapes)  # raises naming anything left over or misshapen
  # Nothing dropped but EDM's fixed [1,1] resample filters (checked to be 0.25 when loading).
  dropped = [n for n, _ in named if nvidia._param_path(config.family, n) is None]  # pylint: disable=protected-access
  assert all(n.endswith(".resample_filter") for n in dropped)
  assert len(dropped) == (8 if config.family == "ddpmpp" else 0)
  count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes))
  assert count == manifest["num_parameters"] + manifest["num_buffer_elements"] - 4 * len(dropped)


def test_a_missing_or_extra_tensor_is_named():
  with open(os.path.join(FIXTURES, "manifests", "edm2-img64-xs.json")) as f:
    manifest = json.load(f)
  config, _ = nvidia.model_config_from_kwargs("Precond", manifest["constructor_kwargs"])
  shapes = jax.eval_shape(models.init_fn(models.build(config), (1, 64, 64, 3)),
                          jax.random.PRNGKey(0))["params"]
  named = [e for e in manifest["state_dict"] if e[0] != "unet.emb_fourier.phases"]
  with pytest.raises(nvidia.ConversionError, match="emb_fourier/phases"):
    nvidia.compare_to_network(nvidia.map_state_shapes("edm2", named), shapes)
  named = manifest["state_dict"] + [["unet.extra.weight", [3, 3]]]
  with pytest.raises(nvidia.ConversionError, match="extra/mp_weight"):
    nvidia.compare_to_network(nvidia.map_state_shapes("edm2", named), shapes)


def test_unsupported_networks_are_refused_by_name():
  with pytest.raises(nvidia.ConversionError, match="embedding_type"):
    nvidia.model_config_from_kwargs("EDMPrecond", dict(
        model_type="SongUNet", embedding_type="fourier", img_resolution=32, img_channels=3,
        label_dim=0))
  with pytest.raises(nvidia.ConversionError, match="VPPrecond"):
    nvidia.model_config_from_kwargs("VPPrecond", {})
  with pytest.raises(nvidia.ConversionError, match="mystery"):
    nvidia.model_config_from_kwargs("Precond", dict(img_resolution=8, img_channels=3,
                                                    label_dim=0, mystery=1))


def test_a_resample_filter_other_than_1_1_is_refused():
  state = dict(np.load(os.path.join(FIXTURES, "edm-uncond", "state_dict.npz")))
  name = next(k for k in state if k.endswith("resample_filter"))
  state[name] = state[name] * 2
  with pytest.raises(nvidia.ConversionError, match="resample filter"):
    nvidia.params_from_state_dict("ddpmpp", state)


# ----------------------------------------------------------------------------------------------
# Parity with NVIDIA's float64 references.

VARIANTS = ["edm-cond", "edm-uncond", "edm2-cond", "edm2-uncond"]


def _check_variant(variant, dtype, tol=None):
  io = np.load(os.path.join(FIXTURES, variant, "io.npz"))
  denoise, network = _load(os.path.join(FIXTURES, variant), dtype)
  family = network.model_config.family
  tol = tol or TOL32[family]
  x = np.transpose(io["x"], (0, 2, 3, 1)).astype(dtype)
  labels = io["class_index"].astype(np.int32) if "class_index" in io else None
  d, null, logvar = _run(denoise, network, x, io["sigma"].astype(dtype), labels)
  assert d.dtype == np.dtype(dtype)
  err = np.abs(d.transpose(0, 3, 1, 2) - io["denoised"]).max(axis=(1, 2, 3))
  assert np.all(err <= tol), (variant, dtype, err)  # at every sigma of the fixture
  if family == "edm2":
    assert np.abs(logvar - io["logvar"].reshape(-1)).max() <= tol
  if labels is not None:  # the null label is NVIDIA's class_labels=None (all-zero class vector)
    assert np.abs(null.transpose(0, 3, 1, 2) - io["denoised_null_label"]).max() <= tol
  return err


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_parity_with_nvidia_float64_reference(variant):
  _check_variant(variant, "float32")


@pytest.mark.parametrize("variant", ["edm-cond", "edm2-cond"])
def test_float64_parity_within_1e_9(variant):
  with jax.enable_x64(True):
    _check_variant(variant, "float64", TOL64)


def test_float64_needs_x64_with_a_clear_error():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is on in this process")
  with pytest.raises(Exception, match="x64"):
    nvidia.load_denoiser(os.path.join(FIXTURES, "edm2-uncond"), "float64")[0]


@pytest.mark.parametrize("pkl,variant", [
    ("edm-uncond-network-snapshot-000000.stripped.pkl", "edm-uncond"),
    ("edm2-cond-network-snapshot-0001048-0.100.stripped.pkl", "edm2-cond")])
def test_the_stripped_pickles_denoise_as_nvidia_with_the_stored_weights(pkl, variant):
  """EDM2 pickles store float16 weights: the reference is `denoised_pickled_weights`."""
  io = np.load(os.path.join(FIXTURES, variant, "io.npz"))
  denoise, network = _load(os.path.join(PICKLES, pkl))
  assert network.kimg == {"edm-uncond": 0, "edm2-cond": 1048}[variant]
  family = network.model_config.family
  x = np.transpose(io["x"], (0, 2, 3, 1)).astype(np.float32)
  labels = io["class_index"].astype(np.int32) if "class_index" in io else None
  d, _, logvar = _run(denoise, network, x, io["sigma"].astype(np.float32), labels)
  assert np.abs(d.transpose(0, 3, 1, 2) - io["denoised_pickled_weights"]).max() <= TOL32[family]
  if family == "edm2":
    # float16 storage matters (up to 2.8e-4 per the fixture README): this is the stored network.
    assert np.abs(io["denoised_pickled_weights"] - io["denoised"]).max() > 10 * TOL32[family]
    assert np.abs(logvar - io["logvar_pickled_weights"].reshape(-1)).max() <= 2e-6
    # NVIDIA's call convention (NCHW, one-hot class vectors) around the same denoiser.
    nv = nvidia.nvidia_interface(lambda *a: _apply(denoise, *a), network.model_config.num_classes)
    out = np.asarray(nv(io["x"].astype(np.float32), io["sigma"].astype(np.float32),
                        io["class_labels"]))
    assert np.abs(out - io["denoised_pickled_weights"]).max() <= TOL32[family]


def test_a_pickles_shapes_are_compared_with_its_architecture_before_any_tensor_is_read(tmp_path):
  """Its one tensor is misshapen and a 1 GiB stride-0 view: the comparison refuses it first."""
  # pylint: disable-next=import-outside-toplevel
  from test_nvidia_pickle import _module, _snapshot, _storage, _tensor
  kwargs = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                decoder_type="standard", resample_filter=[1, 1], img_resolution=8,
                img_channels=1, label_dim=0, model_channels=8, channel_mult=[1], num_blocks=1,
                attn_resolutions=[])
  path = tmp_path / "network-snapshot-000000.pkl"
  model = _module("SongUNet", _modules={"dec": _module("ModuleDict", _modules={
      "8x8_aux_conv": _module("Conv2d", _parameters={
          "bias": _tensor(_storage(np.ones(1)), (2**28,), (0,))})})})
  path.write_bytes(_snapshot(init_kwargs=kwargs, model=model))
  with pytest.raises(nvidia.ConversionError) as err:
    nvidia.read_network(str(path))
  assert str(err.value).startswith(f"{path}: the state dict does not match the network one to "
                                   "one"), err.value
  assert "dec_8x8_aux_conv/bias: file (268435456,) vs network (1,)" in str(err.value)


def test_a_state_dict_npz_is_checked_before_numpy_allocates(tmp_path):
  """A member whose .npy header declares 1 GiB over 16 bytes of data (numpy allocates the header's
  shape first; run under a memory cap), a member of object dtype, a cut file: each a
  ConversionError naming the file."""
  source = os.path.join(FIXTURES, "edm-uncond")

  def network(name):
    net = tmp_path / name
    net.mkdir()
    shutil.copy(os.path.join(source, "config.json"), net / "config.json")
    return net, net / "state_dict.npz"

  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                "shape": (2**28,)})
  net, npz = network("big")
  with zipfile.ZipFile(npz, "w") as z:
    z.writestr("model.map_augment.weight.npy", header.getvalue() + bytes(16))
  result = hostile.run_capped("from diffgen_jax.models import nvidia",
                              "nvidia.read_network(PATH)", path=net, limit_mb=256)
  assert not result.crashed and result.error == "ConversionError", result
  assert result.message.startswith(f"{npz}: member model.map_augment.weight.npy declares an array "
                                   "of shape (268435456,)"), result
  net, npz = network("object")
  np.savez(npz, **{"model.w": np.array([None, 1], dtype=object)})
  with pytest.raises(nvidia.ConversionError, match=f"^{re.escape(str(npz))}: .*numeric arrays"):
    nvidia.read_network(str(net))
  net, npz = network("cut")
  with open(os.path.join(source, "state_dict.npz"), "rb") as f:
    npz.write_bytes(f.read()[:5000])
  with pytest.raises(nvidia.ConversionError, match=f"^{re.escape(str(npz))}: not a readable .npz"):
    nvidia.read_network(str(net))


def test_labels_from_one_hot():
  v = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
  np.testing.assert_array_equal(nvidia.labels_from_one_hot(v, 3), [1, 3, 0])
  with pytest.raises(ValueError, match="rows"):
    nvidia.labels_from_one_hot(np.array([[0.5, 0.5, 0]]), 3)
  with pytest.raises(ValueError, match="shape"):
    nvidia.labels_from_one_hot(np.zeros((2, 4)), 3)


def test_images_seen_from_the_file_name():
  assert nvidia.kimg_from_filename("edm2-img64-s-0134217-0.100.pkl") == 134217
  assert nvidia.kimg_from_filename("/a/network-snapshot-0001048-0.050.pkl") == 1048
  assert nvidia.kimg_from_filename("network-snapshot-200000.pkl") == 200000
  assert nvidia.kimg_from_filename("phema-0134217-0.100.pkl") == 134217
  assert nvidia.kimg_from_filename("edm-cifar10-32x32-cond-vp.pkl") is None


# ----------------------------------------------------------------------------------------------
# The state added for NVIDIA's layouts is inert in training.


def _tiny(family, **arch):
  """A tiny network and random params (drawn on the host from jax.eval_shape: no init compile)."""
  config = models.default_model_config(family)
  config.update(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
                img_resolution=8, img_channels=1, num_classes=3, **arch)
  module = models.build(config)
  shapes = jax.eval_shape(models.init_fn(module, (2, 8, 8, 1)), jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(np.float32)), shapes)
  return module, params


def test_edm2_fourier_parameters_get_zero_gradients():
  """EDM2's MPFourier freqs/phases are buffers in edm2: fixed in training (zero gradient)."""
  module, params = _tiny("edm2", channels_per_head=8, logvar_channels=4)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))

  def loss(p):
    f, logvar = module.apply({"params": p}, x, jnp.array([0.1, -0.3]), jnp.array([0, 2]),
                             return_logvar=True)
    return jnp.sum(f ** 2) + jnp.sum(logvar ** 2)

  grads = jax.jit(jax.grad(loss), compiler_options=_FAST)(params)
  for name in ("emb_fourier", "logvar_fourier"):
    assert set(grads[name]) == {"freqs", "phases"}
    for leaf in grads[name].values():
      assert np.all(np.asarray(leaf) == 0)
  assert np.abs(np.asarray(grads["emb_noise"]["mp_weight"])).max() > 0  # the rest does train


def test_ddpmpp_map_augment_adds_exactly_zero():
  module, params = _tiny("ddpmpp", augment_dim=9)
  assert params["map_augment"]["kernel"].shape == (9, 8)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  apply = jax.jit(lambda p: module.apply({"params": p}, x, jnp.array([0.1, -0.3]),
                                         jnp.array([0, 2])), compiler_options=_FAST)
  zeroed = dict(params, map_augment={"kernel": jnp.zeros((9, 8))})
  np.testing.assert_array_equal(np.asarray(apply(params)), np.asarray(apply(zeroed)))
