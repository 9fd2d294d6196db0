"""Raw networks F(x_in, c_noise, labels) for the EDM denoiser, and the API the trainer uses.

Families (one module each):
- "ddpmpp": EDM's DDPM++ U-Net (CIFAR-10 network), `ddpmpp.DDPMpp`;
- "edm2":   EDM2's magnitude-preserving U-Net with the learned log-variance head, `edm2.EDM2UNet`;
- "dit":    Diffusion Transformer with adaLN-Zero, `dit.DiT`.

Every module is called as

    model.apply(variables, x, c_noise, labels, train=False, rngs={"dropout": key})

with x (B,H,W,C) float32 NHWC, c_noise (B,), labels (B,) ints in [0, num_classes] or None, and
returns F (B,H,W,C) float32; edm2 with `return_logvar=True` returns (F, logvar (B,)).
Labels: num_classes = 0 means unconditional (labels are ignored); otherwise label == num_classes is
the NULL label (classifier-free guidance: the trainer replaces labels by num_classes with the
label-dropout probability); labels=None means the null label. Out-of-range labels cannot be
checked inside compiled code: every family treats them as the null label.

Model config (`default_model_config(family)`; every field typed, validated by `validate_config`):
    family, preset ("" = custom; otherwise a name in presets.PRESETS of that family, which
    fixes the ARCHITECTURE fields: `apply_preset` sets them, `resolve` refuses a field that
    differs from its preset), num_classes, img_resolution, img_channels, dropout,
    checkpoint (a published network's path for the jobs: an NVIDIA .pkl, a state_dict.npz +
    config.json directory, or a directory of snapshots; "" = none; with `denoiser` set, the
    snapshot file or directory of files the hook reads instead), checkpoint_ema (keep only
    EDM2 snapshots of this EMA profile, e.g. "0.100"; "" = all), denoiser (a hook
    MODULE:FUNCTION, `diffgen_jax.hooks`: a factory f(snapshot_path) -> denoise or
    (denoise, {"images_seen": n}) called for each file under checkpoint; "" = none),
    dtype ("float32" | "bfloat16" | "float64": compute dtype; params are created in float32;
    "float64" needs jax's x64 mode and float64 params, e.g. for parity with a float64 reference),
    plus the family's architecture fields (see `_FAMILY_FIELDS`).
Resolutions: U-Nets need img_resolution divisible by 2^(len(channel_mult) - 1) (28 works with up to
three levels: 28 -> 14 -> 7); DiT needs patch_size to divide img_resolution.
Errors name the field as `config.model.<field>` (the model config lives at config.model).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffgen_jax.config_checks import ConfigError
from diffgen_jax.models import ddpmpp, dit, edm2, layers, presets

FAMILIES = ("ddpmpp", "edm2", "dit")
DTYPES = tuple(layers.DTYPES)
EMBEDDING_TYPES = ("positional", "fourier")
FIELD_PREFIX = "config.model."

# checkpoint / checkpoint_ema: an NVIDIA network file or run directory that the jobs read
# (`models.nvidia`); "" = none. denoiser: a hook MODULE:FUNCTION making the denoiser of each
# file under checkpoint (which then names the hook's snapshots; `jobs.common.hook_series`); "" =
# none. `build` ignores them.
_COMMON_FIELDS = dict(family="", preset="", num_classes=0, img_resolution=32, img_channels=3,
                      dropout=0.0, dtype="float32", checkpoint="", checkpoint_ema="", denoiser="")

_FAMILY_FIELDS = {
    "ddpmpp": dict(model_channels=128, channel_mult=(2, 2, 2), channel_mult_emb=4,
                   channel_mult_noise=1, num_blocks=4, attn_resolutions=(16,),
                   embedding_type="positional", augment_dim=0),
    "edm2": dict(model_channels=192, channel_mult=(1, 2, 3, 4), channel_mult_noise=0,
                 channel_mult_emb=0, num_blocks=3, attn_resolutions=(16, 8),
                 channels_per_head=64, label_balance=0.5, concat_balance=0.5, res_balance=0.3,
                 attn_balance=0.3, clip_act=256.0, logvar_channels=128),
    "dit": dict(patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0,
                noise_scale=1.0),
}


def _err(field: str, message: str) -> ConfigError:
  return ConfigError(f"{FIELD_PREFIX}{field}: {message}")


def default_model_config(family: str) -> ml_collections.ConfigDict:
  """All fields of a family's model config with their defaults (used by configs/)."""
  if family not in FAMILIES:
    raise _err("family", f"{family!r} is not one of the allowed values {FAMILIES}")
  fields = dict(_COMMON_FIELDS, family=family)
  fields.update(_FAMILY_FIELDS[family])
  return ml_collections.ConfigDict(fields)


