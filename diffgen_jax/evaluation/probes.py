"""Trajectory probes (paper.md section 6).

* Early-stopped sampling: the output of sampling stopped at step i is D(x_i; sigma_i), which is
  exactly `trajectory.denoised[i]` of one full sampler run with `return_trajectory=True`;
  `samples.evaluate_denoiser` turns those into G_FD(sigma_i).
* Trajectory overlap (`trajectory_overlap`): at each sampling step, how close trajectory states are
  to the training set compared with noisy training samples y_train + sigma n and noisy validation
  samples y_val + sigma n at the same sigma:
    - nn_rms: ||x - y_nn|| / sqrt(D), the root-mean-square per-pixel distance to the nearest
      training image (-> 0 for noisy training samples as sigma -> 0);
    - relative_nn: ||x - y_nn|| / (sigma sqrt(D)) (about 1 for a noisy training sample whose
      nearest training image is its own clean image; >> 1 for noisy validation samples at small
      sigma);
    - effective_number: exp(entropy) of the optimal denoiser's posterior weights over the training
      set (1 = a single training point dominates, N = uniform), and participation = 1 / sum w^2.
* 1-NN cosine similarity in a feature space (`nn_similarity_probe`) of trajectory predictions, of
  denoised training images and of denoised validation images, to the training and validation sets.
(Copies of training images are measured in `copies`.)
Nearest neighbours come from `neighbours.nearest_neighbours` (chunked matmuls), posterior weights from
`optimal.posterior_statistics`.

Given a mesh (every device of every process), the training set is a source read where it lives,
split over the mesh's data axis (each process reads only its share) for the nearest neighbours and
the posterior weights; the denoiser's and the feature extractor's batches are split over the same
axis (each process builds only its rows), and the results are gathered once.
"""

from __future__ import annotations

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from diffgen_jax import edm, progress
from diffgen_jax.checks import check_number
from diffgen_jax.data.convention import check_images
from diffgen_jax.denoisers import check_labels, compiled
from diffgen_jax.evaluation.features import batch_features, batched_features
from diffgen_jax.evaluation.gap import image_noise
from diffgen_jax.evaluation.neighbours import nearest_neighbours
from diffgen_jax.optimal import posterior_statistics
from diffgen_jax.sharding import LazyRows, batch_multiple, put_batch


# ------------------------------------------------------------------------------------------------
# Trajectory overlap


class _NoisyRows:
  """The (T * P, ...) rows y_p + sigma_t n_p, row t * P + p, of P clean images noised at T sigmas
  with the gap evaluation's per-image noise: a source (len(), .shape, indexing) computing only the
  rows read, so `put_batch` builds each process's rows only. Row for row the values of
  `_noisy(...).reshape(T * P, ...)`."""

  def __init__(self, images, ids, sigmas, noise_seed):
    self.images = np.asarray(images, np.float32)
    self.noise = np.asarray(image_noise(noise_seed, ids, self.images.shape[1:]))
    self.sigmas = np.asarray(sigmas, np.float32)
    self.shape = (len(self.sigmas) * len(self.images),) + self.images.shape[1:]

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    rows = np.arange(len(self))[index]
    t, p = np.divmod(rows, len(self.images))
    s = self.sigmas[t].reshape((-1,) + (1,) * (self.images.ndim - 1))
    return self.images[p] + s * self.noise[p]


def _noisy(images, ids, sigmas, noise_seed) -> np.ndarray:
  """(T, P, ...) y + sigma_t n_y with the per-image noise of the gap evaluation."""
  rows = _NoisyRows(images, ids, sigmas, noise_seed)
  return rows[:].reshape((len(rows.sigmas),) + rows.images.shape)


