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

Hostile files. Whatever a file declares is checked before it costs memory or time:
- the unpickler is pickle's pure-Python one (its memo is a dict: a LONG_BINPUT index costs one
  entry, where the C unpickler grows an array to twice the index); REDUCE / NEWOBJ call only the
  admitted stand-ins (classes with no arguments; numpy.ndarray never), BUILD sets state only on the
  ModuleDicts and numpy arrays / dtypes this load created, never on a class or a function, so
  nothing a file does outlives its load; dict keys are strings or 64-bit ints (hashing a tree of
  shared tuples takes 2^depth steps); opcodes NVIDIA never writes that run code or allocate a
  declared size (INST, OBJ, EXT*, BYTEARRAY8, out-of-band buffers) are refused;
- a tensor stays a `Tensor` record (storage, offset, size, stride) until it is read: its view is
  proven inside its storage (offset, sizes and strides >= 0, no more elements than the storage,
  last element inside; Python ints) and its bytes are charged to a budget of BUDGET_FACTOR x the
  file's size, with numpy arrays and state-dict names (tensors that view one storage many times
  cannot multiply it); storages are views of the file's bytes (no copy), decoded once per blob;
- the module tree is walked once per module and container (shared or cyclic ones are refused), the
  kwargs up to _MAX_NODES values and _MAX_DEPTH levels.
Every refusal is an UnsafePickleError (a global, call, BUILD or opcode outside the allow-list) or a
NetworkPickleError (malformed, truncated, oversized, or not a network snapshot: an empty file, a
zip-format or legacy torch.save file) whose message starts with the file's path and says what to do.
The pure-Python unpickler costs CPU time per opcode, not per byte: the fixture pickles (1.4 MB EDM,
0.95 MB EDM2) read in 19 ms / 14 ms of CPU time (5 ms / 3 ms with the C unpickler), with less peak
memory (storages are not copied before the tensors are).

    snapshot = read_network_pickle("edm2-img64-s-0134217-0.100.pkl")
    snapshot.class_name      # "Precond" (EDM2) or "EDMPrecond" (EDM)
    snapshot.init_kwargs     # the preconditioner's constructor keyword arguments
    snapshot.state_dict      # {torch name: numpy array}, in state_dict() order, stored dtype
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import math
import os
import pickle
import reprlib
import struct
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
  """The file references a global, a call or a state outside the allow-list (it could run code or
  change the reader's own objects)."""


class NetworkPickleError(ValueError):
  """The file is not an NVIDIA network snapshot this reader understands (or declares more than it
  holds)."""


# Bounds on what a file may make the reader do (module docstring, "Hostile files").
BUDGET_FACTOR = 2  # bytes materialised (tensors, numpy arrays, state-dict names) <= 2 x file size
_MAX_NDIM = 32  # numpy 1.x's limit; NVIDIA's tensors have at most 4 dimensions
_MAX_DEPTH = 64  # nesting of modules and of kwargs (NVIDIA's networks: under 10 levels)
_MAX_NODES = 100_000  # values in one kwargs tree (NVIDIA's: a few hundred)
_INT64 = 2**63


class _Repr(reprlib.Repr):
  """repr for messages, bounded: a hostile value's own repr can be huge (a tree of shared lists)."""

  def repr_int(self, x, level):
    return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"

  def repr_bytes(self, x, level):
    return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

  def repr_instance(self, x, level):
    if type(x) in (float, bool, complex, type(None)):
      return repr(x)
    return f"dtype('{x}')" if _is_numeric(x) else f"<{type(x).__name__}>"


_show = _Repr().repr


class _Budget:
  """Bytes the reader may still materialise for one file (BUDGET_FACTOR x the file's size)."""

  def __init__(self, nbytes: int):
    self.total = self.left = int(nbytes)

  def charge(self, nbytes: int, what: str):
    if nbytes > self.left:
      raise NetworkPickleError(
          f"{what}: {nbytes} more bytes would exceed the reader's budget of {self.total} bytes "
          f"({BUDGET_FACTOR} x the file's size, {self.total - self.left} used): the file declares "
          "more data than it holds (e.g. many tensors viewing one storage)")
    self.left -= nbytes


def _is_int64(value) -> bool:
  return type(value) is int and -_INT64 <= value < _INT64


# ----------------------------------------------------------------------------------------------
# Stand-ins for the admitted globals. Each checks the types of its arguments and allocates nothing
# that the file does not hold.


