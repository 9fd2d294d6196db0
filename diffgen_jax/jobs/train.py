"""The `train` job: the loop around the pure train_step (`training`), with checkpoints, snapshots
and progress; it ends with the `evaluate` job.

What it writes besides checkpoints: WORKDIR/metrics.jsonl (every step's loss, lr, grad norm, and
every `monitor.every_images` the denoising errors E_train, E_val and G at `monitor.sigmas` of the
first EMA set on fixed subsets, keys "monitor/e_train/<sigma>" ...), WORKDIR/tensorboard/ (the same
scalars plus img/s, and the sample grid per snapshot; `config.tensorboard`), and
WORKDIR/samples/step_<step>.png. The console shows one line per `log_every_steps` (images seen,
img/s, loss, ETA) and one per monitor evaluation.

Re-running the same command on the same workdir resumes from the latest full state: the state is
restored exactly, the data stream restarts at the saved step and every random draw is a function of
(seed, step), so the resumed run ends bit-identical to an uninterrupted one. A damaged state (its
files differ from the checksums written with it) is moved aside, saying so, and the run resumes from
the newest intact one. A non-finite loss stops the run; the loss of a step depends only on the state
it starts from (with the step's batch and noise), so that state and any later one are moved aside:
a state counts as good once the loss computed from it was finite, and the error names the newest.
Everything set aside goes to WORKDIR/checkpoints/rejected/ (`checkpointing`), never deleted.

Preemption: every step asks orbax whether a preemption sync point is reached
(`CheckpointManager.reached_preemption`: with several processes, jax.distributed's preemption
service turns a SIGTERM on any host into one step that every process reaches). There the run saves
its state, says so and returns (`"preempted": True`) without the evaluation; re-running the same
command resumes from that state, bit-identical to an uninterrupted run. (One process has no
preemption service: orbax then never reports one.)

The monitor and the per-snapshot sample grid run over the training mesh (every device of every
process, each process building only its rows) with the parameters where they are, sharded as
trained.

WORKDIR/config.json is the run's record (`common.read_run`): the config it started with, its model
as built (a preset's fields filled in, the data's num_classes, the compute dtype), the training
set's fingerprint, and every resume that changed a field, with its step. A resume whose config
differs from the record is refused, naming each field (saved vs now), except for the fields of
`common.RESUME_FREE` (cadences, logging, measurements, total_images) and those
config.resume_changes names; the fields of `common.IDENTITY` (data, model, seed, batch size,
sigma_data, EMA sets) never change.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Dict, List

import jax
import numpy as np

from diffgen_jax import (checkpointing, config_checks, data, ema, flops, jsonio, models, samplers,
                         sharding, training)
from diffgen_jax.evaluation import gap
from diffgen_jax.jobs import common, console, evaluate
from diffgen_jax.models.network import network_denoiser

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = common.TENSORBOARD_DIR


def validate_config(config) -> None:
  """The training fields and, when the run ends with it, the evaluation's fields."""
  if config.model.get("denoiser"):
    raise config_checks.ConfigError(
        f"config.model.denoiser={config.model.denoiser!r} is read by the evaluate, ladder, factors "
        "and export jobs (a hook's network); the train job trains this package's network (set it "
        "to '')")
  if config.model.get("checkpoint"):
    raise config_checks.ConfigError(
        "config.model.checkpoint is read by the evaluate and convert jobs; the train job trains "
        "from scratch (set it to '')")
  validate_training_fields(config)
  if config.model.get("dtype", "float32") not in ("float32", config.training.compute_dtype):
    raise config_checks.ConfigError(
        f"config.model.dtype={config.model.dtype!r}: the train job computes in "
        f"config.training.compute_dtype={config.training.compute_dtype!r}; set that field instead")
  common.check_resume_changes(config)
  # The training mesh and batch: only training needs them to fit the devices (the evaluation
  # splits its own batches over whatever devices it finds).
  mesh = common.mesh_of(config)
  sharding.check_divisible(config.training.batch_size, mesh, "config.training.batch_size")
  if config.evaluation.after_training:  # the evaluation at the end: checked before training
    evaluate.validate_config(config)


