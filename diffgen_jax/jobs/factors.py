"""The `factors` job: how each factor of paper.md section 6 moves the denoising gap G(sigma).

    G(sigma) = (E_val(sigma) - E_train(sigma)) / E_train(sigma)

on fixed subsets of the training and validation splits (the first `num_images` of each), one
seeded noise draw per image (`evaluation.gap`; seed `noise_seed` for train, `noise_seed + 1` for
validation, as in the `evaluate` job), on `edm.gap_sigma_grid(num_sigmas)` (or explicit `sigmas`).
Every sweep is a list of labelled curves: one denoiser per factor value, all of them pure
`denoise(x, sigma, labels)` functions evaluated by the same `gap.denoising_errors`.

Analytic sweeps (the "network" is the exact optimal denoiser y* of the training split, or the toy
model's y_delta built on it; `optimal.py`):
  delta            y_delta for several model errors delta (the toy model's story, on images).
  granularity      y_delta conditioned on nothing, on the true classes, and on k-means clusters of
                   training features (pixels, or a small classifier's features) for each k;
                   validation images get the label of their nearest centroid (`kmeans.assign`).
                   The pseudo-labels are written to WORKDIR/pseudo_labels/k{k}.npz for the train job
                   (`data.labels="pseudo"`, `data.pseudo_labels=<path>`); the train array covers
                   the training split (or subset) the data config names, the validation array the
                   whole validation split. k = 0 is the unconditional curve (labels="none").
  guidance         D = D_pos + w (D_pos - D_neg): "cfg" (positive class-conditional y_delta,
                   negative unconditional y_delta, same delta) and "autoguidance" (positive
                   y_delta(delta_pos), negative y_delta(delta_neg > delta_pos)), gap vs w.
  receptive_field  `factors.crop_averaged(y_delta, s)`: the denoiser sees 2x2 overlapping s x s
                   corner crops, overlaps averaged. Choice (ours, as in tests/test_factors.py):
                   the denoiser applied to a crop is the optimal denoiser (or its y_delta) of the
                   POOLED training crops, i.e. the s x s crops of every training image at all four
                   corner positions, so one crop-sized denoiser serves every position (a local,
                   translation-pooled denoiser, as a convolutional network is). s = the full image
                   is the unwrapped full-image denoiser.
  gradient_score   input-gradient correlation score vs sigma (`factors.gradient_correlation_vs_sigma`)
                   of y* and y_delta on a few training and validation images.
Trained sweep (`trained`, needs `run_dir`: a train job's workdir with the same data config):
  the final snapshot's gap; classifier-free guidance (negative: the same network with the null
  label num_classes) and autoguidance (negative: an earlier snapshot, the first by default) over w;
  the receptive field via crop_averaged on the network (crop sizes the U-Net accepts); the
  gradient score vs sigma of the network and of y*.

Outputs: WORKDIR/results.json ({"settings", "sweeps": {name: {"factor", "sigmas", "curves": [
{"label", "group", "value", "e_train", "e_val", "gap", "peak_sigma", "peak_gap"}], ...}}}; plain
JSON, non-finite values as null) and WORKDIR/<sweep>.png and <sweep>_peak.png. Where E_train is 0
(y* recalls the noisy training images exactly at small sigma) G is infinite; peaks are taken over
the finite values.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffgen_jax import checkpointing, config_checks, data, edm, jsonio, models, trainer, training
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.denoisers import guided
from diffgen_jax.evaluation import factors, features, gap, kmeans
from diffgen_jax.models import layers
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser

SWEEPS = ("delta", "granularity", "guidance", "receptive_field", "gradient_score", "trained")
ANALYTIC_SWEEPS = SWEEPS[:-1]
FEATURES = ("pixels", "classifier")
GUIDANCE_STYLES = ("cfg", "autoguidance")
RESULTS_FILE = "results.json"
PSEUDO_LABEL_DIR = "pseudo_labels"
# Image side of the built-in datasets, to check crop sizes before anything is loaded (an unknown,
# tfds-prepared dataset is checked once its images are loaded).
NOMINAL_IMAGE_SIZES = {"digits": 8, "fashion_mnist": 28, "mnist5k": 28}


class Setup(NamedTuple):
  """The data a sweep needs, as float32 images in [-1, 1].

  train_all / train_labels: the training set the analytic denoisers are built on (labels: true
  classes, or None when unlabelled); val_all / val_labels: the whole validation split; train_x,
  train_y, train_ids / val_x, val_y, val_ids: the fixed evaluation subsets (their rows are the
  first rows of the splits, so train_x == train_all[:n]).
  """
  train_all: np.ndarray
  train_labels: Optional[np.ndarray]
  val_all: np.ndarray
  val_labels: Optional[np.ndarray]
  num_classes: int
  train_x: np.ndarray
  train_y: Optional[np.ndarray]
  train_ids: np.ndarray
  val_x: np.ndarray
  val_y: Optional[np.ndarray]
  val_ids: np.ndarray
  sigmas: np.ndarray
  noise_seed: int = 0
  batch_size: int = 256
  chunk_size: int = 2048


def make_setup(train_images, train_labels, val_images, val_labels, num_classes: int, sigmas, *,
               num_images: int, train_ids=None, val_ids=None, noise_seed: int = 0,
               batch_size: int = 256, chunk_size: int = 2048) -> Setup:
  """A Setup from arrays (float images in [-1, 1]); the evaluation subsets are the first rows."""
  train_all = np.asarray(train_images, np.float32)
  val_all = np.asarray(val_images, np.float32)
  lab = lambda a: None if a is None or num_classes == 0 else np.asarray(a, np.int32)
  train_labels, val_labels = lab(train_labels), lab(val_labels)
  nt, nv = min(num_images, len(train_all)), min(num_images, len(val_all))
  ids = lambda given, n: np.arange(n) if given is None else np.asarray(given)[:n]
  head = lambda a, n: None if a is None else a[:n]
  return Setup(train_all, train_labels, val_all, val_labels, int(num_classes),
               train_all[:nt], head(train_labels, nt), ids(train_ids, nt),
               val_all[:nv], head(val_labels, nv), ids(val_ids, nv),
               np.asarray(sigmas, np.float64), noise_seed, batch_size, chunk_size)


# ------------------------------------------------------------------------------------------------
# One curve


def _finite_peak(sigmas, values):
  g = np.asarray(values, np.float64)
  if not np.any(np.isfinite(g)):
    return None, None
  return gap.peak(sigmas, np.where(np.isfinite(g), g, np.nan))


def gap_curve(setup: Setup, denoise, label: str, value, group: str = "", *, conditional=False,
              train_y=None, val_y=None, params=None) -> Dict[str, Any]:
  """E_train, E_val, G and its peak for one denoiser on the setup's evaluation subsets.

  conditional: pass labels to the denoiser (train_y / val_y, default the true classes).
  """
  if conditional:
    train_y = setup.train_y if train_y is None else train_y
    val_y = setup.val_y if val_y is None else val_y
  else:
    train_y = val_y = None
  kw = dict(sigmas=setup.sigmas, batch_size=setup.batch_size, params=params)
  e_train = gap.denoising_errors(denoise, setup.train_x, train_y, ids=setup.train_ids,
                                 noise_seed=setup.noise_seed, **kw)
  e_val = gap.denoising_errors(denoise, setup.val_x, val_y, ids=setup.val_ids,
                               noise_seed=setup.noise_seed + 1, **kw)
  with np.errstate(divide="ignore", invalid="ignore"):
    g = gap.relative_gap(e_val, e_train)
  peak_sigma, peak_gap = _finite_peak(setup.sigmas, g)
  return {"label": label, "group": group, "value": value, "e_train": e_train, "e_val": e_val,
          "gap": g, "peak_sigma": peak_sigma, "peak_gap": peak_gap}


def guided_or_positive(positive, negative, weight: float):
  """`denoisers.guided`, except that w = 0 is the positive denoiser itself (D_pos + 0 (D_pos - D_neg)
  = D_pos without evaluating the negative; compiled through the guided formula it may differ from
  D_pos in the last bit)."""
  return positive if float(weight) == 0.0 else guided(positive, negative, float(weight))


def _section(factor: str, setup: Setup, curves: List[Dict], **extra) -> Dict[str, Any]:
  return dict({"factor": factor, "sigmas": setup.sigmas, "curves": curves}, **extra)


def _optimal(setup: Setup, labels=None, images=None):
  images = setup.train_all if images is None else images
  return empirical_optimal_denoiser(images, labels, chunk_size=setup.chunk_size)


# ------------------------------------------------------------------------------------------------
# Analytic sweeps


def sweep_delta(setup: Setup, deltas: Sequence[float]) -> Dict[str, Any]:
  """G of the unconditional y_delta for each delta (delta = 0: y*)."""
  opt = _optimal(setup)
  curves = [gap_curve(setup, error_prone_denoiser(opt, float(d)), f"delta={d:g}", float(d))
            for d in deltas]
  return _section("delta", setup, curves, value_name="model error delta")


def cluster_labels(setup: Setup, k: int, feature_fn=None, seed: int = 0):
  """k-means pseudo-labels of the whole training set and (nearest centroid) the validation split."""
  fn = features.pixel_features if feature_fn is None else feature_fn
  train_f = features.batched_features(fn, setup.train_all)
  val_f = features.batched_features(fn, setup.val_all)
  return kmeans.pseudo_labels(train_f, val_f, k, seed)


def sweep_granularity(setup: Setup, ks: Sequence[int], deltas: Sequence[float], *,
                      include_classes: bool = True, feature_fn=None, seed: int = 0,
                      pseudo_label_dir: Optional[str] = None) -> Dict[str, Any]:
  """G of y_delta conditioned on nothing, on the classes, and on k-means clusters (value: the
  number of conditions). Writes pseudo_label_dir/k{k}.npz for every k >= 1 when given."""
  conditions = [("none", 1, None, None)]  # (name, number of conditions, train labels, val labels)
  if include_classes and setup.num_classes > 0 and setup.train_labels is not None:
    conditions.append(("class", setup.num_classes, setup.train_labels, setup.val_labels))
  files = {}
  for k in ks:
    k = int(k)
    if k == 0:
      continue  # unconditional: the "none" curve
    train_c, val_c = cluster_labels(setup, k, feature_fn, seed)
    if pseudo_label_dir:
      files[str(k)] = kmeans.write_pseudo_labels(os.path.join(pseudo_label_dir, f"k{k}.npz"),
                                                 train_c, val_c)
    conditions.append((f"k={k}", k, train_c, val_c))
  curves = []
  for name, count, train_c, val_c in conditions:
    opt = _optimal(setup, train_c)
    n_t, n_v = len(setup.train_x), len(setup.val_x)
    for d in deltas:
      denoise = error_prone_denoiser(opt, float(d))
      curve = gap_curve(setup, denoise, f"{name}, delta={d:g}", count, f"delta={d:g}",
                        conditional=train_c is not None,
                        train_y=None if train_c is None else train_c[:n_t],
                        val_y=None if val_c is None else val_c[:n_v])
      curve["condition"] = name
      curves.append(curve)
  return _section("granularity", setup, curves, value_name="number of conditions",
                  pseudo_label_files=files)


def sweep_guidance(setup: Setup, ws: Sequence[float], *, styles=GUIDANCE_STYLES, delta: float,
                   delta_pos: float, delta_neg: float) -> Dict[str, Any]:
  """G of guided y_delta pairs over the guidance weight w (w = 0: the positive denoiser)."""
  uncond = _optimal(setup)
  curves = []
  if "cfg" in styles and setup.num_classes > 0 and setup.train_labels is not None:
    pos = error_prone_denoiser(_optimal(setup, setup.train_labels), delta)
    neg = error_prone_denoiser(uncond, delta)
    for w in ws:
      curves.append(gap_curve(setup, guided_or_positive(pos, neg, w), f"cfg, w={w:g}", float(w), "cfg",
                              conditional=True))
  if "autoguidance" in styles:
    pos = error_prone_denoiser(uncond, delta_pos)
    neg = error_prone_denoiser(uncond, delta_neg)
    for w in ws:
      curves.append(gap_curve(setup, guided_or_positive(pos, neg, w), f"autoguidance, w={w:g}",
                              float(w), "autoguidance"))
  return _section("guidance", setup, curves, value_name="guidance weight w",
                  cfg_delta=delta, autoguidance_delta_pos=delta_pos,
                  autoguidance_delta_neg=delta_neg)


def pooled_crops(images, crop_size: int) -> np.ndarray:
  """The s x s crops of every image at the four corner positions of `factors.crop_offsets`."""
  images = np.asarray(images)
  s = crop_size
  return np.concatenate([images[:, i:i + s, j:j + s]
                         for i, j in factors.crop_offsets(s, images.shape[1:3])])


def sweep_receptive_field(setup: Setup, crop_sizes: Sequence[int],
                          deltas: Sequence[float]) -> Dict[str, Any]:
  """G of crop_averaged(y_delta of the pooled training crops, s) for each crop size s."""
  hw = setup.train_all.shape[1:3]
  curves = []
  for s in crop_sizes:
    s = int(s)
    full = s == hw[0] and s == hw[1]
    opt = _optimal(setup) if full else _optimal(setup, images=pooled_crops(setup.train_all, s))
    for d in deltas:
      denoise = factors.crop_averaged(error_prone_denoiser(opt, float(d)), s, hw)
      curves.append(gap_curve(setup, denoise, f"s={s}, delta={d:g}", s, f"delta={d:g}"))
  return _section("receptive_field", setup, curves, value_name="crop size s",
                  crop_training="pooled corner crops of every training image")


def score_curves(denoise, setup: Setup, sigmas, num_images: int, label: str, *, params=None,
                 conditional=False) -> List[Dict[str, Any]]:
  """Gradient correlation score vs sigma on the first training and validation images."""
  if params is not None:
    denoise = jax.tree_util.Partial(denoise, params)
  out = []
  for split, x, y, ids, seed in (("train", setup.train_x, setup.train_y, setup.train_ids, 0),
                                 ("val", setup.val_x, setup.val_y, setup.val_ids, 1)):
    n = min(num_images, len(x))
    labels = y[:n] if conditional and y is not None else None
    per = factors.gradient_correlation_vs_sigma(denoise, x[:n], sigmas, labels, ids=ids[:n],
                                                noise_seed=setup.noise_seed + seed)
    finite = np.isfinite(per)  # NaN where no output pixel depends on the input (y* at tiny sigma)
    mean = np.where(finite, per, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    mean = np.where(finite.any(axis=1), mean, np.nan)
    out.append({"label": f"{label}, {split}", "group": split, "value": label,
                "score": mean, "per_image": per})
  return out


def sweep_gradient_score(setup: Setup, deltas: Sequence[float], sigmas,
                         num_images: int) -> Dict[str, Any]:
  opt = _optimal(setup)
  curves = []
  for d in deltas:
    name = "y*" if d == 0 else f"y_delta, delta={d:g}"
    for c in score_curves(error_prone_denoiser(opt, float(d)), setup, sigmas, num_images, name):
      c["delta"] = float(d)
      curves.append(c)
  return {"factor": "gradient_score", "sigmas": np.asarray(sigmas), "curves": curves,
          "value_name": "mean distance looked at (pixels)"}


# ------------------------------------------------------------------------------------------------
# The trained sweep


def _run_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"config.run_dir={run_dir!r} has no config.json: not a train job's workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _check_run_data(config, saved) -> None:
  now = {k: config.data[k] for k in ("name", "subset_size", "subset_seed", "labels")}
  then = {k: saved.data.get(k) for k in now}
  diff = {k: (then[k], now[k]) for k in now if then[k] != now[k]}
  if diff:
    raise ConfigError(f"config.data does not match the run in config.run_dir={config.run_dir!r} "
                      f"(run, now): {diff}; use the run's data config")


def valid_network_crop_sizes(model_config, image_size: int) -> List[int]:
  """Crop sizes s in [H/2, H] the network accepts (U-Nets: divisible by 2^(levels-1); DiT: by the
  patch size)."""
  m = models.resolve(model_config)
  if m.family == "dit":
    ok = lambda s: s % int(m.patch_size) == 0
  else:
    ok = lambda s: layers.unet_resolution_ok(s, len(tuple(m.channel_mult)))
  return [s for s in range((image_size + 1) // 2, image_size + 1) if ok(s)]


_RESOLUTION_NAME = re.compile(r"^(enc|dec)_(\d+)x(\d+)_(.*)$")


def params_for_crops(network, params, image_size: int, crop_size: int, channels: int):
  """The parameters renamed for s x s inputs, or None where the structures differ.

  Our U-Nets name their layers by the feature-map size they run at (`enc_8x8_conv`, ...), so the
  same weights applied to a crop must be looked up under the crop's sizes: every `enc|dec_{r}x{r}_`
  becomes `_{r s / H}x{r s / H}_` (one level apart -> one level apart). The result is checked
  against `jax.eval_shape` of the network's init at the crop size (tree and shapes); it differs,
  and None is returned, where the layout itself depends on the size (e.g. attention at a size in
  `attn_resolutions` that the crop's feature maps hit but the full image's did not).
  """
  if crop_size == image_size:
    return params
  renamed = {}
  for key, value in params.items():
    m = _RESOLUTION_NAME.match(key)
    if m:
      r = int(m.group(2)) * crop_size // image_size
      key = f"{m.group(1)}_{r}x{r}_{m.group(4)}"
    renamed[key] = value
  abstract = jax.eval_shape(models.init_fn(network.module, (1, crop_size, crop_size, channels),
                                           network.num_classes), jax.random.key(0))["params"]
  same = jax.tree.structure(abstract) == jax.tree.structure(renamed) and all(
      a.shape == b.shape for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(renamed)))
  return renamed if same else None


def _network_fn(network, sigma_data):
  def fn(params, x, sigma, labels=None):
    return training.network_denoiser(network, params, sigma_data)(x, sigma, labels)
  return fn


def sweep_trained(config, setup: Setup) -> Dict[str, Any]:
  t = config.trained
  saved = _run_config(config.run_dir)
  _check_run_data(config, saved)
  steps = checkpointing.snapshot_steps(config.run_dir)
  if not steps:
    raise ConfigError(f"config.run_dir={config.run_dir!r} holds no snapshots: train first")
  for field in ("snapshot", "negative_snapshot"):
    i = t[field]
    if not -len(steps) <= i < len(steps):
      raise ConfigError(f"config.trained.{field}={i} must index the run's {len(steps)} snapshots "
                        f"(steps {steps}); -1 is the last")
  model_config = ml_collections.ConfigDict(saved.model.to_dict())
  model_config.num_classes = setup.num_classes
  h = setup.train_all.shape[1]
  valid = valid_network_crop_sizes(model_config, h)
  crop_sizes = tuple(t.crop_sizes) or tuple(valid)
  bad = [s for s in crop_sizes if s not in valid]
  if bad:
    raise ConfigError(f"config.trained.crop_sizes={tuple(crop_sizes)}: {bad} not accepted by the "
                      f"run's network on {h}x{h} images; allowed values {tuple(valid)}")
  network = trainer.build_network(model_config, setup.num_classes, "float32")
  fn = _network_fn(network, float(saved.training.sigma_data))

  def params_of(index):
    ema_sets, meta = checkpointing.load_snapshot(config.run_dir, steps[index])
    return jax.tree.map(jnp.asarray, ema_sets[sorted(ema_sets)[0]]), meta

  params, meta = params_of(t.snapshot)
  net = jax.tree_util.Partial(fn, params)
  conditional = setup.num_classes > 0
  base = gap_curve(setup, net, "network", 0.0, "network", conditional=conditional)
  curves = [base]
  same_as_base = lambda label, group: dict(base, label=label, group=group, value=0.0)
  label_dropout = float(saved.training.get("label_dropout", 0.0))
  if "cfg" in t.styles and conditional:
    for w in t.ws:  # w = 0 is the network itself: its curve is reused
      curves.append(same_as_base(f"cfg, w={w:g}", "cfg") if w == 0 else gap_curve(
          setup, guided(net, factors.cfg_pair(net, setup.num_classes), float(w)), f"cfg, w={w:g}",
          float(w), "cfg", conditional=True))
  guided_denoisers = []  # (style, w, denoiser) for the sample-level gap
  if "cfg" in t.styles and conditional:
    null = factors.cfg_pair(net, setup.num_classes)
    guided_denoisers += [("cfg", float(w), guided(net, null, float(w)) if w else net) for w in t.ws]
  neg_params, neg_meta = params_of(t.negative_snapshot)
  if "autoguidance" in t.styles:
    neg = jax.tree_util.Partial(fn, neg_params)
    for w in t.ws:
      curves.append(same_as_base(f"autoguidance, w={w:g}", "autoguidance") if w == 0 else gap_curve(
          setup, guided(net, neg, float(w)), f"autoguidance, w={w:g}", float(w), "autoguidance",
          conditional=conditional))
      guided_denoisers.append(("autoguidance", float(w), guided(net, neg, float(w)) if w else net))
  sample_gap = _guided_sample_gaps(config, saved, guided_denoisers) if t.sample_gap_samples else []
  skipped = {}
  for s in crop_sizes:
    crop_params = params_for_crops(network, params, h, int(s), setup.train_all.shape[-1])
    if crop_params is None:
      skipped[str(s)] = "the network's parameter layout differs at this size"
      logging.warning("factors: trained crop size %d skipped: %s", s, skipped[str(s)])
      continue
    wrapped = factors.crop_averaged(jax.tree_util.Partial(fn, crop_params), int(s), h)
    curves.append(gap_curve(setup, wrapped, f"crop s={s}", int(s), "receptive_field",
                            conditional=conditional))
  score_sigmas = edm.gap_sigma_grid(config.gradient_score.num_sigmas)
  scores = (score_curves(fn, setup, score_sigmas, t.gradient_images, "network", params=params,
                         conditional=conditional)
            + score_curves(_optimal(setup), setup, score_sigmas, t.gradient_images, "y*"))
  return _section("trained", setup, curves, value_name="w / crop size",
                  run_dir=os.path.abspath(config.run_dir), snapshot_step=steps[t.snapshot],
                  images_seen=meta.get("images_seen"),
                  negative_snapshot_step=steps[t.negative_snapshot],
                  negative_images_seen=neg_meta.get("images_seen"),
                  label_dropout=label_dropout, null_label=setup.num_classes,
                  crop_sizes=list(crop_sizes), crop_sizes_skipped=skipped, sample_gap=sample_gap,
                  gradient_score={"sigmas": score_sigmas, "curves": scores})


def _guided_sample_gaps(config, saved, guided_denoisers) -> List[Dict[str, Any]]:
  """The inference side of guidance: G_FD = (FD_val - FD_train) / FD_train of each guided
  denoiser's Heun samples (sample_evaluation, in the run's classifier-feature space), the copy
  fraction, and the same in pixels. Paper: guidance raises this gap strongly."""
  from diffgen_jax import sample_evaluation  # the sample machinery only when asked for
  t = config.trained
  settings = sample_evaluation.settings_of(saved).copy_and_resolve_references()
  with settings.unlocked():
    settings.num_samples = int(t.sample_gap_samples)
    settings.num_steps = int(t.sample_gap_steps)
    settings.overlap = False
    settings.nn_similarity = False
  run_config = saved.copy_and_resolve_references()
  if "evaluation" not in run_config:
    raise ConfigError(f"the run in config.run_dir={config.run_dir!r} has no evaluation settings")
  splits = [trainer.load_split(run_config, s) for s in data.SPLITS]
  ctx = sample_evaluation.prepare(run_config, config.run_dir, *splits, settings=settings)
  out = []
  for style, w, denoise in guided_denoisers:
    record = sample_evaluation.evaluate_denoiser(ctx, denoise).record
    out.append({"style": style, "w": w, "gap_fd_features": record["fd"]["features"]["gap"],
                "gap_fd_pixels": record["fd"]["pixels"]["gap"],
                "copy_fraction": record["copy_fraction"]["samples"]})
    logging.info("factors: %s w=%g: sample-level G_FD = %.4f (features), copies %.3f", style, w,
                 out[-1]["gap_fd_features"], out[-1]["copy_fraction"])
  return out


# ------------------------------------------------------------------------------------------------
# Config, data and the job


def _fail(field: str, value, requirement: str):
  raise ConfigError(f"config.{field}={value!r} {requirement}")


def _numbers(config, field: str, minimum: float = 0.0, strict: bool = False, integer=False,
             allow_empty=False):
  values = config_checks.get(config, field)
  if isinstance(values, (int, float)) and not isinstance(values, bool):
    values = (values,)
  if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
    _fail(field, values, "must be a non-empty tuple of numbers")
  kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
  for v in values:
    if (not isinstance(v, kind) or isinstance(v, bool) or not math.isfinite(v)
        or (v <= minimum if strict else v < minimum)):
      _fail(field, tuple(values), f"must contain only {'integers' if integer else 'finite numbers'}"
            f" {'>' if strict else '>='} {minimum}")
  return tuple(values)


def _number(config, field: str, minimum: float = 0.0, strict: bool = False) -> float:
  value = config_checks.get(config, field)
  if isinstance(value, (tuple, list)):
    _fail(field, value, "must be a single number")
  return float(_numbers(config, field, minimum, strict)[0])


def _int(config, field: str, minimum: int):
  value = config_checks.get(config, field)
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
    _fail(field, value, f"must be an integer >= {minimum}")
  return int(value)


def check_crop_sizes(sizes, image_size: int, field: str = "receptive_field.crop_sizes") -> None:
  """Crop sizes must satisfy image_size / 2 <= s <= image_size (2x2 corner crops cover the image)."""
  allowed = tuple(range((image_size + 1) // 2, image_size + 1))
  bad = [s for s in sizes if s not in allowed]
  if bad:
    _fail(field, tuple(sizes), f"has {bad}: crop sizes must be integers in [{allowed[0]}, "
          f"{allowed[-1]}] for {image_size}x{image_size} images (allowed values {allowed})")


def validate_config(config) -> None:
  """Checks every field the chosen sweeps read; ConfigError names the field and allowed values."""
  config_checks.choice(config, "job", ("factors",))
  sweeps = config_checks.subset(config, "sweeps", SWEEPS)
  data.validate_config(config.data)
  _int(config, "seed", 0)
  _int(config, "num_images", 1)
  _int(config, "noise_seed", 0)
  _int(config, "batch_size", 1)
  _int(config, "chunk_size", 1)
  if config.sigmas:
    try:
      edm.validate_sigma_grid(config.sigmas, "config.sigmas")
    except ValueError as err:
      raise ConfigError(str(err)) from None
  else:
    _int(config, "num_sigmas", 2)
  _number(config, "model_error")
  size = NOMINAL_IMAGE_SIZES.get(config.data.name)
  if "delta" in sweeps:
    _numbers(config, "delta.deltas")
  if "granularity" in sweeps:
    _numbers(config, "granularity.ks", 0, integer=True)
    _numbers(config, "granularity.deltas")
    config_checks.choice(config, "granularity.features", FEATURES)
    if config.granularity.features == "classifier":
      path = config.granularity.classifier_params
      if path and not os.path.exists(os.path.expanduser(path)):
        _fail("granularity.classifier_params", path, "does not exist ('' trains a classifier)")
      _int(config, "granularity.classifier_steps", 1)
  if "guidance" in sweeps:
    _numbers(config, "guidance.ws")
    config_checks.subset(config, "guidance.styles", GUIDANCE_STYLES)
    pos = _number(config, "guidance.delta_pos")
    neg = _number(config, "guidance.delta_neg")
    if neg <= pos:
      _fail("guidance.delta_neg", neg, f"must be > guidance.delta_pos={pos} (the negative model "
            "is the more error-prone one)")
  if "receptive_field" in sweeps:
    sizes = _numbers(config, "receptive_field.crop_sizes", 1, integer=True)
    _numbers(config, "receptive_field.deltas")
    if size is not None:
      check_crop_sizes(sizes, size)
  if "gradient_score" in sweeps or "trained" in sweeps:
    _int(config, "gradient_score.num_sigmas", 1)
  if "gradient_score" in sweeps:
    _numbers(config, "gradient_score.deltas")
    _int(config, "gradient_score.num_images", 1)
  if "trained" in sweeps:
    run_dir = config.run_dir
    if not run_dir or not isinstance(run_dir, str):
      _fail("run_dir", run_dir, "must name a train job's workdir for the 'trained' sweep")
    if not os.path.isdir(run_dir):
      _fail("run_dir", run_dir, "does not exist")
    _numbers(config, "trained.ws")
    config_checks.subset(config, "trained.styles", GUIDANCE_STYLES)
    _numbers(config, "trained.crop_sizes", 1, integer=True, allow_empty=True)
    if size is not None and config.trained.crop_sizes:
      check_crop_sizes(tuple(config.trained.crop_sizes), size, "trained.crop_sizes")
    for f in ("snapshot", "negative_snapshot"):
      v = config_checks.get(config, f"trained.{f}")
      if not isinstance(v, int) or isinstance(v, bool):
        _fail(f"trained.{f}", v, "must be an integer index into the run's snapshots (-1: last)")
    _int(config, "trained.gradient_images", 1)


def sigma_grid(config) -> np.ndarray:
  return (np.sort(edm.validate_sigma_grid(config.sigmas)) if config.sigmas
          else edm.gap_sigma_grid(config.num_sigmas))


def load_setup(config) -> Setup:
  """The training split (or subset) and validation split the config names, as a Setup."""
  splits = {s: trainer.load_split(config, s) for s in data.SPLITS}
  arrays = {}
  for name, split in splits.items():
    arrays[name] = data.first_images(split)
  tr, va = arrays["train"], arrays["validation"]
  return make_setup(tr[0], tr[1], va[0], va[1], splits["train"].num_classes, sigma_grid(config),
                    num_images=config.num_images, train_ids=tr[2], val_ids=va[2],
                    noise_seed=config.noise_seed, batch_size=config.batch_size,
                    chunk_size=config.chunk_size)


def _feature_fn(config, setup: Setup):
  g = config.granularity
  if g.features == "pixels":
    return features.pixel_features, {"features": "pixels"}
  if g.classifier_params:
    return features.load_classifier_features(g.classifier_params), {
        "features": "classifier", "classifier_params": g.classifier_params}
  if setup.train_labels is None or setup.num_classes < 2:
    raise ConfigError("config.granularity.features='classifier' without "
                      "config.granularity.classifier_params needs class labels to train one")
  params, acc = features.train_classifier(setup.train_all, setup.train_labels, setup.num_classes,
                                          g.classifier_steps, config.seed,
                                          val_images=setup.val_all, val_labels=setup.val_labels)
  logging.info("factors: trained a SmallCNN for the clustering features, val accuracy %.3f", acc)
  return features.classifier_features(params), {"features": "classifier",
                                                "classifier_val_accuracy": acc}


def run_sweep(name: str, config, setup: Setup, workdir: str) -> Dict[str, Any]:
  d = config.model_error
  if name == "delta":
    return sweep_delta(setup, config.delta.deltas)
  if name == "granularity":
    fn, info = _feature_fn(config, setup)
    out = sweep_granularity(setup, config.granularity.ks, config.granularity.deltas,
                            include_classes=config.granularity.include_classes, feature_fn=fn,
                            seed=config.seed,
                            pseudo_label_dir=os.path.join(workdir, PSEUDO_LABEL_DIR))
    out.update(info)
    return out
  if name == "guidance":
    g = config.guidance
    return sweep_guidance(setup, g.ws, styles=tuple(g.styles), delta=d, delta_pos=g.delta_pos,
                          delta_neg=g.delta_neg)
  if name == "receptive_field":
    h = setup.train_all.shape[1]
    check_crop_sizes(tuple(config.receptive_field.crop_sizes), h)
    return sweep_receptive_field(setup, config.receptive_field.crop_sizes,
                                 config.receptive_field.deltas)
  if name == "gradient_score":
    g = config.gradient_score
    return sweep_gradient_score(setup, g.deltas, edm.gap_sigma_grid(g.num_sigmas), g.num_images)
  if name == "trained":
    return sweep_trained(config, setup)
  raise ConfigError(f"config.sweeps: unknown sweep {name!r}; allowed values {SWEEPS}")


def summarize(name: str, section: Dict[str, Any]) -> List[str]:
  """One line per curve: peak G and where (or, for the gradient score, its range over sigma)."""
  lines = []
  fmt = lambda v: "n/a" if v is None else f"{v:.4g}"
  for c in section["curves"] if name != "gradient_score" else ():
    lines.append(f"{name}: {c['label']}: peak G = {fmt(c['peak_gap'])} at sigma = "
                 f"{fmt(c['peak_sigma'])}")
  if name == "gradient_score" or "gradient_score" in section:
    curves = section["curves"] if name == "gradient_score" else section["gradient_score"]["curves"]
    for c in curves:
      s = np.asarray(c["score"], np.float64)
      lines.append(f"{name}: score {c['label']}: " + " ".join(
          "n/a" if not np.isfinite(v) else f"{v:.2f}" for v in s))
  return lines


def _settings(config, setup: Setup) -> Dict[str, Any]:
  return {"dataset": config.data.name, "subset_size": config.data.subset_size or 0,
          "labels": config.data.labels, "image_shape": list(setup.train_all.shape[1:]),
          "num_train_set": len(setup.train_all), "num_val_set": len(setup.val_all),
          "num_train_eval": len(setup.train_x), "num_val_eval": len(setup.val_x),
          "num_classes": setup.num_classes, "sigmas": setup.sigmas,
          "noise_seed_train": setup.noise_seed, "noise_seed_val": setup.noise_seed + 1,
          "model_error": config.model_error, "seed": config.seed,
          "config": json.loads(config.to_json_best_effort())}


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the configured sweeps; writes WORKDIR/results.json (after every sweep) and PNGs."""
  validate_config(config)
  sweeps = config_checks.subset(config, "sweeps", SWEEPS)
  os.makedirs(workdir, exist_ok=True)
  setup = load_setup(config)
  results = {"settings": _settings(config, setup), "sweeps": {}}
  path = os.path.join(workdir, RESULTS_FILE)
  for name in sweeps:
    start = time.perf_counter()
    section = run_sweep(name, config, setup, workdir)
    section["wall_time_s"] = time.perf_counter() - start
    results["sweeps"][name] = jsonio.to_jsonable(section)
    jsonio.write_json(path, results)
    if config.make_plots:
      from diffgen_jax.plots import factors as factor_plots  # matplotlib only when plotting
      factor_plots.draw_sweep(name, results["sweeps"][name], workdir)
    print(f"[factors] {name} ({section['wall_time_s']:.1f} s)")
    for line in summarize(name, results["sweeps"][name]):
      print("  " + line)
  print(f"[factors] results and plots in {os.path.abspath(workdir)}/")
  return results
