"""The restricted reader of NVIDIA's network pickles: exact tensors, nothing executed, refusals."""

import os
import pickle
import re
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

import hostile
from diffgen_jax.models import nvidia_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "nvidia_networks")
EDM_PKL = os.path.join(FIXTURES, "pickles", "edm-uncond-network-snapshot-000000.stripped.pkl")
EDM2_PKL = os.path.join(FIXTURES, "pickles",
                        "edm2-cond-network-snapshot-0001048-0.100.stripped.pkl")


@pytest.mark.parametrize("path,variant,dtype", [(EDM_PKL, "edm-uncond", np.float32),
                                                (EDM2_PKL, "edm2-cond", np.float16)])
def test_stripped_pickles_give_the_fixture_tensors_bit_for_bit(path, variant, dtype):
  snap = nvidia_pickle.read_network_pickle(path)
  ref = np.load(os.path.join(FIXTURES, variant, "state_dict.npz"))
  assert list(snap.state_dict) == list(ref.keys())  # same names, same (state_dict) order
  for name in ref:
    got = snap.state_dict[name]
    assert got.dtype == dtype, name
    # The pickles store the float64 fixture values cast to float32 (then float16 for EDM2).
    np.testing.assert_array_equal(got, ref[name].astype(np.float32).astype(dtype), err_msg=name)


def test_snapshot_kwargs_and_kind():
  edm = nvidia_pickle.read_network_pickle(EDM_PKL)
  assert (edm.kind, edm.class_name, edm.inner_class_name) == ("edm", "EDMPrecond", "SongUNet")
  assert edm.init_kwargs["augment_dim"] == 9 and edm.init_kwargs["label_dim"] == 0
  assert edm.attributes["sigma_data"] == 0.5 and edm.attributes["sigma_max"] == float("inf")
  assert edm.top_level_keys == ("ema", "loss_fn", "augment_pipe", "dataset_kwargs")
  edm2 = nvidia_pickle.read_network_pickle(EDM2_PKL)
  assert (edm2.kind, edm2.class_name, edm2.inner_class_name) == ("edm2", "Precond", "UNet")
  assert edm2.init_kwargs["channels_per_head"] == 16 and edm2.init_kwargs["label_dim"] == 10
  assert len(edm2.module_src_sha256) == 64


