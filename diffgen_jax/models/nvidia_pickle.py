"""A safe reader for NVIDIA's EDM / EDM2 network pickles: kwargs and state tensors, nothing executed.

NVIDIA's snapshot pickles (NVlabs/edm `network-snapshot-<kimg>.pkl`, NVlabs/edm2
`network-snapshot-<kimg>-<std>.pkl` and `phema-*.pkl`) embed the Python source of the training code
and rebuild each network class by `exec`-ing it (`torch_utils.persistence`). This reader replaces
that step: a restricted unpickler admits only the globals listed in `ALLOWED_GLOBALS`, each mapped
to a harmless stand-in (a record builder, a numpy array builder, a plain dict type), and refuses any
other global with `UnsafePickleError` naming it. The embedded source is kept as text (its SHA-256
is recorded), never compiled or run. Tensors are decoded with numpy alone (torch is not needed):
each storage is torch's legacy `torch.save` blob, read by a second restricted unpickler that admits
only `torch.<Type>Storage` names.

Format reference: tests/fixtures/nvidia_networks/PICKLE_FORMAT.md (sections 2-8).

    snapshot = read_network_pickle("edm2-img64-s-0134217-0.100.pkl")
    snapshot.class_name      # "Precond" (EDM2) or "EDMPrecond" (EDM)
    snapshot.init_kwargs     # the preconditioner's constructor keyword arguments
    snapshot.state_dict      # {torch name: numpy array}, in state_dict() order, stored dtype
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import pickle
from typing import Any, Dict, Optional

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """The file references a global outside the allow-list (it could run code when unpickled)."""


class NetworkPickleError(ValueError):
  """The file is not an NVIDIA network snapshot this reader understands."""


# ----------------------------------------------------------------------------------------------
# Stand-ins for the admitted globals.


@dataclasses.dataclass
class PersistentObject:
  """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built, inert.

  class_name: e.g. "EDMPrecond", "SongUNet", "Precond", "UNet", "MPConv";
  state: the object's __dict__ at pickling time (torch Module fields, `_init_kwargs`, ...);
  module_src_sha256: hash of the embedded module source (provenance; the source is never run).
  """
  class_name: str
  state: dict
  module_src_sha256: str


def _reconstruct_persistent_obj(meta):
  if not isinstance(meta, dict) or meta.get("type") != "class":
    raise NetworkPickleError(f"persistent object metadata of an unknown kind: {type(meta).__name__}")
  if meta.get("version") != 6:
    raise NetworkPickleError(f"persistent object format version {meta.get('version')!r} is not "
                             "the supported version 6")
  src = meta.get("module_src", "")
  digest = hashlib.sha256(src.encode("utf-8") if isinstance(src, str) else bytes(src)).hexdigest()
  return PersistentObject(str(meta.get("class_name")), dict(meta.get("state") or {}), digest)


class _EasyDict(dict):
  """Stand-in for dnnlib.util.EasyDict (a dict subclass; attribute access not needed here)."""


class _ModuleDict:
  """Stand-in for torch.nn.ModuleDict: keeps the Module state that BUILD hands it."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    self.state: dict = {}

  def __setstate__(self, state):
    self.state = dict(state)


_NUMERIC_KINDS = "biufc"


def _numpy_dtype(spec, align=False, copy=False):
  dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
  if dtype.kind not in _NUMERIC_KINDS:
    raise UnsafePickleError(f"numpy dtype {dtype!r} is not a numeric dtype; refused")
  return dtype


def _numpy_scalar(dtype, raw=None):
  if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
    raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused (numeric dtypes only)")
  return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, typecode):
  if cls is not np.ndarray:
    raise UnsafePickleError(f"numpy _reconstruct of {cls!r} refused (plain ndarray only)")
  return np.ndarray(shape, dtype=_numpy_dtype(typecode))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """A numpy copy of the tensor view (size, stride in elements) of a decoded storage."""
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise NetworkPickleError("a tensor's storage did not decode to a 1-D array")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
  if needed > storage.size:
    raise NetworkPickleError(f"tensor of size {size} / stride {stride} at offset {storage_offset} "
                             f"overruns its storage of {storage.size} elements")
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