def apply_preset(model_config, name: str):
  """Chooses a preset the one way configs do: sets model_config.preset = name and the preset's
  architecture fields (in place; returns model_config). `resolve` then finds the fields and the
  preset in agreement; a field changed afterwards (e.g. on the command line) is refused there.
  Raises ConfigError naming config.model.preset for an unknown name or another family's preset."""
  preset = presets.PRESETS.get(name)
  family = model_config.get("family", None)
  if preset is None or preset.family != family:
    raise _err("preset", f"{name!r} is not one of the allowed values {presets.names(family)} "
               f"for family {family!r}")
  model_config.preset = name
  model_config.update(preset.arch)
  return model_config


def preset_config(name: str) -> ml_collections.ConfigDict:
  """A full model ConfigDict for a preset: family defaults, then the preset's defaults and arch."""
  preset = presets.PRESETS[name]
  config = default_model_config(preset.family)
  config.update(preset.defaults)
  return apply_preset(config, name)


def _plain(value):
  """A field's value for comparison: lists and tuples alike (JSON turns tuples into lists)."""
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve(model_config, *, preset_wins: bool = False) -> ml_collections.ConfigDict:
  """A copy of the config with the family's defaults for absent fields; with a preset, checked
  against the preset's architecture fields (preset "" = the fields as given).

  A field that differs from its preset's value is refused (ConfigError naming each such field, its
  value and the preset's, and what to do), so a command-line override of a preset's field is never
  dropped: the fields of a resolved config are the network `build` makes. preset_wins=True
  instead overwrites them with the preset's values, as this function did before: only for reading
  the model of a run recorded then (`jobs.common.read_run`), which is the network it built.
  Raises ConfigError naming config.model.family / .preset / an unknown field.
  """
  family = model_config.get("family", None)
  if family not in FAMILIES:
    raise _err("family", f"{family!r} is not one of the allowed values {FAMILIES}")
  fields = default_model_config(family).to_dict()
  given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  for key in given:
    if key not in fields:
      raise _err(key, f"unknown field for family {family!r}; allowed fields: {tuple(fields)}")
  fields.update(given)
  config = ml_collections.ConfigDict(fields)
  name = config.preset
  if name:
    if name not in presets.PRESETS or presets.PRESETS[name].family != family:
      raise _err("preset", f"{name!r} is not one of the allowed values "
                 f"{('',) + presets.names(family)} for family {family!r}")
    arch = presets.PRESETS[name].arch
    conflicts = [f"{FIELD_PREFIX}{k}={_plain(config[k])!r} conflicts with preset {name!r} "
                 f"({_plain(v)!r})" for k, v in arch.items() if _plain(config[k]) != _plain(v)]
    if conflicts and not preset_wins:
      raise ConfigError(
          "; ".join(conflicts) + f". A preset fixes the fields {tuple(arch)}: set "
          f"{FIELD_PREFIX}preset='' to build from the fields, pick another preset, or leave these "
          "fields at the preset's values (configs choose a preset with models.apply_preset)")
    config.update(arch)
  return config


def _int(config, field, minimum=1):
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise _err(field, f"{value!r} must be an integer >= {minimum}")
  return int(value)


def _number(config, field, lo=None, hi=None, hi_open=False):
  value = config[field]
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _err(field, f"{value!r} must be a number")
  if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
    raise _err(field, f"{value!r} must lie in [{lo}, {hi}{')' if hi_open else ']'}")
  return value


def _mults(config, field="channel_mult"):
  mults = tuple(config[field])
  if not mults or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1
                      for m in mults):
    raise _err(field, f"{mults!r} must be a non-empty list of positive integers")
  return mults


