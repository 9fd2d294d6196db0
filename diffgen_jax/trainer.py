"""The `train` job: the loop around the pure train_step, with checkpoints, snapshots and progress.

Re-running the same command on the same workdir resumes from the latest full state: the state is
restored exactly, the data stream restarts at the saved step and every random draw is a function of
(seed, step), so the resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffgen_jax import (checkpointing, config_checks, data, edm, flops, models, samplers, sharding,
                         training)

METRICS_FILE = "metrics.jsonl"


def validate_config(config) -> None:
  """Every check that needs no compilation; the model is checked against the data's shape in run()."""
  config_checks.positive(config, "training.batch_size")
  config_checks.positive(config, "training.total_images")
  config_checks.positive(config, "training.lr")
  config_checks.positive(config, "training.warmup_images", allow_zero=True)
  config_checks.choice(config, "training.lr_schedule", training.LR_SCHEDULES)
  config_checks.choice(config, "training.loss", training.LOSSES)
  config_checks.choice(config, "training.ema.kind", training.EMA_KINDS)
  config_checks.choice(config, "training.compute_dtype", ("float32", "bfloat16"))
  config_checks.positive(config, "training.p_std")
  if not 0 <= config.training.label_dropout < 1:
    raise config_checks.ConfigError(
        f"config.training.label_dropout={config.training.label_dropout} must be in [0, 1)")
  if config.training.loss == "edm2" and config.model.family != "edm2":
    raise config_checks.ConfigError(
        f"config.training.loss='edm2' needs config.model.family='edm2' (the learned log-variance), "
        f"got {config.model.family!r}")
  for field in ("checkpoint.state_every_images", "checkpoint.snapshot_every_images", "log_every_steps"):
    config_checks.positive(config, field)
  config_checks.choice(config, "model.family", models.FAMILIES)
  data.validate_config(config.data)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  sharding.check_divisible(config.training.batch_size, mesh, "config.training.batch_size")


def load_split(config, split: str):
  """The training split (or subset) or the validation split a config names, prepared if needed."""
  if jax.process_index() == 0:
    data.prepare(config.data.name, config.data.data_dir or None)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"data prepared: {split}")
  labels = config.data.labels
  if labels == "pseudo":
    labels = data.read_pseudo_labels(config.data.pseudo_labels, split)
  return data.load_split(config.data.name, split, data_dir=config.data.data_dir or None,
                         subset_size=(config.data.subset_size or None) if split == "train" else None,
                         subset_seed=config.data.subset_seed, labels=labels)


def build_network(model_config, num_classes: int, compute_dtype: str = "float32") -> training.Network:
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.num_classes = num_classes
  if "dtype" in model_config:
    model_config.dtype = compute_dtype
  return training.Network(module=models.build(model_config),
                          project=models.weight_projection(model_config),
                          num_classes=num_classes)


