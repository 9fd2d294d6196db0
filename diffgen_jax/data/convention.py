"""The package's image convention, and the check every public function taking images runs.

Images are floating point, NHWC (N, H, W, C), with values in [-1, 1]: uint8 pixels p map to
p / 127.5 - 1 (`data.to_unit_range`, the one home of that scaling). A function given images on
another scale would return a number without complaint (a copy fraction of 0 instead of 1, a
Frechet distance in the wrong units), so each one checks its images with `check_images` and says
which convention it got. What the check can tell apart: integer pixels (any dtype), floats on the
0..255 scale, NaN or Inf, and a wrong rank. It cannot tell float images in [0, 1] from images in
[-1, 1] that happen to be non-negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CONVENTION = "floating-point images in [-1, 1], NHWC (N, H, W, C)"
# Clean images (data, references) must lie in [-1, 1] up to rounding.
CLEAN_TOLERANCE = 1e-4
# Samples (and synthetic data) may overshoot [-1, 1]; beyond this they are on another scale.
SAMPLE_LIMIT = 10.0


def _value_range(images):
  """(min, max, all finite) on the host; None for arrays not addressable from this process."""
  if isinstance(images, jax.Array) and not images.is_fully_addressable:
    return None
  a = np.asarray(images)
  return float(a.min()), float(a.max()), bool(np.all(np.isfinite(a)))


def check_images(images, name: str = "images", *, lenient: bool = False, nhwc: bool = True,
                 check_range: bool = True):
  """Returns `images` unchanged if they follow the convention, else raises ValueError.

  Args:
    images: the images (numpy or jax array; traced values are only checked for dtype and rank).
    name: the argument's name, used in the error.
    lenient: True for images that may overshoot [-1, 1] (sampler outputs, synthetic data such as
      Gaussians): values up to SAMPLE_LIMIT in magnitude pass, so only another scale (0..255) is
      caught; False for clean images (data, reference sets), which must lie in [-1, 1].
    nhwc: require rank 4 (N, H, W, C); False accepts any (N, ...).
    check_range: False skips the value range (for functions that also take points or features,
      which have no pixel scale); dtype and finiteness are still checked.

  Raises:
    ValueError naming `name`, the convention and what was given (dtype, shape, value range).
  """
  shape = tuple(np.shape(images))
  dtype = np.dtype(getattr(images, "dtype", None) or np.asarray(images).dtype)
  if nhwc and len(shape) != 4:
    raise ValueError(f"{name} must be {CONVENTION}; got shape {shape}")
  if not nhwc and len(shape) < 1:
    raise ValueError(f"{name} must be {CONVENTION}; got a scalar")
  if isinstance(images, jax.core.Tracer):
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{name} must be {CONVENTION}; got dtype {dtype}")
    return images
  if 0 in shape:
    return images
  value_range = _value_range(images)
  if value_range is None:  # a multi-host array: dtype and rank only
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{name} must be {CONVENTION}; got dtype {dtype}")
    return images
  lo, hi, finite = value_range
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name} must be {CONVENTION}; got {dtype} pixels in [{lo:g}, {hi:g}]: "
                     "convert them with diffgen_jax.data.to_unit_range")
  if not finite:
    raise ValueError(f"{name} must be {CONVENTION}; got NaN or Inf values")
  limit = SAMPLE_LIMIT if lenient else 1.0 + CLEAN_TOLERANCE
  if check_range and (lo < -limit or hi > limit):
    scale = " (the 0..255 scale?)" if hi > 2.0 and lo >= -CLEAN_TOLERANCE else ""
    raise ValueError(f"{name} must be {CONVENTION}; got {dtype} values in [{lo:.4g}, {hi:.4g}]"
                     f"{scale}{'' if lenient else '; clean images must lie in [-1, 1]'}")
  return images


def check_pixels(pixels, name: str = "images") -> None:
  """uint8-style pixels: an integer dtype with values in [0, 255] (the input of to_unit_range)."""
  dtype = np.asarray(pixels).dtype if not hasattr(pixels, "dtype") else np.dtype(pixels.dtype)
  a = np.asarray(pixels)
  if not np.issubdtype(dtype, np.integer):
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    hint = " (already in [-1, 1]?)" if a.size and -1.0 <= lo and hi <= 1.0 else ""
    raise ValueError(f"{name} must be integer pixels in [0, 255] (e.g. uint8) to be scaled to "
                     f"[-1, 1]; got {dtype} values in [{lo:.4g}, {hi:.4g}]{hint}")
  if a.size and (a.min() < 0 or a.max() > 255):
    raise ValueError(f"{name} must be integer pixels in [0, 255]; got values in "
                     f"[{a.min()}, {a.max()}]")