@dataclasses.dataclass(eq=False, repr=False)
class PersistentObject:
  """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built, inert.

  class_name: e.g. "EDMPrecond", "SongUNet", "Precond", "UNet", "MPConv";
  state: the object's __dict__ at pickling time (torch Module fields, `_init_kwargs`, ...);
  module_src: the embedded module source (str; provenance only, never run).
  """
  class_name: str
  state: dict
  module_src: Any

  @property
  def module_src_sha256(self) -> str:
    src = self.module_src
    return hashlib.sha256(src.encode("utf-8", "surrogatepass") if isinstance(src, str)
                          else bytes(src)).hexdigest()

  def __repr__(self):
    return f"PersistentObject({_show(self.class_name)})"


def _reconstruct_persistent_obj(meta):
  kind = meta.get("type") if type(meta) is dict else None
  if not (type(kind) is str and kind == "class"):
    raise NetworkPickleError(f"persistent object metadata of an unknown kind: {_show(meta)}")
  version = meta.get("version")
  if not (type(version) is int and version == 6):
    raise NetworkPickleError(f"persistent object format version {_show(version)} is not the "
                             "supported version 6")
  name, src, state = meta.get("class_name"), meta.get("module_src", ""), meta.get("state")
  if type(name) is not str or type(src) not in (str, bytes) or type(state) is not dict:
    raise NetworkPickleError(
        f"persistent object of class_name {_show(name)}, module_src {type(src).__name__}, state "
        f"{type(state).__name__}: expected a str, a str (or bytes) and a dict")
  return PersistentObject(name, state, src)


class _EasyDict(dict):
  """Stand-in for dnnlib.util.EasyDict (a dict subclass; attribute access not needed here)."""


class _ModuleDict:
  """Stand-in for torch.nn.ModuleDict: keeps the Module state that BUILD hands it."""

  def __init__(self):
    self.state: dict = {}


_NUMERIC_KINDS = "biufc"


def _is_numeric(dtype) -> bool:
  return (isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS and not dtype.shape
          and dtype.names is None)


def _numpy_dtype(spec, align=False, copy=False):
  """numpy.dtype(spec) of a numeric type name; always a new object (a BUILD may set its state)."""
  del copy
  if type(spec) is not str or len(spec) > 16:
    raise UnsafePickleError(f"numpy dtype {_show(spec)} refused: only numeric type names (e.g. "
                            "'f8') are admitted")
  dtype = np.dtype(spec, align=align is True, copy=True)
  if not _is_numeric(dtype):
    raise UnsafePickleError(f"numpy dtype {dtype!r} is not a numeric dtype; refused")
  return dtype


def _numpy_scalar(dtype, raw=None):
  if not _is_numeric(dtype):
    raise UnsafePickleError(f"numpy scalar of dtype {_show(dtype)} refused (numeric dtypes only)")
  if type(raw) is not bytes or len(raw) != dtype.itemsize:
    raise NetworkPickleError(f"numpy {dtype} scalar with data {_show(raw)}: expected "
                             f"{dtype.itemsize} bytes")
  return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, typecode):
  """An empty array for BUILD to fill (`_RestrictedUnpickler._build`): numpy's pickles call
  `_reconstruct(ndarray, (0,), b'b')` and pass shape, dtype and data with BUILD."""
  if cls is not np.ndarray:
    raise UnsafePickleError(f"numpy _reconstruct of {_show(cls)} refused (plain ndarray only)")
  if not (type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0
          and type(typecode) is bytes and typecode == b"b"):
    raise NetworkPickleError(f"numpy _reconstruct with shape {_show(shape)} and typecode "
                             f"{_show(typecode)}: numpy writes (0,) and b'b' (BUILD brings the "
                             "data)")
  return np.ndarray((0,), np.int8)