def _batched_posterior(stats_fn, states, sigmas, labels, batch_size):
  """PosteriorStatistics fields (effective_number, participation) for (Q, ...) states."""
  q = states.shape[0]
  batch = min(batch_size, q)
  eff, part = [], []
  for start in range(0, q, batch):
    rows = np.minimum(np.arange(start, start + batch), q - 1)
    st = stats_fn(jnp.asarray(states[rows]), jnp.asarray(sigmas[rows]),
                  None if labels is None else jnp.asarray(labels[rows]))
    keep = min(batch, q - start)
    eff.append(np.asarray(st.effective_number)[:keep])
    part.append(np.asarray(st.participation)[:keep])
  return np.concatenate(eff), np.concatenate(part)


def _overlap_stats(states, sigmas, train_images, stats_fn, labels, batch_size, chunk_size, mesh):
  """states (T, B, ...) at sigmas (T,) -> dict of (T, B) arrays."""
  t, b = states.shape[:2]
  flat = np.asarray(states, np.float32).reshape(t * b, -1)
  d = flat.shape[1]
  per_state_sigma = np.repeat(np.asarray(sigmas, np.float32), b)
  _, dist = nearest_neighbours(flat, train_images, 1, chunk_size=chunk_size, mesh=mesh)
  rms = dist[:, 0] / np.sqrt(d)
  lab = None if labels is None else np.tile(np.asarray(labels, np.int32), t)
  eff, part = _batched_posterior(stats_fn, flat.reshape((t * b,) + states.shape[2:]),
                                 per_state_sigma, lab, batch_size)
  shape = (t, b)
  return {"nn_rms": rms.reshape(shape), "relative_nn": (rms / per_state_sigma).reshape(shape),
          "effective_number": eff.reshape(shape), "participation": part.reshape(shape)}


def trajectory_overlap(states, sigmas, train_images, train_probe, val_probe, *,
                       train_probe_ids=None, val_probe_ids=None, noise_seed: int = 0,
                       train_labels=None, state_labels=None, train_probe_labels=None,
                       val_probe_labels=None, batch_size: int = 256, chunk_size: int = 2048,
                       mesh: Optional[Mesh] = None) -> Dict[str, Dict[str, np.ndarray]]:
  """Where sampling trajectories go, compared with noisy training and validation samples.

  Args:
    states: (T, B, ...) trajectory states x_i (`trajectory.x`), at noise levels sigmas (T,).
    train_images: (N, ...) the training set (nearest neighbours and posterior weights): an array,
      or a source (len(), .shape, indexing by a slice or an int array returning numpy rows, e.g.
      `sharding.LazyRows` over a lazily decoded split) read block by block, never whole.
    train_probe, val_probe: (P, ...) clean training / validation images noised at every sigma with
      the gap evaluation's per-image noise (ids default 0..P-1, seed noise_seed).
    train_labels: (N,) labels: posterior weights are then class-conditional, with state_labels (B,),
      train_probe_labels and val_probe_labels giving each query's class. Nearest neighbours are
      always over the whole training set.
    mesh: optional mesh (every device of every process): the training set is split over its data
      axis, each process reading only its share (`neighbours.nearest_neighbours`,
      `optimal.posterior_statistics`); the queries are held whole on every process.

  Returns:
    {"trajectory" | "noisy_train" | "noisy_val": {"nn_rms", "relative_nn", "effective_number",
    "participation"}: (T, B or P) arrays} (see the module docstring; average over axis 1).
    Images (train_images, the probes) are float in [-1, 1], NHWC (ValueError otherwise; a source
    is checked as it is read).

  Raises:
    ValueError: sigmas not finite and > 0 (relative_nn divides by sigma); noise_seed not an
      integer >= 0; batch_size or chunk_size not an integer >= 1 (each named in the message).
  """
  check_number(noise_seed, "noise_seed", low=0, integer=True)
  check_number(batch_size, "batch_size", low=1, integer=True)
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  edm.validate_sigma_grid(sigmas, "sigmas")
  if isinstance(train_images, (np.ndarray, jax.Array)) or not hasattr(train_images, "shape"):
    train_images = np.asarray(check_images(train_images, "train_images", nhwc=False), np.float32)
  else:  # a source: checked block by block as it is read
    train_images = LazyRows(train_images, np.arange(len(train_images)),
                            transform=lambda rows: check_images(rows, "train_images", nhwc=False))
  for name, images in (("train_probe", train_probe), ("val_probe", val_probe)):
    check_images(images, name, nhwc=False)
  states = np.asarray(states, np.float32)
  sigmas = np.asarray(sigmas, np.float32)
  if states.shape[0] != sigmas.shape[0]:
    raise ValueError(f"states have {states.shape[0]} steps but there are {sigmas.shape[0]} sigmas")
  stats_fn = posterior_statistics(train_images, train_labels, chunk_size=chunk_size, mesh=mesh)
  conditional = train_labels is not None
  groups = {"trajectory": (states, state_labels)}
  for name, probe, ids, lab in (("noisy_train", train_probe, train_probe_ids, train_probe_labels),
                                ("noisy_val", val_probe, val_probe_ids, val_probe_labels)):
    probe = np.asarray(probe, np.float32)
    ids = np.arange(probe.shape[0]) if ids is None else np.asarray(ids)
    groups[name] = (_noisy(probe, ids, sigmas, noise_seed), lab)
  return {name: _overlap_stats(x, sigmas, train_images, stats_fn, lab if conditional else None,
                               batch_size, chunk_size, mesh)
          for name, (x, lab) in groups.items()}