class _Evil:
  """Unpickling this would run `touch <path>` (a REDUCE of os.system)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.system, (f"touch {self.path}",))


def test_a_pickle_that_would_execute_code_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / "executed"
  data = pickle.dumps({"ema": _Evil(marker)})
  with pytest.raises(nvidia_pickle.UnsafePickleError, match=r"(posix|os)\.system"):
    nvidia_pickle.read_network_pickle(data)
  assert not marker.exists()
  # The same with builtins.eval and getattr-based gadgets.
  for obj, name in [((eval, ("1",)), "builtins.eval"), ((getattr, (0, "real")), "builtins.getattr")]:
    class Gadget:
      def __reduce__(self, obj=obj):
        return obj
    with pytest.raises(nvidia_pickle.UnsafePickleError, match=name):
      nvidia_pickle.read_network_pickle(pickle.dumps(Gadget()))


def test_the_embedded_module_source_is_never_executed(tmp_path, monkeypatch):
  """A persistent object whose module source would write a file: read as text, never run."""
  marker = tmp_path / "src_ran"
  fake = types.ModuleType("torch_utils.persistence")

  def _reconstruct_persistent_obj(meta):  # the writer-side name NVIDIA's pickles reference
    return meta

  fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

  class Persistent:
    def __reduce__(self):
      src = f"open({str(marker)!r}, 'w').write('ran')\n"
      meta = dict(type="class", version=6, module_src=src, class_name="EDMPrecond",
                  state=dict(_modules={}, _parameters={}, _buffers={}))
      return (_reconstruct_persistent_obj, (meta,))

  data = pickle.dumps({"ema": Persistent()})
  with pytest.raises(nvidia_pickle.NetworkPickleError, match="inner network"):
    nvidia_pickle.read_network_pickle(data)
  assert not marker.exists()


def test_a_bad_global_inside_a_storage_payload_is_refused():
  """The inner (legacy torch.save) payload has its own allow-list: torch.<Type>Storage only."""
  inner = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2) + \
      pickle.dumps({}, protocol=2) + pickle.dumps(_Evil("/nonexistent/x"), protocol=2)
  with pytest.raises(nvidia_pickle.UnsafePickleError, match="storage payload"):
    nvidia_pickle._load_from_bytes(inner)  # pylint: disable=protected-access


def test_non_numeric_numpy_dtypes_are_refused():
  with pytest.raises(nvidia_pickle.UnsafePickleError, match="numeric"):
    nvidia_pickle.restricted_load(pickle.dumps(np.array([None, 1], dtype=object)))


def test_a_file_that_is_not_a_snapshot_names_what_it_found():
  with pytest.raises(nvidia_pickle.NetworkPickleError, match="keys"):
    nvidia_pickle.read_network_pickle(pickle.dumps({"net": 1}))


# ----------------------------------------------------------------------------------------------
# Hostile files (issue 22), each built opcode by opcode. Readers that could allocate or crash run in
# a child process under a memory cap (tests/hostile.py); the child loads nvidia_pickle.py alone
# (numpy, no jax), so each case starts in a fraction of a second.

_IMPORT = ("import importlib.util, sys\n"
           f"_spec = importlib.util.spec_from_file_location('nvidia_pickle', "
           f"{nvidia_pickle.__file__!r})\n"
           "nvidia_pickle = importlib.util.module_from_spec(_spec)\n"
           "sys.modules['nvidia_pickle'] = nvidia_pickle\n"
           "_spec.loader.exec_module(nvidia_pickle)")
_MAGIC = 0x1950a86a20f9469cfc6c


class _Call:
  """A REDUCE of the global module.name on `args`, in a hand-built pickle."""

  def __init__(self, module, name, *args):
    self.module, self.name, self.args = module, name, args


class _Raw(bytes):
  """Opcodes written as they are."""


def _global(module, name):
  return _enc(module) + _enc(name) + pickle.STACK_GLOBAL


def _enc(obj) -> bytes:
  if isinstance(obj, _Raw):
    return bytes(obj)
  if isinstance(obj, _Call):
    return _global(obj.module, obj.name) + _enc(obj.args) + pickle.REDUCE
  if isinstance(obj, dict):
    items = b"".join(_enc(k) + _enc(v) for k, v in obj.items())
    return pickle.EMPTY_DICT + (pickle.MARK + items + pickle.SETITEMS if obj else b"")
  if isinstance(obj, list):
    return pickle.EMPTY_LIST + (pickle.MARK + b"".join(map(_enc, obj)) + pickle.APPENDS
                                if obj else b"")
  if isinstance(obj, tuple):
    return pickle.MARK + b"".join(map(_enc, obj)) + pickle.TUPLE
  return pickle.dumps(obj, 3)[2:-1]  # str, bytes, int, float, bool, None (its BINPUT 0 is unused)


def _pickle(obj) -> bytes:
  return pickle.PROTO + b"\x04" + _enc(obj) + pickle.STOP


def _put(obj, index) -> _Raw:  # memo indices from 1000 on (_enc's own BINPUTs write index 0)
  return _Raw(_enc(obj) + pickle.LONG_BINPUT + struct.pack("<I", index))


def _get(index) -> _Raw:
  return _Raw(pickle.LONG_BINGET + struct.pack("<I", index))


def _blob(values, numel=None, count=None) -> bytes:
  """torch's legacy torch.save of a FloatStorage (PICKLE_FORMAT.md section 5)."""
  values = np.asarray(values, "<f4").ravel()
  numel = values.size if numel is None else numel
  pid = (b"\x80\x02" + pickle.MARK + _enc("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n"
         + _enc("0") + _enc("cpu") + _enc(numel) + pickle.NONE + pickle.TUPLE + pickle.BINPERSID
         + pickle.STOP)
  return (pickle.dumps(_MAGIC, 2) + pickle.dumps(1001, 2)
          + pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2) + pid
          + pickle.dumps(["0"], 2) + struct.pack("<q", numel if count is None else count)
          + values.tobytes())