def _check(config) -> None:
  """Structural checks of a resolved config (no data needed)."""
  if config.dtype not in DTYPES:
    raise _err("dtype", f"{config.dtype!r} is not one of the allowed values {DTYPES}")
  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise _err("dtype", "'float64' needs jax's x64 mode: jax.config.update('jax_enable_x64', "
               "True) (or JAX_ENABLE_X64=1) before building the network")
  _int(config, "num_classes", 0)
  res = _int(config, "img_resolution")
  _int(config, "img_channels")
  _number(config, "dropout", 0.0, 1.0, hi_open=True)
  family = config.family

  if family in ("ddpmpp", "edm2"):
    channels = _int(config, "model_channels")
    mults = _mults(config)
    _int(config, "num_blocks")
    levels = len(mults)
    if not layers.unet_resolution_ok(res, levels):
      raise _err("img_resolution", f"{res} must be divisible by 2^(len(channel_mult) - 1) = "
                 f"{2 ** (levels - 1)} for channel_mult={mults}; supported: e.g. 8 or 28 with up to "
                 f"3 levels, 32 with up to 6")
    attn = tuple(config.attn_resolutions)
    level_res = layers.level_resolutions(res, levels)
    if family == "ddpmpp":
      if config.embedding_type not in EMBEDDING_TYPES:
        raise _err("embedding_type", f"{config.embedding_type!r} is not one of the allowed "
                   f"values {EMBEDDING_TYPES}")
      _int(config, "channel_mult_emb")
      _int(config, "augment_dim", 0)
      noise = _int(config, "channel_mult_noise") * channels
      if noise % 2:
        raise _err("model_channels", f"model_channels * channel_mult_noise = {noise} must be even "
                   "(sin/cos noise embedding)")
    else:
      _int(config, "channel_mult_noise", 0)
      _int(config, "channel_mult_emb", 0)
      _int(config, "logvar_channels")
      cph = _int(config, "channels_per_head")
      for level, r in enumerate(level_res):
        width = channels * mults[level]
        if r in attn or level == levels - 1:
          if width % cph:
            raise _err("channels_per_head", f"{cph} must divide the width {width} "
                       f"(model_channels * channel_mult[{level}]) of the attention blocks at "
                       f"{r}x{r}")
      for field in ("label_balance", "concat_balance", "res_balance", "attn_balance"):
        _number(config, field, 0.0, 1.0)
      _number(config, "clip_act", 0.0)
  elif family == "dit":
    patch = _int(config, "patch_size")
    if res % patch:
      raise _err("patch_size", f"{patch} must divide img_resolution={res}")
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_heads")
    _int(config, "depth")
    if hidden % heads:
      raise _err("num_heads", f"{heads} must divide hidden_size={hidden}")
    if hidden % 4:
      raise _err("hidden_size", f"{hidden} must be divisible by 4 (2D sin-cos position embedding)")
    _number(config, "mlp_ratio", 0.0)
    if config.mlp_ratio <= 0 or int(hidden * config.mlp_ratio) < 1:
      raise _err("mlp_ratio", f"{config.mlp_ratio!r} must be > 0")
    _number(config, "noise_scale")


def check(model_config) -> None:
  """Every field of a model config alone and against its preset, before any data or device is
  touched (the checks `build` makes). Raises ConfigError naming the first bad config.model field."""
  _check(resolve(model_config))


def build(model_config) -> nn.Module:
  """The flax module of a model config (a ConfigError names the first bad field)."""
  config = resolve(model_config)
  _check(config)
  dtype = layers.compute_dtype(config.dtype)
  common = dict(img_channels=config.img_channels, num_classes=config.num_classes,
                dropout=float(config.dropout), dtype=dtype)
  if config.family == "ddpmpp":
    return ddpmpp.DDPMpp(
        model_channels=config.model_channels, channel_mult=tuple(config.channel_mult),
        channel_mult_emb=config.channel_mult_emb, channel_mult_noise=config.channel_mult_noise,
        num_blocks=config.num_blocks, attn_resolutions=tuple(config.attn_resolutions),
        embedding_type=config.embedding_type, augment_dim=config.augment_dim, **common)
  if config.family == "edm2":
    return edm2.EDM2UNet(
        model_channels=config.model_channels, channel_mult=tuple(config.channel_mult),
        channel_mult_noise=config.channel_mult_noise, channel_mult_emb=config.channel_mult_emb,
        num_blocks=config.num_blocks, attn_resolutions=tuple(config.attn_resolutions),
        label_balance=config.label_balance, concat_balance=config.concat_balance,
        channels_per_head=config.channels_per_head, res_balance=config.res_balance,
        attn_balance=config.attn_balance, clip_act=config.clip_act,
        logvar_channels=config.logvar_channels, **common)
  return dit.DiT(patch_size=config.patch_size, hidden_size=config.hidden_size, depth=config.depth,
                 num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                 noise_scale=config.noise_scale, **common)


