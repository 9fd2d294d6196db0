"""Feature extractors for the Frechet distance and 1-nearest-neighbour probes.

Every extractor is a function `features_fn(images) -> (B, F)` with images (B, H, W, C) in [-1, 1]:
  * `pixel_features`: the flattened pixels.
  * A small CNN classifier (`SmallCNN`, flax.linen) that the package trains on a dataset's training
    split, offline, like Inception for FID: `train_classifier` -> (params, accuracy);
    `classifier_features(params)` is its penultimate layer (after the ReLU). Parameters are saved
    and loaded as .npz (`save_params` / `load_params`: one array per parameter, keys are the
    '/'-joined parameter paths); the architecture is read back from the parameter shapes.
  * Any other extractor (Inception-V3, DINOv2, SSCD, in any framework; a feature hook,
    `hooks.load_features_factory`): `host_features(extract)` runs it on the host, outside jit,
    on numpy batches. We ship no such network and never download weights.
`batched_features` applies any extractor over a large array or a source (e.g. a lazily decoded
split, `sharding.LazyRows`) in fixed-size batches, each split over a mesh's data axis with every
process reading only its rows; `batch_features` extracts the features of a batch already on the
devices (sampler outputs), gathered once. `train_classifier` reads its batches from an array or a
source, one batch at a time (the split is never held whole).
"""

from __future__ import annotations

import errno
import os
import zipfile
from typing import Any, Callable, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from diffgen_jax import jsonio, progress
from diffgen_jax.checks import check_number
from diffgen_jax.data.convention import check_images
from diffgen_jax.sharding import LazyRows, batch_multiple, fetch, put_batch, read_rows

FeaturesFn = Callable[[jax.Array], jax.Array]


def pixel_features(images) -> jax.Array:
  """(B, H, W, C) float images in [-1, 1] (samples may overshoot) -> (B, H*W*C); ValueError for
  images on another scale (data/convention.py)."""
  check_images(images, "images", lenient=True)
  images = jnp.asarray(images)
  return images.reshape(images.shape[0], -1)


def batch_features(features_fn: FeaturesFn, batch) -> np.ndarray:
  """(B, F) float32 features of one batch of images (B, H, W, C), on the host of every process:
  features_fn runs where the batch lives (a batch split over a mesh stays split; each device
  extracts the features of its rows) and the (B, F) result is gathered once (`sharding.fetch`)."""
  feats = fetch(features_fn(batch))
  return feats.reshape(feats.shape[0], -1).astype(np.float32)


def _is_array(images) -> bool:
  return isinstance(images, (np.ndarray, jax.Array)) or not hasattr(images, "shape")


def batched_features(features_fn: FeaturesFn, images, batch_size: int = 256, *,
                     mesh=None) -> np.ndarray:
  """features_fn over N images in batches of a fixed size (the last one padded): (N, F) float32.

  images: (N, H, W, C) float images in [-1, 1] (samples may overshoot; ValueError for another
    scale, data/convention.py): an array, checked whole, or a source (len(), .shape, indexing by
    an int array returning numpy rows, e.g. `sharding.LazyRows` over a lazily decoded split),
    checked batch by batch as it is read.
  batch_size: images per call, an integer >= 1, rounded up to a multiple of the mesh's data axis.
  mesh: optional; each batch is split over its data axis (`sharding.put_batch`: every process
    reads only the rows its devices hold) and the features are gathered once per batch. Without a
    mesh, on the default device. The numbers do not depend on it beyond float rounding.
  Raises ValueError for no images or a batch_size that is not an integer >= 1.
  """
  check_number(batch_size, "batch_size", low=1, integer=True)
  if _is_array(images):
    images = check_images(np.asarray(images), "images", lenient=True)
    check = None
  else:
    check_images(np.zeros((0,) + tuple(images.shape[1:]), np.float32), "images", lenient=True)
    check = lambda rows: check_images(rows, "images", lenient=True)
  n = len(images)
  if n == 0:
    raise ValueError("no images")
  batch = batch_multiple(min(batch_size, n), mesh)
  out = []
  with progress.track("features", n, "images") as bar:
    for start in range(0, n, batch):
      rows = np.minimum(np.arange(start, start + batch), n - 1)
      x = put_batch(LazyRows(images, rows, transform=check), mesh)
      keep = min(batch, n - start)
      out.append(batch_features(features_fn, x)[:keep])
      bar.update(keep)
  return np.concatenate(out)


