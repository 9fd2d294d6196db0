"""Memorization of samples (Gu et al. 2023): a sample is a copy of a training image when its nearest
training image is closer than `ratio` (1/3) times the distance to the second nearest (Euclidean,
in pixels; `neighbours.nearest_neighbours`). The validation split's copy fraction is the control.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from diffgen_jax.evaluation.neighbours import nearest_neighbours



def copy_flags(samples, train_images, ratio: float = 1.0 / 3.0, *,
               chunk_size: int = 2048) -> np.ndarray:
  """(Q,) bool: d(nearest training image) < ratio * d(second nearest) (Gu et al. 2023)."""
  _, dist = nearest_neighbours(samples, train_images, 2, chunk_size=chunk_size)
  return dist[:, 0] < ratio * dist[:, 1]


def copy_fraction(samples, train_images, ratio: float = 1.0 / 3.0, *,
                  chunk_size: int = 2048) -> float:
  """Fraction of samples that are copies of a training image (see `copy_flags`)."""
  return float(np.mean(copy_flags(samples, train_images, ratio, chunk_size=chunk_size)))


def memorization(samples, train_images, val_images, ratio: float = 1.0 / 3.0, *,
                 chunk_size: int = 2048) -> Dict[str, float]:
  """Copy fraction of the samples and, as control, of validation images against the training set."""
  return {"samples": copy_fraction(samples, train_images, ratio, chunk_size=chunk_size),
          "validation_control": copy_fraction(val_images, train_images, ratio,
                                              chunk_size=chunk_size)}