def _storage(values, **kwargs):
  return _Call("torch.storage", "_load_from_bytes", _blob(values, **kwargs))


def _tensor(storage, size, stride, offset=0):
  return _Call("torch._utils", "_rebuild_tensor_v2", storage, offset, size, stride, False,
               _Call("collections", "OrderedDict"))


def _module(class_name, **state):
  return _Call("torch_utils.persistence", "_reconstruct_persistent_obj",
               dict(type="class", version=6, module_src="", class_name=class_name, state=state))


def _snapshot(params=None, init_kwargs=None, model=None) -> bytes:
  """An EDM-shaped snapshot: an EDMPrecond whose `model` (a SongUNet) holds `params`."""
  model = _module("SongUNet", _parameters=params or {}) if model is None else model
  return _pickle({"ema": _module("EDMPrecond", _modules={"model": model},
                                 _init_kwargs=init_kwargs or {})})


def _capped(tmp_path, data, limit_mb=200, timeout=60.0):
  path = tmp_path / "hostile.pkl"
  path.write_bytes(data)
  result = hostile.run_capped(_IMPORT, "nvidia_pickle.read_network_pickle(PATH)", path=path,
                              limit_mb=limit_mb, timeout=timeout)
  return result, str(path)


def _assert_refused(result, path, error, *phrases):
  assert not result.crashed, result  # no signal (e.g. SIGSEGV), no kill
  assert result.error == error, result  # not MemoryError, not a bare numpy / pickle error
  assert result.message.startswith(path), result
  for phrase in phrases:
    assert phrase in result.message, (phrase, result)


def test_hand_built_snapshots_read_their_views_exactly():
  """The builder above writes what the reader reads (so the refusals below are the reader's)."""
  values = np.arange(12, dtype=np.float32)
  snap = nvidia_pickle.read_network_pickle(_snapshot({
      "c": _tensor(_storage(values), (3, 4), (4, 1)),
      "t": _tensor(_storage(values), (4, 3), (1, 4)),
      "o": _tensor(_storage(values), (2, 2), (4, 1), offset=5),
      "e": _tensor(_storage(values[:0]), (0, 3), (3, 1)),
      "s": _tensor(_storage(values[:1]), (), ())}, init_kwargs={"channel_mult": (1, 2)}))
  sd = snap.state_dict
  np.testing.assert_array_equal(sd["model.c"], values.reshape(3, 4))
  np.testing.assert_array_equal(sd["model.t"], values.reshape(3, 4).T)
  np.testing.assert_array_equal(sd["model.o"], [[5, 6], [9, 10]])
  assert sd["model.e"].shape == (0, 3) and sd["model.s"].shape == () and sd["model.s"] == 0
  assert snap.init_kwargs == {"channel_mult": [1, 2]}


# Kind 1: views outside their storage (16 elements). The old check bounded the extent from above
# only: a stride of -1 copied 61 of 64 values from before the buffer, far strides crashed.
_OUTSIDE = {
    "negative stride": ((64,), (-1,), 0),
    "far negative stride": ((2,), (-2**40,), 0),
    "strides that cancel": ((2, 2), (2**62, -2**62), 0),
    "negative offset": ((4,), (1,), -8),
    "negative size": ((-1,), (1,), 0),
    "last element past the end": ((4,), (6,), 0),
    "offset past the end": ((1,), (1,), 16),
    "more elements than the storage": ((32,), (0,), 0),
}


@pytest.mark.parametrize("case", sorted(_OUTSIDE))
def test_a_view_outside_its_storage_is_refused_naming_the_tensor(tmp_path, case):
  size, stride, offset = _OUTSIDE[case]
  data = _snapshot({"ok": _tensor(_storage(np.ones(4)), (4,), (1,)),
                    "w": _tensor(_storage(np.arange(16)), size, stride, offset)})
  result, path = _capped(tmp_path, data)
  _assert_refused(result, path, "NetworkPickleError", "tensor 'model.w'",
                  f"size {size}, stride {stride}, storage offset {offset}",
                  "not a view inside its storage of 16 elements")


