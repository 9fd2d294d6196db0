"""The pure training pieces: state, losses, learning-rate schedules and `train_step`.

`train_step(state, batch, key) -> (state, metrics)` is one pure function, jitted with NamedShardings
on a Mesh: the batch is split over the data axis, parameters, EMA and optimizer state are replicated
or (with a model axis) sharded, and jit inserts the collectives. Every random draw of step t comes
from fold_in(key, t); with jax's partitionable threefry a draw is a function of the example's index
in the global batch, not of the device that computes it, so 1 device and 8 give the same step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffgen_jax import edm, ema, models
from diffgen_jax.models.network import Network
from diffgen_jax.sharding import DATA_AXIS, MODEL_AXIS

LR_SCHEDULES = ("edm", "edm2")
LOSSES = ("edm", "edm2")
EMA_KINDS = ("halflife", "power")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken; images seen = step * batch size
  params: Any
  ema: Dict[str, Any]  # name -> EMA copy of params ("ema" for EDM, "ema_0.050" ... for EDM2)
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every training hyperparameter, as plain values (the train job builds it from
  config.training: `jobs.common.training_settings`; defaults are EDM's)."""
  batch_size: int  # global batch (images per step)
  lr: float
  lr_schedule: str = "edm"  # "edm": warm-up then constant; "edm2": inverse square root decay
  lr_ref_images: float = 0  # EDM2's t_ref in images
  warmup_images: float = 0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  grad_clip: float = 0.0  # 0 = off
  loss: str = "edm"  # "edm" | "edm2" (learned log-variance)
  p_mean: float = -1.2
  p_std: float = 1.2
  sigma_data: float = edm.SIGMA_DATA
  label_dropout: float = 0.0
  ema_kind: str = "halflife"  # "halflife" (EDM) | "power" (EDM2 profiles)
  ema_halflife_images: float = 500_000
  ema_rampup_ratio: float = 0.05
  ema_sigma_rels: Tuple[float, ...] = (0.05, 0.10)


def ema_names(settings: Settings) -> tuple:
  if settings.ema_kind == "halflife":
    return ("ema",)
  return tuple(f"ema_{s:.3f}" for s in settings.ema_sigma_rels)


def learning_rate_schedule(settings: Settings) -> Callable[[jax.Array], jax.Array]:
  """EDM: linear warm-up to lr; EDM2: lr / sqrt(max(t / t_ref, 1)) with a linear ramp-up."""
  t = settings
  batch = t.batch_size

  def schedule(step):
    images = step.astype(jnp.float32) * batch
    lr = jnp.asarray(t.lr, jnp.float32)
    if t.lr_schedule == "edm2" and t.lr_ref_images > 0:
      lr = lr / jnp.sqrt(jnp.maximum(images / t.lr_ref_images, 1.0))
    if t.warmup_images > 0:
      lr = lr * jnp.minimum(images / t.warmup_images, 1.0)
    return lr

  return schedule


def make_optimizer(settings: Settings) -> optax.GradientTransformation:
  t = settings
  chain = []
  if t.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(t.grad_clip))
  chain.append(optax.adam(learning_rate_schedule(t), b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps))
  return optax.chain(*chain)


def denoising_loss(network: Network, params, batch, key, settings: Settings, train: bool = True):
  """EDM (or EDM2, with the learned log-variance) loss of one batch; mean over elements."""
  t = settings
  images, labels = batch["image"], batch["label"]
  b = images.shape[0]
  k_sigma, k_noise, k_drop, k_label = jax.random.split(key, 4)
  sigma = edm.sample_training_sigmas(k_sigma, (b,), t.p_mean, t.p_std)
  noisy = images + sigma[:, None, None, None] * jax.random.normal(k_noise, images.shape)
  if network.num_classes > 0:
    drop = jax.random.bernoulli(k_label, t.label_dropout, (b,))
    labels = jnp.where(drop, network.num_classes, labels)  # num_classes is the null label
  else:
    labels = None
  with_logvar = t.loss == "edm2"

  def raw(x_in, c_noise, labels):  # returns (F, logvar) for the EDM2 loss
    return network.module.apply({"params": params}, x_in, c_noise, labels, train=train,
                                rngs={"dropout": k_drop},
                                **({"return_logvar": True} if with_logvar else {}))

  denoised = edm.precondition(raw, t.sigma_data, has_aux=with_logvar)(noisy, sigma, labels)
  denoised, logvar = denoised if with_logvar else (denoised, None)
  weight = edm.loss_weight(sigma, t.sigma_data)[:, None, None, None]
  err = (denoised.astype(jnp.float32) - images) ** 2
  if with_logvar:
    logvar = logvar.astype(jnp.float32).reshape(b, 1, 1, 1)
    per_element = weight / jnp.exp(logvar) * err + logvar
  else:
    per_element = weight * err
  loss = jnp.mean(per_element)
  return loss, {"loss": loss, "denoise_mse": jnp.mean(err)}


