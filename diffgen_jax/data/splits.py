"""Splits, nested training subsets, label modes, and the image scaling convention.

Splits: "train" is the dataset's train split; "validation" is its validation split, or its official
test split where there is no validation split (fashion_mnist: t10k).

Subsets (`subset_order`): the training subset of size k is the first k entries of one seeded order
of the training rows, so a smaller subset is always contained in a larger one with the same seed.
When class labels are at hand (in-memory splits with a `label` feature) the order is stratified:
every prefix holds each class in proportion to its frequency, within two images. Otherwise it is a
seeded random permutation. Subset rows keep the source order. The subset does not depend on the
label mode.
Disjoint subsets (`subset_side`): side 1 takes the prefixes of that order (the subsets above), side 2
its suffixes (the order read backwards). Both are nested in the size and seeded; they are disjoint
for 2k <= N and complementary for 2k = N, so two runs that differ only in the side train on disjoint
sets of the same size (Kadkhodaie et al. 2024's reproducibility test, analytic.md section 2).

Images as the models see them: float32 in [-1, 1], uint8 / 127.5 - 1 (`to_unit_range`, the one
home of the scaling); labels int32, all 0 with labels="none" (`num_classes` 0).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile
from typing import Any, Optional, Union

import numpy as np

from diffgen_jax.data import builders
from diffgen_jax.data.convention import check_images, check_pixels
from diffgen_jax.data.files import (MAX_NUM_CLASSES, DataFileError, check_class_labels,
                                    npy_header, read_zip_member)
from diffgen_jax.data.sources import (IN_MEMORY_BYTES, SPLITS, LazyColumn, _open, _read_all,
                                      _source_split, _unknown_dataset, is_prepared,
                                      resolve_data_dir)

LABEL_MODES = ("class", "none", "pseudo")
MAX_LABELS_BYTES = 256 << 20  # a pseudo-label array: 1.28M (ImageNet) int64 labels take 10 MB




@dataclasses.dataclass(frozen=True)
class Split:
  """One split (or training subset) with its labels.

  images: (N, H, W, C) uint8, a numpy array or a LazyColumn (fancy indexing by an int array).
  labels: (N,) int32; all zero in label mode "none" (a LazyColumn for lazy splits in mode "class").
  num_classes: number of label values; 0 in label mode "none".
  ids: (N,) int64, each image's row in the whole split (a subset's rows within the train split).
    The built-in datasets also record each image's row in their source file as the `id` feature.
  """

  images: Any
  labels: Any
  num_classes: int
  ids: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.images)

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])


def subset_order(num_examples: int, seed: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
  """A seeded order of range(num_examples) whose prefixes are the nested training subsets.

  With labels, every prefix is stratified: class c (n_c rows, permuted) gets keys (j + u_c) / n_c
  for its j-th row with a random offset u_c in [0, 1), and rows are taken in increasing key, so a
  prefix of size k holds k * n_c / N images of class c to within two.
  """
  rng = np.random.default_rng([seed, 2])
  if labels is None:
    return rng.permutation(num_examples)
  labels = np.asarray(labels)
  rows, keys = [], []
  for c in np.unique(labels):
    rc = rng.permutation(np.flatnonzero(labels == c))
    rows.append(rc)
    keys.append((np.arange(len(rc)) + rng.random()) / len(rc))
  rows, keys = np.concatenate(rows), np.concatenate(keys)
  return rows[np.argsort(keys, kind="stable")]


SUBSET_SIDES = (1, 2)


def subset_rows(num_examples: int, subset_size: int, seed: int,
                labels: Optional[np.ndarray] = None, side: int = 1) -> np.ndarray:
  """The sorted rows of the training subset of the given size (nested in subset_size).

  side: 1 takes the first `subset_size` rows of `subset_order`, 2 the last ones, so the two sides
  are disjoint when 2 * subset_size <= num_examples (they overlap in 2 * subset_size -
  num_examples rows otherwise, with a UserWarning for side 2: side 2 exists for disjoint pairs).
  Raises ValueError for a bad size or side.
  """
  if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)):
    raise ValueError(f"subset_size must be an int, got {subset_size!r}")
  if subset_size <= 0 or subset_size > num_examples:
    raise ValueError(f"subset_size={subset_size} must be in 1..{num_examples} (the size of the "
                     "training split); use None for the whole split")
  if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side not in SUBSET_SIDES:
    raise ValueError(f"subset side={side!r} must be one of {SUBSET_SIDES}")
  if side == 2 and 2 * subset_size > num_examples:
    warnings.warn(f"subset side 2 of size {subset_size} overlaps side 1 in "
                  f"{2 * subset_size - num_examples} of {num_examples} rows: the two sides are "
                  f"disjoint only for subset_size <= {num_examples // 2}", UserWarning, stacklevel=2)
  order = subset_order(num_examples, seed, labels)
  return np.sort(order[:subset_size] if side == 1 else order[::-1][:subset_size])


def load_split(name: str, split: str, *, data_dir: Optional[str] = None,
               subset_size: Optional[int] = None, subset_seed: int = 0, subset_side: int = 1,
               labels: Union[str, np.ndarray] = "class", num_classes: Optional[int] = None,
               in_memory: Optional[bool] = None) -> Split:
  """Loads a split, optionally a nested training subset, with class / no / pseudo labels.

  labels: "class" (the dataset's labels), "none" (all 0, num_classes 0), or an integer array of
    pseudo-labels, one per image of the returned split (after subsetting); their num_classes is
    `num_classes` if given, else max + 1.
  subset_side: 1 or 2, which of the two disjoint nested subsets (`subset_rows`).
  in_memory: read the split into numpy (None: when it holds at most IN_MEMORY_BYTES of pixels).
  name "edm_zip:TRAIN.zip,VALIDATION.zip": EDM's dataset zips (`data.edm_zip`; labels "class" or
    "none"; data_dir unused; the train split's seeded order uses subset_seed).
  """
  if name.startswith("edm_zip:"):
    from diffgen_jax.data import edm_zip  # pylint: disable=g-import-not-at-top  (imports us)
    if not isinstance(labels, str):
      raise ValueError("pseudo-labels are not supported for EDM dataset zips")
    images, zip_labels, k, ids = edm_zip.split_arrays(
        name, split, labels=labels, subset_size=subset_size,
        order_seed=subset_seed if split == "train" else 0)
    return Split(images=images, labels=zip_labels, num_classes=k, ids=ids)
  data_dir = resolve_data_dir(data_dir)
  if name not in builders.BUILDERS and not is_prepared(name, data_dir):
    raise _unknown_dataset(name, data_dir)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  if subset_size is not None and split != "train":
    raise ValueError("subset_size applies to the train split only")
  if isinstance(labels, str) and labels == "pseudo":
    raise ValueError("labels='pseudo' needs the pseudo-labels themselves: pass labels=<int array, "
                     "one per image of the split> (e.g. from read_pseudo_labels(path, split))")
  if isinstance(labels, str) and labels not in ("class", "none"):
    raise ValueError(f"labels={labels!r} must be 'class', 'none' or an integer array of "
                     "pseudo-labels")
  sources, features = _open(name, data_dir)
  src_split = _source_split(name, split, sources)
  source = sources[src_split]
  keys = set(features.keys())
  if "image" not in keys:
    raise ValueError(f"dataset {name!r} has no 'image' feature (features: {sorted(keys)})")
  has_label = "label" in keys
  if isinstance(labels, str) and labels == "class" and not has_label:
    raise ValueError(f"dataset {name!r} has no 'label' feature; use labels='none' or "
                     "pseudo-labels")

  n = len(source)
  if in_memory is None:
    shape = getattr(features["image"], "shape", None)
    pixels = int(np.prod(shape)) if shape and all(s is not None for s in shape) else 64 * 64 * 3
    in_memory = n * pixels <= IN_MEMORY_BYTES
  if in_memory:
    cols = _read_all(name, data_dir, src_split, ("image", "label") if has_label else ("image",))
    images = cols["image"]
    if images.ndim == 3:
      images = images[..., None]
    true_labels = cols["label"].astype(np.int32) if has_label else None
  else:
    images = LazyColumn(source, "image", dtype=np.uint8)
    true_labels = LazyColumn(source, "label", dtype=np.int32) if has_label else None
  ids = np.arange(n, dtype=np.int64)

  if subset_size is not None:
    strat = true_labels if isinstance(true_labels, np.ndarray) else None
    rows = subset_rows(n, subset_size, subset_seed, strat, side=subset_side)
    images = images[rows] if isinstance(images, np.ndarray) else images.subset(rows)
    if true_labels is not None:
      true_labels = (true_labels[rows] if isinstance(true_labels, np.ndarray)
                     else true_labels.subset(rows))
    ids = ids[rows]
  size = len(ids)

  if isinstance(labels, str) and labels == "none":
    out_labels, k = np.zeros(size, np.int32), 0
  elif isinstance(labels, str):  # "class"
    out_labels, k = true_labels, int(features["label"].num_classes)
  else:
    pseudo = np.asarray(labels)
    if pseudo.ndim != 1 or len(pseudo) != size:
      raise ValueError(f"pseudo-labels have shape {pseudo.shape}, expected ({size},): one label "
                       f"per image of the {split} split"
                       + (f" subset of size {subset_size}" if subset_size else ""))
    if not np.issubdtype(pseudo.dtype, np.integer) or (size and pseudo.min() < 0):
      raise ValueError("pseudo-labels must be non-negative integers")
    k = int(num_classes) if num_classes is not None else (int(pseudo.max()) + 1 if size else 0)
    if size and pseudo.max() >= k:
      raise ValueError(f"pseudo-label {int(pseudo.max())} >= num_classes={k}")
    out_labels = pseudo.astype(np.int32)
  if k > MAX_NUM_CLASSES:
    raise ValueError(f"dataset {name!r}: num_classes={k} is more than MAX_NUM_CLASSES="
                     f"{MAX_NUM_CLASSES} (a label embedding of that many rows)")
  return Split(images=images, labels=out_labels, num_classes=k, ids=ids)


def read_pseudo_labels(path: str, split: str) -> np.ndarray:
  """Pseudo-labels for a split from a .npz file holding integer arrays 'train' and 'validation'.

  The train array has one label per image of the training split or subset actually used. The
  array's header (dtype, shape) is checked against the member's size (at most MAX_LABELS_BYTES)
  before its data is read. Returns the (N,) integer array as stored. Raises FileNotFoundError, or
  DataFileError (a ValueError) naming the file and the array: not an .npz file, no such array, not
  a 1-D integer array, data not matching its header, a label outside [0, MAX_NUM_CLASSES).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  path = os.path.expanduser(path)
  try:
    z = zipfile.ZipFile(path)
  except zipfile.BadZipFile as err:
    raise DataFileError(f"{path} is not an .npz file ({err}); pseudo-label files hold one integer "
                        f"array per split {SPLITS} (np.savez)") from None
  with z:
    member = f"{split}.npy"
    if member not in z.namelist():
      raise DataFileError(f"{path}: no array {split!r} (has "
                          f"{sorted(m[:-4] for m in z.namelist() if m.endswith('.npy'))}); "
                          f"pseudo-label files hold one integer array per split {SPLITS}")
    raw = read_zip_member(z, path, member, MAX_LABELS_BYTES, "MAX_LABELS_BYTES")
  where = f"{path}:{member}"
  shape, _, dtype, offset = npy_header(raw, where)
  if dtype.kind not in "iu" or len(shape) != 1:
    raise DataFileError(f"{where} holds an array of dtype {dtype} and shape {shape}; pseudo-labels "
                        "are a 1-D integer array, one label per image")
  if shape[0] * dtype.itemsize != len(raw) - offset:
    raise DataFileError(f"{where}: the header declares {shape[0]} labels of {dtype.itemsize} "
                        f"bytes but {len(raw) - offset} bytes follow it")
  labels = np.frombuffer(raw, dtype, count=shape[0], offset=offset).copy()
  return check_class_labels(labels, where)


def to_unit_range(images) -> np.ndarray:
  """uint8 pixels (N, H, W[, C]) -> float32 NHWC in [-1, 1]: the one home of this scaling.

  Raises ValueError for anything but integer pixels in [0, 255] (e.g. float images already in
  [-1, 1], which would otherwise land in [-1.008, -0.992]); see data/convention.py.
  """
  images = np.asarray(images)
  check_pixels(images, "images")
  if images.ndim == 3:
    images = images[..., None]
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_pixels(images) -> np.ndarray:
  """float NHWC images in [-1, 1] (samples may overshoot) -> uint8 pixels, as EDM writes its
  samples: (x * 127.5 + 128) clipped to [0, 255] and truncated, i.e. (x + 1) * 127.5 rounded half
  up. The inverse of `to_unit_range`: to_pixels(to_unit_range(p)) == p. Raises ValueError for images that
  are not float NHWC on the [-1, 1] scale (data/convention.py)."""
  images = np.asarray(check_images(images, "images", lenient=True), np.float32)
  return np.clip(images * np.float32(127.5) + np.float32(128.0), 0, 255).astype(np.uint8)


SUBSET_STREAMS = {"train": 21, "validation": 22}  # seeded_rows' streams of the evaluation subsets


def seeded_rows(num_rows: int, n: Optional[int], seed: int, stream: int) -> np.ndarray:
  """n rows of range(num_rows) drawn uniformly without replacement, ascending (int64): the sorted
  first n of numpy default_rng([seed, stream]).permutation(num_rows), so a smaller n is a subset of
  a larger one (the training monitor's images are among the evaluate job's). Every row when n is
  None or 0, or n >= num_rows. The evaluation subsets are drawn so because a split's source order
  is not random (digits are ordered by writer: the first rows hold near-duplicates, which biases
  the gap at large sigma, see issue 26 of the project). Raises ValueError for n < 0 or a seed or
  stream that is not an integer >= 0."""
  for name, value in (("seed", seed), ("stream", stream)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
  if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
    raise ValueError(f"n must be None or an integer >= 0, got {n!r}")
  if not n or n >= num_rows:
    return np.arange(num_rows, dtype=np.int64)
  order = np.random.default_rng([int(seed), int(stream)]).permutation(num_rows)
  return np.sort(order[:n]).astype(np.int64)


def evaluation_subset(split: Split, n: Optional[int], seed: int, which: str) -> np.ndarray:
  """The rows of a split's evaluation subset of n images (`seeded_rows` with the stream of
  `which`, "train" or "validation"; every row when n is None). Raises ValueError for another
  `which`."""
  if which not in SUBSET_STREAMS:
    raise ValueError(f"which must be one of {sorted(SUBSET_STREAMS)}, got {which!r}")
  return seeded_rows(len(split), n, seed, SUBSET_STREAMS[which])


def first_images(split: Split, n: Optional[int] = None):
  """The first n images of a split (all by default) in [-1, 1], their labels (None when the split
  has no classes) and ids. (The evaluation subsets are seeded rows: `evaluation_subset`.)"""
  n = len(split) if n is None else min(n, len(split))
  rows = np.arange(n)
  labels = np.asarray(split.labels[rows], np.int32) if split.num_classes > 0 else None
  return to_unit_range(split.images[rows]), labels, np.asarray(split.ids[rows])