_MALFORMED_VIEWS = {
    "lengths differ": ((4, 1000), (1,), 0),
    "float offset": ((4,), (1,), 0.5),
    "size as a list": ([4], (1,), 0),
    "size as a string": ("abcd", (1, 1, 1, 1), 0),
    "100 dimensions": ((1,) * 100, (1,) * 100, 0),
    "a size beyond int64": ((2**64,), (1,), 0),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED_VIEWS))
def test_tensor_arguments_of_the_wrong_types_are_refused(tmp_path, case):
  size, stride, offset = _MALFORMED_VIEWS[case]
  result, path = _capped(tmp_path, _snapshot({"w": _tensor(_storage(np.ones(16)), size, stride,
                                                           offset)}))
  _assert_refused(result, path, "NetworkPickleError",
                  "size and stride must be tuples of one length (at most 32)")


# Kind 2: declared sizes. Each case would allocate the declared size (or grow without bound) in the
# old reader: 1 GiB from a 2 KB file, 8 GiB from numpy.ndarray, tens of GB for one memo index.
def _dag(levels, leaf, make):
  """A tree of `levels` levels whose two branches are one shared object (2^levels paths)."""
  out = _put(leaf, 1000) + pickle.POP
  for i in range(1, levels + 1):
    out += _put(make(_get(1000 + i - 1)), 1000 + i) + pickle.POP
  return _Raw(out + _get(1000 + levels))


def _cycle():
  """A list that contains itself."""
  return _Raw(pickle.EMPTY_LIST + pickle.LONG_BINPUT + struct.pack("<I", 1000) + _get(1000)
              + pickle.APPEND)


def _module_dict_containing_itself():
  return _Raw(_global("torch.nn.modules.container", "ModuleDict") + pickle.EMPTY_TUPLE
              + pickle.NEWOBJ + pickle.LONG_BINPUT + struct.pack("<I", 1000)
              + _enc({"_modules": {"self": _get(1000)}}) + pickle.BUILD)


