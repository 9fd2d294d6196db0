"""Dataset sources: preparing the built-in datasets and opening any tfds dataset without a network.

Built-in datasets (`DATASETS`) are prepared on first use by our tfds builders into `data_dir`; any
other name must already be prepared there by tfds in array_record format (e.g. `cifar10` or
`downsampled_imagenet/64x64` prepared on a connected machine with `file_format="array_record"`).
Both are read with `tfds.data_source(..., download=False)`, which needs neither TensorFlow nor a
network. Splits small enough (`IN_MEMORY_BYTES`) are read into numpy once and cached; larger ones
stay lazy (`LazyColumn`: random access by index into the array_record files).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
from typing import Optional

import numpy as np

from diffgen_jax.data import builders
from diffgen_jax.data.files import DataFileError

DATASETS = tuple(builders.BUILDERS)  # ("digits", "fashion_mnist", "mnist5k")
DEFAULT_DATA_DIR = os.environ.get("DIFFGEN_DATA_DIR") or os.path.expanduser(
    "~/.cache/diffgen_jax/tfds")
SPLITS = ("train", "validation")
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
  if name.startswith("edm_zip:"):
    return  # EDM dataset zips are read as they are (data.edm_zip)
  data_dir = resolve_data_dir(data_dir)
  if name not in builders.BUILDERS:
    if is_prepared(name, data_dir):
      return
    raise _unknown_dataset(name, data_dir)
  tfds = _import_tfds()
  with _opening(name, data_dir):  # reads a prepared dataset's dataset_info.json
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
  with _opening(name, data_dir):
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


_REPREPARE = ("Delete {root} and run again: a built-in dataset is prepared anew; another tfds "
              "dataset must be prepared again with tfds (file_format='array_record').")


@contextlib.contextmanager
def _opening(name: str, data_dir: str):
  """Turns tfds's errors on reading a prepared dataset's info files (a damaged dataset_info.json)
  into a DataFileError naming the dataset's directory and what to do."""
  from google.protobuf import json_format  # pylint: disable=import-outside-toplevel  (tfds's)
  try:
    yield
  except (OSError, RuntimeError, ValueError, json_format.Error) as err:
    root = os.path.join(data_dir, tfds_name(name).split(":")[0])
    raise DataFileError(f"the prepared dataset {name!r} in {root} cannot be opened "
                        f"({type(err).__name__}: {err}): its files (dataset_info.json) are damaged "
                        f"or not array_record. {_REPREPARE.format(root=root)}") from err


def _records(source, rows: list) -> list:
  """The records `rows` of a tfds data source (its `__getitems__`); a damaged, cut or missing
  record file raises DataFileError naming the split's files and what to do."""
  try:
    return source.__getitems__(rows)
  except (RuntimeError, OSError, ValueError) as err:  # array_record's reader: RuntimeError
    _open.cache_clear()  # the next use opens the files again (prepared anew once deleted)
    info = source.dataset_info
    files = sorted(glob.glob(os.path.join(info.data_dir, f"*-{source.split}.array_record*")))
    raise DataFileError(
        f"the {source.split} records of the prepared dataset {info.name!r} cannot be read "
        f"({type(err).__name__}: {err}): a record file is damaged or missing (the split's files: "
        f"{', '.join(files) or 'none'}). "
        f"{_REPREPARE.format(root=info.data_dir)}") from err


@functools.lru_cache(maxsize=8)
def _read_all(name: str, data_dir: str, source_split: str, keys: tuple[str, ...]):
  """Every record of a split as numpy arrays per key (read once, cached, read-only)."""
  source = _open(name, data_dir)[0][source_split]
  cols = {k: [] for k in keys}
  for start in range(0, len(source), _READ_CHUNK):
    for ex in _records(source, list(range(start, min(start + _READ_CHUNK, len(source))))):
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
    first_row = int(self._rows[0]) if self._rows is not None else 0
    first = np.asarray(_records(source, [first_row])[0][key])
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
    items = _records(self._source, records.tolist()) if flat.size else []
    out = np.asarray([np.asarray(ex[self._key]) for ex in items], dtype=self.dtype)
    return out.reshape(idx.shape + tuple(self._item_shape))

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(len(self))]
    return out if dtype is None else out.astype(dtype)


def train_size(name: str, data_dir: Optional[str]) -> Optional[int]:
  """Size of the training split: from the prepared dataset's info, else the nominal size."""
  data_dir = resolve_data_dir(data_dir)
  if is_prepared(name, data_dir):
    try:
      sources, _ = _open(name, data_dir)
      return len(sources["train"])
    except Exception:  # pylint: disable=broad-except
      return None
  return NOMINAL_TRAIN_SIZES.get(name)
