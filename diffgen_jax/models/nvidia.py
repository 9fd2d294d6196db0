"""NVIDIA's published EDM (DDPM++ / SongUNet) and EDM2 networks as diffgen_jax networks.

From a network pickle (`nvidia_pickle.read_network_pickle`, nothing from the file executed) or a
directory holding `state_dict.npz` (torch names, torch layouts) + `config.json` (the
preconditioner's constructor kwargs), this module builds

- the model config of this package whose network is NVIDIA's, tensor by tensor
  (`model_config_from_kwargs`): EDMPrecond + SongUNet in its DDPM++ configuration -> family
  "ddpmpp"; EDM2's Precond + UNet -> family "edm2";
- the flax params from the state dict (`params_from_state_dict`): torch names mapped by the rule in
  tests/fixtures/nvidia_networks/README.md, conv (O,I,kh,kw) -> (kh,kw,I,O), linear (O,I) -> (I,O);
  EDM's `resample_filter` buffers are checked to be the [1,1] filter (all 0.25) and dropped (our
  layers hard-code that filter); EDM2's Fourier `freqs`/`phases` load as parameters;
- the denoiser of the package interface, `load_denoiser(path)` -> (denoise(x, sigma, labels=None),
  NvidiaNetwork): x NHWC, sigma scalar or (B,), labels integer classes in [0, num_classes] with
  num_classes (or None) the null label = NVIDIA's all-zero class vector; EDM preconditioning with
  the file's sigma_data (paper.md section 2; NVIDIA's c_noise = ln(sigma)/4 for both EDMPrecond and
  EDM2 Precond, the same as ours).

NVIDIA's conventions vs ours: NCHW vs NHWC images; float one-hot (B, label_dim) class vectors vs
integer labels (`labels_from_one_hot`); `nvidia_interface` wraps a denoiser back into NVIDIA's
call convention (NCHW, one-hot) for side-by-side checks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import zipfile
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffgen_jax import models
from diffgen_jax.checks import check_number
from diffgen_jax.models import network as network_lib
from diffgen_jax.models import nvidia_pickle

SUPPORTED_CLASSES = {"EDMPrecond": "ddpmpp", "Precond": "edm2"}

# Constructor kwargs we understand, with NVIDIA's defaults (edm training/networks.py SongUNet and
# EDMPrecond @ 008a4e5; edm2 training/networks_edm2.py UNet, Block and Precond @ 4bf8162).
_EDM_DEFAULTS = dict(model_type="DhariwalUNet", model_channels=128, channel_mult=[1, 2, 2, 2],
                     channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10,
                     label_dropout=0.0,  # training-time only
                     embedding_type="positional", channel_mult_noise=1,
                     encoder_type="standard", decoder_type="standard", resample_filter=[1, 1],
                     augment_dim=0, sigma_data=0.5)
_EDM_REQUIRED = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                     decoder_type="standard", resample_filter=[1, 1])
_EDM2_DEFAULTS = dict(model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_noise=None,
                      channel_mult_emb=None, num_blocks=3, attn_resolutions=[16, 8],
                      label_balance=0.5, concat_balance=0.5, resample_filter=[1, 1],
                      channels_per_head=64, dropout=0.0, res_balance=0.3, attn_balance=0.3,
                      clip_act=256, logvar_channels=128, sigma_data=0.5)
_COMMON = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_min", "sigma_max")


class ConversionError(ValueError):
  """A network or state dict this package cannot reproduce exactly (names what differs)."""


@dataclasses.dataclass
class NvidiaNetwork:
  """A published network in this package's terms.

  model_config: the model config (family "ddpmpp" or "edm2"; `diffgen_jax.models.build`);
  params: the flax params (nested dicts of arrays in the requested dtype);
  sigma_data: the preconditioner's sigma_data; kimg: images seen in thousands (from the file name,
  None if it has none); source: the path; nvidia_kwargs: the preconditioner's constructor kwargs.
  """
  model_config: ml_collections.ConfigDict
  params: Dict[str, Any]
  sigma_data: float
  kimg: Optional[int]
  source: str
  nvidia_kwargs: Dict[str, Any]
  nvidia_class: str


def _merge(kwargs: Mapping[str, Any], defaults: Mapping[str, Any], cls: str) -> Dict[str, Any]:
  unknown = sorted(k for k in kwargs if k not in defaults and k not in _COMMON)
  if unknown:
    raise ConversionError(f"{cls} constructor arguments {unknown} are not modelled by diffgen_jax "
                          f"(known: {sorted(set(defaults) | set(_COMMON))})")
  merged = dict(defaults)
  merged.update(kwargs)
  return merged


def model_config_from_kwargs(class_name: str, kwargs: Mapping[str, Any],
                             dtype: str = "float32") -> Tuple[ml_collections.ConfigDict, float]:
  """(model config, sigma_data) of NVIDIA's preconditioner `class_name` built with `kwargs`.

  class_name: "EDMPrecond" (with model_type="SongUNet" in DDPM++ settings) or "Precond" (EDM2).
  dtype: the compute dtype ("float32", "bfloat16", "float64"). Raises ConversionError naming any
  argument whose value this package does not reproduce (e.g. NCSN++ or ADM networks).
  """
  if class_name not in SUPPORTED_CLASSES:
    raise ConversionError(f"preconditioner {class_name!r} is not supported; supported: "
                          f"{sorted(SUPPORTED_CLASSES)} (EDM's VP/VE preconditioners are not)")
  family = SUPPORTED_CLASSES[class_name]
  config = models.default_model_config(family)
  if family == "ddpmpp":
    k = _merge(kwargs, _EDM_DEFAULTS, class_name)
    for field, value in _EDM_REQUIRED.items():
      got = list(k[field]) if isinstance(k[field], (list, tuple)) else k[field]
      if got != value:
        raise ConversionError(f"EDMPrecond {field}={got!r}: only the DDPM++ configuration "
                              f"({field}={value!r}) is supported")
    config.update(model_channels=int(k["model_channels"]),
                  channel_mult=tuple(int(m) for m in k["channel_mult"]),
                  channel_mult_emb=int(k["channel_mult_emb"]),
                  channel_mult_noise=int(k["channel_mult_noise"]), num_blocks=int(k["num_blocks"]),
                  attn_resolutions=tuple(int(r) for r in k["attn_resolutions"]),
                  embedding_type="positional", augment_dim=int(k["augment_dim"]))
  else:
    k = _merge(kwargs, _EDM2_DEFAULTS, class_name)
    if list(k["resample_filter"]) != [1, 1]:
      raise ConversionError(f"Precond resample_filter={k['resample_filter']!r}: only [1, 1]")
    config.update(model_channels=int(k["model_channels"]),
                  channel_mult=tuple(int(m) for m in k["channel_mult"]),
                  channel_mult_noise=int(k["channel_mult_noise"] or 0),
                  channel_mult_emb=int(k["channel_mult_emb"] or 0),
                  num_blocks=int(k["num_blocks"]),
                  attn_resolutions=tuple(int(r) for r in k["attn_resolutions"]),
                  label_balance=float(k["label_balance"]),
                  concat_balance=float(k["concat_balance"]),
                  channels_per_head=int(k["channels_per_head"]),
                  res_balance=float(k["res_balance"]), attn_balance=float(k["attn_balance"]),
                  clip_act=float(k["clip_act"]), logvar_channels=int(k["logvar_channels"]))
  for field in ("img_resolution", "img_channels", "label_dim"):
    if field not in kwargs:
      raise ConversionError(f"{class_name} kwargs lack {field!r}")
  # The file's numbers reach the architecture and the preconditioner: refuse any out of range.
  for field, bounds in (("img_resolution", dict(low=1, integer=True)),
                        ("img_channels", dict(low=1, integer=True)),
                        ("label_dim", dict(low=0, integer=True))):
    check_number(kwargs[field], f"{class_name} {field}", error=ConversionError, **bounds)
  check_number(k["sigma_data"], f"{class_name} sigma_data", low=0.0, low_open=True,
               error=ConversionError)
  check_number(k["dropout"], f"{class_name} dropout", low=0.0, high=1.0, high_open=True,
               error=ConversionError)
  config.update(img_resolution=int(kwargs["img_resolution"]),
                img_channels=int(kwargs["img_channels"]), num_classes=int(kwargs["label_dim"]),
                dropout=float(k["dropout"]), dtype=dtype)
  return config, float(k["sigma_data"])


# ----------------------------------------------------------------------------------------------
# State dict <-> params.

_RESAMPLE_FILTER = np.full((1, 1, 2, 2), 0.25)
_EDM_NORMS = re.compile(r"^(norm[012]|.*_aux_norm)$")


def _param_path(family: str, name: str) -> Optional[Tuple[str, ...]]:
  """The params path of a torch state-dict name (None: a fixed buffer that we do not store)."""
  parts = name.split(".")
  root = {"ddpmpp": "model", "edm2": "unet"}[family]
  if parts[0] == root:
    parts = parts[1:]
  elif not (family == "edm2" and parts[0] in ("logvar_fourier", "logvar_linear")):
    raise ConversionError(f"state tensor {name!r} is outside the network ({root}.*)")
  if parts[0] in ("enc", "dec") and len(parts) > 1:
    parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
  leaf, modules = parts[-1], parts[:-1]
  if family == "ddpmpp":
    if leaf == "resample_filter":
      return None
    if modules and _EDM_NORMS.match(modules[-1]):
      return tuple(modules) + ("norm", {"weight": "scale", "bias": "bias"}[leaf])
    return tuple(modules) + ({"weight": "kernel"}.get(leaf, leaf),)
  return tuple(modules) + ({"weight": "mp_weight"}.get(leaf, leaf),)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def _flax_shape(shape) -> tuple:
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[2], shape[3], shape[1], shape[0])
  if len(shape) == 2:
    return shape[::-1]
  return shape


def map_state_shapes(family: str, named_shapes) -> Dict[Tuple[str, ...], tuple]:
  """{params path: flax shape} of [(torch name, torch shape)] (buffers of fixed value dropped)."""
  out = {}
  for name, shape in named_shapes:
    path = _param_path(family, name)
    if path is not None:
      out[path] = _flax_shape(shape)
  return out


def _flatten(tree, prefix=()) -> Dict[Tuple[str, ...], Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def compare_to_network(mapped: Mapping[Tuple[str, ...], tuple], param_shapes) -> None:
  """Raises ConversionError unless the mapped tensors and the network's params match one to one.

  mapped: {path: shape} (`map_state_shapes`); param_shapes: the network's params tree of arrays or
  ShapeDtypeStructs (e.g. from jax.eval_shape). Names every tensor left over on either side and
  every shape mismatch.
  """
  ours = {p: tuple(v.shape) for p, v in _flatten(param_shapes).items()}
  missing = sorted("/".join(p) for p in ours if p not in mapped)
  extra = sorted("/".join(p) for p in mapped if p not in ours)
  shapes = sorted(f"{'/'.join(p)}: file {mapped[p]} vs network {ours[p]}"
                  for p in ours if p in mapped and tuple(mapped[p]) != ours[p])
  if missing or extra or shapes:
    raise ConversionError(
        "the state dict does not match the network one to one: "
        + "; ".join(f"{what}: {items[:8]}{' ...' if len(items) > 8 else ''}"
                    for what, items in (("network params without a tensor", missing),
                                        ("tensors without a network param", extra),
                                        ("shape mismatches", shapes)) if items))


def params_from_state_dict(family: str, state_dict: Mapping[str, np.ndarray],
                           dtype=np.float32) -> Dict[str, Any]:
  """Flax params (nested dicts of numpy arrays of `dtype`) from NVIDIA's state dict.

  Checks EDM's resample_filter buffers against the [1,1] filter (ConversionError otherwise).
  The values are cast, not rounded twice: a float16 snapshot gives exactly its float16 values.
  """
  params: Dict[str, Any] = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    path = _param_path(family, name)
    if path is None:
      if value.shape != _RESAMPLE_FILTER.shape or not np.all(value == 0.25):
        raise ConversionError(f"{name}: resample filter {value.reshape(-1).tolist()} is not the "
                              "[1,1] filter (all 0.25) that the DDPM++ layers implement")
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _to_flax_layout(value).astype(dtype)
  return params


# ----------------------------------------------------------------------------------------------
# Files.

_KIMG = re.compile(r"-(\d{6,7})(?:-\d+\.\d+)?(?:\.stripped)?\.pkl$")


def kimg_from_filename(path: str) -> Optional[int]:
  """Images seen (thousands) from an NVIDIA snapshot name, e.g. `...-0134217-0.100.pkl` -> 134217.

  EDM: network-snapshot-<kimg:06d>.pkl; EDM2: network-snapshot-<kimg:07d>-<std>.pkl and
  phema-<kimg:07d>-<std>.pkl. None when the name carries no count (e.g. edm-cifar10-...-vp.pkl).
  """
  match = _KIMG.search(os.path.basename(path))
  return int(match.group(1)) if match else None


_EMA_STD = re.compile(r"-(\d+\.\d+)(?:\.stripped)?\.pkl$")


def _is_network_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "state_dict.npz")) and \
      os.path.isfile(os.path.join(path, "config.json"))


def snapshot_paths(path: str, ema_std: Optional[str] = None) -> list:
  """[(kimg, path)] of the networks at `path`, ordered by images seen.

  path: one network (a .pkl, or a directory with state_dict.npz + config.json) or a directory of
  them (NVIDIA's run directory: network-snapshot-*.pkl; or converted-network subdirectories).
  ema_std: keep only EDM2 snapshots of this EMA profile (e.g. "0.100" from `...-0.100.pkl`).
  kimg is taken from the file name (a directory's from its config.json "kimg", else its name);
  a single network without one gets 0. Raises FileNotFoundError / ValueError (no networks, two
  networks at the same kimg, e.g. several EMA profiles without `ema_std`).
  """
  path = os.fspath(path)
  if os.path.isfile(path) or _is_network_dir(path):
    return [(_kimg_of(path) or 0, path)]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no network or directory of networks at {path!r}")
  entries = [os.path.join(path, n) for n in sorted(os.listdir(path))]
  found = [p for p in entries if (p.endswith(".pkl") and os.path.isfile(p)) or
           (os.path.isdir(p) and _is_network_dir(p))]
  if ema_std:
    found = [p for p in found if (m := _EMA_STD.search(os.path.basename(p))) and
             m.group(1) == ema_std]
  if not found:
    raise FileNotFoundError(f"{path} holds no network snapshots (*.pkl or directories with "
                            "state_dict.npz + config.json)"
                            + (f" of EMA profile {ema_std}" if ema_std else ""))
  by_kimg: Dict[int, str] = {}
  for p in found:
    kimg = _kimg_of(p)
    if kimg is None:
      raise ValueError(f"{p}: no images-seen count in its name (e.g. network-snapshot-0134217-"
                       "0.100.pkl); point at the file itself to evaluate it alone")
    if kimg in by_kimg:
      raise ValueError(f"two networks at {kimg} kimg: {by_kimg[kimg]} and {p} (several EMA "
                       "profiles? choose one with ema_std, e.g. '0.100')")
    by_kimg[kimg] = p
  return sorted(by_kimg.items())


def _kimg_of(path: str) -> Optional[int]:
  if os.path.isdir(path):
    with open(os.path.join(path, "config.json")) as f:
      kimg = json.load(f).get("kimg")
    if kimg is not None:
      return int(kimg)
    return int(os.path.basename(path.rstrip("/"))) if os.path.basename(
        path.rstrip("/")).isdigit() else None
  return kimg_from_filename(path)


def _read_directory(path: str):
  config_path = os.path.join(path, "config.json")
  state_path = os.path.join(path, "state_dict.npz")
  for p in (config_path, state_path):
    if not os.path.exists(p):
      raise FileNotFoundError(f"{path} is a directory without {os.path.basename(p)} (a converted-"
                              "network directory holds state_dict.npz + config.json)")
  with open(config_path) as f:
    meta = json.load(f)
  cls = meta.get("preconditioner_class", "")
  cls = cls.rsplit(".", 1)[-1]
  kwargs = meta.get("preconditioner_kwargs", meta.get("constructor_kwargs"))
  if kwargs is None:
    raise ConversionError(f"{config_path} has no 'preconditioner_kwargs'")
  return cls, kwargs, _read_npz(state_path)


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  """{name: read-only array} of an .npz, each member's .npy header checked before it allocates.

  numpy's own reader allocates the shape a header declares before reading the data (1 GiB from a
  member of a few bytes): here each member must hold exactly shape x itemsize bytes after its
  header, and claim no more compressed bytes than the file has. Raises ConversionError naming the
  file and the member (object arrays too).
  """
  out = {}
  try:
    with zipfile.ZipFile(path) as z:
      for info in z.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if info.compress_size > os.path.getsize(path):
          raise ConversionError(f"{path}: member {info.filename} claims {info.compress_size} "
                                "compressed bytes, more than the file holds")
        with z.open(info) as f:
          version = np.lib.format.read_magic(f)
          shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(f))
          nbytes = math.prod(shape) * dtype.itemsize
          if dtype.hasobject or nbytes != info.file_size - f.tell():
            raise ConversionError(
                f"{path}: member {info.filename} declares an array of shape {shape} and dtype "
                f"{dtype} ({nbytes} bytes) but holds {info.file_size - f.tell()} bytes of data "
                "(numeric arrays only); the file is damaged: write it again")
          out[name] = np.frombuffer(f.read(nbytes), dtype).reshape(shape,
                                                                   order="F" if fortran else "C")
  except ConversionError:
    raise
  except (zipfile.BadZipFile, ValueError, EOFError) as err:
    raise ConversionError(f"{path}: not a readable .npz ({type(err).__name__}: {err}); write it "
                          "again (np.savez of the state dict)") from err
  return out


def read_network(path: str, dtype: str = "float32") -> NvidiaNetwork:
  """NVIDIA's network at `path` (a .pkl snapshot, or a directory with state_dict.npz +
  config.json) as this package's model config and params (params in the compute dtype, except
  float32 for bfloat16). A pickle's tensor shapes are compared with the architecture of its
  kwargs before any tensor is read. Raises ConversionError (naming the path) /
  nvidia_pickle.UnsafePickleError / nvidia_pickle.NetworkPickleError / FileNotFoundError."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no network at {path!r} (expected a .pkl or a directory with "
                            "state_dict.npz + config.json)")
  try:
    if os.path.isdir(path):
      cls, kwargs, state = _read_directory(path)
    else:
      def check_shapes(cls, kwargs, shapes):
        config, _ = model_config_from_kwargs(cls, kwargs, dtype)
        compare_to_network(map_state_shapes(config.family, shapes.items()),
                           _param_shapes(config.to_json()))
      snap = nvidia_pickle.read_network_pickle(path, check_shapes=check_shapes)
      cls, kwargs, state = snap.class_name, dict(snap.init_kwargs), snap.state_dict
      kwargs.setdefault("sigma_data", snap.attributes.get("sigma_data", 0.5))
    config, sigma_data = model_config_from_kwargs(cls, kwargs, dtype)
    param_dtype = np.float64 if dtype == "float64" else np.float32
    params = params_from_state_dict(config.family, state, param_dtype)
  except ConversionError as err:
    if str(err).startswith(path):  # already names the file (e.g. the directory's state_dict.npz)
      raise
    raise ConversionError(f"{path}: {err}") from None
  return NvidiaNetwork(model_config=config, params=params, sigma_data=sigma_data,
                       kimg=_kimg_of(path), source=path, nvidia_kwargs=dict(kwargs),
                       nvidia_class=cls)