_one = _tensor(_storage(np.ones(1)), (1,), (1,))
_MiB = 2**18  # float32 elements
_DECLARED = {
    "stride 0 over a 1-element storage": (
        _snapshot({"w": _tensor(_storage(np.ones(1)), (2**28,), (0,))}),
        "NetworkPickleError", ["tensor 'model.w'", "no more elements than the storage holds"]),
    "300 tensors viewing one 1 MiB storage": (
        _snapshot({"a": _tensor(_put(_storage(np.ones(_MiB)), 2000), (_MiB,), (1,)),
                   **{f"p{i}": _tensor(_get(2000), (_MiB,), (1,)) for i in range(300)}}),
        "NetworkPickleError", ["tensor 'model.p1'", "reader's budget", "2 x the file's size"]),
    "storage count beyond its bytes": (
        _snapshot({"w": _tensor(_storage(np.ones(4), numel=2**40), (4,), (1,))}),
        "NetworkPickleError", ["truncated tensor storage payload", "1099511627776 elements"]),
    "storage count != its declared numel": (
        _snapshot({"w": _tensor(_storage(np.ones(4), count=-1), (4,), (1,))}),
        "NetworkPickleError", ["storage element count -1 != the declared 4"]),
    "BYTEARRAY8 of 2^40 bytes": (
        _snapshot({"w": _one}, init_kwargs={"x": _Raw(pickle.BYTEARRAY8
                                                      + struct.pack("<Q", 2**40))}),
        "UnsafePickleError", ["refusing pickle opcode BYTEARRAY8"]),
    "numpy.ndarray called": (
        _snapshot({"w": _one}, init_kwargs={"x": _Call("numpy", "ndarray", (2**30,), "f8")}),
        "UnsafePickleError", ["refusing to call the admitted global numpy.ndarray"]),
    "numpy _reconstruct of 1 GiB": (
        _snapshot({"w": _one}, init_kwargs={"x": _Call("numpy._core.multiarray", "_reconstruct",
                                                        _Raw(_global("numpy", "ndarray")),
                                                        (2**30,), b"b")}),
        "NetworkPickleError", ["numpy _reconstruct with shape (1073741824,)"]),
    "numpy array state larger than its data": (
        _snapshot({"w": _one}, init_kwargs={"x": _Raw(_enc(_Call(
            "numpy.core.multiarray", "_reconstruct", _Raw(_global("numpy", "ndarray")), (0,),
            b"b")) + _enc((1, (2**30,), _Call("numpy", "dtype", "f8", False, True), False,
                           b"\0" * 8)) + pickle.BUILD)}),
        "NetworkPickleError", ["numpy array state", "exactly size x itemsize bytes"]),
    "numpy scalar short of data": (
        _snapshot({"w": _one}, init_kwargs={"x": _Call("numpy.core.multiarray", "scalar",
                                                        _Call("numpy", "dtype", "f8", False, True),
                                                        b"\0")}),
        "NetworkPickleError", ["numpy float64 scalar", "expected 8 bytes"]),
    "a 2^40 tree of shared lists in the kwargs": (
        _snapshot({"w": _one}, init_kwargs={"channel_mult": _dag(40, [1], lambda x: [x, x])}),
        "NetworkPickleError", ["EDMPrecond _init_kwargs holds more than 100000 values"]),
    "a list that contains itself in the kwargs": (
        _snapshot({"w": _one}, init_kwargs={"channel_mult": _cycle()}),
        "NetworkPickleError", ["nests more than 64 levels"]),
    "a 2^40 tree of shared tuples as a dict key": (
        _snapshot({"w": _one}, init_kwargs={"k": _Raw(pickle.EMPTY_DICT + _dag(
            40, (), lambda x: (x, x)) + _enc(1) + pickle.SETITEM)}),
        "NetworkPickleError", ["a dict key or set item of type tuple"]),
    "a 2^40 tree of shared modules": (
        _snapshot(model=_dag(40, _module("Leaf", _parameters={"w": _one}),
                             lambda m: _module("Node", _modules={"a": m, "b": m}))),
        "NetworkPickleError", ["module 'model.a.a.a", ".b' appears twice in the module tree"]),
    "a ModuleDict that contains itself": (
        _snapshot(model=_module("SongUNet", _modules={"enc": _module_dict_containing_itself()})),
        "NetworkPickleError", ["module 'model.enc.self' appears twice in the module tree"]),
    "two modules sharing one parameter dict": (
        _snapshot(model=_module("SongUNet", _modules={
            "a": _module("Conv2d", _parameters=_put({"w": _one}, 1000)),
            "b": _module("Conv2d", _parameters=_get(1000))})),
        "NetworkPickleError", ["module 'model.b': its _parameters is shared"]),
}


@pytest.mark.parametrize("case", sorted(_DECLARED))
def test_declared_sizes_are_bounded_before_they_allocate(tmp_path, case):
  data, error, phrases = _DECLARED[case]
  assert len(data) < 1_100_000  # the largest holds one 1 MiB storage
  result, path = _capped(tmp_path, data)
  _assert_refused(result, path, error, *phrases)


def test_a_huge_memo_index_costs_one_entry(tmp_path):
  """LONG_BINPUT 2^32 - 16: the C unpickler grows its memo array to twice the index (64 GiB)."""
  data = _snapshot({"w": _tensor(_Raw(_enc(_storage(np.arange(4))) + pickle.LONG_BINPUT
                                      + struct.pack("<I", 2**32 - 16)), (4,), (1,))})
  result, _ = _capped(tmp_path, data)
  assert not result.crashed and result.error is None, result
  np.testing.assert_array_equal(nvidia_pickle.read_network_pickle(data).state_dict["model.w"],
                                np.arange(4))


