"""What the jobs share: reading the data a config names, its network, its sigma grid, and the
record of a training run (WORKDIR/config.json) that every job reading a run checks itself against.

Only jobs import this module (the library below takes arrays, denoisers and plain arguments).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffgen_jax import (checkpointing, config_checks, data, defaults, denoisers, edm, ema, hooks,
                         jsonio, models, sharding, training)
from diffgen_jax import jobs
from diffgen_jax.jobs import console
from diffgen_jax.models.network import Network, build_network, network_denoiser


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


TENSORBOARD_DIR = "tensorboard"  # WORKDIR/tensorboard: the run's event files (train, evaluate)


def evaluation_mesh(run_config=None) -> jax.sharding.Mesh:
  """The one mesh every measurement splits its batches over, as training does: (data, model) over
  every device of every process (jax.devices(), ordered by process), so that with P processes
  each builds and evaluates 1/P of every batch.

  run_config: the config of the run whose parameters are measured (a ConfigDict or the plain dict
  of `Run.config`); its mesh.model is the model axis, so that the parameters stay sharded as
  trained (`parameter_shardings`). None, or a model axis that does not divide the devices here:
  model = 1 (parameters replicated; the same numbers), said on the console in the latter case.
  """
  mesh = (run_config.get("mesh") if run_config is not None else None) or {}
  model, n = int(mesh.get("model", 1) or 1), jax.device_count()
  if model < 1 or n % model:
    console.progress(f"evaluation: the run's mesh.model={model} does not divide the {n} devices "
                     "here; its parameters are replicated over them instead")
    model = 1
  return sharding.make_mesh(-1, model)


def parameter_shardings(mesh: jax.sharding.Mesh):
  """The run's parameter sharding over `mesh` (`training.parameter_sharding`: split over the model
  axis as in training), as a function of a saved tree: pass it as `sharding=` to
  `checkpointing.load_snapshot` / `load_ema_params`, so a snapshot is restored where it is used
  and never gathered whole onto a host."""
  return functools.partial(training.parameter_sharding, mesh=mesh)


def devices_used(mesh: Optional[jax.sharding.Mesh]) -> Dict[str, int]:
  """What results.json records of where a job measured: {"evaluation_devices": devices of the
  mesh (every process's; 1 without a mesh: the default device), "processes":
  jax.process_count()}."""
  return {"evaluation_devices": 1 if mesh is None else int(mesh.size),
          "processes": int(jax.process_count())}


def used_count(field: str, requested: int, available: int, what: str) -> int:
  """How many of `available` items a count field that asks for `requested` uses: all of them
  when it asks for more (a count larger than a split is clamped, not refused: e.g. the default
  evaluation.num_images=8192 on a 1,024-image training subset), said in one logged warning
  naming config.<field>, both numbers and `what` they are ("images of the training split"); the
  jobs record the count used in results.json. 0 or None asks for all (no warning)."""
  if requested and int(requested) > int(available):
    if jax.process_index() == 0:
      logging.warning("config.%s=%d is more than the %d %s: all %d are used (results.json records "
                      "the count)", field, int(requested), int(available), what,
                      int(available))
    return int(available)
  return int(available) if not requested else int(requested)


def evaluation_rows(split: data.Split, n: Optional[int] = None, seed: int = 0,
                    which: str = "train", field: Optional[str] = None):
  """A split's evaluation subset of n images (`data.evaluation_subset`: seeded, uniform, rows
  ascending; the whole split when n is None), with the images a source read where it is needed:
  (images, labels, ids) with images a `sharding.LazyRows` of (n, H, W, C) float32 in [-1, 1]
  (`data.to_unit_range` of what is read), labels (n,) int32 or None when the split has no
  classes, ids (n,) int64. which: "train" or "validation" (the subsets' seeded streams differ).
  A measurement that splits the images over a mesh (gap, y*, the rungs) then reads on each
  process only the rows its devices hold. field: the config field n comes from; an n larger than
  the split is then said in a warning naming it (`used_count`)."""
  if field is not None:
    used_count(field, n, len(split),
               f"images of the {'training' if which == 'train' else which} split")
  rows = data.evaluation_subset(split, n, seed, which)
  labels = np.asarray(split.labels[rows], np.int32) if split.num_classes > 0 else None
  images = sharding.LazyRows(split.images, rows, transform=data.to_unit_range)
  return images, labels, np.asarray(split.ids[rows])


def tensorboard_writer(config, workdir: str, purge_step: Optional[int] = None):
  """A tensorboardX SummaryWriter on WORKDIR/tensorboard on process 0 when config.tensorboard is
  on (None on the other processes, or when off). purge_step: events of that step and later are
  dropped (a resumed training run replays them)."""
  if not config.get("tensorboard", True) or jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  return SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge_step)


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


# ------------------------------------------------------------------------------------------------
# The snapshots a job measures: a run's (WORKDIR/checkpoints/snapshots), or the files a hook reads
# (config.model.denoiser = MODULE:FUNCTION, config.model.checkpoint = a file or a directory). The
# evaluate, ladder, factors and export jobs measure either through this one seam.

HOOK_SET = "hook"  # the name of a hook's denoiser where results name EMA sets (one per snapshot)
HOOK_FIELD, HOOK_FILES_FIELD = "model.denoiser", "model.checkpoint"


class Snapshot(NamedTuple):
  """One loaded snapshot of a `SnapshotSeries`."""
  denoisers: Dict[str, Callable]  # set name -> denoise(x, sigma, labels), in sorted name order
  meta: Dict[str, Any]  # "images_seen" (int) and what the snapshot records (a hook's: "source")
  params: Optional[Dict[str, Any]]  # set name -> the network's raw parameters; None for a hook


@dataclasses.dataclass
class SnapshotSeries:
  """The snapshots a job measures, in training order, whatever made them.

  keys: str(step) of a run's snapshots (`run_series`), or the file names of a hook's snapshots
    (`hook_series`), in `checkpointing.snapshot_order` (a run's steps in numeric order, a hook's
    files in the natural order of their names); results are keyed by them, so that a measured key
    is not measured again.
  source: "run" | "hook". spec: the hook as written ("" for a run).
  network, sigma_data: the run's network and preconditioning (None for a hook: its denoisers are
    opaque, there are no raw parameters).
  `load(key, which)` -> Snapshot with the denoisers of the EMA sets `ema.set_names(.., which)`
  ("first", "all" or a set's name; a hook's one denoiser is the set HOOK_SET, whatever `which`).
  """
  keys: Tuple[str, ...]
  source: str
  loader: Callable[[str, str], Snapshot]
  spec: str = ""
  network: Optional[Network] = None
  sigma_data: Optional[float] = None

  def load(self, key, which: str = "first") -> Snapshot:
    if str(key) not in self.keys:
      raise KeyError(f"{key!r} is not a snapshot of the series {self.keys}")
    return self.loader(str(key), which)

  def describe(self, key: str, set_name: Optional[str] = None) -> str:
    """Who a snapshot's measured numbers come from, in words for an error message: a hook's
    "config.model.denoiser='m:f' on 'net-2.npz'", a run's "snapshot 100 (EMA set 'ema')"."""
    if self.source == "hook":
      return f"config.{HOOK_FIELD}={self.spec!r} on {key!r}"
    return f"snapshot {key}" + (f" (EMA set {set_name!r})" if set_name else "")

  def pick(self, index: int, field: str) -> str:
    """keys[index] (-1: the last); ConfigError naming config.<field> for an index out of range."""
    if isinstance(index, bool) or not isinstance(index, int) or not (
        -len(self.keys) <= index < len(self.keys)):
      config_checks.fail(field, index, f"must index the {len(self.keys)} snapshots "
                         f"{list(self.keys)} (-1: the last)")
    return self.keys[index]


