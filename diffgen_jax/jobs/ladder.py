"""The `ladder` job: a trained network against every rung of the analytic ladder (analytic.md
section 1; a thin shell over `evaluation.ladder`).

For one snapshot of a train job's run (config.run_dir; the last snapshot or config.step), or of a
hook's network (config.model.denoiser = MODULE:FUNCTION on the last file under
config.model.checkpoint, `common.hook_series`, measured on config.data; checked on two images
before anything is measured) it
1. builds three input sets, each an (S, B, H, W, C) array of states with its sigmas:
     "train"       num_images training images (seeded) + sigma n (the gap evaluation's seeded
                   per-image noise, seed noise_seed) on the sigma grid;
     "val"         the same for validation images (seed noise_seed + 1);
     "trajectory"  the network's own deterministic Heun trajectories (trajectory.num_samples
                   samples, trajectory.num_steps noise levels of the Karras schedule; their sigmas);
2. calibrates the patch size of each local rung (LS, ELS, PSPC) against the network per sigma of
   the calibration set (calibration.on; `ladder.calibrate` over calibration.sizes), keeping the
   distance curve of every candidate;
3. builds the rungs (`ladder.ladder_rungs`): y*, y_delta (delta > 0), LS / ELS / PSPC at their
   calibrated {sigma: size} schedules (nearest calibrated sigma in log space applies elsewhere),
   the Gaussian denoiser at full rank and at each gaussian_ranks r; class-conditional on the
   training labels when the run is;
4. per input set and rung: mse and r2 = 1 - E||D_net - D_an||^2 / E||D_net - mean D_net||^2 per
   sigma (normalised by the NETWORK's output variance; `ladder.ladder_agreement`);
5. each rung's own E_train, E_val and G(sigma) and the network's, on the noised sets' images and
   sigma grid (`ladder.rung_gaps`; one noise seed, noise_seed, for both splits).

Outputs: WORKDIR/results.json (`jobs.results` layout, written after every stage):
    {"job": "ladder", "schema_version": 1,
     "settings":    {"run_dir" (null for a hook), "step" (a hook's: the file name), "denoiser"
                     and "snapshot" (a hook's spec and file), "images_seen", "ema", "dataset",
                     "subset_size", "labels",
                     "num_classes", "image_shape", "num_train_set", "num_train_eval",
                     "num_val_eval", "noise_seed_train", "noise_seed_val", "sigmas",
                     "trajectory_sigmas", "rungs", "interval", "evaluation_devices",
                     "processes", "config"}
     (r2_low / r2_high, gap_low / gap_high: 95% percentile bootstrap intervals over the set's
     inputs, r2 recomputed on each resample, and over each split's images for G; seeded, the
     settings in settings.interval, `ladder.INTERVAL`)
     "calibration": {"on", "sigmas" (S_c,), "sizes" (K,),
                     "machines": {"LS" | "ELS" | "PSPC": {"mse" (K, S_c), "r2" (K, S_c),
                                                          "best_size" (S_c,)}}}
                     (best_size -1 where no candidate's mse is finite: the job then stops
                     with a ValueError naming the sigma, after saving the calibration)
     "agreement":   {"train" | "val" | "trajectory": {"sigmas" (S,),
                                                     "rungs": {rung: {"mse" (S,), "r2" (S,),
                                                                      "r2_low", "r2_high"}}}}
     "gaps":        {"sigmas" (S,), "denoisers": {"network" | rung: {"e_train", "e_val", "gap",
                                                                    "gap_low", "gap_high"}}}
     "summary":     {"best_rung": {set: [rung of the highest r2 per sigma; null where every
                                         rung's r2 is NaN]},
                     "best_r2": {set: [that r2 per sigma; NaN (null) there]},
                     "gap_log_distance": {rung: |log(1 + G_rung) - log(1 + G_network)| per sigma},
                     "closest_gap_rung": [rung minimising it per sigma; null where no rung's
                                          distance is a number],
                     "gap_distance": {rung: its median over sigmas},
                     "closest_gap_rung_overall": the rung minimising that,
                     "best_rung_predicts_gap": {set: fraction of sigmas where the set's best-r2
                                                rung is the closest-G rung, over the sigmas
                                                where both are defined; NaN if none is}}
Where it runs: one mesh over every device of every process (`common.evaluation_mesh`, the run's
model axis): the rungs lay the training set out over it from where it lives (each process reads
its share), every batch of states is split over it, the snapshot is restored onto the run's
parameter sharding, and the outputs are gathered once; settings.evaluation_devices and
settings.processes record it. The calibration, the rungs and their gaps report progress with rate
and ETA (`progress`).
Figures (config.make_plots) in WORKDIR: ladder_r2.png (r2 vs sigma per rung, one panel per input
set), ladder_calibration.png (calibrated size vs sigma and every candidate's distance curve),
ladder_gap.png (G(sigma) of the rungs beside the network's); the intervals as shaded bands.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

import numpy as np

from diffgen_jax import config_checks, defaults, jobs, jsonio
from diffgen_jax.config_checks import ConfigError, fail
from diffgen_jax.evaluation import ladder
from diffgen_jax.jobs import common, console, results as results_lib
from diffgen_jax.optimal_patches import patch_composite_denoiser

JOB = "ladder"
LOCAL_RUNGS, INPUT_SETS = defaults.LOCAL_RUNGS, defaults.LADDER_INPUT_SETS


# ------------------------------------------------------------------------------------------------
# Config


def validate_config(config) -> None:
  """The rules between the fields the job reads (each field alone: `defaults.LADDER`);
  ConfigError names the field and what it allows."""
  config_checks.choice(config, "job", (JOB,))
  common.validate_snapshot_source(config)  # run_dir, step, ema, data_dir; or the hook, data
  sizes = config_checks.entries(config.calibration.sizes)
  if any(k % 2 == 0 for k in sizes) or len(set(sizes)) != len(sizes):
    fail("calibration.sizes", tuple(sizes), "must be distinct odd integers >= 1 (window sizes)")
  local = _local_rungs(config)
  if len(set(local)) != len(local):
    fail("local_rungs", tuple(local), "entries must be distinct")


def _local_rungs(config):
  return tuple(config_checks.entries(config.local_rungs))


def _check_ranks(config, dim: int, train_labels, num_train: int) -> None:
  """Refuses a rank above H W C, and a rank that truncates nothing: the (per-class) covariance of n
  training images has rank <= n - 1, so a rank at or above that of every class is the full-rank
  Gaussian under another name."""
  bad = [r for r in config.gaussian_ranks if r > dim]
  if bad:
    fail("gaussian_ranks", tuple(config.gaussian_ranks), f"has {bad} > H W C = {dim} of the "
         "run's images")
  counts = (np.bincount(np.asarray(train_labels)) if train_labels is not None
            else np.asarray([num_train]))
  most = int(min(dim, counts.max() - 1))
  full = [r for r in config.gaussian_ranks if r >= most]
  if full:
    per = "a class's" if train_labels is not None else "the training set's"
    fail("gaussian_ranks", tuple(config.gaussian_ranks),
         f"has {full} >= {most}, the largest rank of {per} covariance (at most "
         f"{int(counts.max())} training images{' per class' if train_labels is not None else ''}):"
         f" such a Gaussian is the full-rank one (gaussian_full); use ranks below {most}")


# ------------------------------------------------------------------------------------------------
# The job


def _pspc_factory(train_images, k, train_labels=None, **kwargs):
  return patch_composite_denoiser(train_images, k, train_labels, **kwargs)


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the ladder report; writes WORKDIR/results.json after every stage, then the figures."""
  start = time.perf_counter()
  run, run_config = common.snapshot_source(config)
  train_split = common.load_split(run_config, "train")
  common.check_run_data(run, run_config, train_split)
  val_split = common.load_split(run_config, "validation")
  num_classes = train_split.num_classes
  # The training set is a source the rungs read where it lives (each process its share); the
  # evaluation subsets are read lazily too.
  train_all, train_labels_all, _ = common.evaluation_rows(train_split)
  _check_ranks(config, int(np.prod(train_all.shape[1:])), train_labels_all, len(train_all))
  train_x, train_y, train_ids = common.evaluation_rows(train_split, config.num_images,
                                                       config.subset_seed, field="num_images")
  val_x, val_y, val_ids = common.evaluation_rows(val_split, config.num_images, config.subset_seed,
                                                 "validation", field="num_images")
  sigmas = common.sigma_grid(config.sigmas, config.num_sigmas)

  # One mesh over every device of every process: the rungs lay the training set out over it,
  # every batch is split over it, and the snapshot is restored onto the run's parameter sharding.
  mesh = common.evaluation_mesh(None if run is None else run_config)
  series, key = common.one_snapshot(config, run, run_config, train_split.shape, num_classes, mesh)
  snapshot = series.load(key, config.ema)
  ema_name, net = next(iter(snapshot.denoisers.items()))
  meta = snapshot.meta
  previous = results_lib.read_if_exists(workdir).get(results_lib.JOB_KEY)
  if previous not in (None, JOB):
    raise ConfigError(f"{results_lib.path(workdir)} holds the results of job {previous!r}: give "
                      "the ladder job its own --workdir (not the run's)")
  os.makedirs(workdir, exist_ok=True)
  results: Dict[str, Any] = {}
  save = lambda: results_lib.write(workdir, JOB, jsonio.to_jsonable(results))

  # 1. The input sets.
  t = config.trajectory
  rng = np.random.default_rng(t.seed)
  noise = rng.standard_normal((t.num_samples,) + train_all.shape[1:]).astype(np.float32)
  sample_labels = (rng.integers(0, num_classes, t.num_samples).astype(np.int32)
                   if num_classes > 0 else None)
  console.progress(f"ladder: {t.num_samples} trajectories of the network ({t.num_steps} steps)")
  traj_sigmas, traj_states = ladder.trajectory_inputs(net, noise, sample_labels, mesh=mesh,
                                                      num_steps=int(t.num_steps))
  who = series.describe(key, ema_name)
  common.require_finite(
      np.asarray(traj_states).reshape(len(traj_sigmas), -1).T, denoiser=who, sigmas=traj_sigmas,
      measurement=f"its sampler trajectories (deterministic Heun, {t.num_steps} steps, "
                  f"{t.num_samples} samples)")
  input_sets = {
      "train": (ladder.noised_inputs(np.asarray(train_x), sigmas, ids=train_ids,
                                     noise_seed=config.noise_seed), sigmas, train_y),
      "val": (ladder.noised_inputs(np.asarray(val_x), sigmas, ids=val_ids,
                                   noise_seed=config.noise_seed + 1), sigmas, val_y),
      "trajectory": (traj_states, traj_sigmas, sample_labels)}
  results["settings"] = {
      "run_dir": None if run is None else os.path.abspath(config.run_dir),
      "step": key if run is None else int(key), **common.hook_record(series, meta),
      "images_seen": meta.get("images_seen"), "ema": ema_name, "dataset": run_config.data.name,
      "subset_size": run_config.data.subset_size or 0, "labels": run_config.data.labels,
      "subset_seed": run_config.data.subset_seed,
      "training_set": common.training_set(run_config, train_split),
      "num_classes": int(num_classes), "image_shape": list(train_all.shape[1:]),
      "num_train_set": len(train_all), "num_train_eval": len(train_x), "num_val_eval": len(val_x),
      "noise_seed_train": config.noise_seed, "noise_seed_val": config.noise_seed + 1,
      "evaluation_subset_seed": config.subset_seed,
      "sigmas": sigmas, "trajectory_sigmas": traj_sigmas, "interval": dict(ladder.INTERVAL),
      **common.devices_used(mesh),
      "config": json.loads(config.to_json_best_effort())}
  save()

  # 2. Calibration of each local rung's patch size.
  cal_inputs, cal_sigmas, cal_labels = input_sets[config.calibration.on]
  machines = {"LS": dict(machine="ls"), "ELS": dict(machine="els", boundary=config.els_boundary),
              "PSPC": dict(machine="ls", machine_factory=_pspc_factory)}
  calibrations = {}
  results["calibration"] = {"on": config.calibration.on, "sigmas": cal_sigmas,
                            "sizes": list(config.calibration.sizes), "machines": {}}
  for name in _local_rungs(config):
    console.progress(f"ladder: calibrating {name} over sizes {tuple(config.calibration.sizes)} on "
                     f"the {config.calibration.on} set")
    cal = ladder.calibrate(net, train_all, config.calibration.sizes, cal_inputs, cal_sigmas,
                           cal_labels, train_labels=train_labels_all, batch_size=config.batch_size,
                           mesh=mesh, **machines[name])
    calibrations[name] = cal
    results["calibration"]["machines"][name] = {"mse": cal.mse, "r2": cal.r2,
                                                "best_size": cal.best_size}
    save()

  # 3. The rungs.
  def sched(name):
    if name not in calibrations:
      return None
    try:
      return calibrations[name].schedule()
    except ValueError as e:  # no size was calibrated at some sigma: refuse to make one up
      # (No candidate's agreement with the network is finite there: the network's outputs, or
      # every candidate machine's, hold NaN or Inf.)
      raise jobs.MeasurementError(
          f"{who} or every {name} machine gives NaN or Inf in the calibration on the "
          f"{config.calibration.on} set, so ladder: cannot build the calibrated {name} rung: {e}; "
          f"the calibration is in {results_lib.path(workdir)}") from None

  ranks = ((None,) if config.gaussian_full else ()) + tuple(int(r) for r in config.gaussian_ranks)
  rungs = ladder.ladder_rungs(
      train_all, train_labels_all, delta=config.delta if config.delta > 0 else None,
      ls_size=sched("LS"), els_size=sched("ELS"), pspc_size=sched("PSPC"),
      els_boundary=config.els_boundary, gaussian_ranks=ranks, mesh=mesh)
  results["settings"]["rungs"] = list(rungs)

  # 4. Agreement of the network with every rung on every input set.
  results["agreement"] = {}
  for set_name in INPUT_SETS:
    console.progress(f"ladder: {len(rungs)} rungs on the {set_name} set")
    report = ladder.ladder_agreement(net, rungs, {set_name: input_sets[set_name]},
                                     batch_size=config.batch_size, mesh=mesh)[set_name]
    # A sigma where no rung's mse is finite: the network's outputs are not.
    if report:
      finite = np.any([np.isfinite(a.mse) for a in report.values()], axis=0)
      common.require_finite(np.where(finite, 0.0, np.nan), denoiser=who,
                            sigmas=input_sets[set_name][1],
                            measurement=f"its agreement with the rungs on the {set_name} set")
    results["agreement"][set_name] = {
        "sigmas": input_sets[set_name][1],
        "rungs": {name: {"mse": a.mse, "r2": a.r2, "r2_low": a.r2_low, "r2_high": a.r2_high}
                  for name, a in report.items()}}
    save()

  # 5. Each rung's own G(sigma), beside the network's.
  console.progress(f"ladder: G(sigma) of the network and {len(rungs)} rungs")
  gaps = ladder.rung_gaps({"network": net, **rungs}, train_x, val_x, sigmas, train_y, val_y,
                          noise_seed=config.noise_seed, batch_size=config.batch_size, mesh=mesh)
  common.require_finite(np.stack([gaps["network"]["e_train"], gaps["network"]["e_val"]]),
                        denoiser=who, sigmas=sigmas, measurement="its denoising gap (E_train, "
                        "E_val)")
  results["gaps"] = {"sigmas": sigmas, "denoisers": gaps}
  results["summary"] = ladder.summarize(results["agreement"], results["gaps"])
  results["wall_time_s"] = time.perf_counter() - start
  save()
  results = results_lib.read(workdir)
  if config.make_plots:
    from diffgen_jax.plots import ladder as ladder_plots  # matplotlib only when plotting
    ladder_plots.draw(results, workdir)
  for line in summary_lines(results):
    console.summary(line)
  console.summary(f"ladder: results in {results_lib.path(workdir)}"
                  + (f", figures in {os.path.abspath(workdir)}/" if config.make_plots else ""))
  return results