def test_a_legitimate_file_stays_within_the_budget():
  """Tensors that share one storage once each (torch's tied weights) read within 2x the file."""
  data = _snapshot({"a": _tensor(_put(_storage(np.arange(2**16)), 2000), (2**16,), (1,)),
                    "b": _tensor(_get(2000), (2**8, 2**8), (1, 2**8))})
  sd = nvidia_pickle.read_network_pickle(data).state_dict
  np.testing.assert_array_equal(sd["model.b"], np.arange(2**16).reshape(2**8, 2**8).T)
  assert sum(v.nbytes for v in sd.values()) <= nvidia_pickle.BUDGET_FACTOR * len(data)


# Kind 3: nothing a file does outlives its load.
def _stand_in_state():
  """Everything a BUILD could change on the admitted globals (attributes, defaults)."""
  out = {}
  for key, value in nvidia_pickle.ALLOWED_GLOBALS.items():
    out[key] = (dict(vars(value)), getattr(value, "__defaults__", None),
                getattr(value, "__kwdefaults__", None))
  return out


_SLOTS = (None, {"__setitem__": None, "__init__": None, "__defaults__": (True, None, None),
                 "__kwdefaults__": {"x": 1}})
_BUILDS = {
    "dnnlib.util.EasyDict": _Raw(_global("dnnlib.util", "EasyDict") + _enc(_SLOTS) + pickle.BUILD),
    "torch._utils._rebuild_tensor_v2": _Raw(_global("torch._utils", "_rebuild_tensor_v2")
                                            + _enc(_SLOTS) + pickle.BUILD),
    "torch._utils._rebuild_parameter": _Raw(_global("torch._utils", "_rebuild_parameter")
                                            + _enc({"__defaults__": (True,)}) + pickle.BUILD),
    "torch.nn.modules.container.ModuleDict": _Raw(
        _global("torch.nn.modules.container", "ModuleDict") + _enc(_SLOTS) + pickle.BUILD),
    "collections.OrderedDict": _Raw(_global("collections", "OrderedDict") + _enc(_SLOTS)
                                    + pickle.BUILD),
    "numpy.ndarray": _Raw(_global("numpy", "ndarray") + _enc(_SLOTS) + pickle.BUILD),
    "numpy.dtype": _Raw(_global("numpy", "dtype") + _enc(_SLOTS) + pickle.BUILD),
    "an instance of dnnlib.util.EasyDict": _Raw(_global("dnnlib.util", "EasyDict")
                                                + pickle.EMPTY_TUPLE + pickle.NEWOBJ
                                                + _enc(_SLOTS) + pickle.BUILD),
    "a PersistentObject": _Raw(_enc(_module("X")) + _enc(_SLOTS) + pickle.BUILD),
}


def test_a_file_cannot_change_the_readers_stand_ins():
  reference = nvidia_pickle.read_network_pickle(EDM2_PKL)
  before = _stand_in_state()
  for target, build in sorted(_BUILDS.items()):
    data = _snapshot({"w": _one}, init_kwargs={"x": build})
    with pytest.raises(nvidia_pickle.UnsafePickleError,
                       match=f"refusing BUILD on (the admitted global )?{re.escape(target)}:"):
      nvidia_pickle.read_network_pickle(data)
  # numpy's dtype builder returns a new dtype each time: a BUILD cannot reach numpy's own float64.
  f8 = nvidia_pickle.restricted_load(_pickle(_Raw(_enc(_Call("numpy", "dtype", "f8", False, False))
                                                  + _enc((3, ">", None, None, None, -1, -1, 0))
                                                  + pickle.BUILD)))
  assert f8 == np.dtype(">f8") and f8 is not np.dtype("f8") and np.dtype("f8").isnative
  assert _stand_in_state() == before
  again = nvidia_pickle.read_network_pickle(EDM2_PKL)  # a legitimate file, same process
  assert list(again.state_dict) == list(reference.state_dict)
  for name, value in reference.state_dict.items():
    assert again.state_dict[name].tobytes() == value.tobytes() and again.state_dict[
        name].dtype == value.dtype, name
  assert (again.init_kwargs, again.attributes) == (reference.init_kwargs, reference.attributes)