def hook_record(series: SnapshotSeries, meta: Dict[str, Any]) -> Dict[str, Any]:
  """What results record of a hook's snapshot: {"denoiser": the hook, "snapshot": its file}
  ({} for a run's snapshot)."""
  return {"denoiser": series.spec, "snapshot": meta["source"]} if series.source == "hook" else {}


def output_name(key: str) -> str:
  """The name of a snapshot's own files and folders under a workdir (the export's folder, the
  evaluation's per-image errors and sample grids): a run's step as is, a hook's file name without
  its extension (net-000100.npz: net-000100; `hook_series` refuses names that then collide)."""
  return os.path.splitext(key)[0] or key


def _shown(value) -> str:
  """A value for a one-line message: a list of more than 6 numbers as its length and range, a
  float to 6 digits."""
  if isinstance(value, (list, tuple)) and len(value) > 6 and all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    return f"{len(value)} values {value[0]:.4g} .. {value[-1]:.4g}"
  if isinstance(value, float):
    return f"{value:.6g}"
  return repr(value)


def differences(saved: Dict[str, Any], now: Dict[str, Any], prefix: str = "") -> str:
  """Each field (nested dicts as dotted names) whose value differs between two records, with both
  values, "field: saved vs now; ..." (a long list of numbers as its length, its range and the
  first position where the two differ; a field one record lacks as "(absent)"); "" when none
  differs."""
  parts = []
  for key in sorted(set(saved) | set(now)):
    a, b = saved.get(key), now.get(key)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      parts.append(differences(a, b, f"{prefix}{key}."))
      continue
    show = lambda record, v: _shown(v) if key in record else "(absent)"
    text = f"{prefix}{key}: {show(saved, a)} vs {show(now, b)}"
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and max(len(a), len(b)) > 6:
      i = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
      at = lambda v: _shown(v[i]) if i < len(v) else "none"
      text += f" (first difference at position {i}: {at(a)} vs {at(b)})"
    parts.append(text)
  return "; ".join(p for p in parts if p)


