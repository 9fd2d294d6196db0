"""The restricted reader of NVIDIA's network pickles: exact tensors, nothing executed, refusals."""

import os
import pickle
import sys
import types

import numpy as np
import pytest

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