@functools.lru_cache(maxsize=8)
def _param_shapes(config_json: str):
  """The params tree (ShapeDtypeStructs) of a model config's network; no compute, one trace per
  architecture."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  shapes = jax.eval_shape(models.init_fn(models.build(config), (
      1, config.img_resolution, config.img_resolution, config.img_channels)),
                          jax.random.PRNGKey(0))
  return shapes["params"]


def check_network(network: NvidiaNetwork):
  """Builds the flax module and checks the params against it one to one (no compute)."""
  compare_to_network({p: tuple(v.shape) for p, v in _flatten(network.params).items()},
                     _param_shapes(network.model_config.to_json()))
  return models.build(network.model_config)


@functools.lru_cache(maxsize=32)
def _network(config_json: str):
  """One `models.network.Network` per architecture, so that the denoisers of all snapshots of one
  architecture share one compiled program (their `Partial`s have equal treedefs)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  return network_lib.build_network(config, int(config.num_classes), config.dtype)


def denoiser_from_network(network: NvidiaNetwork, check: bool = True) -> Callable:
  """D(x, sigma, labels=None) of the package interface (EDM preconditioning, eval mode):
  `models.network.network_denoiser` of the network and its params (a `jax.tree_util.Partial`
  over the params, passed to compiled functions as an argument).

  check: first verify the params against the network one to one (`check_network`).
  """
  if check:
    check_network(network)
  params = jax.tree_util.tree_map(jnp.asarray, network.params)
  return network_lib.network_denoiser(_network(network.model_config.to_json()), params,
                                      network.sigma_data)


