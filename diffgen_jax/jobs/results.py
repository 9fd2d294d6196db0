"""The one results.json layout of every job.

Every job writes WORKDIR/results.json (plain JSON, non-finite numbers as null, written atomically
after each unit of work so an interrupted job keeps what it finished), and anything that reads
results (experiments/, notebooks) calls `read(workdir)` without knowing which job wrote it:

    {"job": "train" | "evaluate" | "factors" | "toy2d" | "ladder" | "export",  the job that wrote it
     "schema_version": 1,
     ... the job's sections:
     train / evaluate (the gap of every snapshot of a training run; `jobs.evaluate`):
       "protocol":  {"sigmas", "num_train", "num_val", "noise_seed", "evaluation_subset_seed",
                     "dataset", "subset_size",
                     "labels", "subset_seed", "training_set": {"images", "image_shape",
                     "rows_sha256", "labels_sha256", "pseudo_labels_sha256"}}
                    (training_set: `jobs.common.training_set`)
       "optimal":   {"e_train", "e_val"}                                    (S,) each
       "snapshots": {str(step): {"images_seen", "ema": {name: {"e_train", "e_val", "gap",
                                  "gap_low", "gap_high",  (95% bootstrap interval over images)
                                  "to_optimal_train", "to_optimal_val",     (S,) each
                                  "membership": {"auc", "auc_low", "auc_high", "tpr", "tpr_low",
                                                 "tpr_high"} (S,) each, "fpr"}}}}
       "summary":   {"steps", "images_seen", "peak_sigma", "peak_gap", "peak_gap_low",
                     "peak_gap_high", "onset_images_seen",
                     "onset_rises", "gap_at_sigmas", "membership_peak_auc",
                     "membership_peak_sigma", "membership_peak_tpr"}        per snapshot
       (protocol also holds "subset_side" for side-2 runs; per-image errors of each snapshot in
       WORKDIR/evaluation/per_image/<step>.npz, a hook's file named without its extension,
       `common.output_name`)
       "samples":   {"protocol", "feature", "snapshots": {str(step): record}, "summary",
                     "baselines": {"copier", "real": {"num_images", "features" | "pixels": fd},
                                   "inverted" and "note" where they apply}}
                    (records as in `evaluation.samples`; baselines: `samples.fd_baselines`)
       "settings":  {"evaluation_devices", "processes"}: where the last evaluation ran (every
                    device of every process, `jobs.common.devices_used`)
     factors (`jobs.factors`):
       "settings":  the data, evaluation subsets, sigma grid, seeds, config, evaluation_devices and
                    processes
       "sweeps":    {name: {"factor", "sigmas", "value_name", "curves": [...], ...}}
                    (sections as in `evaluation.sweeps`)
     toy2d (`jobs.toy2d`):
       "experiments": {name: {"protocol", ...curves, "wall_time_s"}}
     ladder (`jobs.ladder`, the network of one snapshot against the analytic rungs):
       "settings":    the run, snapshot, data, sigma grids (noised sets, trajectory), rungs, config,
                      evaluation_devices and processes
       "calibration": {"on", "sigmas", "sizes", "machines": {LS|ELS|PSPC: {"mse", "r2", "best_size"}}}
       "agreement":   {"train"|"val"|"trajectory": {"sigmas", "rungs": {rung: {"mse", "r2"}}}}
       "gaps":        {"sigmas", "denoisers": {"network"|rung: {"e_train", "e_val", "gap"}}}
       "summary":     {"best_rung", "best_r2", "gap_log_distance", "closest_gap_rung",
                       "gap_distance", "closest_gap_rung_overall", "best_rung_predicts_gap"}
     export (`jobs.export`, a snapshot's samples and D(x; sigma) as EDM dataset zips):
       "exports":     {str(step): {"run_dir", "step", "images_seen", "ema", "image_shape",
                                   "num_classes", "samples": {...}, "denoised": {...}}}
    }
Figures and other files go beside it (the evaluate job's under WORKDIR/evaluation/).
"""

from __future__ import annotations

import os
from typing import Any, Dict

from diffgen_jax import jsonio

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
JOB_KEY = "job"


def path(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_FILE)


def read(workdir: str) -> Dict[str, Any]:
  """WORKDIR/results.json as a dict.

  Raises FileNotFoundError naming the path when there is none, and jsonio.DamagedFileError naming
  it when it does not parse (the jobs write it atomically, so it was damaged or edited since).
  """
  p = path(workdir)
  if not os.path.exists(p):
    raise FileNotFoundError(f"no {RESULTS_FILE} in {os.path.abspath(workdir)}: run a job there first")
  results = jsonio.read_json(p, "move it aside (or restore it from a copy) and re-run the job, "
                                "which recomputes the results it does not find there")
  if not isinstance(results, dict):
    raise jsonio.DamagedFileError(
        f"{os.path.abspath(p)} holds a JSON {type(results).__name__}, not the results object of a "
        "job: move it aside and re-run the job")
  return results


def read_if_exists(workdir: str) -> Dict[str, Any]:
  return read(workdir) if os.path.exists(path(workdir)) else {}


def write(workdir: str, job: str, results: Dict[str, Any]) -> str:
  """Writes {"job": job, "schema_version": 1, **results} to WORKDIR/results.json; returns the path.

  A workdir holds the results of one kind of run: the evaluate job may update the train job's
  results (it is the train job's last step), any other change of job raises ValueError.
  """
  p = path(workdir)
  previous = results.get(JOB_KEY)
  if previous is not None and previous != job and {previous, job} != {"train", "evaluate"}:
    raise ValueError(f"{p} holds the results of job {previous!r}, not {job!r}: use a new workdir")
  out = {JOB_KEY: job, "schema_version": SCHEMA_VERSION}
  out.update({k: v for k, v in results.items() if k not in (JOB_KEY, "schema_version")})
  jsonio.write_json(p, out)
  return p