def require_finite(values, *, denoiser: str, measurement: str, sigmas=None) -> None:
  """Refuses measured values that hold NaN or Inf: checked on the host, on values already fetched
  (so it costs nothing on the device path; a check on traced values under jit never runs).

  values: an array (any shape); with sigmas (S,), its last axis runs over them and the sigmas
  where a value is not finite are named. denoiser: who gave the values
  (`SnapshotSeries.describe`); measurement: what was measured, in words.
  Raises jobs.MeasurementError naming the denoiser, the sigmas and the measurement.
  """
  a = np.asarray(values, np.float64)
  finite = np.isfinite(a)
  if finite.all():
    return
  where = ""
  if sigmas is not None:
    grid = np.atleast_1d(np.asarray(sigmas, np.float64))
    bad = ~finite.reshape(-1, grid.size).all(axis=0)
    where = " at sigma " + ", ".join(f"{v:.4g}" for v in grid[bad])
  raise jobs.MeasurementError(
      f"{denoiser} gives NaN or Inf{where} in {measurement} ({int((~finite).sum())} of {a.size} "
      "values): every measurement needs finite denoiser outputs (a diverged network, or a hook "
      "that fails at these noise levels; its start-up check tries sigma 0.5 and 2 only)")


def run_series(workdir: str, network: Network, sigma_data: float,
               mesh: Optional[jax.sharding.Mesh] = None) -> SnapshotSeries:
  """The snapshots of the run in `workdir`, each EMA set's parameters restored onto the run's
  parameter sharding over `mesh` (`parameter_shardings`; None: replicated over every device) and
  measured as `network_denoiser(network, params, sigma_data)`."""
  shardings = None if mesh is None else parameter_shardings(mesh)

  def load(key: str, which: str) -> Snapshot:
    ema_sets, meta = checkpointing.load_snapshot(workdir, int(key), sharding=shardings)
    names = ema.set_names(ema_sets, which)
    return Snapshot({n: network_denoiser(network, ema_sets[n], sigma_data) for n in names}, meta,
                    {n: ema_sets[n] for n in names})

  steps = checkpointing.snapshot_steps(workdir)
  return SnapshotSeries(tuple(str(s) for s in steps), "run", load, network=network,
                        sigma_data=float(sigma_data))


def uses_hook(config) -> bool:
  """Whether the config's network is a hook's (config.model.denoiser set)."""
  model = config.get("model") or {}
  return bool(model.get("denoiser", ""))


def validate_hook(config) -> bool:
  """The start-up checks of config.model.denoiser that need no data: a string; when set, the
  snapshot files under config.model.checkpoint exist and the hook imports (`hooks.load_factory`).
  Returns whether a hook is set. Raises ConfigError naming the field."""
  if "denoiser" not in (config.get("model") or {}):  # (a config made before the field existed)
    return False
  spec = config_checks.get(config, HOOK_FIELD)
  if not isinstance(spec, str):
    config_checks.fail(HOOK_FIELD, spec, f"must be '' or a hook written {hooks.SPEC_FORM}")
  if not spec:
    return False
  hooks.snapshot_files(config_checks.get(config, HOOK_FILES_FIELD), field=HOOK_FILES_FIELD)
  hooks.load_factory(spec, field=HOOK_FIELD)
  return True


