"""What the jobs share: reading the data a config names, its network, its sigma grid.

Only jobs import this module (the library below takes arrays, denoisers and plain arguments).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffgen_jax import config_checks, data, denoisers, edm, sharding, training
from diffgen_jax.models.network import Network, build_network


def load_split(config, split: str) -> data.Split:
  """The training split (or subset) or the validation split config.data names, prepared if needed
  (by process 0; the other processes wait for it)."""
  d = config.data
  if jax.process_index() == 0:
    data.prepare(d.name, d.data_dir or None)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"data prepared: {split}")
  labels = d.labels
  if labels == "pseudo":
    labels = data.read_pseudo_labels(d.pseudo_labels, split)
  return data.load_split(d.name, split, data_dir=d.data_dir or None,
                         subset_size=(d.subset_size or None) if split == "train" else None,
                         subset_seed=d.subset_seed, subset_side=d.get("subset_side", 1),
                         labels=labels)


def mesh_of(config) -> jax.sharding.Mesh:
  """The (data, model) mesh config.mesh names over all devices.

  Raises ConfigError naming config.mesh.model / config.mesh.data when they do not fit the devices.
  """
  mesh = config.get("mesh") or {}
  n, model, data_axis = len(jax.devices()), mesh.get("model", 1), mesh.get("data", -1)
  if model < 1 or n % model:
    raise config_checks.ConfigError(f"config.mesh.model={model} must be >= 1 and divide the {n} "
                                    "available devices")
  if data_axis != -1 and (data_axis < 1 or data_axis * model != n):
    raise config_checks.ConfigError(
        f"config.mesh.data={data_axis}: config.mesh.data * config.mesh.model must equal the {n} "
        "available devices; use data=-1 to take all devices not used by the model axis")
  return sharding.make_mesh(data_axis, model)


def evaluation_mesh():
  """The mesh the evaluation splits its batches over, as training does: every local device on
  its data axis (on a CPU, one device per core), whatever mesh the run was trained on (the
  parameters are replicated). None with several processes, where every process computes the same
  numbers from its host copy (as the training monitor does)."""
  return sharding.make_mesh(-1, 1) if jax.process_count() == 1 else None


def training_settings(config) -> training.Settings:
  """config.training as the training library's plain settings."""
  t = config.training
  return training.Settings(
      batch_size=int(t.batch_size), lr=t.lr, lr_schedule=t.lr_schedule,
      lr_ref_images=t.lr_ref_images, warmup_images=t.warmup_images, adam_b1=t.adam_b1,
      adam_b2=t.adam_b2, adam_eps=t.adam_eps, grad_clip=t.grad_clip, loss=t.loss,
      p_mean=t.p_mean, p_std=t.p_std, sigma_data=t.sigma_data, label_dropout=t.label_dropout,
      ema_kind=t.ema.kind, ema_halflife_images=t.ema.halflife_images,
      ema_rampup_ratio=t.ema.rampup_ratio, ema_sigma_rels=tuple(t.ema.sigma_rels))


def network_of(config, num_classes: int, compute_dtype: str = "float32") -> Network:
  """The network config.model describes, for the label mode's number of classes."""
  return build_network(config.model, num_classes, compute_dtype)


def sigma_grid(sigmas, num_sigmas: int) -> np.ndarray:
  """An explicit grid (sorted) if given, else `edm.gap_sigma_grid(num_sigmas)`."""
  return np.sort(edm.validate_sigma_grid(sigmas)) if sigmas else edm.gap_sigma_grid(num_sigmas)


def check_optimal_labels(config, train_split, val_split) -> None:
  """Every label the run will query the class-conditional optimal denoiser with has training points.

  The evaluation queries y* with the validation labels (the gap) and with every class (the
  samples' labels cycle through all of them); a label without a training image has no y* (a
  softmax over an empty set), so the run is refused at start-up, before anything trains or
  compiles. Raises ConfigError naming config.data.subset_size / config.data.labels and the labels.
  """
  if train_split.num_classes == 0 or train_split.labels is None:
    return
  queried = np.union1d(np.unique(np.asarray(val_split.labels)), np.arange(train_split.num_classes))
  try:
    denoisers.check_label_domain(np.unique(np.asarray(train_split.labels)), queried)
  except ValueError as err:
    d = config.data
    raise config_checks.ConfigError(
        f"config.data.subset_size={d.subset_size} with config.data.labels={d.labels!r}: {err}. The "
        "evaluation queries the class-conditional optimal denoiser with every class and the "
        "validation labels: use a training subset that holds every class, or "
        "config.data.labels='none'") from None
