"""What every experiment script shares: run a finding's config sweep, resume, gather, write.

A finding's config (`configs/experiments.py:<finding>[,<mode>]`) names its job runs in order
(`config.order`, each `config.runs[name]` a complete job config). `run_experiment`:
  1. runs or resumes every run in RUNS_ROOT/<name> through `diffgen_jax.jobs.run` (in-process),
     after replacing "@run:NAME[/path]" placeholders by that run's workdir. A run that finished
     with the same config (fingerprint in WORKDIR/experiment_run.json) on the same inputs (what
     its placeholders stood for: `input_states`) is skipped; otherwise the job itself resumes
     (train: from the latest state; evaluate: only new snapshots) or runs again.
  2. loads each run's WORKDIR/results.json (`diffgen_jax.jobs.results.read`: one layout, whichever
     job wrote it);
  3. calls the finding's `gather(ctx)`, which draws its figures through `ctx.figure(name)` and
     returns the finding's numbers;
  4. writes RESULTS_DIR/results.json = {"finding", "mode", "config", "runs", "sweep", "figures",
     "results"} (never edited by hand: re-run the script to regenerate).

Each experiments/<finding>.py defines FINDING and gather() and ends with `common.main(...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "experiments.py")
MARKER = "experiment_run.json"
PLACEHOLDER = "@run:"


def load_config(variant: str) -> ml_collections.ConfigDict:
  """configs/experiments.py's get_config(variant) (the file is loaded by path, as config_flags does)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("_experiments_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def default_runs_root(mode: str) -> str:
  return os.path.join(ROOT, "runs", "experiments", mode)


def default_results_dir(finding: str, mode: str) -> str:
  if mode == "local":
    return os.path.join(ROOT, "experiments", "results", finding)
  if mode == "smoke":  # never next to the real results
    return os.path.join(ROOT, "runs", "experiments", "smoke", "results", finding)
  return os.path.join(ROOT, "experiments", "results", mode, finding)


def early_stop_share(record, peak_sigma):
  """The early-stopped G_FD (the sample gap of D(x_i; sigma_i), samples stopped at step i) at the
  stop step nearest peak_sigma (log distance), as a share of the final sample gap (G_FD in
  features of the finished samples): the paper's "early stopping at the peak sigma already shows
  ~11% of the sample gap". record: one snapshot's record of the evaluate job's samples section.
  share None when the final gap is not positive, or its interval over the samples (where the
  record keeps one) reaches 0: a share of nothing, or of noise."""
  e = record["early_stop"]
  i = int(np.argmin(np.abs(np.log(e["sigmas"]) - np.log(peak_sigma))))
  fd = record["fd"]["features"]
  final, low = fd["gap"], fd.get("gap_low")
  resolved = final and final > 0 and (low is None or low > 0)
  return {"sigma": e["sigmas"][i], "early_gap": e["gap"][i], "final_gap": final,
          "final_gap_low": low, "final_gap_high": fd.get("gap_high"),
          "share": e["gap"][i] / final if resolved else None}


# ------------------------------------------------------------------------------------------------
# Running the sweep


def _placeholders(value) -> List[str]:
  """The "@run:NAME[/path]" strings anywhere in a (nested) config dict."""
  if isinstance(value, dict):
    return [r for v in value.values() for r in _placeholders(v)]
  if isinstance(value, (list, tuple)):
    return [r for v in value for r in _placeholders(v)]
  return [value] if isinstance(value, str) and value.startswith(PLACEHOLDER) else []


def _references(value) -> List[str]:
  """Run names referenced by placeholders anywhere in a (nested) config dict."""
  return [p[len(PLACEHOLDER):].split("/", 1)[0] for p in _placeholders(value)]


