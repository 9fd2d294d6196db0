"""Memorization of samples (Gu et al. 2023): a sample is a copy of a training image when its nearest
training image is closer than `ratio` (1/3) times the distance to the second nearest *distinct*
training image (Euclidean, in pixels; `neighbours.nearest_neighbours`). Duplicated training images
count once: a training image present twice would otherwise be both neighbours of its exact copy
(distances 0 and 0) and hide it. The validation split's copy fraction is the control. Images are
float NHWC in [-1, 1] (data/convention.py).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from diffgen_jax.checks import check_number
from diffgen_jax.data.convention import check_images
from diffgen_jax.evaluation.neighbours import nearest_neighbours


def distinct_images(images) -> Tuple[np.ndarray, np.ndarray, int]:
  """(distinct rows, for each distinct row the index of its first occurrence, number of duplicates).

  Rows equal in every value are one image (-0.0 and 0.0 are equal); order of first occurrence kept.
  """
  a = np.asarray(images)
  flat = np.ascontiguousarray(a.reshape(a.shape[0], -1) + 0.0)  # + 0.0: -0.0 becomes 0.0
  _, first = np.unique(flat, axis=0, return_index=True)
  first = np.sort(first)
  return a[first], first, a.shape[0] - first.size


def nearest_distinct(samples, train_images, *, chunk_size: int = 2048
                     ) -> Tuple[np.ndarray, np.ndarray, int]:
  """The nearest and the second-nearest *distinct* training image of every sample.

  A training image present twice would otherwise be both neighbours of its exact copy (distances
  0 and 0), and the ratio test would not flag the copy. Returns (indices (Q, 2) into train_images,
  first occurrences; distances (Q, 2); number of duplicate rows in train_images). Raises
  ValueError if the training set has fewer than 2 distinct images.
  """
  distinct, first, duplicates = distinct_images(train_images)
  if distinct.shape[0] < 2:
    raise ValueError(f"the copy test needs at least 2 distinct training images, got "
                     f"{distinct.shape[0]}")
  idx, dist = nearest_neighbours(samples, distinct, 2, chunk_size=chunk_size)
  return first[idx], dist, duplicates


def copy_flags(samples, train_images, ratio: float = 1.0 / 3.0, *,
               chunk_size: int = 2048) -> np.ndarray:
  """(Q,) bool: d(nearest training image) < ratio * d(second nearest distinct one) (Gu et al. 2023).

  samples: (Q, H, W, C) generated images, train_images: (N, H, W, C) training images, both float
  in [-1, 1] (data/convention.py; ValueError otherwise, e.g. for uint8 pixels or 0..255 floats).
  Other (N, ...) float arrays (points, features) are taken as they are, without a pixel scale.
  ratio in (0, 1). Duplicated training images count once (`nearest_distinct`).
  """
  images = np.ndim(samples) == 4 and np.ndim(train_images) == 4
  check_images(samples, "samples", lenient=True, nhwc=False, check_range=images)
  check_images(train_images, "train_images", nhwc=False, check_range=images)
  check_number(ratio, "ratio", low=0.0, high=1.0, low_open=True, high_open=True)
  _, dist, _ = nearest_distinct(samples, train_images, chunk_size=chunk_size)
  return dist[:, 0] < ratio * dist[:, 1]


def copy_fraction(samples, train_images, ratio: float = 1.0 / 3.0, *,
                  chunk_size: int = 2048) -> float:
  """Fraction of samples that are copies of a training image (see `copy_flags`)."""
  return float(np.mean(copy_flags(samples, train_images, ratio, chunk_size=chunk_size)))


def memorization(samples, train_images, val_images, ratio: float = 1.0 / 3.0, *,
                 chunk_size: int = 2048) -> Dict[str, float]:
  """Copy fraction of the samples and, as control, of validation images against the training set,
  with the number of duplicated training images (counted once by the copy test)."""
  check_images(val_images, "val_images", nhwc=False, check_range=np.ndim(val_images) == 4)
  return {"samples": copy_fraction(samples, train_images, ratio, chunk_size=chunk_size),
          "validation_control": copy_fraction(val_images, train_images, ratio,
                                              chunk_size=chunk_size),
          "training_duplicates": distinct_images(train_images)[2]}