@dataclasses.dataclass(frozen=True, eq=False)
class _Storage:
  """A decoded storage: its elements, a read-only 1-D view of the file's bytes (no copy)."""
  data: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Tensor:
  """A tensor of the file, not yet read: a view (shape, stride in elements, storage offset) of a
  storage. `read` proves the view inside its storage before it copies anything."""
  storage: _Storage
  offset: int
  shape: tuple
  stride: tuple

  @property
  def dtype(self) -> np.dtype:
    return self.storage.data.dtype

  def __repr__(self):
    return (f"Tensor(shape={_show(self.shape)}, stride={_show(self.stride)}, "
            f"offset={_show(self.offset)}, dtype={self.dtype})")

  def read(self, name: str, budget: _Budget) -> np.ndarray:
    """A C-contiguous copy of the view, in the stored dtype; its bytes are charged to `budget`.

    Raises NetworkPickleError naming the tensor unless offset, sizes and strides are >= 0 (torch
    never pickles negative strides), the view has no more elements than its storage and its last
    element lies inside the storage (Python ints: nothing overflows).
    """
    count, itemsize = self.storage.data.size, self.dtype.itemsize
    ok = self.offset >= 0 and min(self.shape + self.stride, default=0) >= 0
    numel = math.prod(self.shape) if ok else 0
    if ok and numel:
      last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
      ok = numel <= count and last < count
    if not ok:
      raise NetworkPickleError(
          f"tensor {name}: size {_show(self.shape)}, stride {_show(self.stride)}, storage offset "
          f"{_show(self.offset)} is not a view inside its storage of {count} elements (offset, "
          "sizes and strides must be >= 0, every element inside the storage, and no more "
          "elements than the storage holds)")
    budget.charge(numel * itemsize, f"tensor {name}")
    if not numel:
      return np.zeros(self.shape, self.dtype)
    view = np.lib.stride_tricks.as_strided(
        self.storage.data[self.offset:], shape=self.shape, writeable=False,
        strides=tuple(s * itemsize if n > 1 else 0 for n, s in zip(self.shape, self.stride)))
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """A `Tensor` record of the view; its geometry is proven when it is read (`Tensor.read`)."""
  del requires_grad, backward_hooks, metadata
  if type(storage) is not _Storage:
    raise NetworkPickleError(f"a tensor's storage is a {type(storage).__name__}, not a storage "
                             "of torch.storage._load_from_bytes")
  if not (type(size) is tuple and type(stride) is tuple and len(size) == len(stride) <= _MAX_NDIM
          and all(_is_int64(v) for v in size + stride + (storage_offset,))):
    raise NetworkPickleError(
        f"tensor of size {_show(size)}, stride {_show(stride)}, storage offset "
        f"{_show(storage_offset)}: size and stride must be tuples of one length (at most "
        f"{_MAX_NDIM}) of 64-bit integers, and the offset a 64-bit integer")
  return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  if type(data) is not Tensor:
    raise NetworkPickleError(f"a Parameter's data is a {type(data).__name__}, not a tensor")
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del state
  return _rebuild_parameter(data, requires_grad, backward_hooks)


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


@dataclasses.dataclass(frozen=True)
class _StorageHeader:
  """The persistent id of a storage payload: ('storage', type, key, location, numel, ...)."""
  dtype: np.dtype
  numel: int


def _load_from_bytes(blob):
  """Decodes `torch.storage._load_from_bytes`'s argument (legacy torch.save of one storage) into a
  `_Storage` viewing the blob's data; the element count is checked against the bytes present."""
  if type(blob) is not bytes:
    raise NetworkPickleError(f"a tensor storage payload is a {type(blob).__name__}, not bytes")
  f = io.BytesIO(blob)
  magic = _StorageUnpickler(f).load()
  if not (type(magic) is int and magic == _LEGACY_MAGIC):
    raise NetworkPickleError("tensor storage payload without the legacy torch.save magic number "
                             "(zip-format storages are not supported)")
  protocol = _StorageUnpickler(f).load()
  if not (type(protocol) is int and protocol == _LEGACY_PROTOCOL):
    raise NetworkPickleError(f"tensor storage payload of protocol {_show(protocol)}, expected 1001")
  sys_info = _StorageUnpickler(f).load()
  if type(sys_info) is dict and sys_info.get("little_endian", True) is not True:
    raise NetworkPickleError("big-endian tensor storage payloads are not supported")
  header = _StorageUnpickler(f).load()
  if type(header) is not _StorageHeader:
    raise NetworkPickleError(f"tensor storage payload holds a {type(header).__name__}, not a "
                             "storage")
  _StorageUnpickler(f).load()  # the list of storage keys (one)
  raw_count = f.read(8)
  if len(raw_count) != 8:
    raise NetworkPickleError("truncated tensor storage payload (no element count)")
  (count,) = struct.unpack("<q", raw_count)
  if count != header.numel:
    raise NetworkPickleError(f"storage element count {count} != the declared {header.numel}")
  start, itemsize = f.tell(), header.dtype.itemsize
  if count * itemsize > len(blob) - start:
    raise NetworkPickleError(f"truncated tensor storage payload: {count} elements of {itemsize} "
                             f"bytes declared, {len(blob) - start} bytes present")
  return _Storage(np.frombuffer(blob, header.dtype, count=count, offset=start))