def hook_series(spec: str, checkpoint: str, image_shape: Sequence[int], num_classes: int
                ) -> SnapshotSeries:
  """The snapshots a hook reads: the files under `checkpoint` (`hooks.snapshot_files`: a file, or
  a directory's files in the natural order of their names), each measured as the denoiser that
  factory `spec` makes of it. The hook is imported and checked on the first file at once
  (`hooks.check_denoiser_factory`: two images of image_shape (H, W, C), labels of num_classes),
  and so is every file when it is loaded.

  Images seen: info["images_seen"] when the factory returns (denoise, info), else the last number
  in the file's name (`hooks.images_seen_of_name`: net-000100.npz, 100). They must increase along
  the files' order. Raises ConfigError naming config.model.denoiser / config.model.checkpoint: the
  hook fails its checks, a bare factory's file name holds no number, images seen do not increase,
  or the factory gives images seen for some files and not for others.
  """
  paths = hooks.snapshot_files(checkpoint, field=HOOK_FILES_FIELD)
  by_key = {os.path.basename(p): p for p in paths}
  keys = tuple(by_key)
  names: Dict[str, str] = {}
  for key in keys:  # (a snapshot's files are named by `output_name`: one per snapshot)
    if names.setdefault(output_name(key), key) != key:
      config_checks.fail(HOOK_FILES_FIELD, checkpoint, (
          f"holds {names[output_name(key)]!r} and {key!r}, whose names differ only in their "
          "extension: the results name a snapshot's files by its file name without the extension; "
          "rename one of them"))
  factory = hooks.load_factory(spec, field=HOOK_FIELD)
  shape, classes = tuple(int(v) for v in image_shape), int(num_classes)
  made = {keys[0]: hooks.check_denoiser_factory(factory, paths[0], shape, classes,
                                                field=HOOK_FIELD, value=spec)}
  tells = bool(made[keys[0]][1])  # the factory says its images seen (else: the file names)
  seen: Dict[str, int] = {}

  def record(key: str, n: int) -> None:
    seen[key] = n
    known = [k for k in keys if k in seen]
    for a, b in zip(known, known[1:]):
      if seen[a] >= seen[b]:
        config_checks.fail(HOOK_FILES_FIELD, checkpoint, (
            f"holds {a!r} ({seen[a]} images seen) before {b!r} ({seen[b]}): the snapshots are "
            "taken in the natural order of their file names, in which the images seen must "
            "increase (" + ("the factory's info['images_seen']" if tells else
                            "the last number of each name") + "); rename the files"))

  if not tells:
    for key in keys:
      n = hooks.images_seen_of_name(key)
      if n is None:
        config_checks.fail(HOOK_FIELD, spec, (
            f"returns a bare denoiser, so the images seen are read from the file names, but "
            f"{key!r} (under config.{HOOK_FILES_FIELD}={checkpoint!r}) holds no number: return "
            "(denoise, {'images_seen': n}) from the factory, or put the number in the name "
            "(e.g. net-000100.npz)"))
      record(key, n)

  def load(key: str, which: str) -> Snapshot:
    checked = made.pop(key, None)
    made.clear()  # (the start-up check's denoiser is kept only until the first load)
    denoise, info = checked or hooks.check_denoiser_factory(
        factory, by_key[key], shape, classes, field=HOOK_FIELD, value=spec)
    if bool(info) != tells:
      config_checks.fail(HOOK_FIELD, spec, (
          f"returned info {info} for {key!r} but {'' if tells else 'no '}info for "
          f"{keys[0]!r}: a factory returns (denoise, {{'images_seen': n}}) for every snapshot or "
          "for none"))
    if tells:
      record(key, info["images_seen"])
    return Snapshot({HOOK_SET: denoise}, dict(info, images_seen=seen[key], source=by_key[key]),
                    None)

  return SnapshotSeries(keys, "hook", load, spec=spec)


def data_of(config, data_dir: str = "") -> ml_collections.ConfigDict:
  """A config holding only config.data (a copy; data.data_dir replaced by `data_dir` when given):
  what `load_split`, `training_set` and `check_optimal_labels` read, for a hook's network measured
  on the data config.data names."""
  out = ml_collections.ConfigDict({"data": config.data.to_dict()})
  if data_dir:
    out.data.data_dir = data_dir
  return out


# ------------------------------------------------------------------------------------------------
# The one snapshot a job measures (ladder, export): config.run_dir / step / ema / data_dir, or a
# hook (config.model.denoiser, config.model.checkpoint) on config.data