# ------------------------------------------------------------------------------------------------
# The small CNN classifier


class SmallCNN(nn.Module):
  """conv3x3(w) - relu - avgpool2 - conv3x3(2w) - relu - avgpool2 - global mean - dense(F) - relu
  (the features) - dense(num_classes)."""
  num_classes: int
  width: int = 32
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x, features_only: bool = False):
    for i, w in enumerate((self.width, 2 * self.width)):
      x = nn.relu(nn.Conv(w, (3, 3), name=f"Conv_{i}")(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jnp.mean(x, axis=(1, 2))
    x = nn.relu(nn.Dense(self.feature_dim, name="Dense_0")(x))
    if features_only:
      return x
    return nn.Dense(self.num_classes, name="Dense_1")(x)


def _module_from_params(params) -> SmallCNN:
  p = params["params"] if "params" in params else params
  return SmallCNN(num_classes=int(p["Dense_1"]["kernel"].shape[-1]),
                  width=int(p["Conv_0"]["kernel"].shape[-1]),
                  feature_dim=int(p["Dense_0"]["kernel"].shape[-1]))


def train_classifier(images, labels, num_classes: int, steps: int = 2000, seed: int = 0, *,
                     batch_size: int = 128, learning_rate: float = 1e-3, width: int = 32,
                     feature_dim: int = 128, val_images=None, val_labels=None
                     ) -> Tuple[Any, float]:
  """Trains `SmallCNN` with Adam on (images in [-1, 1], integer labels), on the default device.

  images, val_images: (N, H, W, C) float images in [-1, 1]: arrays (checked whole) or sources
    (len(), .shape, indexing by an int array returning numpy rows, e.g. `sharding.LazyRows` over
    a lazily decoded split or a subset of its rows), read one batch at a time and checked as read:
    the images are never held whole (host memory: one batch). labels, val_labels: (N,) ints.
  Batches are drawn from seeded per-epoch permutations (deterministic for a seed; an array and a
  source of the same images give the same parameters).
  Returns (params, accuracy): accuracy on (val_images, val_labels) when given, else on the
  training images.
  Raises ValueError for images off the convention, labels of another shape or outside
  [0, num_classes), num_classes < 2, or steps / batch_size / learning_rate out of range.
  """
  check_number(steps, "steps", low=1, integer=True)
  check_number(batch_size, "batch_size", low=1, integer=True)
  check_number(learning_rate, "learning_rate", low=0.0, low_open=True)
  check = lambda rows, name: check_images(rows, name)
  for name, x in (("images", images), ("val_images", val_images)):
    if x is not None and _is_array(x):
      check(x, name)
  if _is_array(images):
    images = np.asarray(images, np.float32)
    read = lambda idx: images[idx]
  else:
    read = lambda idx: np.asarray(check(read_rows(images, idx, "images"), "images"), np.float32)
  labels = np.asarray(labels, np.int32)
  n = images.shape[0]
  if len(images.shape) != 4 or labels.shape != (n,):
    raise ValueError(f"images must be (N, H, W, C) and labels (N,), got {tuple(images.shape)}, "
                     f"{labels.shape}")
  if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}) with num_classes >= 2")
  model = SmallCNN(num_classes, width, feature_dim)
  params = model.init(jax.random.key(seed), jnp.zeros((1,) + tuple(images.shape[1:]), jnp.float32))
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch = min(batch_size, n)
  rng = np.random.default_rng(seed)
  order = np.empty(0, np.int64)
  with progress.track("feature classifier", steps, "steps") as bar:
    for _ in range(steps):
      if order.size < batch:
        order = np.concatenate([order, rng.permutation(n)])
      idx, order = order[:batch], order[batch:]
      params, opt_state = train_step(params, opt_state, jnp.asarray(read(idx)),
                                     jnp.asarray(labels[idx]))
      bar.update(1)
  if val_images is not None:
    eval_images = np.asarray(val_images, np.float32) if _is_array(val_images) else val_images
    eval_labels = np.asarray(val_labels)
  else:
    eval_images, eval_labels = images, labels
  logits = batched_features(jax.jit(lambda x: model.apply(params, x)), eval_images, batch_size)
  accuracy = float(np.mean(np.argmax(logits, axis=1) == eval_labels))
  return params, accuracy