# ----------------------------------------------------------------------------------------------
# The unpicklers.


def _check_keys(keys):
  for key in keys:
    if not (type(key) is str or _is_int64(key)):
      raise NetworkPickleError(f"a dict key or set item of type {type(key).__name__}: NVIDIA's "
                               "pickles use strings (and small integers) only")


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """pickle's pure-Python unpickler with nothing admitted unless a subclass admits it.

  Its memo is a dict: a LONG_BINPUT index costs one entry, where the C unpickler grows its memo
  array to twice the index (tens of GB for one opcode). Globals pass `find_class`; REDUCE / NEWOBJ
  pass `_call`, BUILD passes `_build` (both refuse everything here); dict keys and set items are
  strings or 64-bit ints (hashing a tree of shared tuples takes 2^depth steps); APPEND(S),
  SETITEM(S) and ADDITEMS fill only lists, dicts and sets.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def find_class(self, module, name):
    raise UnsafePickleError(f"refusing global {module}.{name}")

  def persistent_load(self, pid):
    raise UnsafePickleError(f"refusing persistent id {_show(pid)} in the outer pickle stream")

  def _call(self, func, args, kwargs):
    del args, kwargs
    raise UnsafePickleError(f"refusing to call {_show(func)}")

  def _build(self, inst, state):
    del state
    raise UnsafePickleError(f"refusing BUILD on {_show(inst)}")

  def load_reduce(self):
    args = self.stack.pop()
    self.stack[-1] = self._call(self.stack[-1], args, {})

  def load_newobj(self):
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._call(cls, args, {}))

  def load_newobj_ex(self):
    kwargs = self.stack.pop()
    args = self.stack.pop()
    cls = self.stack.pop()
    self.append(self._call(cls, args, kwargs))

  def load_build(self):
    state = self.stack.pop()
    self._build(self.stack[-1], state)

  def load_setitem(self):
    value = self.stack.pop()
    key = self.stack.pop()
    self._setitems(self.stack[-1], [key, value])

  def load_setitems(self):
    items = self.pop_mark()
    self._setitems(self.stack[-1], items)

  def _setitems(self, target, items):
    if not isinstance(target, dict):
      raise NetworkPickleError(f"SETITEM(S) on a {type(target).__name__}, not a dict")
    _check_keys(items[0::2])
    for i in range(0, len(items), 2):
      target[items[i]] = items[i + 1]

  def load_additems(self):
    items = self.pop_mark()
    if type(self.stack[-1]) is not set:
      raise NetworkPickleError(f"ADDITEMS on a {type(self.stack[-1]).__name__}, not a set")
    _check_keys(items)
    self.stack[-1].update(items)

  def load_frozenset(self):
    items = self.pop_mark()
    _check_keys(items)
    self.append(frozenset(items))

  def load_append(self):
    value = self.stack.pop()
    self._list(self.stack[-1]).append(value)

  def load_appends(self):
    items = self.pop_mark()
    self._list(self.stack[-1]).extend(items)

  @staticmethod
  def _list(target):
    if type(target) is not list:
      raise NetworkPickleError(f"APPEND(S) on a {type(target).__name__}, not a list")
    return target



for _name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "SETITEM", "SETITEMS", "ADDITEMS",
              "FROZENSET", "APPEND", "APPENDS"):
  _Unpickler.dispatch[getattr(pickle, _name)[0]] = getattr(_Unpickler, f"load_{_name.lower()}")


def _refused_opcode(name):
  def load(self):
    del self
    raise UnsafePickleError(f"refusing pickle opcode {name}: NVIDIA's network pickles do not use "
                            "it")
  return load


# BYTEARRAY8 allocates its declared length before reading (pickle.py); the others run code or
# reach outside the stream.
for _name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "BYTEARRAY8", "NEXT_BUFFER",
              "READONLY_BUFFER"):
  _Unpickler.dispatch[getattr(pickle, _name)[0]] = _refused_opcode(_name)


class _StorageUnpickler(_Unpickler):
  """The protocol-2 pickles inside a storage blob: only torch.<Type>Storage globals, as data."""

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickleError(f"refusing global {module}.{name} inside a tensor storage payload "
                            f"(allowed: torch.{{{', '.join(sorted(_STORAGE_DTYPES))}}})")

  def persistent_load(self, pid):
    if not (type(pid) is tuple and len(pid) >= 5 and type(pid[0]) is str and pid[0] == "storage"
            and type(pid[1]) is _StorageType and _is_int64(pid[4]) and pid[4] >= 0):
      raise NetworkPickleError(f"unexpected persistent id in a storage payload: {_show(pid)}")
    return _StorageHeader(_STORAGE_DTYPES[pid[1].name](), pid[4])


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
# Classes are created empty (SETITEMS / BUILD fill them); numpy.ndarray is never called (only
# `_reconstruct`'s class argument); the functions are called with positional arguments.
# The numpy subset: what a pickle of plain numpy arrays, dtypes and scalars needs (e.g. EDM2's
# dataset reference statistics, `evaluation.frechet.load_reference_stats`).
NUMPY_GLOBALS = {key: value for key, value in ALLOWED_GLOBALS.items()
                 if key[0] in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")}
_CLASSES = (collections.OrderedDict, _ModuleDict, _EasyDict)
_FUNCTIONS = tuple({id(v): v for v in ALLOWED_GLOBALS.values()
                    if v is not np.ndarray and v not in _CLASSES}.values())
_GLOBAL_NAMES = {id(v): f"{m}.{n}" for (m, n), v in ALLOWED_GLOBALS.items()}


def _what(obj) -> str:
  if id(obj) in _GLOBAL_NAMES:
    return f"the admitted global {_GLOBAL_NAMES[id(obj)]}"
  if id(type(obj)) in _GLOBAL_NAMES:
    return f"an instance of {_GLOBAL_NAMES[id(type(obj))]}"
  return f"a {type(obj).__name__}"


class _RestrictedUnpickler(_Unpickler):
  """The outer stream: `ALLOWED_GLOBALS` only, called as NVIDIA's pickles call them."""

  def __init__(self, file, budget: _Budget, allowed: Optional[Mapping] = None):
    super().__init__(file)
    self._budget = budget
    self._allowed = ALLOWED_GLOBALS if allowed is None else allowed
    self._storages: Dict[int, tuple] = {}  # id(blob) -> (blob, storage): each blob decoded once

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      what = ("an NVIDIA network pickle needs" if self._allowed is ALLOWED_GLOBALS
              else "this kind of file needs")
      raise UnsafePickleError(
          f"refusing global {module}.{name}: not one of the globals {what} "
          f"({', '.join(sorted(f'{m}.{n}' for m, n in self._allowed))}); nothing from "
          "the file was executed") from None

  def _call(self, func, args, kwargs):
    if type(args) is not tuple or not (type(kwargs) is dict and not kwargs):
      raise NetworkPickleError(f"a call of {_what(func)} with arguments {_show(args)} / "
                               f"{_show(kwargs)}: expected a tuple of positional arguments")
    if any(func is cls for cls in _CLASSES):
      if args:
        raise NetworkPickleError(f"{_what(func)} created with arguments {_show(args)}: NVIDIA's "
                                 "pickles create it empty and fill it")
      return func()
    if func is _load_from_bytes and len(args) == 1:
      blob = args[0]
      if id(blob) not in self._storages:
        self._storages[id(blob)] = (blob, _load_from_bytes(blob))
      return self._storages[id(blob)][1]
    if any(func is f for f in _FUNCTIONS):
      return func(*args)
    raise UnsafePickleError(f"refusing to call {_what(func)}: only the stand-ins of the admitted "
                            "globals are called (numpy.ndarray only as _reconstruct's argument)")

  def _build(self, inst, state):
    if type(inst) is _ModuleDict:
      if type(state) is not dict:
        raise NetworkPickleError(f"ModuleDict state is a {type(state).__name__}, not a dict")
      inst.state = state
    elif type(inst) is np.ndarray:
      self._build_array(inst, state)
    elif isinstance(inst, np.dtype):
      # Only the state of a plain numeric dtype: (3, byte order, None, None, None, -1, -1, 0).
      if not (type(state) is tuple and len(state) == 8
              and all(type(v) in (int, str, type(None)) for v in state)
              and state[0] == 3 and state[1] in ("<", ">", "|", "=")
              and state[2:5] == (None, None, None) and state[5:] == (-1, -1, 0)):
        raise NetworkPickleError(f"numpy dtype state {_show(state)}: only the state of a plain "
                                 "numeric dtype is admitted")
      inst.__setstate__(state)
    else:
      raise UnsafePickleError(
          f"refusing BUILD on {_what(inst)}: a pickle may set the state only of the ModuleDicts "
          "and numpy arrays / dtypes it created, never of a class, a function or another object")

  def _build_array(self, inst, state):
    """ndarray.__setstate__((version, shape, dtype, is_fortran, data)) once the data is exactly
    shape x itemsize bytes of a numeric dtype (charged to the budget)."""
    ok = type(state) is tuple and len(state) == 5
    if ok:
      version, shape, dtype, fortran, raw = state
      ok = (type(version) is int and type(shape) is tuple and len(shape) <= _MAX_NDIM
            and all(_is_int64(n) and n >= 0 for n in shape) and _is_numeric(dtype)
            and type(fortran) is bool and type(raw) is bytes
            and len(raw) == math.prod(shape) * dtype.itemsize)
    if not ok:
      raise NetworkPickleError(
          f"numpy array state {_show(state)}: expected (version, shape of integers >= 0, numeric "
          "dtype, is_fortran, exactly size x itemsize bytes of data)")
    self._budget.charge(len(raw), f"numpy array of shape {shape}")
    inst.__setstate__(state)


