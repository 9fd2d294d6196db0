"""EDM's dataset zips (NVlabs edm/edm2 `dataset_tool.py` output), read without TensorFlow.

A dataset zip holds image files (PNG or JPEG, any folder layout, e.g. `00000/img00000000.png`) and
optionally `dataset.json` with `{"labels": [[file name, class index], ...]}` (or `"labels": null`
for unlabelled sets). As EDM's `ImageFolderDataset`: the images are the zip's image files sorted by
name; a file's label is looked up by its name (backslashes read as slashes). Pixels are decoded
with Pillow on demand (`ZipImages` indexes like an array), so a large zip (ImageNet) costs memory
only for the images used.

Splits over zips (`split_arrays`, used by `data.load_split`): the "train" split is one zip, "validation" another. The images
are presented in a seeded random order (`order_seed`), so the first n images of a split
(`data.first_images`) are a uniform random subset even when the zip is sorted by class (the
evaluation subsets are seeded rows as well: `data.evaluation_subset`); `Split.ids` are the files' indices in name order (they seed the per-image noise).

Dataset name syntax in configs (`config.data.name`): "edm_zip:TRAIN.zip,VALIDATION.zip".

Writing (`write_images`, or `ZipWriter` batch by batch): uint8 images become such a zip as EDM's
dataset_tool.py writes it (`00000/img00000000.png`, a folder per 1000 images, uncompressed PNGs in a
stored zip, `dataset.json` with the labels or null), atomically (`jsonio.atomic_open`): readable by
this reader, by EDM/EDM2's ImageFolderDataset and so by EDM2's calculate_metrics.py.

Zips come from the internet, so nothing is read on trust (every refusal is a `DataFileError`, a
ValueError naming the zip and the member): a member's declared size is checked against its limit
(`MAX_IMAGE_FILE_BYTES`, `JSON_BYTES_PER_IMAGE`) before it is read and every read is capped; an
image's width, height and mode are read from its header and checked before it is decoded (the first
image at most `MAX_IMAGE_PIXELS`, the others the first one's size); images are 8-bit grayscale (L)
or color (RGB) as the first one is, with 1-bit and palette (P) images converted to that mode where
nothing is lost (a color image among grayscale ones, alpha channels, 16-bit images are refused);
class labels are integers in [0, `files.MAX_NUM_CLASSES`), one [name, label] pair per image.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import threading
import zipfile
from typing import List, Optional, Sequence, Tuple

import numpy as np

from diffgen_jax import jsonio
from diffgen_jax.data import sources
from diffgen_jax.data.files import MAX_NUM_CLASSES, DataFileError, load_json, read_zip_member

PREFIX = "edm_zip:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")  # the decoders a member may reach, whatever its bytes
# Limits on what a zip may make the reader allocate, checked before reading or decoding.
MAX_IMAGE_FILE_BYTES = 64 << 20  # one image file: a 4096 x 4096 RGB image is 48 MiB even as BMP
MAX_IMAGE_PIXELS = 4096 * 4096  # the first image's width x height (EDM's datasets: up to 512 x 512)
JSON_BYTES_PER_IMAGE = 256  # dataset.json: 1 MiB + this per image (an entry takes ~35 bytes)
# The first image's mode -> the dataset's mode; images of these modes are converted to it.
DATASET_MODES = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB"}


def is_zip_name(name) -> bool:
  return isinstance(name, str) and name.startswith(PREFIX)


def parse_name(name: str) -> Tuple[str, str]:
  """(train zip, validation zip) of "edm_zip:TRAIN.zip,VALIDATION.zip" (ValueError otherwise)."""
  paths = [p.strip() for p in name[len(PREFIX):].split(",")] if is_zip_name(name) else []
  if len(paths) != 2 or not all(paths):
    raise ValueError(f"dataset name {name!r}: an EDM dataset zip pair is written "
                     f"'{PREFIX}TRAIN.zip,VALIDATION.zip'")
  return paths[0], paths[1]


def _decode_image(raw: bytes, where: str, size: Optional[Tuple[int, int]],
                  mode: Optional[str]) -> np.ndarray:
  """Pixels (H, W, C) uint8 of image file `raw`, its header checked before decoding: (width,
  height) must equal `size` (the first image: at most MAX_IMAGE_PIXELS), its mode convertible to
  `mode` (L or RGB; the first image: DATASET_MODES decides) without loss."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (Pillow: a matplotlib dependency)
  try:
    with Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as im:  # lazy: reads the header only
      width, height = im.size
      if size is None and width * height > MAX_IMAGE_PIXELS:
        raise DataFileError(f"{where} is {width} x {height} pixels, more than MAX_IMAGE_PIXELS="
                            f"{MAX_IMAGE_PIXELS} for a dataset's images")
      if size is not None and (width, height) != size:
        raise DataFileError(f"{where} has shape {(height, width)} (height, width), the dataset's "
                            f"images {(size[1], size[0])}")
      mode = mode or DATASET_MODES.get(im.mode)
      if im.mode not in DATASET_MODES:
        raise DataFileError(f"{where} has image mode {im.mode!r}; a dataset's images are 8-bit "
                            "grayscale (L) or color (RGB) without alpha (1-bit and palette images "
                            "are converted): convert it (e.g. with EDM's dataset_tool.py)")
      if im.mode == "P" and ("transparency" in im.info or im.palette.mode != "RGB"):
        raise DataFileError(f"{where} is a palette image with transparency or a non-RGB palette; "
                            "a dataset's images are L or RGB without alpha: convert it")
      if im.mode == mode:
        image = np.asarray(im)
      elif mode == "RGB":
        image = np.asarray(im.convert("RGB"))
      elif im.mode == "1":
        image = np.asarray(im.convert("L"))
      else:  # a palette or RGB image among grayscale ones: only if its pixels are gray
        rgb = np.asarray(im.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
          raise DataFileError(f"{where} is a color image (mode {im.mode!r}) among grayscale (L) "
                              "images: convert the dataset's images to one mode")
        image = rgb[..., 0]
  except (DataFileError, MemoryError):
    raise
  except Exception as err:  # pylint: disable=broad-except  (Pillow's many ways to refuse a file)
    raise DataFileError(f"{where} is not a readable image ({type(err).__name__}: {err})") from None
  return image[..., None] if image.ndim == 2 else image


class ZipImages:
  """The images of one dataset zip as a lazily decoded uint8 array (N, H, W, C), C 1 (L) or 3
  (RGB), the mode and size of the first image decoded (`rows[0]`).

  Supports len(), .shape, .ndim and indexing by an int, a slice or an int array (decodes those
  files only). All images must share one shape; DataFileError (a ValueError) names the zip and the
  image that does not, or that is too large, damaged or of another mode (module docstring).
  """

  def __init__(self, path: str, names: Sequence[str], rows: Optional[np.ndarray] = None):
    self.path = path
    self.names = list(names)
    self.rows = np.arange(len(self.names)) if rows is None else np.asarray(rows)
    self._local = threading.local()
    self._item_shape, self._mode = (0, 0, 0), None
    if len(self.rows):
      first = self._decode(int(self.rows[0]), first=True)
      self._item_shape, self._mode = first.shape, "L" if first.shape[-1] == 1 else "RGB"

  def _zip(self) -> zipfile.ZipFile:
    if getattr(self._local, "zip", None) is None:
      self._local.zip = zipfile.ZipFile(self.path)
    return self._local.zip

  def _decode(self, index: int, first: bool = False) -> np.ndarray:
    name = self.names[index]
    raw = read_zip_member(self._zip(), self.path, name, MAX_IMAGE_FILE_BYTES,
                          "MAX_IMAGE_FILE_BYTES")
    size = None if first else (self._item_shape[1], self._item_shape[0])
    return _decode_image(raw, f"{self.path}:{name}", size, None if first else self._mode)

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
    out._local = threading.local()  # pylint: disable=protected-access
    out._item_shape, out._mode = self._item_shape, self._mode  # pylint: disable=protected-access
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


def read_index(path: str, class_labels: bool = True
               ) -> Tuple[List[str], Optional[np.ndarray]]:
  """(image file names sorted, labels (N,) int32 or None) of a dataset zip.

  class_labels: read dataset.json's labels (False: labels None, dataset.json not read).
  Raises FileNotFoundError, or DataFileError (a ValueError) naming the zip (and dataset.json): not a
  zip, no images, a member name twice, dataset.json too large (1 MiB + JSON_BYTES_PER_IMAGE per
  image), damaged or nested too deeply, or its labels wrong (`_class_labels`).
  """
  try:
    with zipfile.ZipFile(path) as z:
      members = z.namelist()
      names = sorted(m for m in members if m.lower().endswith(IMAGE_EXTENSIONS))
      meta = {}
      if class_labels and "dataset.json" in members:
        limit = (1 << 20) + JSON_BYTES_PER_IMAGE * len(names)
        raw = read_zip_member(z, path, "dataset.json", limit,
                              f"1 MiB + JSON_BYTES_PER_IMAGE * {len(names)} images")
        meta = load_json(raw, f"{path}:dataset.json")
  except zipfile.BadZipFile as err:
    raise DataFileError(f"{path} is not a zip file ({err})") from None
  if not names:
    raise DataFileError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
  twice = sorted(m for m, c in collections.Counter(members).items()
                 if c > 1 and (m == "dataset.json" or m.lower().endswith(IMAGE_EXTENSIONS)))[:3]
  if twice:
    raise DataFileError(f"{path} holds several members named {twice}: which one is the image is "
                        "ambiguous; write the zip again")
  labels = _class_labels(path, meta, names)
  return names, labels


def _class_labels(path: str, meta, names: Sequence[str]) -> Optional[np.ndarray]:
  """(N,) int32 class labels of `names` from dataset.json's document `meta`, or None without labels.

  `labels` is null/absent, a list of [image name, class index] pairs (EDM's dataset_tool.py) or an
  object {image name: class index} (EDM's reader takes both); a backslash in a name reads as a
  slash. Raises DataFileError naming the zip, dataset.json and the entry or image: a document or
  `labels` of another type, an entry not a [name, label] pair, a name twice, a label not an integer
  (bool, 2.5 and "3" are not) in [0, MAX_NUM_CLASSES), an image without a label.
  """
  where = f"{path}:dataset.json"
  if not isinstance(meta, dict):
    raise DataFileError(f"{where} holds a JSON {type(meta).__name__}; it must be an object "
                        '{"labels": [[image name, class index], ...] or null}')
  labels = meta.get("labels")
  if labels is None:
    return None
  if isinstance(labels, dict):
    entries = list(labels.items())
  elif isinstance(labels, list):
    entries = labels
  else:
    raise DataFileError(f"{where}: 'labels' is a JSON {type(labels).__name__}; it must be a list "
                        "of [image name, class index] pairs, or null for an unlabelled dataset")
  table = {}
  for i, entry in enumerate(entries):
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
      raise DataFileError(f"{where}: labels entry {i} is {str(entry)[:80]}; each entry must be a "
                          "pair [image name, class index]")
    name, label = entry[0].replace("\\", "/"), entry[1]
    if name in table:
      raise DataFileError(f"{where}: image {name} is labelled twice (one [name, label] entry "
                          "per image)")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_NUM_CLASSES:
      raise DataFileError(f"{where}: image {name} has label {str(label)[:80]}; class labels are "
                          f"integers in [0, num_classes), num_classes at most MAX_NUM_CLASSES="
                          f"{MAX_NUM_CLASSES} (EDM's float label vectors are not class labels: "
                          "use labels='none')")
    table[name] = label
  missing = [n for n in names if n not in table]
  if missing:
    raise DataFileError(f"{where} has no label for {len(missing)} images, e.g. "
                        f"{missing[:3]}")
  return np.array([table[n] for n in names], np.int32)


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
  Raises ValueError for bad arguments, DataFileError (a ValueError) naming the zip and member for
  a zip's faults (`read_index`: both zips' labels are checked here, at start-up; `ZipImages`).
  """
  train_zip, val_zip = parse_name(name)
  if split not in sources.SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {sources.SPLITS}")
  if labels not in ("class", "none"):
    raise ValueError(f"labels={labels!r}: EDM dataset zips support 'class' or 'none'")
  path = train_zip if split == "train" else val_zip
  names, file_labels = read_index(path, class_labels=labels == "class")
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


# ------------------------------------------------------------------------------------------------
# Writing


MAX_WRITTEN_IMAGES = 10**8  # file names carry 8 digits, as dataset_tool.py's


def image_name(index: int) -> str:
  """dataset_tool.py's member name of image `index`: "00000/img00000000.png" (1000 per folder)."""
  digits = f"{index:08d}"
  return f"{digits[:5]}/img{digits}.png"


