"""Splits, training subsets, labels and a resumable, sharded batch stream.

Reading: built-in datasets (`DATASETS`) are prepared on first use by our tfds builders into
`data_dir`; any other name must already be prepared there by tfds in array_record format (e.g.
`cifar10` or `downsampled_imagenet/64x64` prepared on a connected machine with
`file_format="array_record"`). Both are read with `tfds.data_source(..., download=False)`, which
needs neither TensorFlow nor a network. Splits small enough (`IN_MEMORY_BYTES`) are read into numpy
once and cached; larger ones stay lazy (random access by index into the array_record files).

Splits: "train" is the dataset's train split; "validation" is its validation split, or its official
test split where there is no validation split (fashion_mnist: t10k).

Subsets (`subset_order`): the training subset of size k is the first k entries of one seeded order
of the training rows, so a smaller subset is always contained in a larger one with the same seed.
When class labels are at hand (in-memory splits with a `label` feature) the order is stratified:
every prefix holds each class in proportion to its frequency, within two images. Otherwise it is a
seeded random permutation. Subset rows keep the source order. The subset does not depend on the
label mode.

Batches: the training stream is the concatenation of per-epoch permutations (epoch e permuted by
`np.random.default_rng([seed, 0, e])`); the batch at step t is stream positions [t*B, (t+1)*B), and
its x-flips come from `np.random.default_rng([seed, 1, t])`. A batch is therefore a pure function
of (seed, t): a run resumed at step t replays the uninterrupted one exactly. With several
processes each process computes only its own rows of every global batch (`process_rows`) and
`jax.make_array_from_process_local_data` assembles the global array sharded over mesh axis "data".

Delivered batches: {"image": float32 (B, H, W, C) in [-1, 1] (uint8 / 127.5 - 1),
"label": int32 (B,)}; with labels="none" the labels are all 0 and `num_classes` is 0.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import queue
import threading
from typing import Any, Optional, Union

import jax
import numpy as np

from diffgen_jax import sharding as sharding_lib
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.data import builders
from diffgen_jax.data.convention import check_pixels

DATASETS = tuple(builders.BUILDERS)  # ("digits", "fashion_mnist", "mnist5k")
DEFAULT_DATA_DIR = os.environ.get("DIFFGEN_DATA_DIR") or os.path.expanduser(
    "~/.cache/diffgen_jax/tfds")
SPLITS = ("train", "validation")
LABEL_MODES = ("class", "none", "pseudo")
IN_MEMORY_BYTES = 2 << 30  # splits up to 2 GiB of uint8 pixels are read into memory once
# Sizes of the built-in training splits, for config checks before anything is prepared.
NOMINAL_TRAIN_SIZES = {"digits": 1438, "fashion_mnist": 60000, "mnist5k": 4000}
_READ_CHUNK = 4096


def resolve_data_dir(data_dir: Optional[str] = None) -> str:
  """data_dir, else $DIFFGEN_DATA_DIR, else ~/.cache/diffgen_jax/tfds."""
  return os.path.expanduser(data_dir or os.environ.get("DIFFGEN_DATA_DIR") or DEFAULT_DATA_DIR)


def _import_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


# ------------------------------------------------------------------------------------------------
# Preparing and opening datasets


def prepare(name: str, data_dir: Optional[str] = None, *, source: Optional[str] = None) -> None:
  """Writes a built-in dataset's array_record files into data_dir unless they are already there.

  Idempotent. tfds generates into `<data_dir>/<tfds name>/incomplete.*` and renames the folder
  when done, so an interrupted preparation leaves no dataset behind and the next call starts over.
  Never downloads anything: sources are local files (see builders.py). `source` overrides the
  source location (fashion_mnist: directory of idx files; mnist5k: the csv.gz file).
  Any other name must already be prepared in data_dir (then this is a no-op); otherwise the error
  lists the built-in names.
  """
  data_dir = resolve_data_dir(data_dir)
  if name not in builders.BUILDERS:
    if is_prepared(name, data_dir):
      return
    raise _unknown_dataset(name, data_dir)
  tfds = _import_tfds()
  builder = builders.BUILDERS[name](data_dir=data_dir, source=source)
  if builder.data_path.exists():
    return
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception:
    # Another process (sharing data_dir) may have finished the same dataset first.
    if not builders.BUILDERS[name](data_dir=data_dir).data_path.exists():
      raise


def tfds_name(name: str) -> str:
  """The tfds name a dataset is stored under (built-ins have their own registered names)."""
  return builders.BUILDERS[name].name if name in builders.BUILDERS else name


def is_prepared(name: str, data_dir: Optional[str] = None) -> bool:
  """Whether `name` (built-in or tfds name, optionally 'name/config:version') is in data_dir."""
  base = tfds_name(name).split(":")[0]
  root = os.path.join(resolve_data_dir(data_dir), base)
  return bool(glob.glob(os.path.join(root, "*", "dataset_info.json")) or
              glob.glob(os.path.join(root, "*", "*", "dataset_info.json")))


def _unknown_dataset(name: str, data_dir: str) -> ValueError:
  return ValueError(
      f"unknown dataset {name!r}: it is not a built-in dataset {DATASETS} and no tfds dataset of "
      f"that name is prepared in data_dir={data_dir!r}. Prepare it there with tfds (file_format="
      "'array_record') on a connected machine, or pick a built-in name.")


@functools.lru_cache(maxsize=16)
def _open(name: str, data_dir: str):
  """(dict of split -> tfds ArrayRecordDataSource, DatasetInfo features)."""
  if name in builders.BUILDERS:
    prepare(name, data_dir)
  elif not is_prepared(name, data_dir):
    raise _unknown_dataset(name, data_dir)
  tfds = _import_tfds()
  sources = tfds.data_source(tfds_name(name), data_dir=data_dir, download=False)
  if not sources:
    raise ValueError(f"dataset {name!r} in {data_dir!r} has no splits")
  features = next(iter(sources.values())).dataset_info.features
  return sources, features


def _source_split(name: str, split: str, available) -> str:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  candidates = ("train",) if split == "train" else ("validation", "test")
  for c in candidates:
    if c in available:
      return c
  raise ValueError(f"dataset {name!r} has no {' or '.join(candidates)} split "
                   f"(it has {sorted(available)})")


@functools.lru_cache(maxsize=8)
def _read_all(name: str, data_dir: str, source_split: str, keys: tuple[str, ...]):
  """Every record of a split as numpy arrays per key (read once, cached, read-only)."""
  source = _open(name, data_dir)[0][source_split]
  cols = {k: [] for k in keys}
  for start in range(0, len(source), _READ_CHUNK):
    for ex in source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source))))):
      for k in keys:
        cols[k].append(ex[k])
  out = {k: np.stack(v) if v else np.zeros((0,)) for k, v in cols.items()}
  for v in out.values():
    v.flags.writeable = False
  return out


class LazyColumn:
  """One feature of a tfds data source, indexable like a numpy array (random access, no caching).

  `rows` maps this column's index to the source's record index (a subset). Integer-array indexing
  returns a stacked numpy array; np.asarray(column) reads everything.
  """

  def __init__(self, source, key: str, rows: Optional[np.ndarray] = None, dtype=None):
    self._source, self._key = source, key
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    first = np.asarray(source[int(self._rows[0]) if self._rows is not None else 0][key])
    self._item_shape = first.shape
    self.dtype = np.dtype(dtype or first.dtype)

  def __len__(self) -> int:
    return len(self._rows) if self._rows is not None else len(self._source)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self),) + tuple(self._item_shape)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def subset(self, rows: np.ndarray) -> "LazyColumn":
    rows = np.asarray(rows, np.int64)
    return LazyColumn(self._source, self._key, rows if self._rows is None else self._rows[rows],
                      self.dtype)

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return self[np.asarray([index])][0]
    idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    flat = idx.reshape(-1).astype(np.int64)
    flat = np.where(flat < 0, flat + len(self), flat)
    if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
      raise IndexError(f"index out of range for a column of length {len(self)}")
    records = flat if self._rows is None else self._rows[flat]
    items = self._source.__getitems__(records.tolist()) if flat.size else []
    out = np.asarray([np.asarray(ex[self._key]) for ex in items], dtype=self.dtype)
    return out.reshape(idx.shape + tuple(self._item_shape))

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


# ------------------------------------------------------------------------------------------------
# Splits, subsets, labels


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


def subset_rows(num_examples: int, subset_size: int, seed: int,
                labels: Optional[np.ndarray] = None) -> np.ndarray:
  """The sorted rows of the training subset of the given size (nested in subset_size)."""
  if isinstance(subset_size, bool) or not isinstance(subset_size, (int, np.integer)):
    raise ValueError(f"subset_size must be an int, got {subset_size!r}")
  if subset_size <= 0 or subset_size > num_examples:
    raise ValueError(f"subset_size={subset_size} must be in 1..{num_examples} (the size of the "
                     "training split); use None for the whole split")
  return np.sort(subset_order(num_examples, seed, labels)[:subset_size])


def load_split(name: str, split: str, *, data_dir: Optional[str] = None,
               subset_size: Optional[int] = None, subset_seed: int = 0,
               labels: Union[str, np.ndarray] = "class", num_classes: Optional[int] = None,
               in_memory: Optional[bool] = None) -> Split:
  """Loads a split, optionally a nested training subset, with class / no / pseudo labels.

  labels: "class" (the dataset's labels), "none" (all 0, num_classes 0), or an integer array of
    pseudo-labels, one per image of the returned split (after subsetting); their num_classes is
    `num_classes` if given, else max + 1.
  in_memory: read the split into numpy (None: when it holds at most IN_MEMORY_BYTES of pixels).
  """
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
    rows = subset_rows(n, subset_size, subset_seed, strat)
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
  return Split(images=images, labels=out_labels, num_classes=k, ids=ids)


def read_pseudo_labels(path: str, split: str) -> np.ndarray:
  """Pseudo-labels for a split from a .npz file holding integer arrays 'train' and 'validation'.

  The train array has one label per image of the training split or subset actually used.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  with np.load(os.path.expanduser(path)) as f:
    if split not in f:
      raise ValueError(f"{path}: no array {split!r} (has {sorted(f.files)}); pseudo-label files "
                       f"hold one integer array per split {SPLITS}")
    return np.asarray(f[split])


# ------------------------------------------------------------------------------------------------
# The batch stream


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  perm = np.random.default_rng([seed, 0, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of epoch `epoch` of the training stream."""
  return _epoch_permutation(int(num_examples), int(seed), int(epoch))


def stream_indices(num_examples: int, step: int, global_batch_size: int, seed: int,
                   rows: slice = slice(None)) -> np.ndarray:
  """Split indices of (rows of) the batch at `step`: stream positions [t*B, (t+1)*B)."""
  if num_examples <= 0:
    raise ValueError("cannot draw batches from an empty split")
  if step < 0 or seed < 0:
    raise ValueError(f"step={step} and seed={seed} must be >= 0")
  pos = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)[rows]
  epochs, offsets = np.divmod(pos, num_examples)
  out = np.empty_like(pos)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = epoch_permutation(num_examples, seed, int(e))[offsets[sel]]
  return out


def flip_mask(step: int, global_batch_size: int, seed: int) -> np.ndarray:
  """Which images of the batch at `step` are mirrored left-right (each with probability 1/2)."""
  return np.random.default_rng([seed, 1, step]).random(global_batch_size) < 0.5


def process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows [p*B/P, (p+1)*B/P) of every global batch, computed by process p of P."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by the "
                     f"{process_count} processes")
  b = global_batch_size // process_count
  return slice(process_index * b, (process_index + 1) * b)


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


def first_images(split: Split, n: Optional[int] = None):
  """The first n images of a split (all by default) in [-1, 1], their labels (None when the split
  has no classes) and ids: the fixed evaluation subsets."""
  n = len(split) if n is None else min(n, len(split))
  rows = np.arange(n)
  labels = np.asarray(split.labels[rows], np.int32) if split.num_classes > 0 else None
  return to_unit_range(split.images[rows]), labels, np.asarray(split.ids[rows])


def host_batch(split: Split, step: int, global_batch_size: int, seed: int, *,
               rows: slice = slice(None), x_flip: bool = False) -> dict:
  """Rows `rows` of the global batch at `step` as host numpy arrays."""
  idx = stream_indices(len(split), step, global_batch_size, seed, rows)
  images = to_unit_range(split.images[idx])
  if x_flip:
    flip = flip_mask(step, global_batch_size, seed)[rows]
    images = np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
  labels = np.asarray(split.labels[idx], dtype=np.int32)
  return {"image": images, "label": labels}


def batch_at(split: Split, step: int, global_batch_size: int, seed: int, *,
             x_flip: bool = False) -> dict:
  """The whole global batch at `step` on the host: a pure function of (seed, step)."""
  return host_batch(split, step, global_batch_size, seed, x_flip=x_flip)


def addressable_rows(sharding, global_batch_size: int, item_shape: tuple[int, ...]) -> slice:
  """The rows of the global batch held by this process's devices under `sharding`.

  For a mesh over jax.devices() (ordered by process) this is process_rows(B, process_index,
  process_count); it is read off the sharding so any device order is handled.
  """
  index_map = sharding.addressable_devices_indices_map((global_batch_size,) + tuple(item_shape))
  spans = sorted({(s[0].indices(global_batch_size)[:2]) for s in index_map.values()})
  lo, hi = spans[0][0], max(stop for _, stop in spans)
  covered = np.zeros(global_batch_size, bool)
  for a, b in spans:
    covered[a:b] = True
  if not covered[lo:hi].all():
    raise ValueError("this process's devices hold non-contiguous rows of the batch; order the "
                     "mesh devices by process")
  return slice(lo, hi)


class BatchIterator:
  """Sharded global batches from `start_step` on: batch t equals batch_at(split, t, B, seed).

  Each process computes only its rows; a background thread keeps up to `prefetch` host batches
  ready (prefetch=0: computed on demand). `step` is the step of the next batch to be returned:
  save it with a checkpoint and pass it back as start_step to resume exactly.
  """

  def __init__(self, split: Split, global_batch_size: int, seed: int, mesh, *,
               start_step: int = 0, x_flip: bool = False, prefetch: int = 2):
    sharding_lib.check_divisible(global_batch_size, mesh, "global_batch_size")
    if start_step < 0:
      raise ValueError(f"start_step={start_step} must be >= 0")
    self.split, self.global_batch_size, self.seed = split, global_batch_size, seed
    self.x_flip = x_flip
    self.sharding = sharding_lib.batch_sharded(mesh)
    self.rows = addressable_rows(self.sharding, global_batch_size, split.shape)
    self.step = start_step
    self._prefetch = prefetch
    self._queue: Optional[queue.Queue] = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    if prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True,
                                      name="diffgen-data-prefetch")
      self._thread.start()

  def _host(self, step: int) -> dict:
    return host_batch(self.split, step, self.global_batch_size, self.seed, rows=self.rows,
                      x_flip=self.x_flip)

  def _produce(self, step: int) -> None:
    while not self._stop.is_set():
      try:
        item = (step, self._host(step))
      except BaseException as e:  # pylint: disable=broad-except
        item = (step, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item[1], BaseException):
        return
      step += 1

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict:
    if self._queue is None:
      host = self._host(self.step)
    else:
      if self._stop.is_set():
        raise StopIteration
      step, host = self._queue.get()
      if isinstance(host, BaseException):
        raise host
      assert step == self.step, (step, self.step)
    b = self.global_batch_size
    out = {k: jax.make_array_from_process_local_data(self.sharding, v, (b,) + v.shape[1:])
           for k, v in host.items()}
    self.step += 1
    return out

  def close(self) -> None:
    """Stops the prefetch thread (the iterator cannot be used afterwards)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    stop = getattr(self, "_stop", None)
    if stop is not None:
      stop.set()


# ------------------------------------------------------------------------------------------------
# Config


def validate_config(data_config, prefix: str = "data") -> None:
  """Checks a data ConfigDict (name, data_dir, subset_size, labels, x_flip) before a run starts.

  Raises ConfigError naming the field (as config.<prefix>.<field>) and what it allows.
  """
  def field(f):
    return f"config.{prefix}.{f}" if prefix else f"config.{f}"

  for f in ("name", "data_dir", "subset_size", "labels", "x_flip"):
    if f not in data_config:
      raise ConfigError(f"{field(f)} is missing")
  data_dir = data_config.data_dir
  if data_dir is not None and not isinstance(data_dir, str):
    raise ConfigError(f"{field('data_dir')}={data_dir!r} must be a path string or None "
                      f"(default: $DIFFGEN_DATA_DIR or {DEFAULT_DATA_DIR})")
  name = data_config.name
  if not isinstance(name, str) or not name:
    raise ConfigError(f"{field('name')}={name!r} must be one of the built-in datasets {DATASETS} "
                      "or the tfds name of a dataset prepared in data_dir")
  if name not in DATASETS and not is_prepared(name, data_dir):
    raise ConfigError(f"{field('name')}={name!r} is neither a built-in dataset {DATASETS} nor a "
                      f"tfds dataset prepared (array_record) in data_dir="
                      f"{resolve_data_dir(data_dir)!r}")
  labels = data_config.labels
  if labels not in LABEL_MODES:
    raise ConfigError(f"{field('labels')}={labels!r} is not one of the allowed values "
                      f"{LABEL_MODES}")
  if labels == "pseudo":
    path = data_config.get("pseudo_labels")
    if not path or not isinstance(path, str):
      raise ConfigError(f"{field('labels')}='pseudo' needs {field('pseudo_labels')}: a .npz file "
                        f"with integer arrays {SPLITS} (see data.read_pseudo_labels)")
    if not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"{field('pseudo_labels')}={path!r} does not exist")
  if "subset_seed" in data_config and (
      isinstance(data_config.subset_seed, bool) or not isinstance(data_config.subset_seed, int)
      or data_config.subset_seed < 0):
    raise ConfigError(f"{field('subset_seed')}={data_config.subset_seed!r} must be an int >= 0")
  if not isinstance(data_config.x_flip, bool):
    raise ConfigError(f"{field('x_flip')}={data_config.x_flip!r} must be True or False")
  subset_size = data_config.subset_size
  if subset_size is not None and (isinstance(subset_size, bool) or
                                  not isinstance(subset_size, int) or subset_size < 0):
    raise ConfigError(f"{field('subset_size')}={subset_size!r} must be 0 or None (the whole "
                      "training split) or a positive int")
  if subset_size:
    available = _train_size(name, data_dir)
    if available is not None and subset_size > available:
      raise ConfigError(f"{field('subset_size')}={subset_size} exceeds the {available} images "
                        f"of {name!r}'s training split")


def _train_size(name: str, data_dir: Optional[str]) -> Optional[int]:
  """Size of the training split: from the prepared dataset's info, else the nominal size."""
  data_dir = resolve_data_dir(data_dir)
  if is_prepared(name, data_dir):
    try:
      sources, _ = _open(name, data_dir)
      return len(sources["train"])
    except Exception:  # pylint: disable=broad-except
      return None
  return NOMINAL_TRAIN_SIZES.get(name)