def classifier_features(params) -> FeaturesFn:
  """images -> (B, feature_dim): the classifier's penultimate layer (the architecture is read from
  the parameter shapes)."""
  model = _module_from_params(params)
  return jax.jit(lambda x: model.apply(params, x, features_only=True))


def save_params(path: str, params) -> str:
  """Saves a params pytree (nested dicts of arrays) as .npz with '/'-joined keys, atomically (a
  reader never sees half a file); returns the path."""
  path = os.path.expanduser(path)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  with jsonio.atomic_open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})
  return path


def _require(path: str, what: str) -> str:
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(errno.ENOENT, f"{what} not found (weights are never downloaded: put "
                            f"them at this local path)", path)
  return path


def load_params(path: str) -> Any:
  """Loads params saved by `save_params` (.npz) or a flax msgpack file (.msgpack).

  Raises FileNotFoundError naming the path when it does not exist, and jsonio.DamagedFileError
  naming it when it is not a whole file of either kind (cut, damaged: the .npz members' CRC-32
  is checked as they are read).
  """
  path = _require(path, "parameter file")
  try:
    if path.endswith(".msgpack"):
      with open(path, "rb") as f:
        return serialization.msgpack_restore(f.read())
    with np.load(path) as f:
      flat = {k: jnp.asarray(f[k]) for k in f.files}
  except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as err:
    raise jsonio.DamagedFileError(
        f"{os.path.abspath(path)} is not a whole parameter file ({type(err).__name__}: {err}): "
        f"write it again (`save_params`, or flax.serialization.to_bytes for .msgpack)") from None
  return traverse_util.unflatten_dict(flat, sep="/")


def load_classifier_features(path: str) -> FeaturesFn:
  """The penultimate-layer extractor of a classifier saved with `save_params`."""
  return classifier_features(load_params(path))


def host_features(extract: Callable[[np.ndarray], Any]) -> FeaturesFn:
  """An extractor of any framework as a features_fn of this module, run on the host outside jit.

  extract(images) -> (B, F): images numpy float32 (B, H, W, C) in [-1, 1] (samples may
  overshoot), features anything np.asarray reads (numpy, jax, a CPU torch tensor's .numpy()).
  The returned features_fn gathers each batch to the host of every process (`sharding.fetch`: a
  batch split over a mesh across processes is gathered whole, so each process extracts the same
  features of the whole batch) and returns numpy float32 (B, F). Raises ValueError when a batch's
  features are not (B, F) with F >= 1 or hold NaN or Inf (the Frechet distance would be NaN).
  """
  def features_fn(images) -> np.ndarray:
    batch = fetch(images).astype(np.float32, copy=False)
    out = np.asarray(extract(batch))
    if out.ndim != 2 or out.shape[0] != batch.shape[0] or out.shape[1] < 1:
      raise ValueError(f"the feature extractor gave features of shape {out.shape} for "
                       f"{batch.shape[0]} images of shape {batch.shape[1:]}; they must be "
                       f"({batch.shape[0]}, F)")
    out = out.astype(np.float32)
    if not np.all(np.isfinite(out)):
      raise ValueError(f"the feature extractor gave NaN or Inf features for a batch of "
                       f"{batch.shape[0]} images")
    return out

  return features_fn