def init_state(network: Network, optimizer, settings: Settings, key, image_shape) -> TrainState:
  variables = models.init_fn(network.module, (1,) + tuple(image_shape), network.num_classes)(key)
  params = network.project(variables["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema={name: params for name in ema_names(settings)},
                    opt_state=optimizer.init(params))


def _update_ema(ema_params: Dict[str, Any], params, images_seen, settings: Settings
                ) -> Dict[str, Any]:
  e = settings
  batch = settings.batch_size
  out = {}
  for name in ema_names(e):
    if e.ema_kind == "halflife":
      beta = ema.halflife_beta(images_seen, batch, e.ema_halflife_images, e.ema_rampup_ratio)
    else:
      beta = ema.power_beta(images_seen + batch, batch, float(name.split("_")[1]))
    out[name] = jax.tree.map(lambda m, p: p + beta * (m - p), ema_params[name], params)
  return out


def make_train_step(network: Network, optimizer, settings: Settings):
  """Returns the pure train_step(state, batch, key) -> (state, metrics)."""

  def train_step(state: TrainState, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(denoising_loss, argnums=1, has_aux=True)
    (_, metrics), grads = grad_fn(network, state.params, batch, step_key, settings)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = network.project(optax.apply_updates(state.params, updates))
    images_seen = state.step.astype(jnp.float32) * settings.batch_size
    new_state = TrainState(step=state.step + 1, params=params,
                           ema=_update_ema(state.ema, params, images_seen, settings),
                           opt_state=opt_state)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   lr=learning_rate_schedule(settings)(state.step))
    return new_state, metrics

  return train_step


def parameter_sharding(abstract_tree, mesh: Mesh):
  """Replicated, except that with a model axis each array's largest divisible dimension is split."""
  n_model = mesh.shape[MODEL_AXIS]

  def spec(leaf):
    shape = getattr(leaf, "shape", ())
    if n_model > 1:
      for dim in np.argsort(shape)[::-1]:
        if shape[dim] % n_model == 0 and shape[dim] >= n_model:
          axes = [None] * len(shape)
          axes[dim] = MODEL_AXIS
          return NamedSharding(mesh, P(*axes))
    return NamedSharding(mesh, P())

  return jax.tree.map(spec, abstract_tree)


def batch_sharding(mesh: Mesh):
  return {"image": NamedSharding(mesh, P(DATA_AXIS)), "label": NamedSharding(mesh, P(DATA_AXIS))}


def compile_training(network: Network, optimizer, settings: Settings, mesh: Mesh, image_shape):
  """Shardings derived from shapes (eval_shape), then jitted init and train_step with them."""
  init = lambda key: init_state(network, optimizer, settings, key, image_shape)
  abstract = jax.eval_shape(init, jax.random.key(0))
  state_sharding = parameter_sharding(abstract, mesh)
  init_fn = jax.jit(init, out_shardings=state_sharding)
  replicated = NamedSharding(mesh, P())
  step_fn = jax.jit(make_train_step(network, optimizer, settings),
                    in_shardings=(state_sharding, batch_sharding(mesh), replicated),
                    out_shardings=(state_sharding, replicated),
                    donate_argnums=(0,))
  return init_fn, step_fn, abstract, state_sharding