def validate_snapshot_source(config) -> None:
  """config.run_dir (a train job's workdir), config.step (-1: the last snapshot) and config.ema;
  or a hook (config.model.denoiser set: run_dir '', step -1 = the last file under
  model.checkpoint, ema 'first') measured on config.data (each field alone: `defaults`'
  `_snapshot_source`). Raises ConfigError naming the field."""
  run_dir, step, ema_name = config.run_dir, config.step, config.ema
  if not ema_name:
    config_checks.fail("ema", ema_name, "must be 'first' or the name of an EMA set of the "
                       "snapshot")
  if validate_hook(config):
    spec = config.model.denoiser
    if run_dir:
      config_checks.fail("run_dir", run_dir, f"must be '' with config.model.denoiser={spec!r}: "
                         "the network is the hook's, measured on config.data (or set "
                         "model.denoiser='' to measure the run)")
    if step != -1:
      config_checks.fail("step", step, f"must be -1 with config.model.denoiser={spec!r} (the last "
                         "file under config.model.checkpoint): point model.checkpoint at a file "
                         "to measure another")
    if ema_name not in ("first", HOOK_SET):
      config_checks.fail("ema", ema_name, f"must be 'first' with config.model.denoiser={spec!r} "
                         "(a hook gives one denoiser per snapshot)")
    config_checks.data_config(config.data)
    return
  if not run_dir:
    config_checks.fail("run_dir", run_dir, "must name a train job's workdir (or set "
                       "config.model.denoiser to measure a hook's network)")
  if not os.path.isdir(run_dir):
    config_checks.fail("run_dir", run_dir, "does not exist")
  if not os.path.isfile(os.path.join(run_dir, RUN_FILE)):
    config_checks.fail("run_dir", run_dir, f"has no {RUN_FILE}: not a train job's workdir")


def run_snapshot_step(config) -> int:
  """The step of the run's snapshot config.step (-1: the last) in config.run_dir. Raises
  ConfigError naming config.run_dir (no snapshots) or config.step (not a snapshot step)."""
  steps = checkpointing.snapshot_steps(config.run_dir)
  if not steps:
    config_checks.fail("run_dir", config.run_dir, f"holds no snapshots under "
                       f"{checkpointing.SNAPSHOT_DIR}/: train first")
  if config.step == -1:
    return steps[-1]
  if config.step not in steps:
    config_checks.fail("step", config.step, f"is not a snapshot step of the run; allowed values "
                       f"{tuple(steps)} or -1 (the last)")
  return int(config.step)


def snapshot_source(config) -> Tuple[Optional[Run], ml_collections.ConfigDict]:
  """(the run's record, or None for a hook; the config whose data, and for a run network and
  sigma_data, the job reads: the run's latest (`Run.config_at`), or `data_of(config)` for a hook),
  its data.data_dir replaced by config.data_dir when given."""
  if uses_hook(config):
    return None, data_of(config, config.data_dir)
  run = read_run(config.run_dir)
  run_config = run.config_at()
  if config.data_dir:
    run_config.data.data_dir = config.data_dir
  return run, run_config


def check_run_data(run: Optional[Run], run_config, train_split: data.Split) -> None:
  """The training split found must be the images the run trained on (its recorded fingerprint;
  nothing to compare for a hook, run None). Raises ConfigError naming the differing fields."""
  if run is None:
    return
  compare_with_run(
      run, run_config, train_split, fields=("data.",),
      remedy=f"The data in data_dir={run_config.data.data_dir!r} are not the images the run "
             "trained on: point config.data_dir at the run's dataset.")


def one_snapshot(config, run: Optional[Run], run_config, image_shape: Sequence[int],
                 num_classes: int, mesh: Optional[jax.sharding.Mesh]
                 ) -> Tuple[SnapshotSeries, str]:
  """(the series, the key of the snapshot measured): a hook's (checked now on two images of
  image_shape, labels of num_classes; its last file) or the run's (`run_series` with the network
  run_config describes for num_classes; the snapshot config.step)."""
  if run is None:
    series = hook_series(config.model.denoiser, config.model.checkpoint, image_shape, num_classes)
    return series, series.keys[-1]
  step = run_snapshot_step(config)
  network = network_of(run_config, num_classes, "float32")
  return (run_series(config.run_dir, network, float(run_config.training.sigma_data), mesh),
          str(step))


# ------------------------------------------------------------------------------------------------
# The record of a training run: WORKDIR/config.json
#
# The train job writes it when a run starts: the config (its model resolved: the network built,
# `models.resolve`, with the data's num_classes and the compute dtype), and under the key RECORD
# the training set's fingerprint (`training_set`) and the list of resumes that changed a field.
# Every job that reads a run (train's resume, evaluate, factors' trained sweep, ladder) reads it
# with `read_run` and checks the config it runs with against it with `compare_with_run`.

RUN_FILE = "config.json"
RECORD = "run"  # the one key of config.json that is not a config field
RECORD_FORMAT = 2  # format 1 (no RECORD key): runs recorded before the training set and resumes