def restricted_load(data: bytes, budget: Optional[_Budget] = None,
                    allowed: Optional[Mapping] = None) -> Any:
  """Unpickles `data` with only `ALLOWED_GLOBALS` admitted; tensors come back as `Tensor` records
  (not read). budget: the bytes numpy arrays may take (default BUDGET_FACTOR x len(data)).
  allowed: a subset of ALLOWED_GLOBALS to admit instead (e.g. NUMPY_GLOBALS).
  Raises UnsafePickleError (a global, call or BUILD outside the allow-list), NetworkPickleError,
  or pickle's own errors for a malformed stream (`read_network_pickle` names the file in all)."""
  budget = _Budget(BUDGET_FACTOR * len(data)) if budget is None else budget
  if allowed is not None and any(ALLOWED_GLOBALS.get(k) is not v for k, v in allowed.items()):
    raise ValueError("allowed must be a subset of ALLOWED_GLOBALS (the stand-ins of this module)")
  return _RestrictedUnpickler(io.BytesIO(data), budget, allowed).load()


# ----------------------------------------------------------------------------------------------
# From the object tree to a state dict.


def _container(state: dict, key: str, module: str, seen: set, types=(dict,)):
  """state[key] (None: empty), walked once: a container shared by two modules, or reached again
  through itself, is refused (torch gives each module its own)."""
  value = state.get(key)
  if value is None:
    return {}
  if not isinstance(value, types):
    raise NetworkPickleError(f"module {module!r}: {key} is a {type(value).__name__}, not a "
                             f"{types[0].__name__}")
  if value and id(value) in seen:
    raise NetworkPickleError(f"module {module!r}: its {key} is shared with another module or "
                             "contains itself (NVIDIA's networks share no containers)")
  seen.add(id(value))
  return value