# ------------------------------------------------------------------------------------------------
# 1-NN cosine similarity in a feature space

def _apply(denoise, x, sigma, labels):
  return denoise(x, sigma, labels)


_apply_jit = jax.jit(_apply)  # (`denoisers.compiled`)



def nn_cosine_similarity(query_features, reference_features, *, exclude=None,
                         chunk_size: int = 2048, mesh: Optional[Mesh] = None) -> np.ndarray:
  """(Q,) cosine similarity of each query to its most similar reference row.

  exclude: optional (Q,) int, a reference row each query may not match (-1: none), e.g. the
    clean image a prediction was made from (a self-match says nothing about memorization).
  chunk_size: reference rows per streaming step, an integer >= 1 (ValueError otherwise).
  mesh: optional; the reference rows are split over its data axis (`nearest_neighbours`).
  """
  check_number(chunk_size, "chunk_size", low=1, integer=True)
  def unit(a):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)).astype(np.float32)
  q, r = unit(query_features), unit(reference_features)
  k = 1 if exclude is None else min(2, len(r))
  idx, _ = nearest_neighbours(q, r, k, chunk_size=chunk_size, mesh=mesh)
  best = idx[:, 0]
  if exclude is not None:  # the second nearest where the nearest is the excluded row
    exclude = np.asarray(exclude).reshape(-1)
    if exclude.shape != (len(q),):
      raise ValueError(f"exclude must hold one row per query ({len(q)}), got {exclude.shape}")
    if k < 2 and np.any(exclude == best):
      raise ValueError("exclude leaves no reference row: give at least two")
    best = np.where(best == exclude, idx[:, -1], best)
  return np.einsum("qd,qd->q", q.astype(np.float64), r[best].astype(np.float64))