class ZipWriter:
  """Writes a dataset zip batch by batch (`add`), atomically: the zip appears at `path` when the
  block ends without an error, with dataset.json (labels given with every batch, or with none).

      with edm_zip.ZipWriter("samples.zip") as w:
        for images, labels in batches:
          w.add(images, labels)

  Raises ValueError naming the argument (see `write_images`); labels given with some batches and
  not others are refused.
  """

  def __init__(self, path: str):
    self.path = path
    self.count = 0
    self.labels: Optional[List] = None
    self._shape = None
    self._stack = contextlib.ExitStack()
    self._zip: Optional[zipfile.ZipFile] = None

  def __enter__(self) -> "ZipWriter":
    f = self._stack.enter_context(jsonio.atomic_open(self.path, "wb"))
    self._zip = self._stack.enter_context(zipfile.ZipFile(f, "w", zipfile.ZIP_STORED))
    return self

  def add(self, images, labels=None) -> None:
    """Appends uint8 images (B, H, W, C), C 1 (grayscale) or 3 (RGB), every batch of one shape,
    with (B,) integer labels in [0, MAX_NUM_CLASSES) or None."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"images must be uint8 pixels (B, H, W, C) with C 1 or 3, got "
                       f"{images.dtype} of shape {images.shape} (float images in [-1, 1]: "
                       "data.to_pixels)")
    if self._shape is not None and images.shape[1:] != self._shape:
      raise ValueError(f"images of shape {images.shape[1:]} after images of shape {self._shape}: "
                       "a dataset's images share one shape")
    if self.count + len(images) > MAX_WRITTEN_IMAGES:
      raise ValueError(f"more than MAX_WRITTEN_IMAGES={MAX_WRITTEN_IMAGES} images")
    if (labels is None) != (self.labels is None) and self.count:
      raise ValueError("labels must be given with every batch or with none")
    if labels is not None:
      labels = np.asarray(labels)
      if (labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer)
          or (labels.size and (labels.min() < 0 or labels.max() >= MAX_NUM_CLASSES))):
        raise ValueError(f"labels must be ({len(images)},) integers in [0, {MAX_NUM_CLASSES}), got "
                         f"{labels.dtype} of shape {labels.shape}")
      self.labels = self.labels or []
    self._shape = images.shape[1:]
    for i, image in enumerate(images):
      name = image_name(self.count + i)
      buf = io.BytesIO()
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
          buf, format="png", compress_level=0, optimize=False)  # as dataset_tool.py
      self._zip.writestr(name, buf.getvalue())
      if labels is not None:
        self.labels.append([name, int(labels[i])])
    self.count += len(images)

  def __exit__(self, kind, value, traceback):
    if kind is None:
      if not self.count:
        self._stack.__exit__(ValueError, ValueError("no images"), None)  # nothing left behind
        raise ValueError(f"no images were written to {self.path} (a dataset zip holds at least "
                         "one)")
      self._zip.writestr("dataset.json", json.dumps({"labels": self.labels}))
    return self._stack.__exit__(kind, value, traceback)


def write_images(path: str, images, labels=None) -> str:
  """Writes uint8 images (N, H, W, C), C 1 or 3, N >= 1, and (N,) integer labels or None as an EDM
  dataset zip at `path` (module docstring), atomically; returns path. Read back with
  `read_images(path)` (same pixels and labels) or as "edm_zip:TRAIN.zip,VALIDATION.zip".
  Raises ValueError naming images or labels when they are not as described."""
  with ZipWriter(path) as writer:
    writer.add(images, labels)
  return path
