"""EDM's dataset zips (dataset_tool.py output: PNGs + dataset.json), read without TensorFlow."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffgen_jax import data
from diffgen_jax import config_checks
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.data import edm_zip


def _write_zip(path, images, labels=None, folder_size=3):
  """Writes a zip as EDM's dataset_tool does: <folder>/img<index>.png + dataset.json."""
  names = []
  with zipfile.ZipFile(path, "w") as z:
    for i, image in enumerate(images):
      name = f"{i // folder_size:05d}/img{i:08d}.png"
      buf = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "png")
      z.writestr(name, buf.getvalue())
      names.append(name)
    meta = {"labels": None if labels is None else
            [[n.replace("/", "\\") if i % 2 else n, int(l)] for i, (n, l) in enumerate(zip(names, labels))]}
    z.writestr("dataset.json", json.dumps(meta))
  return names


@pytest.fixture
def zips(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  val = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  train_labels, val_labels = rng.integers(0, 4, 10), np.array([0, 1, 2, 3, 4, 0])
  _write_zip(tmp_path / "train.zip", train, train_labels)
  _write_zip(tmp_path / "val.zip", val, val_labels)
  return tmp_path, train, train_labels, val, val_labels


def test_images_and_labels_read_back_exactly(zips):
  root, train, train_labels, _, _ = zips
  images, labels = edm_zip.read_images(str(root / "train.zip"))
  np.testing.assert_array_equal(images, train)  # PNG is lossless; name order = writing order
  np.testing.assert_array_equal(labels, train_labels)  # backslash names matched too


def test_splits_in_a_seeded_order_with_ids_and_labels(zips):
  root, train, train_labels, val, val_labels = zips
  name = f"edm_zip:{root / 'train.zip'},{root / 'val.zip'}"
  tr = data.load_split(name, "train")
  va = data.load_split(name, "validation")
  assert (len(tr), len(va), tr.num_classes, va.num_classes) == (10, 6, 5, 5)  # max over both + 1
  assert sorted(tr.ids.tolist()) == list(range(10)) and tr.ids.tolist() != list(range(10))
  np.testing.assert_array_equal(tr.images[np.arange(10)], train[tr.ids])
  np.testing.assert_array_equal(tr.labels, train_labels[tr.ids])
  x, y, ids = data.first_images(va, 4)
  np.testing.assert_array_equal(ids, va.ids[:4])
  np.testing.assert_allclose(x, val[ids] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(y, val_labels[ids])
  again = data.load_split(name, "train")
  np.testing.assert_array_equal(again.ids, tr.ids)  # deterministic order
  sub = data.load_split(name, "train", subset_size=4)
  np.testing.assert_array_equal(sub.ids, tr.ids[:4])  # nested subsets
  none = data.load_split(name, "train", labels="none")
  assert none.num_classes == 0 and not none.labels.any()


def test_unlabelled_and_grayscale_zips(tmp_path):
  gray = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
  _write_zip(tmp_path / "g.zip", gray)
  images, labels = edm_zip.read_images(str(tmp_path / "g.zip"))
  assert labels is None
  np.testing.assert_array_equal(images, gray)
  name = f"edm_zip:{tmp_path / 'g.zip'},{tmp_path / 'g.zip'}"
  with pytest.raises(ValueError, match="labels='none'"):
    data.load_split(name, "train")


def test_bad_inputs_are_named(tmp_path, zips):
  root = zips[0]
  with pytest.raises(ValueError, match="TRAIN.zip,VALIDATION.zip"):
    edm_zip.parse_name(f"edm_zip:{root / 'train.zip'}")
  (tmp_path / "bad.zip").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a zip"):
    edm_zip.read_index(str(tmp_path / "bad.zip"))
  cfg = dict(name=f"edm_zip:{root / 'train.zip'},{root / 'missing.zip'}", data_dir=None,
             subset_size=None, labels="class", x_flip=False)
  import ml_collections  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match="missing.zip does not exist"):
    config_checks.data_config(ml_collections.ConfigDict(cfg))