def validate_config(model_config, data_shape: tuple, num_classes: int) -> None:
  """Checks the config against the data: (H, W, C) or (B, H, W, C) images and its class count.

  num_classes is the data's class count (0 for unlabelled data). A conditional model must match
  it; an unconditional model (num_classes = 0) accepts any data and ignores the labels.
  """
  config = resolve(model_config)
  shape = tuple(int(s) for s in data_shape)
  if len(shape) not in (3, 4):
    raise ValueError(f"data_shape must be (H, W, C) or (B, H, W, C), got {data_shape}")
  h, w, c = shape[-3:]
  if h != w or h != config.img_resolution:
    raise _err("img_resolution", f"{config.img_resolution} does not match the data's {h}x{w} "
               "images (square images of side img_resolution are required)")
  if c != config.img_channels:
    raise _err("img_channels", f"{config.img_channels} does not match the data's {c} channels")
  if config.num_classes and config.num_classes != num_classes:
    raise _err("num_classes", f"{config.num_classes} does not match the data's {num_classes} "
               "classes (use 0 for an unconditional model)")
  _check(config)


def weight_projection(model_config) -> Callable[[Any], Any]:
  """Applied to the params after every optimizer update: EDM2's forced weight norm, else identity."""
  if model_config.family == "edm2":
    return edm2.normalize_weights
  return lambda params: params


def _init_fn(model: nn.Module, x_shape, num_classes: Optional[int] = None):
  x_shape = tuple(x_shape)
  if len(x_shape) == 3:
    x_shape = (1,) + x_shape
  num_classes = getattr(model, "num_classes", 0) if num_classes is None else num_classes
  kwargs = dict(return_logvar=True) if isinstance(model, edm2.EDM2UNet) else {}

  def init(rng):
    x = jnp.zeros(x_shape, jnp.float32)
    c_noise = jnp.zeros(x_shape[:1], jnp.float32)
    labels = jnp.zeros(x_shape[:1], jnp.int32) if num_classes else None
    variables = model.init({"params": rng, "dropout": rng}, x, c_noise, labels, train=False,
                           **kwargs)
    return {"params": variables["params"]}

  return init


def init_fn(model: nn.Module, x_shape, num_classes: Optional[int] = None
            ) -> Callable[[jax.Array], dict]:
  """The pure function rng -> {"params": ...} that `init_variables` runs (for jit with shardings)."""
  return _init_fn(model, x_shape, num_classes)


# Initialization runs once: on CPU, compiling it with little LLVM optimization cuts the compile
# time of the (threefry-heavy) init graph several fold; the params are identical.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_variables(model: nn.Module, rng: jax.Array, x_shape, num_classes: Optional[int] = None
                   ) -> dict:
  """{"params": ...} for inputs of shape x_shape ((B,H,W,C) or (H,W,C)); jitted.

  Handles every family: edm2 is initialized with return_logvar=True so u(sigma)'s params exist.
  num_classes defaults to the model's.
  """
  init = jax.jit(_init_fn(model, x_shape, num_classes))
  if jax.default_backend() == "cpu":
    return init.lower(rng).compile(compiler_options=_FAST_COMPILE)(rng)
  return init(rng)


def param_count(model: nn.Module, x_shape) -> int:
  """Number of parameters, from jax.eval_shape of init (allocates nothing)."""
  shapes = jax.eval_shape(_init_fn(model, x_shape), jax.random.PRNGKey(0))
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)))


def raw_network(model: nn.Module, variables, *, train: bool = False, rngs=None,
                return_logvar: bool = False) -> Callable:
  """F(x_in, c_noise, labels) closing over the variables; pass it to `edm.precondition`.

  rngs: {"dropout": key} or a bare key (needed when train=True and dropout > 0).
  return_logvar=True (edm2 only) makes F return (F, logvar).
  """
  if rngs is not None and not isinstance(rngs, dict):
    rngs = {"dropout": rngs}
  kwargs = {}
  if return_logvar:
    if not isinstance(model, edm2.EDM2UNet):
      raise ValueError(f"return_logvar needs the edm2 family, got {type(model).__name__}")
    kwargs["return_logvar"] = True

  def network(x_in, c_noise, labels=None):
    return model.apply(variables, x_in, c_noise, labels, train=train, rngs=rngs, **kwargs)

  return network


__all__ = ["FAMILIES", "apply_preset", "build", "default_model_config", "preset_config",
           "init_variables", "param_count",
           "weight_projection", "raw_network", "init_fn", "validate_config", "resolve",
           "presets", "ddpmpp", "edm2", "dit", "layers"]