def module_state_dict(obj, budget: _Budget) -> "collections.OrderedDict[str, Tensor]":
  """torch's `state_dict()` of a reconstructed module tree (PICKLE_FORMAT.md section 7), unread.

  Parameters, then persistent non-None buffers, then children recursively, in insertion order.
  Each module and container is walked once (a shared or cyclic one is refused), at most
  _MAX_DEPTH levels deep; the names' characters are charged to `budget`. Raises
  NetworkPickleError naming the module.
  """
  out: "collections.OrderedDict[str, Tensor]" = collections.OrderedDict()
  seen = {id(obj)}

  def add(name, value):
    if not isinstance(value, Tensor):
      raise NetworkPickleError(f"state tensor {name!r} is a {type(value).__name__}, not a tensor")
    budget.charge(len(name), f"state tensor name {name[:200]!r}")
    out[name] = value

  def visit(module, prefix, depth):
    where = prefix[:-1] or "<root>"
    if depth > _MAX_DEPTH:
      raise NetworkPickleError(f"module {where[:200]!r} is nested more than {_MAX_DEPTH} deep")
    state = module.state
    params = _container(state, "_parameters", where, seen)
    buffers = _container(state, "_buffers", where, seen)
    skip = _container(state, "_non_persistent_buffers_set", where, seen, (set, frozenset))
    children = _container(state, "_modules", where, seen)
    for name, value in list(params.items()) + [(k, v) for k, v in buffers.items() if k not in skip]:
      if value is not None:
        add(prefix + _key(name, where), value)
    for name, child in children.items():
      if child is None:
        continue
      path = prefix + _key(name, where)
      if type(child) not in (PersistentObject, _ModuleDict):
        raise NetworkPickleError(f"module {path[:200]!r} is a {type(child).__name__}, not a "
                                 "module record")
      if id(child) in seen:
        raise NetworkPickleError(f"module {path[:200]!r} appears twice in the module tree (shared "
                                 "or cyclic); NVIDIA's networks share no modules")
      seen.add(id(child))
      visit(child, path + ".", depth + 1)

  visit(obj, "", 0)
  return out


