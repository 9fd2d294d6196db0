"""A built network and the one constructor that turns (network, parameters) into a denoiser.

    network = build_network(model_config, num_classes)
    denoise = network_denoiser(network, params)              # denoise(x, sigma, labels=None)
    denoise = network_denoiser(network, ema.pick(ema_sets)[1])   # a snapshot's EMA set

`network_denoiser` is the only place where a trained network becomes a denoiser of the package's
interface (`diffgen_jax.denoisers`). It returns a `jax.tree_util.Partial` over the parameters
whose static part compares equal for the same network and sigma_data, so every consumer (gap
evaluation, samplers, probes, guidance) compiles once for all parameter sets of one network
(snapshots over training, EMA sets) and feeds the parameters as arguments.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffgen_jax import edm
from diffgen_jax import models
from diffgen_jax.checks import check_number
from diffgen_jax.models import dit, layers


class Network(NamedTuple):
  """A built flax module with the functions the loss needs."""
  module: Any
  project: Callable  # params -> params, EDM2's forced weight normalization (identity otherwise)
  num_classes: int


def build_network(model_config, num_classes: int, compute_dtype: str = "float32") -> Network:
  """The network of a model config (`models.default_model_config`) for `num_classes` labels
  (0: unconditional; the null label is num_classes) at a compute dtype ("float32" | "bfloat16").
  Raises ValueError unless num_classes is an integer >= 0."""
  check_number(num_classes, "num_classes", low=0, integer=True)
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.num_classes = num_classes
  if "dtype" in model_config:
    model_config.dtype = compute_dtype
  return Network(module=models.build(model_config), project=models.weight_projection(model_config),
                 num_classes=num_classes)


class _Apply:
  """The static part of a network denoiser: D(params, x, sigma, labels) (EDM-preconditioned).

  Equal (and equally hashed) for the same module object and sigma_data, so jit caches keyed on a
  `Partial`'s treedef see one function for every parameter set of one network.
  """

  def __init__(self, network: Network, sigma_data: float):
    self.network = network
    self.sigma_data = float(sigma_data)

  def __call__(self, params, x, sigma, labels=None):
    check_network_input(self.network, params, x)
    if labels is not None and jnp.shape(labels) != (jnp.shape(x)[0],):  # no silent broadcast
      raise ValueError(f"labels must be ({jnp.shape(x)[0]},) integers (one per image), got shape "
                       f"{jnp.shape(labels)}")
    self.check_query_labels(labels)
    raw = models.raw_network(self.network.module, {"params": params})
    return edm.precondition(raw, self.sigma_data)(x, sigma, labels)

  def check_query_labels(self, labels) -> None:
    """`check_network_labels` for this network (`denoisers.check_labels` calls it by this name)."""
    check_network_labels(self.network.num_classes, labels)

  def __eq__(self, other):
    return (isinstance(other, _Apply) and other.network.module is self.network.module
            and other.sigma_data == self.sigma_data)

  def __hash__(self):
    return hash((id(self.network.module), self.sigma_data))


def check_network_labels(num_classes: int, labels) -> None:
  """Checks labels for a network of `num_classes` classes; traced labels pass (only their dtype).

  labels: None (the null label) or integers. A conditional network (num_classes > 0) takes the
  classes 0..num_classes-1 and the null label num_classes (classifier-free guidance's
  unconditional model); inside compiled code every other value would silently become the null
  label, so concrete ones are refused here. An unconditional network (num_classes = 0) ignores its
  labels: only their dtype is checked. Raises ValueError naming `labels` and the allowed values.
  """
  if labels is None:
    return
  dtype = getattr(labels, "dtype", None)
  if dtype is None:
    labels = np.asarray(labels)
    dtype = labels.dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"labels must be integers (class indices), got dtype {dtype}")
  if num_classes == 0 or isinstance(labels, jax.core.Tracer) or (
      isinstance(labels, jax.Array) and not labels.is_fully_addressable):
    return
  values = np.asarray(labels)
  bad = np.unique(values[(values < 0) | (values > num_classes)])
  if bad.size:
    raise ValueError(f"labels {bad.tolist()[:10]} are out of range: this network takes the classes "
                     f"0..{num_classes - 1} and the null label {num_classes}")


_ENCODER_RESOLUTION = re.compile(r"^enc_(\d+)x(\d+)_")


def check_network_input(network: Network, params, x) -> None:
  """Checks x (B, H, W, C) against the network; shapes and dtypes are static, so this runs under jit.

  x must be floating point, NHWC with C = the network's img_channels; a U-Net's (H, W) must be the
  size its parameters were made for (the largest `enc_{H}x{W}_` level: the full image, or the crop
  size of `params_for_crops`), a DiT's must be multiples of its patch size. Raises ValueError
  naming x, its shape and what the network takes.
  """
  shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"x must be an array (B, H, W, C), got {type(x).__name__}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"x must be floating point (images in [-1, 1] plus noise), got dtype {dtype}")
  module = network.module
  channels = getattr(module, "img_channels", None)
  if len(shape) != 4 or (channels is not None and shape[-1] != channels):
    raise ValueError(f"x must be NHWC (B, H, W, {channels}) for this network, got shape "
                     f"{tuple(shape)}")
  if isinstance(module, dit.DiT):
    p = module.patch_size
    if shape[1] % p or shape[2] % p:
      raise ValueError(f"x's image size {shape[1]}x{shape[2]} must be a multiple of the DiT's "
                       f"patch_size={p}")
    return
  sizes = [(int(m.group(1)), int(m.group(2))) for m in map(_ENCODER_RESOLUTION.match, params)
           if m]
  if sizes:
    size = max(sizes, key=lambda hw: hw[0] * hw[1])
    if tuple(shape[1:3]) != size:
      raise ValueError(f"x has image size {shape[1]}x{shape[2]}, but the network's parameters "
                       f"are for {size[0]}x{size[1]} images (x: shape {tuple(shape)})")


def network_denoiser(network: Network, params, sigma_data: float = edm.SIGMA_DATA):
  """The denoiser D(x, sigma, labels=None) of one parameter set (evaluation mode: no dropout).

  params: the network's parameter tree (e.g. `TrainState.params`, or one EMA set: use
  `ema.pick(ema_sets, name)` to choose it). sigma_data: EDM's sigma_data of the training run,
  finite and > 0. Returns a `jax.tree_util.Partial` (a pytree: pass it through jit, scan and vmap).
  The denoiser checks x (`check_network_input`: float NHWC of the network's channels and size, also
  under jit) and concrete labels (`check_network_labels`).

  Raises ValueError at once if params is not a parameter tree (None, or flax's {"params": ...}
  variables dict instead of its "params" entry) or sigma_data is not finite and > 0.
  """
  if params is None or not hasattr(params, "keys"):
    raise ValueError(f"params must be the network's parameter tree (a dict: TrainState.params, or "
                     f"one EMA set from ema.pick), got {type(params).__name__}")
  if set(params.keys()) == {"params"}:
    raise ValueError("params is a flax variables dict {'params': ...}: pass its 'params' entry")
  check_number(sigma_data, "sigma_data", low=0.0, low_open=True)
  return jax.tree_util.Partial(_Apply(network, sigma_data), params)


def num_params(model_config, image_shape, num_classes: int) -> int:
  """Parameter count of a model config at an image shape (H, W, C) of integers >= 1; allocates
  nothing."""
  if len(tuple(image_shape)) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {image_shape!r}")
  for name, v in zip(("image_shape[0] (H)", "image_shape[1] (W)", "image_shape[2] (C)"),
                     image_shape):
    check_number(v, name, low=1, integer=True)
  network = build_network(model_config, num_classes, "float32")
  shapes = jax.eval_shape(models.init_fn(network.module, (1,) + tuple(image_shape), num_classes),
                          jax.random.key(0))["params"]
  return int(sum(leaf.size for leaf in jax.tree.leaves(shapes)))


# ------------------------------------------------------------------------------------------------
# A network on crops (restricted receptive field, `denoisers.crop_averaged`)


def valid_network_crop_sizes(model_config, image_size: int) -> List[int]:
  """Crop sizes s in [H/2, H] the network accepts (U-Nets: divisible by 2^(levels-1); DiT: by the
  patch size). image_size: an integer >= 1 (ValueError otherwise)."""
  check_number(image_size, "image_size", low=1, integer=True)
  m = models.resolve(model_config)
  if m.family == "dit":
    ok = lambda s: s % int(m.patch_size) == 0
  else:
    ok = lambda s: layers.unet_resolution_ok(s, len(tuple(m.channel_mult)))
  return [s for s in range((image_size + 1) // 2, image_size + 1) if ok(s)]


_RESOLUTION_NAME = re.compile(r"^(enc|dec)_(\d+)x(\d+)_(.*)$")


def params_for_crops(network, params, image_size: int, crop_size: int, channels: int):
  """The parameters renamed for s x s inputs, or None where the structures differ.

  Our U-Nets name their layers by the feature-map size they run at (`enc_8x8_conv`, ...), so the
  same weights applied to a crop must be looked up under the crop's sizes: every `enc|dec_{r}x{r}_`
  becomes `_{r s / H}x{r s / H}_` (one level apart -> one level apart). The result is checked
  against `jax.eval_shape` of the network's init at the crop size (tree and shapes); it differs,
  and None is returned, where the layout itself depends on the size (e.g. attention at a size in
  `attn_resolutions` that the crop's feature maps hit but the full image's did not).
  image_size, channels: integers >= 1; crop_size: an integer in [1, image_size] (ValueError
  otherwise).
  """
  check_number(image_size, "image_size", low=1, integer=True)
  check_number(crop_size, "crop_size", low=1, high=image_size, integer=True)
  check_number(channels, "channels", low=1, integer=True)
  if crop_size == image_size:
    return params
  renamed = {}
  for key, value in params.items():
    m = _RESOLUTION_NAME.match(key)
    if m:
      r = int(m.group(2)) * crop_size // image_size
      key = f"{m.group(1)}_{r}x{r}_{m.group(4)}"
    renamed[key] = value
  abstract = jax.eval_shape(models.init_fn(network.module, (1, crop_size, crop_size, channels),
                                           network.num_classes), jax.random.key(0))["params"]
  same = jax.tree.structure(abstract) == jax.tree.structure(renamed) and all(
      a.shape == b.shape for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(renamed)))
  return renamed if same else None