# torch storage type -> numpy dtype of its elements (legacy `torch.save` payloads).
def _bfloat16():
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)
  return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "FloatStorage": lambda: np.dtype("<f4"), "HalfStorage": lambda: np.dtype("<f2"),
    "DoubleStorage": lambda: np.dtype("<f8"), "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype("<i8"), "IntStorage": lambda: np.dtype("<i4"),
    "ShortStorage": lambda: np.dtype("<i2"), "CharStorage": lambda: np.dtype("i1"),
    "ByteStorage": lambda: np.dtype("u1"), "BoolStorage": lambda: np.dtype("?"),
}

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str


class _StorageUnpickler(pickle.Unpickler):
  """The protocol-2 pickles inside a storage blob: only torch.<Type>Storage globals."""

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickleError(f"refusing global {module}.{name} inside a tensor storage payload "
                            f"(allowed: torch.{{{', '.join(sorted(_STORAGE_DTYPES))}}})")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise NetworkPickleError(f"unexpected persistent id in a storage payload: {pid!r:.200}")
    return pid


def _load_from_bytes(blob):
  """Decodes `torch.storage._load_from_bytes`'s argument (legacy torch.save of one storage)."""
  f = io.BytesIO(bytes(blob))
  if _StorageUnpickler(f).load() != _LEGACY_MAGIC:
    raise NetworkPickleError("tensor storage payload without the legacy torch.save magic number "
                             "(zip-format storages are not supported)")
  protocol = _StorageUnpickler(f).load()
  if protocol != _LEGACY_PROTOCOL:
    raise NetworkPickleError(f"tensor storage payload of protocol {protocol!r}, expected 1001")
  sys_info = _StorageUnpickler(f).load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise NetworkPickleError("big-endian tensor storage payloads are not supported")
  pid = _StorageUnpickler(f).load()
  _StorageUnpickler(f).load()  # the list of storage keys (one)
  dtype = _STORAGE_DTYPES[pid[1].name]()
  count = int(np.frombuffer(f.read(8), "<i8")[0])
  if count != int(pid[4]):
    raise NetworkPickleError(f"storage element count {count} != the declared {pid[4]}")
  raw = f.read(count * dtype.itemsize)
  if len(raw) != count * dtype.itemsize:
    raise NetworkPickleError("truncated tensor storage payload")
  return np.frombuffer(raw, dtype=dtype).copy()


# (module, name) -> stand-in. PICKLE_FORMAT.md section 2's table; numpy under both its 1.x and
# 2.x module names.
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): _ModuleDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    try:
      return ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"refusing global {module}.{name}: not one of the globals an NVIDIA network pickle "
          f"needs ({', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))}); nothing from "
          "the file was executed") from None

  def persistent_load(self, pid):
    raise UnsafePickleError(f"refusing persistent id {pid!r:.100} in the outer pickle stream")


def restricted_load(data: bytes) -> Any:
  """Unpickles `data` with only `ALLOWED_GLOBALS` admitted. Raises UnsafePickleError otherwise."""
  return _RestrictedUnpickler(io.BytesIO(data)).load()


# ----------------------------------------------------------------------------------------------
# From the object tree to a state dict.


def module_state_dict(obj, prefix: str = "") -> "collections.OrderedDict[str, np.ndarray]":
  """torch's `state_dict()` of a reconstructed module tree (PICKLE_FORMAT.md section 7).

  Parameters, then persistent non-None buffers, then children recursively, in insertion order.
  """
  out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
  state = obj.state
  for name, value in (state.get("_parameters") or {}).items():
    if value is not None:
      out[prefix + name] = value
  skip = set(state.get("_non_persistent_buffers_set") or ())
  for name, value in (state.get("_buffers") or {}).items():
    if value is not None and name not in skip:
      out[prefix + name] = value
  for name, child in (state.get("_modules") or {}).items():
    if child is None:
      continue
    if not isinstance(child, (PersistentObject, _ModuleDict)):
      raise NetworkPickleError(f"module {prefix + name!r} is a {type(child).__name__}, not a "
                               "module record")
    out.update(module_state_dict(child, prefix + name + "."))
  return out