def _key(name, where) -> str:
  if type(name) is not str:
    raise NetworkPickleError(f"module {where[:200]!r}: a name of type {type(name).__name__}")
  return name


def read_tensors(tensors: Mapping[str, Tensor],
                 budget: _Budget) -> "collections.OrderedDict[str, np.ndarray]":
  """{name: array} of `module_state_dict`'s records (`Tensor.read`; one record under two names is
  read once)."""
  arrays: Dict[int, np.ndarray] = {}
  out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
  for name, tensor in tensors.items():
    if id(tensor) not in arrays:
      arrays[id(tensor)] = tensor.read(repr(name[:200]), budget)
    out[name] = arrays[id(tensor)]
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


def _plain(value, what: str, _count=None, _depth=0):
  """kwargs as plain Python (numpy scalars -> float/int, tuples -> lists).

  At most _MAX_NODES values and _MAX_DEPTH levels: a tree of shared lists would otherwise be walked
  2^depth times, a list that contains itself forever. Raises NetworkPickleError naming `what`.
  """
  count = [0] if _count is None else _count
  count[0] += 1
  if count[0] > _MAX_NODES or _depth > _MAX_DEPTH:
    raise NetworkPickleError(f"{what} holds more than {_MAX_NODES} values or nests more than "
                             f"{_MAX_DEPTH} levels (shared or cyclic containers?); NVIDIA's "
                             "kwargs are small trees")
  if isinstance(value, dict):
    for k in value:
      if type(k) is not str:
        raise NetworkPickleError(f"{what}: a key of type {type(k).__name__}, not a str")
    return {k: _plain(v, what, count, _depth + 1) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v, what, count, _depth + 1) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _dict_field(state: dict, key: str, what: str) -> dict:
  value = state.get(key)
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise NetworkPickleError(f"{what} {key} is a {type(value).__name__}, not a dict")
  return value


@contextlib.contextmanager
def _naming(source: str):
  """Every error of reading `source` as NetworkPickleError / UnsafePickleError naming it."""
  try:
    yield
  except UnsafePickleError as err:
    raise UnsafePickleError(f"{source}: {err}") from None
  except NetworkPickleError as err:
    raise NetworkPickleError(f"{source}: {err}") from None
  except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, LookupError,
          AttributeError, ArithmeticError) as err:
    raise NetworkPickleError(
        f"{source}: the pickle stream is truncated or damaged ({type(err).__name__}: "
        f"{str(err)[:200]}); download the file again (an NVIDIA snapshot is one complete pickle "
        "of the snapshot dict)") from err


def _check_header(data: bytes):
  if not data:
    raise NetworkPickleError("the file is empty (0 bytes), not an NVIDIA network pickle; download "
                             "it again")
  if data[:2] == b"PK":
    raise NetworkPickleError(
        "this is a zip archive (torch.save writes zip files since torch 1.6), e.g. a torch.save "
        "checkpoint, not an EDM/EDM2 network snapshot pickle: give the network-snapshot-*.pkl (or "
        "phema-*.pkl) that NVIDIA's training code writes with pickle.dump, or a directory with "
        "state_dict.npz + config.json")
  if len(data) < 2 or data[0] != pickle.PROTO[0] or not 2 <= data[1] <= pickle.HIGHEST_PROTOCOL:
    raise NetworkPickleError(
        f"the file does not start with a pickle header (PROTO 2-{pickle.HIGHEST_PROTOCOL}; its "
        f"first bytes are {data[:8]!r}): not an NVIDIA network pickle (a damaged download or "
        "another kind of file)")


