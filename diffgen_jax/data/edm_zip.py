"""EDM's dataset zips (NVlabs edm/edm2 `dataset_tool.py` output), read without TensorFlow.

A dataset zip holds image files (PNG or JPEG, any folder layout, e.g. `00000/img00000000.png`) and
optionally `dataset.json` with `{"labels": [[file name, class index], ...]}` (or `"labels": null`
for unlabelled sets). As EDM's `ImageFolderDataset`: the images are the zip's image files sorted by
name; a file's label is looked up by its name (backslashes read as slashes). Pixels are decoded
with Pillow on demand (`ZipImages` indexes like an array), so a large zip (ImageNet) costs memory
only for the images used.

Splits over zips (`split_arrays`, used by `data.load_split`): the "train" split is one zip, "validation" another. The images
are presented in a seeded random order (`order_seed`), so the first n images of a split (the fixed
evaluation subsets, `data.first_images`) are a uniform random subset even when the zip is sorted
by class; `Split.ids` are the files' indices in name order (they seed the per-image noise).

Dataset name syntax in configs (`config.data.name`): "edm_zip:TRAIN.zip,VALIDATION.zip".
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from typing import List, Optional, Sequence, Tuple

import numpy as np

from diffgen_jax.data import sources

PREFIX = "edm_zip:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_zip_name(name) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def parse_name(name: str) -> Tuple[str, str]:
  """(train zip, validation zip) of "edm_zip:TRAIN.zip,VALIDATION.zip" (ValueError otherwise)."""
  paths = [p.strip() for p in name[len(PREFIX):].split(",")] if is_zip_name(name) else []
  if len(paths) != 2 or not all(paths):
    raise ValueError(f"dataset name {name!r}: an EDM dataset zip pair is written "
                     f"'{PREFIX}TRAIN.zip,VALIDATION.zip'")
  return paths[0], paths[1]


class ZipImages:
  """The images of one dataset zip as a lazily decoded uint8 array (N, H, W, C).

  Supports len(), .shape, .ndim and indexing by an int, a slice or an int array (decodes those
  files only). All images must share one shape (ValueError names the first one that does not).
  """

  def __init__(self, path: str, names: Sequence[str], rows: Optional[np.ndarray] = None):
    self.path = path
    self.names = list(names)
    self.rows = np.arange(len(self.names)) if rows is None else np.asarray(rows)
    self._local = threading.local()
    self._item_shape = self._decode(int(self.rows[0])).shape if len(self.rows) else (0, 0, 0)

  def _zip(self) -> zipfile.ZipFile:
    if getattr(self._local, "zip", None) is None:
      self._local.zip = zipfile.ZipFile(self.path)
    return self._local.zip

  def _decode(self, index: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top  (Pillow: a matplotlib dependency)
    with self._zip().open(self.names[index]) as f:
      image = np.array(Image.open(io.BytesIO(f.read())))
    if image.ndim == 2:
      image = image[..., None]
    if image.dtype != np.uint8:
      raise ValueError(f"{self.path}:{self.names[index]} decodes to {image.dtype}, expected 8-bit")
    if hasattr(self, "_item_shape") and image.shape != self._item_shape:
      raise ValueError(f"{self.path}:{self.names[index]} has shape {image.shape}, the dataset's "
                       f"images {self._item_shape}")
    return image

  def __len__(self) -> int:
    return len(self.rows)

  @property
  def shape(self) -> tuple:
    return (len(self.rows),) + tuple(self._item_shape)

  @property
  def ndim(self) -> int:
    return 4

  def subset(self, rows) -> "ZipImages":
    out = ZipImages.__new__(ZipImages)
    out.path, out.names, out.rows = self.path, self.names, self.rows[np.asarray(rows)]
    out._local, out._item_shape = threading.local(), self._item_shape  # pylint: disable=protected-access
    return out

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return self._decode(int(self.rows[index]))
    rows = self.rows[index]
    out = np.empty((len(rows),) + tuple(self._item_shape), np.uint8)
    for i, row in enumerate(rows):
      out[i] = self._decode(int(row))
    return out

  def __array__(self, dtype=None, copy=None):
    del copy
    out = self[np.arange(len(self.rows))]
    return out if dtype is None else out.astype(dtype)


def read_index(path: str) -> Tuple[List[str], Optional[np.ndarray]]:
  """(image file names sorted, labels (N,) int32 or None) of a dataset zip.

  Raises FileNotFoundError / ValueError (not a zip, no images, a labelled zip missing a label).
  """
  try:
    with zipfile.ZipFile(path) as z:
      members = z.namelist()
      meta = json.loads(z.read("dataset.json")) if "dataset.json" in members else {}
  except zipfile.BadZipFile as err:
    raise ValueError(f"{path} is not a zip file ({err})") from None
  names = sorted(m for m in members if m.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
  labels = meta.get("labels")
  if labels is None:
    return names, None
  table = {str(f).replace("\\", "/"): int(np.asarray(l).reshape(-1)[0]) for f, l in labels}
  missing = [n for n in names if n not in table]
  if missing:
    raise ValueError(f"{path}: dataset.json has no label for {len(missing)} images, e.g. "
                     f"{missing[:3]}")
  return names, np.array([table[n] for n in names], np.int32)


def read_images(path: str, max_images: Optional[int] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """All (or the first max_images, in name order) images (N, H, W, C) uint8 and labels of a zip."""
  names, labels = read_index(path)
  n = len(names) if max_images is None else min(max_images, len(names))
  images = ZipImages(path, names)[np.arange(n)]
  return images, None if labels is None else labels[:n]


def split_arrays(name: str, split: str, *, labels: str = "class",
                 subset_size: Optional[int] = None, order_seed: int = 0):
  """(images ZipImages, labels (N,) int32, num_classes, ids (N,) int64) of one split of an
  "edm_zip:TRAIN.zip,VALIDATION.zip" dataset (see the module docstring; `data.load_split` makes
  the Split).

  labels: "class" (dataset.json's labels; num_classes = max + 1 over both zips' labels) or "none".
  subset_size: the training subset (a prefix of the seeded order, train split only).
  """
  train_zip, val_zip = parse_name(name)
  if split not in sources.SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {sources.SPLITS}")
  if labels not in ("class", "none"):
    raise ValueError(f"labels={labels!r}: EDM dataset zips support 'class' or 'none'")
  path = train_zip if split == "train" else val_zip
  names, file_labels = read_index(path)
  n = len(names)
  rows = np.random.default_rng([order_seed, n]).permutation(n)
  if subset_size:
    if split != "train":
      raise ValueError("subset_size applies to the train split only")
    if subset_size > n:
      raise ValueError(f"subset_size={subset_size} exceeds the {n} images of {path}")
    rows = rows[:subset_size]
  images = ZipImages(path, names, rows)
  if labels == "none":
    return images, np.zeros(len(rows), np.int32), 0, rows.astype(np.int64)
  if file_labels is None:
    raise ValueError(f"{path} has no labels (dataset.json 'labels' is missing or null); use "
                     "labels='none'")
  other = read_index(val_zip if split == "train" else train_zip)[1]
  num_classes = int(max(file_labels.max(), -1 if other is None else other.max())) + 1
  return images, file_labels[rows], num_classes, rows.astype(np.int64)