@dataclasses.dataclass
class NetworkSnapshot:
  """The network of an NVIDIA snapshot pickle, as data.

  kind: "edm" (EDMPrecond + SongUNet/DhariwalUNet) or "edm2" (Precond + UNet);
  class_name: the preconditioner's class; init_kwargs: its constructor keyword arguments;
  inner_class_name / inner_init_kwargs: the raw network's (fully expanded) ones;
  state_dict: {torch name: numpy array} in torch's state_dict order, in the stored dtype
    (EDM float32; EDM2 float16);
  attributes: the preconditioner's plain attributes (sigma_data, label_dim, ...);
  module_src_sha256: hash of the embedded (never executed) source of the preconditioner's module;
  top_level_keys: the keys of the pickled dict (e.g. ema, loss_fn, augment_pipe, dataset_kwargs).
  """
  kind: str
  class_name: str
  init_kwargs: Dict[str, Any]
  inner_class_name: str
  inner_init_kwargs: Dict[str, Any]
  state_dict: "collections.OrderedDict[str, np.ndarray]"
  attributes: Dict[str, Any]
  module_src_sha256: str
  top_level_keys: tuple
  dataset_kwargs: Optional[Dict[str, Any]] = None


_KINDS = {"EDMPrecond": ("edm", "model"), "Precond": ("edm2", "unet")}


def _plain(value):
  """kwargs as plain Python (numpy scalars -> float/int, tuples -> lists)."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def read_network_pickle(path_or_bytes) -> NetworkSnapshot:
  """Reads an NVIDIA EDM/EDM2 network pickle without executing anything from it.

  path_or_bytes: a file path or the file's bytes. Reads `data["ema"]` (the network the snapshot is
  for). Raises UnsafePickleError (naming the global) if the file references any global outside
  `ALLOWED_GLOBALS`, NetworkPickleError if it is not an EDM/EDM2 snapshot.
  """
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    data = bytes(path_or_bytes)
  else:
    with open(path_or_bytes, "rb") as f:
      data = f.read()
  top = restricted_load(data)
  if not isinstance(top, dict) or "ema" not in top:
    raise NetworkPickleError(f"expected a dict with an 'ema' network (an EDM/EDM2 snapshot), got "
                             f"{type(top).__name__}" + (f" with keys {list(top)}"
                                                        if isinstance(top, dict) else ""))
  ema = top["ema"]
  if not isinstance(ema, PersistentObject) or ema.class_name not in _KINDS:
    name = getattr(ema, "class_name", type(ema).__name__)
    raise NetworkPickleError(f"the 'ema' network is a {name}; supported: {sorted(_KINDS)}")
  kind, inner_attr = _KINDS[ema.class_name]
  inner = (ema.state.get("_modules") or {}).get(inner_attr)
  if not isinstance(inner, PersistentObject):
    raise NetworkPickleError(f"{ema.class_name} has no inner network {inner_attr!r}")
  attributes = {k: _plain(v) for k, v in ema.state.items()
                if not k.startswith("_") and k != "training"
                and isinstance(v, (int, float, str, bool, np.generic, type(None)))}
  dataset_kwargs = top.get("dataset_kwargs")
  return NetworkSnapshot(
      kind=kind, class_name=ema.class_name,
      init_kwargs=_plain(dict(ema.state.get("_init_kwargs") or {})),
      inner_class_name=inner.class_name,
      inner_init_kwargs=_plain(dict(inner.state.get("_init_kwargs") or {})),
      state_dict=module_state_dict(ema), attributes=attributes,
      module_src_sha256=ema.module_src_sha256, top_level_keys=tuple(top),
      dataset_kwargs=_plain(dict(dataset_kwargs)) if isinstance(dataset_kwargs, dict) else None)