def _load(data: bytes, budget: _Budget):
  """(top-level dict, ema record, kind, inner record) of a snapshot pickle's bytes."""
  _check_header(data)
  top = restricted_load(data, budget)
  if type(top) is int and top == _LEGACY_MAGIC:
    raise NetworkPickleError(
        "this is a legacy (non-zip) torch.save file, e.g. a checkpoint, not an EDM/EDM2 network "
        "snapshot pickle: give the network-snapshot-*.pkl (or phema-*.pkl) that NVIDIA's training "
        "code writes with pickle.dump")
  if not isinstance(top, dict) or "ema" not in top:
    raise NetworkPickleError(f"expected a dict with an 'ema' network (an EDM/EDM2 snapshot), got "
                             f"{type(top).__name__}" + (f" with keys {_show(list(top)[:20])}"
                                                        if isinstance(top, dict) else ""))
  ema = top["ema"]
  if not isinstance(ema, PersistentObject) or ema.class_name not in _KINDS:
    name = ema.class_name if isinstance(ema, PersistentObject) else type(ema).__name__
    raise NetworkPickleError(f"the 'ema' network is a {_show(name)}; supported: {sorted(_KINDS)}")
  kind, inner_attr = _KINDS[ema.class_name]
  inner = _dict_field(ema.state, "_modules", ema.class_name).get(inner_attr)
  if not isinstance(inner, PersistentObject):
    raise NetworkPickleError(f"{ema.class_name} has no inner network {inner_attr!r}")
  return top, ema, kind, inner


def read_network_pickle(path_or_bytes, check_shapes: Optional[Callable] = None) -> NetworkSnapshot:
  """Reads an NVIDIA EDM/EDM2 network pickle without executing anything from it.

  path_or_bytes: a file path or the file's bytes. Reads `data["ema"]` (the network the snapshot is
  for). check_shapes: called as check_shapes(class_name, init_kwargs, {torch name: shape}) before
  any tensor is read (it raises to refuse the network). Raises UnsafePickleError (naming the
  global, call or BUILD) if the file reaches outside `ALLOWED_GLOBALS`, NetworkPickleError if it
  is not an EDM/EDM2 snapshot, is damaged, or declares more data than it holds; both messages
  start with the file's path. Memory: the file's bytes, and at most BUDGET_FACTOR x their size
  materialised.
  """
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    data, source = bytes(path_or_bytes), "the network pickle (given as bytes)"
  else:
    source = os.fspath(path_or_bytes)
    with open(source, "rb") as f:
      data = f.read()
  budget = _Budget(BUDGET_FACTOR * len(data))
  with _naming(source):
    top, ema, kind, inner = _load(data, budget)
    tensors = module_state_dict(ema, budget)
    init_kwargs = _plain(_dict_field(ema.state, "_init_kwargs", ema.class_name),
                         f"{ema.class_name} _init_kwargs")
    inner_kwargs = _plain(_dict_field(inner.state, "_init_kwargs", inner.class_name),
                          f"{inner.class_name} _init_kwargs")
    attributes = {k: _plain(v, k) for k, v in ema.state.items()
                  if type(k) is str and not k.startswith("_") and k != "training"
                  and isinstance(v, (int, float, str, bool, np.generic, type(None)))}
    dataset_kwargs = top.get("dataset_kwargs")
    if isinstance(dataset_kwargs, dict):
      dataset_kwargs = _plain(dataset_kwargs, "dataset_kwargs")
    else:
      dataset_kwargs = None
    module_src_sha256 = ema.module_src_sha256
  if check_shapes is not None:
    check_shapes(ema.class_name, init_kwargs, {k: t.shape for k, t in tensors.items()})
  with _naming(source):
    state_dict = read_tensors(tensors, budget)
  return NetworkSnapshot(
      kind=kind, class_name=ema.class_name, init_kwargs=init_kwargs,
      inner_class_name=inner.class_name, inner_init_kwargs=inner_kwargs, state_dict=state_dict,
      attributes=attributes, module_src_sha256=module_src_sha256, top_level_keys=tuple(top),
      dataset_kwargs=dataset_kwargs)
