"""Memorization of samples (Gu et al. 2023): a sample is a copy of a training image when its nearest
training image is closer than `ratio` (1/3) times the distance to the second nearest *distinct*
training image (Euclidean, in pixels; `neighbours.nearest_neighbours`). Duplicated training images
count once: a training image present twice would otherwise be both neighbours of its exact copy
(distances 0 and 0) and hide it. The validation split's copy fraction is the control. Images are
float NHWC in [-1, 1] (data/convention.py).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh

from diffgen_jax.checks import check_number
from diffgen_jax.data.convention import check_images
from diffgen_jax.evaluation.neighbours import nearest_neighbours
from diffgen_jax.sharding import (DATA_AXIS, LazyRows, blocks, counted_rows, host_block,
                                  padded_rows, read_rows, sum_counted, training_source)


class DistinctRows(NamedTuple):
  """The distinct rows of a training set, as `first_occurrences` finds them."""
  first: np.ndarray  # (M,) int64, ascending: the index of each distinct row's first occurrence
  duplicates: int  # N - M: rows equal to an earlier row


def _canonical(rows) -> np.ndarray:
  # + 0.0: -0.0 becomes 0.0, so the bytes of equal values are equal (NaN is never equal, below).
  return np.ascontiguousarray(np.asarray(rows).reshape(len(rows), -1) + 0.0)


def first_occurrences(images, *, mesh: Optional[Mesh] = None, axis: str = DATA_AXIS,
                      check=None) -> DistinctRows:
  """The first occurrence of every distinct row of a training set, and the number of duplicates.

  Rows equal in every value are one image (-0.0 and 0.0 are equal; a row with NaN equals no row:
  np.unique(axis=0)'s rule); order of first occurrence kept. images: an (N, ...) array or source
  (len(), .shape, indexing by a slice or an int array), never held whole: each process hashes the
  rows its devices would hold over the mesh's `axis` (all rows without a mesh), block by block
  (check(rows) is called on each block read), the (N,) hashes are added over processes, and only
  rows whose hash another row shares are read again, by every process, to be compared exactly.
  Raises ValueError (on every process) when `check` raises on any.
  """
  source, n, item_shape = training_source(images, "train_images")
  mine = counted_rows(np.arange(n), n, padded_rows(n, 1, mesh, axis)[1], mesh, axis)
  d = int(np.prod(item_shape))
  # The 64-bit hash of each row, as two 32-bit halves in float64 (exact integers), so that the
  # float64 sum over processes (`sharding.sum_counted`) gathers them: every row is hashed by
  # exactly one process (by each, without a mesh across processes: then nothing is added).
  halves = np.zeros((n, 2))
  error = None
  for piece in blocks(mine, host_block(n, d)):
    rows = read_rows(source, piece)
    try:
      if check is not None:
        check(rows)
    except ValueError as e:  # raised below on every process, none left waiting in the sum
      error = e
      break
    digests = [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in _canonical(rows)]
    h = np.frombuffer(b"".join(digests), np.uint64)
    halves[piece, 0], halves[piece, 1] = h >> np.uint64(32), h & np.uint64(0xFFFFFFFF)
  summed = sum_counted(np.concatenate([halves.reshape(-1), [float(error is not None)]]), mesh)
  if summed[-1]:
    raise error or ValueError("train_images: another process found invalid rows (see its error)")
  halves = summed[:-1].reshape(n, 2).astype(np.uint64)
  hashes = (halves[:, 0] << np.uint64(32)) | halves[:, 1]
  by_hash = np.argsort(hashes, kind="stable")  # equal hashes: ascending row order
  starts = np.flatnonzero(np.concatenate([[True], hashes[by_hash][1:] != hashes[by_hash][:-1]]))
  keep = np.ones(n, bool)
  for group in np.split(by_hash, starts[1:]):
    if len(group) < 2:
      continue
    rows = _canonical(read_rows(source, group))  # rows sharing a hash: compared value by value
    kept = []
    for i, row in zip(group, rows):
      if any(np.array_equal(row, other) for other in kept):
        keep[i] = False
      else:
        kept.append(row)
  first = np.flatnonzero(keep)
  return DistinctRows(first, n - len(first))


def _distinct_reference(train_images, mesh, axis, check=None):
  """(source of the distinct training rows, DistinctRows): the set itself when it has no
  duplicates, else its distinct rows read lazily (`sharding.LazyRows`)."""
  source, _, _ = training_source(train_images, "train_images")
  distinct = first_occurrences(source, mesh=mesh, axis=axis, check=check)
  if len(distinct.first) < 2:
    raise ValueError(f"the copy test needs at least 2 distinct training images, got "
                     f"{len(distinct.first)}")
  reference = source if distinct.duplicates == 0 else LazyRows(source, distinct.first)
  return reference, distinct


def _nearest_two(samples, reference, distinct, chunk_size, mesh, axis):
  idx, dist = nearest_neighbours(samples, reference, 2, chunk_size=chunk_size, mesh=mesh,
                                 axis=axis)
  return distinct.first[idx], dist


def nearest_distinct(samples, train_images, *, chunk_size: int = 2048,
                     mesh: Optional[Mesh] = None, axis: str = DATA_AXIS
                     ) -> Tuple[np.ndarray, np.ndarray, int]:
  """The nearest and the second-nearest *distinct* training image of every sample.

  A training image present twice would otherwise be both neighbours of its exact copy (distances
  0 and 0), and the ratio test would not flag the copy. train_images: an array or a source read
  block by block (with a mesh each process reads its share; `first_occurrences`,
  `neighbours.nearest_neighbours`). Returns (indices (Q, 2) into train_images, first occurrences;
  distances (Q, 2); number of duplicate rows in train_images). Raises ValueError if the training
  set has fewer than 2 distinct images.
  """
  reference, distinct = _distinct_reference(train_images, mesh, axis)
  idx, dist = _nearest_two(samples, reference, distinct, chunk_size, mesh, axis)
  return idx, dist, distinct.duplicates


def _checked_reference(samples, train_images, mesh, axis):
  """The copy test's input checks and its distinct training rows (`_distinct_reference`): an
  array is checked whole, a source block by block as it is read."""
  images = len(np.shape(samples)) == 4 and len(np.shape(train_images)) == 4
  check_images(samples, "samples", lenient=True, nhwc=False, check_range=images)
  check = lambda rows: check_images(rows, "train_images", nhwc=False, check_range=images)
  if isinstance(train_images, (np.ndarray, jax.Array)) or not hasattr(train_images, "shape"):
    check(train_images)
    check = None
  return _distinct_reference(train_images, mesh, axis, check)


def _flags(samples, reference, distinct, ratio, chunk_size, mesh, axis) -> np.ndarray:
  _, dist = _nearest_two(samples, reference, distinct, chunk_size, mesh, axis)
  return dist[:, 0] < ratio * dist[:, 1]


def copy_flags(samples, train_images, ratio: float = 1.0 / 3.0, *, chunk_size: int = 2048,
               mesh: Optional[Mesh] = None, axis: str = DATA_AXIS) -> np.ndarray:
  """(Q,) bool: d(nearest training image) < ratio * d(second nearest distinct one) (Gu et al. 2023).

  samples: (Q, H, W, C) generated images, train_images: (N, H, W, C) training images, both float
  in [-1, 1] (data/convention.py; ValueError otherwise, e.g. for uint8 pixels or 0..255 floats).
  Other (N, ...) float arrays (points, features) are taken as they are, without a pixel scale.
  train_images may be a source, read block by block (checked as read); with a mesh each process
  reads its share. ratio in (0, 1). Duplicated training images count once (`nearest_distinct`).
  """
  check_number(ratio, "ratio", low=0.0, high=1.0, low_open=True, high_open=True)
  reference, distinct = _checked_reference(samples, train_images, mesh, axis)
  return _flags(samples, reference, distinct, ratio, chunk_size, mesh, axis)


def copy_fraction(samples, train_images, ratio: float = 1.0 / 3.0, *, chunk_size: int = 2048,
                  mesh: Optional[Mesh] = None, axis: str = DATA_AXIS) -> float:
  """Fraction of samples that are copies of a training image (see `copy_flags`)."""
  return float(np.mean(copy_flags(samples, train_images, ratio, chunk_size=chunk_size, mesh=mesh,
                                  axis=axis)))