# The one list of what a resume may change. Fields matching RESUME_FREE change without being
# asked (and are recorded): when states, snapshots, logs, samples and measurements are written
# and how they are computed, how long the run goes on, where its data live (the training set's
# fingerprint is compared instead) and the model fields the train job sets itself (num_classes
# from the data, the compute dtype from training.compute_dtype; a published network's path).
RESUME_FREE = ("job", "resume_changes", "log_every_steps", "tensorboard", "checkpoint.",
               "monitor.", "sampling.", "evaluation.", "mesh.", "training.total_images",
               "data.data_dir", "data.pseudo_labels", "model.num_classes", "model.dtype",
               "model.checkpoint", "model.checkpoint_ema", "model.denoiser")
# The run's identity, never changed by a resume: which images it trains on (data.*, with the
# fingerprint data.training_set.*), their order and flips (seed, training.batch_size), the network
# (model.*), its preconditioning (training.sigma_data: every snapshot is read with one) and the
# EMA sets its state holds.
IDENTITY = ("seed", "data.", "model.", "training.batch_size", "training.sigma_data",
            "training.ema.kind", "training.ema.sigma_rels")
# Every other field (training.lr, training.label_dropout, ...) changes what the training steps
# compute: a resume changes it only when config.resume_changes names it, and records the change.
# What the jobs that read a trained run compare: everything that decides which images it trained
# on, which network was built, and how its outputs are preconditioned.
READER_FIELDS = ("data.", "model.", "training.sigma_data")


def check_resume_changes(config) -> None:
  """config.resume_changes: distinct dotted names of fields of the config, none of IDENTITY.

  Raises config_checks.ConfigError naming config.resume_changes, the entry and what is allowed.
  """
  names = config_checks.get(config, "resume_changes")
  if isinstance(names, str) or not isinstance(names, (tuple, list)) or not all(
      isinstance(n, str) for n in names):
    config_checks.fail("resume_changes", names, "must be a tuple of dotted field names, e.g. "
                       "('training.lr',)")
  fields = _flat(_plain(config))
  unknown = [n for n in names if n not in fields]
  if unknown:
    config_checks.fail("resume_changes", tuple(names), f"names {unknown}, not fields of the config "
                       "(dotted names of single fields, e.g. 'training.lr')")
  if len(set(names)) != len(names):
    config_checks.fail("resume_changes", tuple(names), "repeats a field")
  fixed = [n for n in names if _matches(n, IDENTITY) and not _matches(n, RESUME_FREE)]
  if fixed:
    config_checks.fail("resume_changes", tuple(names), f"names {fixed}, which decide what the run "
                       f"is (its data, model, seed, batch size, sigma_data, EMA sets: {IDENTITY}) "
                       "and never change within a run; train them in a new --workdir")


def _matches(field: str, names: Sequence[str]) -> bool:
  """Whether a dotted field is one of `names` (a name ending in "." is a section; "" is all)."""
  return any(n == "" or field == n or (n.endswith(".") and field.startswith(n)) for n in names)


def _plain(tree):
  """A config (or dict) as plain JSON values: tuples become lists, as in config.json."""
  if hasattr(tree, "to_json_best_effort"):
    return json.loads(tree.to_json_best_effort())
  return json.loads(json.dumps(tree))