def input_states(placeholders: Sequence[str], infos: Dict[str, Dict[str, Any]],
                 workdirs: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
  """What each placeholder stands for now: a file inside a run ("@run:NAME/path/to/file") by its
  sha256 (a re-run that writes the same bytes changes nothing downstream); a run ("@run:NAME", or a
  folder in it) by its marker's fingerprint and finish time (infos: what run_or_resume returned)."""
  out = {}
  for p in sorted(set(placeholders)):
    name, _, rest = p[len(PLACEHOLDER):].partition("/")
    path = os.path.join(workdirs[name], rest)
    if rest and os.path.isfile(path):
      from diffgen_jax import checkpointing  # pylint: disable=import-outside-toplevel
      out[p] = {"sha256": checkpointing.file_sha256(path), "finished": infos[name].get("finished")}
    else:
      out[p] = {"fingerprint": infos[name].get("fingerprint"),
                "finished": infos[name].get("finished")}
  return out




def _resolve(value, workdirs: Dict[str, str]):
  if isinstance(value, dict):
    return {k: _resolve(v, workdirs) for k, v in value.items()}
  if isinstance(value, tuple):
    return tuple(_resolve(v, workdirs) for v in value)
  if isinstance(value, list):
    return [_resolve(v, workdirs) for v in value]
  if isinstance(value, str) and value.startswith(PLACEHOLDER):
    name, _, rest = value[len(PLACEHOLDER):].partition("/")
    return os.path.join(workdirs[name], rest) if rest else workdirs[name]
  return value


def run_order(config) -> List[str]:
  """config.order, with every run moved after the runs its placeholders reference."""
  order, done = [], set()

  def visit(name, stack=()):
    if name in done:
      return
    if name in stack:
      raise ValueError(f"placeholder cycle through runs {stack + (name,)}")
    if name not in config.runs:
      raise ValueError(f"a placeholder references run {name!r}, which is not in config.runs "
                       f"({tuple(config.runs)})")
    for ref in _references(config.runs[name].to_dict()):
      visit(ref, stack + (name,))
    done.add(name)
    order.append(name)

  for name in config.order:
    visit(name)
  return order


def job_config(config, name: str, workdirs: Dict[str, str]) -> ml_collections.ConfigDict:
  """The run's job config with placeholders resolved and config.data_dir applied."""
  resolved = ml_collections.ConfigDict(_resolve(config.runs[name].to_dict(), workdirs))
  if config.data_dir and "data" in resolved:
    resolved.data.data_dir = config.data_dir
  if config.get("seed", 0) and "seed" in resolved:
    resolved.seed += config.seed
  return resolved


def fingerprint(job: ml_collections.ConfigDict) -> str:
  return hashlib.sha256(job.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def _inputs_unchanged(saved: Dict[str, Any], inputs: Dict[str, Dict[str, Any]]) -> bool:
  """Whether what a finished run read through placeholders is what it was when it ran
  (`input_states`: a file's bytes, a run's fingerprint and finish time). A marker written before
  inputs were recorded: none of its inputs finished after it (a resumed input, e.g. trained on to
  more images, finishes later: what was measured on it is stale)."""
  if "inputs" not in saved:
    return all(str(i.get("finished")) <= str(saved.get("finished")) for i in inputs.values())
  compared = lambda states: {p: {k: v for k, v in i.items() if k != "finished" or "sha256" not in i}
                             for p, i in states.items()}
  return compared(saved["inputs"]) == compared(inputs)


def run_or_resume(name: str, job: ml_collections.ConfigDict, workdir: str,
                  log=print, inputs: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
  """Runs the job in workdir unless it already finished with this exact config on the same inputs.

  inputs: `input_states` of the job's placeholders. A finished run whose config is unchanged runs
  again when an input changed since (`_inputs_unchanged`): otherwise a factors or ladder run would
  keep numbers of a snapshot its training run has since trained past."""
  from diffgen_jax import config_checks, jobs  # pylint: disable=import-outside-toplevel
  inputs = dict(inputs or {})
  marker = os.path.join(workdir, MARKER)
  fp = fingerprint(job)
  if os.path.exists(marker):
    with open(marker) as f:
      saved = json.load(f)
    if saved.get("fingerprint") == fp:
      if _inputs_unchanged(saved, inputs):
        log(f"[experiments] {name}: done ({workdir}), skipped")
        return saved
      log(f"[experiments] {name}: its input(s) {sorted(inputs)} changed since it ran: running it "
          "again")
  log(f"[experiments] {name}: running job {job.job!r} in {workdir}")
  start = time.time()
  try:
    jobs.run(job, workdir)
  except config_checks.ConfigError as err:  # named as the finding's field: config.runs.<name>.x
    message = str(err)
    raise config_checks.ConfigError(f"config.runs.{name}.{message[len('config.'):]}"
                                    if message.startswith("config.") else message) from None
  info = {"name": name, "job": job.job, "fingerprint": fp, "wall_time_s": time.time() - start,
          "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
          "inputs": inputs}
  from diffgen_jax import jsonio  # pylint: disable=import-outside-toplevel
  jsonio.write_json(marker, info)
  log(f"[experiments] {name}: finished in {info['wall_time_s']:.0f} s")
  return info


def load_run_results(workdir: str) -> Dict[str, Any]:
  """A run's WORKDIR/results.json (the jobs' one layout, `diffgen_jax.jobs.results`)."""
  from diffgen_jax.jobs import results  # pylint: disable=import-outside-toplevel
  return results.read(workdir)


# ------------------------------------------------------------------------------------------------
# Gathering


class Context:
  """What a finding's gather() sees: the config, each run's results and workdir, figure paths."""

  def __init__(self, config, workdirs: Dict[str, str], results: Dict[str, Any], results_dir: str):
    self.config = config
    self.mode = config.mode
    self.workdirs = workdirs
    self.results = results
    self.results_dir = results_dir
    self.figures: List[str] = []

  def sweep(self) -> List[tuple]:
    """[(run name, group, value)] of the swept training runs, in config order."""
    return [(n, self.config.sweep[n].group, self.config.sweep[n].value)
            for n in self.config.order if n in self.config.sweep]

  def run_config(self, name: str):
    return self.config.runs[name]

  def figure(self, filename: str) -> str:
    """The path to write a figure to (recorded in results.json's "figures")."""
    self.figures.append(filename)
    return os.path.join(self.results_dir, filename)

  def copy(self, src: str, filename: str) -> bool:
    """Copies a figure a job wrote into the results directory (False if it does not exist)."""
    import shutil  # pylint: disable=import-outside-toplevel
    if not os.path.exists(src):
      return False
    shutil.copyfile(src, self.figure(filename))
    return True


def output_dirs(config, runs_root: Optional[str] = None,
                results_dir: Optional[str] = None) -> Tuple[str, str]:
  """(runs root, results dir): the arguments, else the config's, else the defaults; a replicate
  (config.seed = k > 0) defaults to <mode>_seed<k> runs and a seed<k> results subfolder."""
  seed = config.get("seed", 0)
  runs_root = runs_root or config.runs_root or (
      default_runs_root(config.mode) + (f"_seed{seed}" if seed else ""))
  if not (results_dir or config.results_dir):
    results_dir = default_results_dir(config.finding, config.mode)
    results_dir = os.path.join(results_dir, f"seed{seed}") if seed else results_dir
  return os.path.abspath(runs_root), os.path.abspath(results_dir or config.results_dir)


def run_experiment(config, gather: Callable[[Context], Dict[str, Any]], *,
                   runs_root: Optional[str] = None, results_dir: Optional[str] = None,
                   log=print) -> Dict[str, Any]:
  """Runs (or resumes) the finding's runs, gathers them; returns what results.json holds."""
  from diffgen_jax import jsonio  # pylint: disable=import-outside-toplevel
  runs_root, results_dir = output_dirs(config, runs_root, results_dir)
  workdirs = {name: os.path.join(runs_root, name) for name in config.runs}
  start = time.time()
  infos = {}
  for name in run_order(config):
    job = job_config(config, name, workdirs)
    inputs = input_states(_placeholders(config.runs[name].to_dict()), infos, workdirs)
    infos[name] = run_or_resume(name, job, workdirs[name], log, inputs)
  results = {name: load_run_results(workdirs[name]) for name in config.order}
  os.makedirs(results_dir, exist_ok=True)
  ctx = Context(config, workdirs, results, results_dir)
  numbers = gather(ctx)
  out = {"finding": config.finding, "mode": config.mode,
         "runs": {n: {"job": config.runs[n].job, "workdir": workdirs[n],
                      "wall_time_s": infos[n].get("wall_time_s")} for n in config.order},
         "sweep": config.sweep.to_dict(), "figures": ctx.figures, "results": numbers,
         "wall_time_s": time.time() - start,
         "config": json.loads(config.to_json_best_effort())}
  jsonio.write_json(os.path.join(results_dir, "results.json"), out)
  log(f"[experiments] {config.finding} ({config.mode}): results.json and {len(ctx.figures)} "
      f"figure(s) in {results_dir}")
  return out


def redraw(finding: str, draw: Callable[[Context, Dict[str, Any]], None], results_dir: str) -> None:
  """The figures of results_dir again from its results.json, by the finding's `draw(ctx, numbers)`
  (the one its gather calls); nothing is run and results.json is left as it is. Another finding's
  results directory is refused (absl UsageError: one line)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  with open(os.path.join(results_dir, "results.json")) as f:
    saved = json.load(f)
  if saved.get("finding") != finding:
    raise app.UsageError(f"--replot: {results_dir} holds the {saved.get('finding')!r} finding's "
                         f"results, not {finding}'s")
  config = types.SimpleNamespace(finding=finding, mode=saved.get("mode"))
  draw(Context(config, {}, {}, results_dir), saved["results"])


def main(finding: str, gather: Callable[[Context], Dict[str, Any]],
         replot: Optional[Callable[[str], None]] = None) -> None:
  """The command line of every experiment script (absl; --config with --config.x=y overrides).
  replot: the finding's `replot(results_dir)`, run by --replot (its figures again from the
  results.json already in the results directory; nothing is run, results.json is kept)."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from diffgen_jax import config_checks  # pylint: disable=import-outside-toplevel
  errors = (flags.Error, AttributeError, KeyError, TypeError, ValueError)

  def bad_override(err, argv):  # one line naming the --config.<field> override, exit status 2
    print(f"{os.path.basename(argv[0])}: {config_checks.flag_error(err, argv)}", file=sys.stderr,
          flush=True)
    sys.exit(2)

  try:  # (the default config is loaded here, with the overrides on the command line)
    config_flag = config_flags.DEFINE_config_file(
        "config", f"{CONFIG_FILE}:{finding},local",
        f"configs/experiments.py:{finding}[,local|paper|smoke] (default: local).",
        lock_config=False)
  except errors as err:
    bad_override(err, sys.argv)
  runs_root = flags.DEFINE_string("runs_root", None, "Workdirs of the runs (default: "
                                  "config.runs_root, else runs/experiments/<mode>).")
  results_dir = flags.DEFINE_string("results_dir", None, "Output directory (default: "
                                    "config.results_dir, else experiments/results/<finding>).")
  replot_flag = flags.DEFINE_bool("replot", False, "Only redraw the figures from the results.json "
                                  "in the results directory (runs nothing).")

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from diffgen_jax.jobs import console  # pylint: disable=import-outside-toplevel
    console.configure(flags.FLAGS.verbosity)  # as the main job: quiet unless --verbosity >= 1
    config = config_flag.value
    if config.finding != finding:
      raise app.UsageError(f"--config is the {config.finding!r} finding's config; this script "
                           f"runs {finding!r} (use configs/experiments.py:{finding}[,mode])")
    if replot_flag.value:
      if replot is None:
        raise app.UsageError(f"--replot: the {finding!r} finding cannot redraw its figures from "
                             "its results.json; run it (finished runs are skipped)")
      where = output_dirs(config, runs_root.value, results_dir.value)[1]
      if not os.path.exists(os.path.join(where, "results.json")):
        raise app.UsageError(f"--replot: {where} has no results.json to redraw (run the finding "
                             "first, or name the folder that holds it with --results_dir)")
      replot(where)
      return
    from diffgen_jax import jobs  # pylint: disable=import-outside-toplevel
    try:
      run_experiment(config, gather, runs_root=runs_root.value, results_dir=results_dir.value)
    except (config_checks.ConfigError, jobs.WorkdirBusyError, jobs.MeasurementError) as err:
      print(f"{os.path.basename(argv[0])}: {' '.join(str(err).split())}", file=sys.stderr,
            flush=True)
      sys.exit(2)

  def _parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except errors as err:
      bad_override(err, argv)

  app.run(_main, flags_parser=_parse_flags)


# ------------------------------------------------------------------------------------------------
# Reading the jobs' results


def train_curves(results: Dict[str, Any]) -> Dict[str, Any]:
  """A train/evaluate run's gap over training: sigmas, images seen, G per snapshot, summary."""
  steps = sorted(int(k) for k in results["snapshots"])
  entries = [results["snapshots"][str(k)] for k in steps]
  from diffgen_jax import ema  # pylint: disable=import-outside-toplevel
  records = [e["ema"][ema.pick(e["ema"])[0]] for e in entries]
  s = results["summary"]
  return {"sigmas": results["protocol"]["sigmas"], "steps": steps,
          "images_seen": [e["images_seen"] for e in entries],
          "gap": [r["gap"] for r in records], "e_train": [r["e_train"] for r in records],
          "e_val": [r["e_val"] for r in records], "peak_gap": s["peak_gap"],
          # The 95% intervals over images (None in results written before the evaluate job kept
          # them): G per snapshot, and the peak at its sigma.
          "gap_low": [r.get("gap_low") for r in records],
          "gap_high": [r.get("gap_high") for r in records],
          "peak_gap_low": s.get("peak_gap_low"), "peak_gap_high": s.get("peak_gap_high"),
          "peak_sigma": s["peak_sigma"], "onset_images_seen": s.get("onset_images_seen"),
          "onset_rises": s.get("onset_rises"),
          "gap_at_sigmas": s.get("gap_at_sigmas", {})}


def factor_curves(results: Dict[str, Any], sweep: str, group: Optional[str] = None) -> List[Dict]:
  """A factors sweep's curves (optionally one group), without the bulky per-image arrays."""
  curves = results["sweeps"][sweep]["curves"]
  keep = lambda c: {k: v for k, v in c.items() if k != "per_image"}
  return [keep(c) for c in curves if group is None or c.get("group") == group]


def num_params(model_config, image_shape, num_classes: int) -> int:
  """Parameter count of a model config at an image shape (jax.eval_shape: nothing allocated)."""
  from diffgen_jax.models import network  # pylint: disable=import-outside-toplevel
  return network.num_params(model_config, image_shape, num_classes)


# ------------------------------------------------------------------------------------------------
# Figures


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _floats(values) -> np.ndarray:
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _finite(x, y):
  x = np.asarray(x, np.float64)
  y = _floats(y)
  ok = np.isfinite(x) & np.isfinite(y)
  return x[ok], y[ok]


def interval(entry: Dict[str, Any], key: str, index: Optional[int] = None):
  """(entry[key + "_low"], entry[key + "_high"]) (the element `index` of each, when given), or None
  when the entry does not carry them (results written before the intervals were kept): the fifth
  element of a `line_plot` series."""
  low, high = entry.get(f"{key}_low"), entry.get(f"{key}_high")
  if low is None or high is None:
    return None
  return (low, high) if index is None else (low[index], high[index])


def peak_intervals(curves: Sequence[Dict[str, Any]]):
  """([peak_gap_low], [peak_gap_high]) of factor curves (a series' interval for line_plot), None
  when one lacks them (results older than the intervals)."""
  if not all(interval(c, "peak_gap") for c in curves):
    return None
  return [c["peak_gap_low"] for c in curves], [c["peak_gap_high"] for c in curves]


def _draw_interval(ax, x, y, bounds, ok, color, bars: bool) -> None:
  """The interval `bounds` = (low, high) of a series at its finite points ok: error bars or a
  shaded band; a point whose bound is undefined gets none."""
  low, high = (_floats(np.atleast_1d(b))[ok] for b in bounds)
  defined = np.isfinite(low) & np.isfinite(high)
  if not defined.any():
    return
  if bars:
    ax.errorbar(x[defined], y[defined], yerr=np.stack([np.maximum(y - low, 0.0)[defined],
                                                       np.maximum(high - y, 0.0)[defined]]),
                fmt="none", ecolor=color, capsize=3, lw=1)
  else:
    ax.fill_between(x, np.where(defined, low, np.nan), np.where(defined, high, np.nan),
                    color=color, alpha=0.2, lw=0)


DECADES = 2.0  # an axis spanning at least this many decades of positive values is drawn in log


def spans_decades(values, decades: float = DECADES) -> bool:
  """True when every finite value is > 0 and max / min >= 10**decades (a linear axis would then
  squash the small values: the small-sigma plateau, the small-N curves)."""
  v = np.asarray([np.nan if a is None else a for a in values], np.float64)
  v = v[np.isfinite(v)]
  return bool(v.size) and bool(np.all(v > 0)) and v.max() >= 10 ** decades * v.min()


def line_plot(path: str, series: Sequence[tuple], *, xlabel: str, ylabel: str, title: str = "",
              logx: Optional[bool] = None, logy: Optional[bool] = None, zero_line: bool = False,
              panels: Optional[Sequence[str]] = None,
              ylim: Optional[Tuple[float, float]] = None, bars: bool = False,
              decades: float = DECADES) -> None:
  """series: (label, x, y[, style[, (low, high)]]) tuples; with `panels`, (panel, label, x, y[,
  style[, (low, high)]]) tuples, one subplot per panel name; `ylim` clips the y axis (say so in
  the label). logx / logy: None (default) draws an axis (each panel's) in log scale when its
  positive values span `decades` decades (`spans_decades`), True / False force it (logy True:
  symlog, for values of both signs).
  style None is the default "-o". (low, high): the series' interval, same length as y (None, or
  no fifth element: a plain line, e.g. results older than the intervals; `interval`), drawn as a
  shaded band, or as error bars with `bars` (peaks against a factor)."""
  plt = _pyplot()
  names = list(panels) if panels else [None]
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
  for ax, panel in zip(axes[0], names):
    xs, ys = [], []
    for s in series:
      if panels:
        if s[0] != panel:
          continue
        s = s[1:]
      label, x, y = s[:3]
      style = (s[3] if len(s) > 3 else None) or "-o"
      bounds = s[4] if len(s) > 4 else None
      x, y = np.asarray(x, np.float64), _floats(y)
      ok = np.isfinite(x) & np.isfinite(y)
      x, y = x[ok], y[ok]
      if len(x):
        line, = ax.plot(x, y, style, label=label, markersize=3)
        if bounds is not None:
          _draw_interval(ax, x, y, bounds, ok, line.get_color(), bars)
        xs += list(x)
        ys += list(y)
    if logx or (logx is None and spans_decades(xs, decades)):
      ax.set_xscale("log")
    if logy:
      ax.set_yscale("symlog", linthresh=1e-3)
    elif logy is None and not ylim and spans_decades(ys, decades):
      ax.set_yscale("log")
    if zero_line and ax.get_yscale() == "linear":
      ax.axhline(0.0, color="gray", lw=0.8)
    if ylim:
      ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(panel if panel else title)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  if panels and title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def gap_over_training_series(name: str, curves: Dict[str, Any]) -> List[tuple]:
  """(panel, label, sigmas, G[, style, interval]) per snapshot of a train run, for
  line_plot(panels=...); the last snapshot with its interval, where the results carry it (one
  band: a band per snapshot would hide the curves)."""
  out = [(name, f"{seen} img", curves["sigmas"], g)
         for seen, g in zip(curves["images_seen"], curves["gap"])]
  last = interval(curves, "gap", -1) if curves.get("gap_low") else None
  if out and last is not None and last[0] is not None:
    out[-1] = out[-1] + (None, last)
  return out


# ------------------------------------------------------------------------------------------------
# Sweeps of training runs (model size, dataset size, granularity)


def gap_sweep(ctx: Context) -> List[Dict[str, Any]]:
  """Per swept training run: its group and value, the last snapshot's G(sigma) and the peak G over
  training."""
  out = []
  for name, group, value in ctx.sweep():
    c = train_curves(ctx.results[name])
    entry = {"run": name, "group": group, "value": value, "sigmas": c["sigmas"],
             "images_seen": c["images_seen"], "peak_gap": c["peak_gap"],
             "final_gap": c["gap"][-1], "final_peak_gap": c["peak_gap"][-1],
             "final_peak_sigma": c["peak_sigma"][-1]}
    if c["peak_gap_low"] and c["gap_low"][-1] is not None:  # the 95% intervals over images
      entry.update({"peak_gap_low": c["peak_gap_low"], "peak_gap_high": c["peak_gap_high"],
                    "final_gap_low": c["gap_low"][-1], "final_gap_high": c["gap_high"][-1],
                    "final_peak_gap_low": c["peak_gap_low"][-1],
                    "final_peak_gap_high": c["peak_gap_high"][-1]})
    out.append(entry)
  return out


def peak_series(entries: Sequence[Dict[str, Any]], x_key: str) -> List[tuple]:
  """(group, x, final peak G, None, interval) per group of `gap_sweep` entries, for
  line_plot(bars=True) (style None: the default); the interval None where an entry lacks it."""
  groups = list(dict.fromkeys(e["group"] for e in entries))
  out = []
  for g in groups:
    mine = [e for e in entries if e["group"] == g]
    bounds = None
    if all(interval(e, "final_peak_gap") for e in mine):
      bounds = ([e["final_peak_gap_low"] for e in mine], [e["final_peak_gap_high"] for e in mine])
    out.append((g, [e[x_key] for e in mine], [e["final_peak_gap"] for e in mine], None, bounds))
  return out


def gap_sweep_figures(ctx: Context, entries: List[Dict[str, Any]], *, x_key: str, xlabel: str,
                      logx: Optional[bool] = None, extra_series: Sequence[tuple] = (),
                      one_panel: bool = False, peak_decades: float = DECADES,
                      draw_peaks: Optional[Callable[[str], None]] = None) -> None:
  """The three figures of a sweep: peak G vs the swept value (per group, `peak_series`, then
  extra_series; or draw_peaks(path) instead), the last snapshot's G(sigma) per run, and the
  peak G over training per run: one panel per group, or every run in one panel with `one_panel`
  (when the groups are settings of one factor, to be compared). Each drawn with its 95% interval
  over images where the entries carry it; the peaks in log y where they span `peak_decades`
  decades (`line_plot`'s `decades`). ctx: anything with .figure(filename) and
  .config.finding (a `Context`)."""
  groups = list(dict.fromkeys(e["group"] for e in entries))
  with_intervals = all(interval(e, "final_peak_gap") for e in entries)
  if draw_peaks is not None:
    draw_peaks(ctx.figure("peak_gap_vs_value.png"))
  else:
    line_plot(ctx.figure("peak_gap_vs_value.png"), peak_series(entries, x_key) + list(extra_series),
              xlabel=xlabel, logx=logx, bars=True, decades=peak_decades,
              ylabel="peak G (last snapshot)" + (", 95% interval" if with_intervals else ""),
              title=f"{ctx.config.finding}: peak denoising gap")
  label = lambda e: f"{e['group']} {e['value']}"
  panel = (lambda e: ctx.config.finding) if one_panel else (lambda e: e["group"])
  panels = [ctx.config.finding] if one_panel else groups
  line_plot(ctx.figure("gap_curves.png"),
            [(panel(e), label(e), e["sigmas"], e["final_gap"], "-", interval(e, "final_gap"))
             for e in entries],
            panels=panels, xlabel="sigma", ylabel="G(sigma), last snapshot", logx=True,
            zero_line=True, title=f"{ctx.config.finding}: G(sigma)")
  line_plot(ctx.figure("peak_gap_over_training.png"),
            [(panel(e), label(e), e["images_seen"], e["peak_gap"], None, interval(e, "peak_gap"))
             for e in entries],
            panels=panels, xlabel="images seen", ylabel="peak G", zero_line=True,
            title=f"{ctx.config.finding}: peak G over training")