def nn_similarity_probe(denoise, features_fn, sigmas, trajectory_denoised, train_probe, val_probe,
                        train_features, val_features, *, train_probe_ids=None, val_probe_ids=None,
                        train_probe_labels=None, val_probe_labels=None, train_probe_rows=None,
                        val_probe_rows=None, noise_seed: int = 0,
                        batch_size: int = 256, mesh: Optional[Mesh] = None
                        ) -> Dict[str, np.ndarray]:
  """Mean 1-NN cosine similarity per step of predictions to the training and validation sets.

  Args:
    denoise: the denoiser whose predictions are probed (the one that made the trajectory).
    features_fn: images -> (B, F) feature extractor.
    sigmas: (T,) the trajectory's noise levels; trajectory_denoised: (T, B, ...) its predictions
      D(x_i; sigma_i) (`trajectory.denoised`).
    train_probe, val_probe: (P, ...) clean images denoised at every sigma as D(y + sigma n; sigma)
      (noise as in the gap evaluation).
    train_features, val_features: (N, F) features of the reference training / validation sets.
    train_probe_rows, val_probe_rows: optional (P,) int, the row of each probe image in its own
      split's reference features (-1: not there): a prediction made from a probe image is never
      matched with that image (train/train, val/val would otherwise count self-matches).
    mesh: optional; each batch of denoiser calls and of feature extraction is split over its data
      axis (each process builds only its rows of the noisy inputs; the predictions' features are
      extracted where they were made and gathered once), and the reference rows of the 1-NN search
      too.

  Returns:
    dict of (T,) arrays 'trajectory/train', 'trajectory/val', 'train/train', 'train/val',
    'val/train', 'val/val' (prediction source / reference set).

  Raises:
    ValueError: images off the [-1, 1] NHWC convention, labels the denoiser cannot take, sigmas
      not finite and > 0, noise_seed not an integer >= 0, batch_size not an integer >= 1.
  """
  check_number(noise_seed, "noise_seed", low=0, integer=True)
  check_number(batch_size, "batch_size", low=1, integer=True)
  edm.validate_sigma_grid(sigmas, "sigmas")
  check_images(train_probe, "train_probe", nhwc=False)
  check_images(val_probe, "val_probe", nhwc=False)
  check_labels(denoise, train_probe_labels)
  check_labels(denoise, val_probe_labels)
  sigmas = np.asarray(sigmas, np.float32)
  den = compiled(_apply, _apply_jit, denoise)
  feats = {"trajectory": [batched_features(features_fn, np.asarray(o), batch_size, mesh=mesh)
                          for o in trajectory_denoised]}
  for name, probe, ids, labels in (("train", train_probe, train_probe_ids, train_probe_labels),
                                   ("val", val_probe, val_probe_ids, val_probe_labels)):
    probe = np.asarray(probe, np.float32)
    ids = np.arange(probe.shape[0]) if ids is None else np.asarray(ids)
    # All (sigma, image) pairs flattened into batches with a per-row sigma: few large calls.
    noisy = _NoisyRows(probe, ids, sigmas, noise_seed)
    t_steps, p = len(sigmas), probe.shape[0]
    flat_sigma = np.repeat(sigmas, p)
    flat_lab = None if labels is None else np.tile(np.asarray(labels, np.int32), t_steps)
    # Fixed-size batches (the last padded with repeats of the last row): one compilation.
    total, batch = len(noisy), batch_multiple(min(batch_size, len(noisy)), mesh)
    out_feats = []
    with progress.track(f"nn-similarity probe: {name} predictions", total, "images") as bar:
      for start in range(0, total, batch):
        r = np.minimum(np.arange(start, start + batch), total - 1)
        out = den(put_batch(LazyRows(noisy, r), mesh), put_batch(flat_sigma[r], mesh),
                  None if flat_lab is None else put_batch(flat_lab[r], mesh))
        keep = min(batch, total - start)
        out_feats.append(batch_features(features_fn, out)[:keep])
        bar.update(keep)
    feats[name] = list(np.concatenate(out_feats).reshape(t_steps, p, -1))
  result = {}
  own = {"train": train_probe_rows, "val": val_probe_rows}
  for src, per_step in feats.items():
    queries = np.concatenate(per_step)  # every step's queries in one search per reference set
    for ref_name, ref in (("train", train_features), ("val", val_features)):
      exclude = (np.tile(np.asarray(own[src]), len(per_step))
                 if src == ref_name and own[src] is not None else None)
      sims = nn_cosine_similarity(queries, ref, exclude=exclude,
                                  mesh=mesh).reshape(len(per_step), -1)
      result[f"{src}/{ref_name}"] = np.asarray([row.mean() for row in sims])
  return result