def load_denoiser(path: str, dtype: str = "float32") -> Tuple[Callable, NvidiaNetwork]:
  """The denoiser of an NVIDIA EDM/EDM2 network file, and the network in this package's terms.

  path: a snapshot pickle (.pkl: EDM `network-snapshot-*.pkl`, `edm-cifar10-32x32-*.pkl`; EDM2
  `network-snapshot-*-<std>.pkl`, `phema-*.pkl`; read without executing anything) or a directory
  with state_dict.npz + config.json. dtype: compute dtype ("float32"; "float64" needs jax x64).
  Returns (denoise, network): denoise(x (B,H,W,C) in NVIDIA's pixel scale [-1, 1] (EDM2 img512:
  VAE latents), sigma scalar or (B,), labels (B,) ints in [0, num_classes] or None) -> (B,H,W,C);
  labels == num_classes or None is NVIDIA's all-zero class vector.
  """
  network = read_network(path, dtype)
  return denoiser_from_network(network), network


def labels_from_one_hot(class_labels, num_classes: int) -> np.ndarray:
  """Integer labels (B,) from NVIDIA's float class vectors (B, num_classes).

  A one-hot row gives its class, an all-zero row the null label (num_classes). Raises ValueError
  for any other row (soft labels have no integer equivalent), or num_classes not an integer >= 1.
  None -> None.
  """
  check_number(num_classes, "num_classes", low=1, integer=True)
  if class_labels is None:
    return None
  v = np.asarray(class_labels, np.float64)
  if v.ndim != 2 or v.shape[1] != num_classes:
    raise ValueError(f"class_labels must be (B, {num_classes}), got shape {v.shape}")
  zero = np.all(v == 0, axis=1)
  hot = (np.sum(v == 1, axis=1) == 1) & (np.sum(v == 0, axis=1) == num_classes - 1)
  if not np.all(zero | hot):
    rows = np.nonzero(~(zero | hot))[0][:5].tolist()
    raise ValueError(f"class_labels rows {rows} are neither one-hot nor all zero")
  return np.where(zero, num_classes, np.argmax(v, axis=1)).astype(np.int32)


def nvidia_interface(denoise: Callable, num_classes: int) -> Callable:
  """NVIDIA's call convention around a package denoiser: D(x NCHW, sigma, class_labels one-hot).

  num_classes: the network's classes, an integer >= 0 (0: unconditional; ValueError otherwise).
  """
  check_number(num_classes, "num_classes", low=0, integer=True)

  def nvidia_denoise(x, sigma, class_labels=None):
    labels = labels_from_one_hot(class_labels, num_classes) if num_classes else None
    out = denoise(jnp.transpose(jnp.asarray(x), (0, 2, 3, 1)), sigma, labels)
    return jnp.transpose(out, (0, 3, 1, 2))

  return nvidia_denoise


__all__ = ["ConversionError", "NvidiaNetwork", "model_config_from_kwargs", "params_from_state_dict",
           "map_state_shapes", "compare_to_network", "kimg_from_filename", "snapshot_paths", "read_network",
           "check_network", "denoiser_from_network", "load_denoiser", "labels_from_one_hot",
           "nvidia_interface"]