def validate_training_fields(config) -> None:
  """The rules between the run's fields that need no compilation and no devices (the evaluate
  job reads them too; each field alone: `defaults.TRAIN`); the model is checked against the
  data's shape in run()."""
  if config.training.loss == "edm2" and config.model.family != "edm2":
    raise config_checks.ConfigError(
        f"config.training.loss='edm2' needs config.model.family='edm2' (the learned log-variance), "
        f"got {config.model.family!r}")
  config_checks.choice(config, "model.family", models.FAMILIES)
  models.check(config.model)  # each field, and its preset: refused before any data or device
  config_checks.data_config(config.data)


def _write_metrics(path: str, rows: List[Dict[str, Any]]) -> None:
  # Appended (not rewritten): a kill or a full disk can cut the last line, which `read_metrics`
  # drops, and `_truncate_metrics` removes before the next run appends.
  with open(path, "a") as f:
    f.write("".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The rows of a metrics.jsonl, in order.

  A cut last line (the run was killed, or the disk filled, while appending) is dropped, saying so on
  the console; any other line that is not a JSON object with a "step" raises
  jsonio.DamagedFileError naming the file and the line.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError("not a metrics row (a JSON object with an integer 'step')")
    except ValueError as err:
      if number == len(lines):  # the last line has no newline: it was being appended
        console.progress(f"train: {path}: dropped line {number}, cut while being written "
                         f"({len(line)} bytes)")
        break
      raise jsonio.DamagedFileError(
          f"{path}, line {number}, is damaged ({err}): delete that line (or move the file aside, "
          "then the file holds the metrics of the steps trained from now on)") from None
    rows.append(row)
  return rows


def _truncate_metrics(path: str, last_step: int) -> None:
  """Before training from `last_step`, drop metric rows of later steps (they will be replayed) and
  a cut last line; rewritten atomically."""
  if not os.path.exists(path):
    return
  rows = [row for row in read_metrics(path) if row["step"] <= last_step]
  with jsonio.atomic_open(path) as f:
    f.write("".join(json.dumps(row) + "\n" for row in rows))


def save_image_grid(images: np.ndarray, path: str) -> np.ndarray:
  """Writes (B, H, W, C) images in [-1, 1] as one PNG grid; returns the grid (H', W', 3) in [0, 1]."""
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
  return np.repeat(grid, 3, axis=-1) if c == 1 else grid


def run(config, workdir: str) -> Dict[str, Any]:
  t = config.training
  mesh = common.mesh_of(config)
  split = common.load_split(config, "train")
  if config.evaluation.after_training:  # refused now, not after training (see the function)
    evaluate.check_against_data(config, split, common.load_split(config, "validation"))
  image_shape = split.shape
  # The label mode decides the class count (data.labels='none': unconditional), so one model config
  # serves class, pseudo-label and unconditional runs; a count it names is replaced, and said.
  asked = config.model.get("num_classes", 0)  # an integer >= 0 (validate_training_fields)
  if asked and asked != split.num_classes:
    console.progress(f"train: model.num_classes {asked} -> {split.num_classes}, the count of "
                     f"data.labels={config.data.labels!r}")
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.num_classes = split.num_classes
  models.validate_config(model_config, image_shape, split.num_classes)
  os.makedirs(workdir, exist_ok=True)  # only now: a config refused above leaves no empty workdir
  network = common.build_network(model_config, split.num_classes, t.compute_dtype)
  settings = common.training_settings(config)
  optimizer = training.make_optimizer(settings)
  init_fn, step_fn, abstract_state, state_sharding = training.compile_training(
      network, optimizer, settings, mesh, image_shape)

  total_steps = int(math.ceil(t.total_images / t.batch_size))
  state_every = max(1, int(round(config.checkpoint.state_every_images / t.batch_size)))
  snapshot_every = max(1, int(round(config.checkpoint.snapshot_every_images / t.batch_size)))
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  meta = {"seed": config.seed, "batch_size": t.batch_size, "dataset": config.data.name,
          "subset_size": config.data.subset_size or 0, "image_shape": list(image_shape),
          "num_classes": split.num_classes, "model_family": config.model.family,
          "model": json.loads(json.dumps(models.resolve(model_config).to_dict()))}

  console.progress(f"train: {config.model.family} network, "
                   f"{sum(x.size for x in jax.tree.leaves(abstract_state.params)):,} parameters, "
                   f"images {tuple(image_shape)}, {total_steps} steps of {t.batch_size}")
  ckpt = checkpointing.Checkpoints(workdir, keep_states=config.checkpoint.keep_states)
  metrics_path = os.path.join(workdir, METRICS_FILE)
  latest, notes = ckpt.resumable_state()  # damaged states moved aside, saying so
  for note in notes:
    console.progress(f"train: {note}")
  if latest is None:
    state = init_fn(init_key)
    # What config.json records as the model is what was built (the compute dtype included).
    built = model_config.copy_and_resolve_references()
    built.dtype = t.compute_dtype
    common.write_run_record(workdir, common.new_run_record(config, built, split))
    start = 0
  else:
    # The run's record first: a different model would otherwise fail inside orbax's restore.
    run_record = common.read_run(workdir)
    compare = functools.partial(
        common.compare_with_run, run_record, config, split, fields=("",),
        allowed=tuple(config.resume_changes),
        remedy=f"The workdir {workdir} holds a run with a different configuration: resume it with "
               "the saved values, or use a new --workdir.")
    try:
      changes = compare(steps_done=latest)
      state, _ = ckpt.restore_state(latest, abstract_state_with(abstract_state, state_sharding))
      start = int(state.step)
      if start != latest:
        changes = compare(steps_done=start)
    except config_checks.ConfigError:
      ckpt.close()
      raise
    common.record_resume(workdir, run_record, start, changes)
    console.progress(f"train: Resumed from step {start} ({start * t.batch_size} images seen)" + (
        "; from here on (recorded in config.json): " + ", ".join(
            f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()) if changes else "")
        + ".")
  for moved in ckpt.set_aside_snapshots_after(start):
    console.progress(f"train: a snapshot of a later step than the run starts from was moved to "
                     f"{moved} (the run writes its own)")
  if jax.process_index() == 0:  # also on a fresh start: rows of an earlier attempt that saved no state
    _truncate_metrics(metrics_path, start)

  sample_fn = _make_sample_fn(network, config, image_shape, split.num_classes, mesh)
  monitor_fn = _make_monitor(config, network, split, mesh)
  monitor_every = (max(1, int(round(config.monitor.every_images / t.batch_size)))
                   if config.monitor.every_images else 0)
  # On resume, events after the restored step are purged, as the metrics rows are.
  board = common.tensorboard_writer(config, workdir, purge_step=start or None)
  batches = data.BatchIterator(split, t.batch_size, config.seed, mesh, start_step=start,
                               x_flip=config.data.x_flip)
  pending: List[tuple] = []  # (step, device metrics) not yet fetched
  preempted = None  # the step at which a preemption notice stopped the run
  monitored: Dict[int, Dict[str, float]] = {}  # step -> monitor values for that step's row
  tick, tick_step, t0 = time.time(), start, time.time()
  last = {}
  step_tflop = None  # model FLOPs of one step (matmuls + convolutions), for the progress log

  def flush() -> None:
    """Fetches pending metrics, stops on a non-finite loss, logs progress."""
    nonlocal tick, tick_step, last
    if not pending:
      return
    rows = [dict(step=s + 1, images_seen=(s + 1) * t.batch_size,
                 **{k: float(v) for k, v in jax.device_get(m).items()},
                 **monitored.pop(s + 1, {})) for s, m in pending]
    pending.clear()
    for row in rows:
      if not np.isfinite(row["loss"]):
        raise _non_finite_loss(row["loss"], row["step"] - 1)
    now = time.time()
    step = rows[-1]["step"]
    rate = (step - tick_step) * t.batch_size / max(now - tick, 1e-9)
    rows[-1]["img_per_s"] = rate
    if jax.process_index() == 0:
      _write_metrics(metrics_path, rows)
      if board is not None:
        for row in rows:
          for k, v in row.items():
            if k not in ("step", "images_seen"):
              board.add_scalar(k if k.startswith("monitor/") else f"train/{k}", v, row["step"])
    eta = (total_steps - step) * t.batch_size / max(rate, 1e-9)
    console.progress(f"train: step {step}/{total_steps}  {rows[-1]['images_seen'] / 1e3:.1f} kimg  "
                     f"{rate:.1f} img/s ({rate / t.batch_size * step_tflop:.3g} TFLOP/s)  loss "
                     f"{rows[-1]['loss']:.4f}  ETA {_format_seconds(eta)}")
    tick, tick_step, last = now, step, rows[-1]

  def _non_finite_loss(loss: float, step: int) -> FloatingPointError:
    """The error for a non-finite loss at training step `step` (computed from the state after
    `step` steps), once that state and any later one are set aside: a step's loss depends only
    on its state, batch and noise, never on the learning rate, so no run could resume from them.
    A state counts as good once the loss computed from it was finite: every state left is."""
    good, moved = ckpt.reject_states_from(step)
    where = f" (moved to {', '.join(moved)})" if moved else ""
    after = (f"the last good checkpoint is step {good} in {workdir}: re-running resumes from it"
             if good is not None else
             f"no saved state is good: re-running starts from scratch in {workdir}")
    return FloatingPointError(
        f"non-finite loss {loss} at training step {step}; it is computed from the state of step "
        f"{step}, whatever the learning rate, so no run resumes from that state"
        f"{where}; {after} (a lower config.training.lr, or a longer warmup, may avoid it)")

  def monitor(step: int) -> None:
    """The denoising errors of the first EMA set at the monitor's sigmas, into the step's metrics
    row (metrics.jsonl and TensorBoard)."""
    values = monitor_fn(state.ema)
    monitored[step] = {f"monitor/{k}/{sigma:g}": float(v) for k, per_sigma in values.items()
                       for sigma, v in zip(config.monitor.sigmas, per_sigma)}
    console.progress("train: G(sigma) of the EMA at sigma " + ", ".join(
        f"{s:g}: {g:.3f}" for s, g in zip(config.monitor.sigmas, values["gap"])))

  try:
    for step in range(start, total_steps):
      batch = next(batches)
      if step_tflop is None:
        step_tflop = flops.model_flops(step_fn, state, batch, train_key) / 1e12
      state, metrics = step_fn(state, batch, train_key)
      pending.append((step, metrics))
      done = step + 1
      if monitor_every and done % monitor_every == 0:
        monitor(done)
      if done % config.log_every_steps == 0 or done == total_steps:
        flush()
      if done % snapshot_every == 0 or done == total_steps:
        flush()
        ckpt.save_snapshot(done, state.ema, {"step": done, "images_seen": done * t.batch_size})
        grid = sample_fn(state.ema)
        if jax.process_index() == 0 and grid is not None:
          os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
          picture = save_image_grid(grid, os.path.join(workdir, "samples", f"step_{done:08d}.png"))
          if board is not None:
            board.add_image("samples", picture, done, dataformats="HWC")
      saved = done % state_every == 0 or done == total_steps
      if saved:
        flush()
        ckpt.save_state(done, state, dict(meta, step=done, data_position=done))
      # A preemption notice (SIGTERM on any host, `jax.distributed`'s preemption service): orbax
      # answers True at one and the same step on every process, all of which call this at every
      # step, so the state is saved collectively there and every process stops.
      if ckpt.state.reached_preemption(done):
        if not saved:
          flush()
          ckpt.save_state(done, state, dict(meta, step=done, data_position=done))
        preempted = done
        break
  finally:
    # Also when training stops with an error (e.g. a non-finite loss): let the checkpoints already
    # being written finish, so the last good state is on disk, not a temporary directory.
    batches.close()
    ckpt.wait()
    ckpt.close()
    if board is not None:
      board.close()
  out = {"state": state, "network": network, "last_metrics": last, "total_steps": total_steps,
         "steps_done": total_steps if preempted is None else preempted,
         "preempted": preempted is not None}
  if preempted is not None:
    console.progress(f"train: preempted: a preemption notice reached the run; the state after "
                     f"step {preempted} ({preempted * t.batch_size} images) is saved in "
                     f"{ckpt.state_dir(preempted)}. Re-run the same command to resume from it.")
    return out
  console.progress(f"train: finished, {total_steps} steps, {total_steps * t.batch_size} images, "
                   f"{time.time() - t0:.1f} s")
  if config.evaluation.after_training:
    evaluate.run(config, workdir, job="train")
  return out


def abstract_state_with(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings, so orbax restores straight onto the mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def _make_sample_fn(network, config, image_shape, num_classes, mesh):
  """Samples a fixed grid from the first EMA set at each snapshot (same noise every time), split
  over the mesh's data axis (every device of every process; the grid is padded to a multiple of
  the axis by repeating its last noise row, and the padding is dropped), the parameters sharded as
  trained. Returns sample_fn(ema_sets) -> (grid_size, H, W, C) numpy on every process."""
  s = config.sampling
  if s.grid_size <= 0:
    return lambda ema_sets: None
  noise = np.asarray(jax.random.normal(jax.random.key(config.seed + 1),
                                       (s.grid_size,) + tuple(image_shape)))
  labels = np.arange(s.grid_size, dtype=np.int32) % num_classes if num_classes > 0 else None
  rows = np.minimum(np.arange(sharding.batch_multiple(s.grid_size, mesh)), s.grid_size - 1)
  # Noise and labels are arguments of the compiled sampler (constants would lose their sharding
  # and every device would sample the whole grid); each process builds only its rows.
  noise = sharding.put_batch(noise[rows], mesh)
  labels = None if labels is None else sharding.put_batch(labels[rows], mesh)

  @jax.jit
  def generate(params, noise, labels):
    denoise = network_denoiser(network, params, config.training.sigma_data)
    return samplers.sample(denoise, noise, labels, num_steps=s.num_steps).samples

  def sample_fn(ema_sets):
    return sharding.fetch(generate(ema.pick(ema_sets)[1], noise, labels))[:s.grid_size]

  return sample_fn


def _make_monitor(config, network, split, mesh):
  """monitor(ema_sets) -> {"e_train", "e_val", "gap"} (each (S,) at config.monitor.sigmas) of the
  first EMA set, on monitor.num_images of the training and validation splits (the evaluate job's
  seeded subsets, evaluation.subset_seed: among its images when it evaluates more) with the
  evaluate job's per-image noise (seeds evaluation.noise_seed and + 1); None when off. Each batch
  is split over the training mesh (every device of every process; each process reads only its
  rows of the images) and the parameters are used where they are, sharded as trained."""
  m = config.monitor
  if not m.every_images:
    return None
  val_split = common.load_split(config, "validation")
  seed = config.evaluation.subset_seed  # (the evaluate job's subsets hold the monitor's)
  sets = (common.evaluation_rows(split, m.num_images, seed, field="monitor.num_images"),
          common.evaluation_rows(val_split, m.num_images, seed, "validation",
                                 field="monitor.num_images"))
  sigmas = np.asarray(m.sigmas, np.float64)
  seeds = (config.evaluation.noise_seed, config.evaluation.noise_seed + 1)

  def monitor(ema_sets):
    denoise = network_denoiser(network, ema.pick(ema_sets)[1], config.training.sigma_data)
    g = gap.train_val_gap(denoise, *sets, sigmas, noise_seeds=seeds, batch_size=m.batch_size,
                          mesh=mesh, interval=False)
    return {k: g[k] for k in ("e_train", "e_val", "gap")}

  return monitor


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