def _flat(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _set(tree: Dict[str, Any], field: str, value) -> None:
  *path, leaf = field.split(".")
  for part in path:
    tree = tree.setdefault(part, {})
  tree[leaf] = value


def _merged(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
  out = dict(base)
  for key, value in over.items():
    both = isinstance(value, dict) and isinstance(out.get(key), dict)
    out[key] = _merged(out[key], value) if both else value
  return out


def _dataset_identity(name):
  """data.name without where it lives: a built-in or tfds name as is, an EDM zip pair by the zips'
  file names (the directory, like data.data_dir, is no part of the data's identity)."""
  if isinstance(name, str) and name.startswith("edm_zip:"):
    return "edm_zip:" + ",".join(os.path.basename(p) for p in name[len("edm_zip:"):].split(","))
  return name


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def training_set(config, train_split: data.Split) -> Dict[str, Any]:
  """The fingerprint of the training split (or subset) config.data selects, independent of where
  the data live: its number of images, image shape (H, W, C), the sha256 of its rows in the whole
  split (int64; the subset's choice and order), of its labels when they are in memory (int32;
  "" for a lazily read split), and of the pseudo-label file (labels="pseudo"; "" otherwise)."""
  labels = train_split.labels
  pseudo = config.data.get("pseudo_labels", "") if config.data.labels == "pseudo" else ""
  return {"images": int(len(train_split)), "image_shape": [int(s) for s in train_split.shape],
          "rows_sha256": "" if train_split.ids is None else _sha256(
              np.asarray(train_split.ids, np.int64)),
          "labels_sha256": _sha256(np.asarray(labels, np.int32)) if isinstance(
              labels, np.ndarray) else "",
          "pseudo_labels_sha256": checkpointing.file_sha256(pseudo) if pseudo else ""}


@dataclasses.dataclass(frozen=True)
class Run:
  """A training run's record (`read_run`).

  path: the record's file (WORKDIR/config.json).
  config: the config the run started with, as plain JSON values (tuples as lists), its model the
    network built (`models.resolve`d; num_classes the data's); fields the run's version did not
    have are at their defaults.
  training_set: `training_set` of the run's training data; {} for a run recorded before it was
    (then it is not compared).
  resumes: [{"step": s, "changed": {field: [old, new]}}], steps increasing: a resume from the
    state after s training steps changed these fields, so steps s + 1, s + 2, ... ran with the new
    values (until the next entry). A resume that went back to an earlier state drops the entries
    of the steps it replays. `config_at` and `values` give the values that applied.
  """

  path: str
  config: Dict[str, Any]
  training_set: Dict[str, Any]
  resumes: List[Dict[str, Any]]

  def config_at(self, steps_done: Optional[int] = None) -> ml_collections.ConfigDict:
    """The settings that computed training step steps_done (the last of the first steps_done
    steps; None: the latest settings): the config with every resume before that step applied."""
    tree = copy.deepcopy(self.config)
    for resume in self.resumes:
      if steps_done is not None and resume["step"] >= steps_done:
        break
      for field, (_, new) in resume["changed"].items():
        _set(tree, field, new)
    return ml_collections.ConfigDict(tree)

  def values(self, field: str, steps_done: Optional[int] = None) -> List[Any]:
    """Every value the dotted `field` had in the first steps_done training steps (None: all), in
    order: [0.1] for a field never changed, [0.1, 0.0] for one a resume changed (None where the
    config has no such field)."""
    out = []
    for i, start in enumerate([0] + [r["step"] for r in self.resumes]):
      if i and steps_done is not None and start >= steps_done:
        break
      value = self.config_at(start + 1).to_dict()  # the settings of step start + 1
      for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
      out.append(value)
    return out

  def fields(self, steps_done: Optional[int] = None) -> Dict[str, Any]:
    """{dotted field: value} of `config_at(steps_done)` and the training set (data.training_set.*),
    data.name as `_dataset_identity`: what `compare_with_run` compares."""
    flat = _flat(_plain(self.config_at(steps_done)))
    flat["data.name"] = _dataset_identity(flat.get("data.name"))
    flat.update({f"data.training_set.{k}": v for k, v in self.training_set.items()})
    return flat


def read_run(run_dir: str) -> Run:
  """The record of the training run in run_dir (its config.json, written by the train job).

  Raises config_checks.ConfigError naming the file when it is missing, not JSON, or names an
  unknown model family or field.
  """
  path = os.path.join(run_dir, RUN_FILE)
  if not os.path.isfile(path):
    raise config_checks.ConfigError(
        f"{path} does not exist: {run_dir!r} is not a train job's workdir (the train job writes "
        "its config.json when it starts)")
  try:
    with open(path) as f:
      raw = json.load(f)
    if not isinstance(raw, dict):
      raise ValueError("not a JSON object")
  except (OSError, UnicodeDecodeError, ValueError) as err:
    raise config_checks.ConfigError(
        f"{path} is not a readable run record ({err}); restore it from a copy, or train the run "
        "again in a new workdir") from None
  record = raw.pop(RECORD, None)
  model = raw.get("model")
  family = model.get("family", "ddpmpp") if isinstance(model, dict) else "ddpmpp"
  try:
    # Fields added since the run was recorded are at their defaults, which keep the behaviour
    # the run had before the field existed.
    config = _merged(_plain(defaults.train_config(family=family)), raw)
    if record is None:
      # Format 1: the model as given, its preset's architecture fields then overriding the
      # config's (preset_wins), which is the network the run built.
      config["model"] = _plain(models.resolve(config["model"], preset_wins=True).to_dict())
  except config_checks.ConfigError as err:
    raise config_checks.ConfigError(f"{path}: {err}") from None
  record = record or {}
  return Run(path=path, config=config, training_set=dict(record.get("training_set") or {}),
             resumes=list(record.get("resumes") or []))


def new_run_record(config, model_config, train_split: data.Split) -> Dict[str, Any]:
  """The config.json of a run that starts: the config with model = model_config (resolved: the
  network built) and the RECORD section (training set, no resumes)."""
  tree = _plain(config)
  tree["model"] = _plain(models.resolve(model_config).to_dict())
  tree[RECORD] = {"format": RECORD_FORMAT, "training_set": training_set(config, train_split),
                  "resumes": []}
  return tree


def write_run_record(workdir: str, tree: Dict[str, Any]) -> None:
  """Writes WORKDIR/config.json (atomically; process 0 only)."""
  if jax.process_index() == 0:
    jsonio.write_json(os.path.join(workdir, RUN_FILE), tree)


def _now_fields(config, train_split: Optional[data.Split], with_model: bool) -> Dict[str, Any]:
  tree = _plain(config)
  if with_model and "model" in tree:  # as built: a conflict with its preset is refused here
    tree["model"] = _plain(models.resolve(config.model).to_dict())
  flat = _flat(tree)
  if "data.name" in flat:
    flat["data.name"] = _dataset_identity(flat["data.name"])
  if train_split is not None:
    flat.update({f"data.training_set.{k}": v for k, v in training_set(config, train_split).items()})
  return flat


def compare_with_run(run: Run, config, train_split: Optional[data.Split], *, remedy: str,
                     fields: Sequence[str] = READER_FIELDS, steps_done: Optional[int] = None,
                     allowed: Sequence[str] = ()) -> Dict[str, Tuple[Any, Any]]:
  """Compares the config a job runs with (and the training split it loaded) with the run's record.

  fields: the dotted fields (or sections ending in ".", "" for all) compared; steps_done: compare
  with the settings of the run's step steps_done (`Run.config_at`; None: the latest). A field of
  RESUME_FREE may differ; one of IDENTITY may not; any other may differ only when `allowed`
  names it (config.resume_changes). A training-set fingerprint the record lacks (a run recorded
  before it was) is not compared.

  Returns {field: (saved, now)} of every difference that is allowed. Raises
  config_checks.ConfigError naming the record's file and each refused field (saved vs now), with
  `remedy` (what to do) and, for a field a resume could change, how to allow it.
  """
  saved = run.fields(steps_done)
  now = _now_fields(config, train_split, with_model=_matches("model.", fields))
  diff = {}
  for field in sorted(set(saved) | set(now)):
    if not _matches(field, fields):
      continue
    if field.startswith("data.training_set.") and (field not in saved or field not in now):
      continue
    if saved.get(field) != now.get(field):
      diff[field] = (saved.get(field), now.get(field))
  refused = [f for f in diff if not _matches(f, RESUME_FREE)
             and (_matches(f, IDENTITY) or f not in tuple(allowed))]
  if not refused:
    return diff
  shown = "; ".join(f"{f}: {diff[f][0]!r} vs {diff[f][1]!r}" for f in refused)
  message = (f"the config does not match the run recorded in {run.path} (saved vs now): {shown}. "
             + remedy)
  changeable = [f for f in refused if not _matches(f, IDENTITY)]
  if changeable:
    message += (f" {tuple(changeable)} change what the training steps compute: to change them from "
                "this step on, name them in config.resume_changes ("
                + " ".join(f"--config.resume_changes={f}" for f in changeable)
                + f"), and {RUN_FILE} records the change with its step.")
  raise config_checks.ConfigError(message)


def record_resume(workdir: str, run: Run, steps_done: int,
                  changes: Dict[str, Tuple[Any, Any]]) -> Run:
  """Records in WORKDIR/config.json that the run resumed from the state after steps_done steps
  with `changes` ({field: (old, new)}, from `compare_with_run(..., steps_done=steps_done)`):
  entries of the steps it replays are dropped. Returns the updated record; writes (process 0)
  only when it changed."""
  resumes = [r for r in run.resumes if r["step"] < steps_done]
  if changes:
    resumes.append({"step": int(steps_done),
                    "changed": {f: [old, new] for f, (old, new) in sorted(changes.items())}})
  if resumes == run.resumes:
    return run
  updated = dataclasses.replace(run, resumes=resumes)
  write_run_record(workdir, dict(run.config, **{RECORD: {
      "format": RECORD_FORMAT, "training_set": run.training_set, "resumes": resumes}}))
  return updated