def _write_metrics(path: str, rows: List[Dict[str, Any]]) -> None:
  with open(path, "a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: str, last_step: int) -> None:
  """On resume, drop metric rows written after the restored state (they will be replayed)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  with open(path, "w") as f:
    f.writelines(rows)


def save_image_grid(images: np.ndarray, path: str) -> None:
  """Writes (B, H, W, C) images in [-1, 1] as one PNG grid."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  b, h, w, c = images.shape
  cols = int(math.ceil(math.sqrt(b)))
  rows = int(math.ceil(b / cols))
  grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
  pixels = (np.clip(images, -1, 1) + 1) / 2
  for i in range(b):
    r, q = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = pixels[i]
  plt.imsave(path, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)


def run(config, workdir: str) -> Dict[str, Any]:
  if config.model.get("checkpoint"):
    raise config_checks.ConfigError(
        "config.model.checkpoint is read by the evaluate and convert jobs; the train job trains "
        "from scratch (set it to '')")
  t = config.training
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  split = load_split(config, "train")
  image_shape = split.shape
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.num_classes = split.num_classes  # the label mode decides; configs need not repeat it
  models.validate_config(model_config, image_shape, split.num_classes)
  network = build_network(model_config, split.num_classes, t.compute_dtype)
  optimizer = training.make_optimizer(config)
  init_fn, step_fn, abstract_state, state_sharding = training.compile_training(
      network, optimizer, config, mesh, image_shape)

  total_steps = int(math.ceil(t.total_images / t.batch_size))
  state_every = max(1, int(round(config.checkpoint.state_every_images / t.batch_size)))
  snapshot_every = max(1, int(round(config.checkpoint.snapshot_every_images / t.batch_size)))
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  meta = {"seed": config.seed, "batch_size": t.batch_size, "dataset": config.data.name,
          "subset_size": config.data.subset_size or 0, "image_shape": list(image_shape),
          "num_classes": split.num_classes, "model_family": config.model.family,
          "model": json.loads(json.dumps(models.resolve(model_config).to_dict()))}

  ckpt = checkpointing.Checkpoints(workdir, keep_states=config.checkpoint.keep_states)
  metrics_path = os.path.join(workdir, METRICS_FILE)
  latest = ckpt.latest_state_step()
  if latest is None:
    state = init_fn(init_key)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    start = 0
  else:
    # The metadata first: a different model would otherwise fail inside orbax's restore.
    saved = ckpt.restore_meta(latest)
    mismatched = {k: (saved.get(k), v) for k, v in meta.items() if k in saved and saved[k] != v}
    if "model" in mismatched:
      old_model, new_model = mismatched.pop("model")
      for k in sorted(set(old_model) | set(new_model)):
        if old_model.get(k) != new_model.get(k):
          mismatched[f"model.{k}"] = (old_model.get(k), new_model.get(k))
    if mismatched:
      ckpt.close()
      raise config_checks.ConfigError(
          f"the workdir {workdir} holds a run with a different configuration (saved, now): "
          f"{mismatched}; use a new --workdir")
    state, _ = ckpt.restore_state(latest, abstract_state_with(abstract_state, state_sharding))
    start = int(state.step)
    if jax.process_index() == 0:
      _truncate_metrics(metrics_path, start)
    logging.info("Resumed from step %d (%d images seen).", start, start * t.batch_size)

  sample_fn = _make_sample_fn(network, config, image_shape, split.num_classes)
  batches = data.BatchIterator(split, t.batch_size, config.seed, mesh, start_step=start,
                               x_flip=config.data.x_flip)
  pending: List[tuple] = []  # (step, device metrics) not yet fetched
  tick, tick_step, t0 = time.time(), start, time.time()
  last = {}
  step_tflop = None  # model FLOPs of one step (matmuls + convolutions), for the progress log

  def flush() -> None:
    """Fetches pending metrics, stops on a non-finite loss, logs progress."""
    nonlocal tick, tick_step, last
    if not pending:
      return
    rows = [dict(step=s + 1, images_seen=(s + 1) * t.batch_size,
                 **{k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
    pending.clear()
    for row in rows:
      if not np.isfinite(row["loss"]):
        raise FloatingPointError(
            f"non-finite loss {row['loss']} at training step {row['step'] - 1}; the last good "
            f"checkpoint is step {ckpt.latest_state_step()} in {workdir}")
    if jax.process_index() == 0:
      _write_metrics(metrics_path, rows)
    now = time.time()
    step = rows[-1]["step"]
    rate = (step - tick_step) * t.batch_size / max(now - tick, 1e-9)
    eta = (total_steps - step) * t.batch_size / max(rate, 1e-9)
    logging.info("step %d/%d  %.1f kimg  %.1f img/s (%.3g TFLOP/s)  loss %.4f  ETA %s", step,
                 total_steps, rows[-1]["images_seen"] / 1e3, rate, rate / t.batch_size * step_tflop,
                 rows[-1]["loss"], _format_seconds(eta))
    tick, tick_step, last = now, step, rows[-1]

  try:
    for step in range(start, total_steps):
      batch = next(batches)
      if step_tflop is None:
        step_tflop = flops.model_flops(step_fn, state, batch, train_key) / 1e12
      state, metrics = step_fn(state, batch, train_key)
      pending.append((step, metrics))
      done = step + 1
      if done % config.log_every_steps == 0 or done == total_steps:
        flush()
      if done % snapshot_every == 0 or done == total_steps:
        flush()
        ckpt.save_snapshot(done, state.ema, {"step": done, "images_seen": done * t.batch_size})
        grid = sample_fn(state.ema, done)
        if jax.process_index() == 0 and grid is not None:
          os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
          save_image_grid(grid, os.path.join(workdir, "samples", f"step_{done:08d}.png"))
      if done % state_every == 0 or done == total_steps:
        flush()
        ckpt.save_state(done, state, dict(meta, step=done, data_position=done))
  finally:
    # Also when training stops with an error (e.g. a non-finite loss): let the checkpoints already
    # being written finish, so the last good state is on disk, not a temporary directory.
    batches.close()
    ckpt.wait()
    ckpt.close()
  logging.info("Training finished: %d steps, %d images, %.1f s.", total_steps,
               total_steps * t.batch_size, time.time() - t0)
  if config.evaluation.after_training:
    from diffgen_jax import evaluator  # the evaluation imports the trainer
    evaluator.run(config, workdir)
  return {"state": state, "network": network, "last_metrics": last, "total_steps": total_steps}


def abstract_state_with(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings, so orbax restores straight onto the mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def _make_sample_fn(network, config, image_shape, num_classes):
  """Samples a fixed grid from the first EMA set at each snapshot (same noise every time)."""
  s = config.sampling
  if s.grid_size <= 0:
    return lambda ema, step: None
  noise = jax.random.normal(jax.random.key(config.seed + 1), (s.grid_size,) + tuple(image_shape))
  labels = jnp.arange(s.grid_size) % num_classes if num_classes > 0 else None

  @jax.jit
  def generate(params):
    denoise = training.network_denoiser(network, params, config.training.sigma_data)
    return samplers.sample(denoise, noise, labels, num_steps=s.num_steps).samples

  def sample_fn(ema_sets, step):
    first = sorted(ema_sets)[0]
    return np.asarray(jax.device_get(generate(ema_sets[first])))

  return sample_fn


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