def summary_lines(results: Dict[str, Any]):
  s = results["summary"]
  lines = []
  for set_name, names in s["best_rung"].items():
    sig = results["agreement"][set_name]["sigmas"]
    lines.append(f"ladder: best rung on {set_name}: " + ", ".join(
        f"{x:.3g}:{n or 'none'}({'n/a' if r is None else f'{r:.2f}'})"
        for x, n, r in zip(sig, names, s["best_r2"][set_name])))
  cal = results.get("calibration", {})
  for name, m in cal.get("machines", {}).items():
    lines.append(f"ladder: calibrated {name} size vs sigma ({cal['on']}): " + ", ".join(
        f"{x:.3g}:{k if k > 0 else 'none'}" for x, k in zip(cal["sigmas"], m["best_size"])))
  sig = results["gaps"]["sigmas"]
  lines.append("ladder: rung whose G is closest to the network's (log scale): " + ", ".join(
      f"{x:.3g}:{n}" for x, n in zip(sig, s["closest_gap_rung"])))
  lines.append(f"ladder: closest G curve overall (median distance): {s['closest_gap_rung_overall']}"
               "; fraction of sigmas where the best-r2 rung is also the closest-G rung: " + ", ".join(
                   f"{k} {v:.2f}" for k, v in s["best_rung_predicts_gap"].items()))
  return lines