def test_calls_outside_the_stand_ins_are_refused():
  """REDUCE / NEWOBJ on anything but an admitted stand-in, and opcodes NVIDIA never writes."""
  cases = {
      "refusing to call a PersistentObject": _Raw(_enc(_module("X")) + _enc(()) + pickle.REDUCE),
      "refusing to call a str": _Raw(_enc("abc") + _enc(()) + pickle.NEWOBJ),
      "refusing pickle opcode INST": _Raw(pickle.MARK + pickle.INST + b"os\nsystem\n"),
      "refusing pickle opcode EXT1": _Raw(pickle.EXT1 + b"\x01"),
  }
  for phrase, raw in cases.items():
    with pytest.raises(nvidia_pickle.UnsafePickleError, match=phrase):
      nvidia_pickle.read_network_pickle(_snapshot({"w": _one}, init_kwargs={"x": raw}))
  with pytest.raises(nvidia_pickle.NetworkPickleError, match="created with arguments"):
    nvidia_pickle.read_network_pickle(_snapshot({"w": _one}, init_kwargs={
        "x": _Call("collections", "OrderedDict", [("a", 1)])}))


# Kind 12: files that are not network pickles; each error names the file and says what to do.
def test_files_that_are_not_network_pickles_are_named_with_what_to_do(tmp_path):
  with open(EDM_PKL, "rb") as f:
    good = f.read()
  zipped = tmp_path / "checkpoint.pt"
  with zipfile.ZipFile(zipped, "w") as z:  # torch >= 1.6 torch.save: a zip of archive/data.pkl
    z.writestr("archive/data.pkl", good[:1000])
  cases = {
      "empty.pkl": (b"", "is empty (0 bytes)", "download it again"),
      "truncated.pkl": (good[:len(good) // 2], "truncated or damaged", "download the file again"),
      "cut-in-a-storage.pkl": (good[:-10], "truncated or damaged", "download the file again"),
      "legacy.pt": (pickle.dumps(_MAGIC, 2) + pickle.dumps(1001, 2), "legacy (non-zip) torch.save",
                    "give the network-snapshot-*.pkl"),
      "text.pkl": (b"hello world\n", "does not start with a pickle header", "another kind of file"),
  }
  for name, (data, *phrases) in cases.items():
    (tmp_path / name).write_bytes(data)
  cases["checkpoint.pt"] = (None, "zip archive", "torch.save checkpoint, not an EDM/EDM2 network "
                            "snapshot pickle", "give the network-snapshot-*.pkl")
  for name, (_, *phrases) in cases.items():
    path = str(tmp_path / name)
    with pytest.raises(nvidia_pickle.NetworkPickleError) as err:
      nvidia_pickle.read_network_pickle(path)
    assert str(err.value).startswith(path + ": "), err.value
    for phrase in phrases:
      assert phrase in str(err.value), (name, err.value)


def test_random_bytes_give_a_named_error_under_a_memory_cap(tmp_path):
  """Random bytes, bare and after a pickle header (the unpickler then reads garbage opcodes)."""
  rng = np.random.default_rng(0)
  for i in range(40):
    head = b"" if i % 4 == 0 else b"\x80\x04"
    (tmp_path / f"random{i:02d}.pkl").write_bytes(head + rng.bytes(int(rng.integers(1, 4096))))
  code = """
  import glob
  wrong = []
  for p in sorted(glob.glob(PATH + '/*.pkl')):
    try:
      nvidia_pickle.read_network_pickle(p)
      wrong.append((p, 'read without error'))
    except (nvidia_pickle.NetworkPickleError, nvidia_pickle.UnsafePickleError) as err:
      if not str(err).startswith(p + ': '):
        wrong.append((p, str(err)))
  assert not wrong, wrong
  """
  result = hostile.run_capped(_IMPORT, code, path=tmp_path, limit_mb=200, timeout=120)
  assert not result.crashed and result.error is None, result
