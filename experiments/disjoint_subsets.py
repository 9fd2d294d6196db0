"""Finding 11: models trained on disjoint training sets S1, S2 become the same function as N grows.

Kadkhodaie, Guth, Simoncelli & Mallat (ICLR 2024); Zhang et al. (ICML 2024); analytic.md section 2.
Two U-Nets per N, identical but for `data.subset_side` (1 or 2: disjoint nested subsets of size
N), are trained and evaluated by the usual train + evaluate jobs (which add membership inference by
sigma); this script then measures, at each pair's last snapshot:
  * V(sigma) = E||D1 - D2||^2 / E||D1 - y||^2 on the evaluate job's fixed validation images and noise
    (`evaluation.reproducibility.model_variance`), beside V of the two empirical optimal denoisers
    y*_1, y*_2 (the memorizing limit);
  * the seed-paired sample similarity (pixel cosine centred at the training-split mean, and cosine
    in the classifier features; the fraction of pairs above config.diagnostics thresholds);
  * each model's copy fraction against its own and the other's training set, with bootstrap
    intervals.

    python experiments/disjoint_subsets.py                # local: digits, N = 16/64/512 per side
    python experiments/disjoint_subsets.py --config=configs/experiments.py:disjoint_subsets,paper \
        --config.data_dir=/path/to/tfds                   # CIFAR-10, N = 1k/5k/25k per side

Figures: model_variance.png (V(sigma) per N), similarity_vs_n.png, copy_fraction_vs_n.png,
paired_samples.png (the first seed-paired samples of both models per N).

The helpers below (snapshot samples, features) are shared with memorization_time.py.
"""

import functools
import os
import sys

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "disjoint_subsets"
DIAGNOSTICS_DIR = "diagnostics"  # per-run cache of the seed-paired samples, under each workdir


# ------------------------------------------------------------------------------------------------
# Shared with memorization_time.py: data, snapshot denoisers, seed-paired samples, features


def job(ctx, name):
  """The run's job config as it ran (placeholders and config.data_dir resolved)."""
  return common.job_config(ctx.config, name, ctx.workdirs)


@functools.lru_cache(maxsize=None)
def _split_arrays(name, data_dir, subset_size, subset_seed, subset_side, split):
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  s = data.load_split(name, split, data_dir=data_dir or None,
                      subset_size=(subset_size or None) if split == "train" else None,
                      subset_seed=subset_seed, subset_side=subset_side)
  images, labels, ids = data.first_images(s)
  return images, labels, ids, s.num_classes


def split_arrays(job_config, split):
  """(images in [-1, 1], labels or None, ids, num_classes) of the run's training subset or the
  validation split."""
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  d = job_config.data
  data.prepare(d.name, d.data_dir or None)
  return _split_arrays(d.name, d.data_dir, d.subset_size, d.subset_seed, d.get("subset_side", 1),
                       split)


_NETWORKS = {}  # one network object per model config: its denoisers compile once
_CHECKED = set()  # workdirs whose run record matched the job config


def check_run(job_config, workdir):
  """The run in workdir trained on the images and with the network job_config names (its record,
  `jobs.common.compare_with_run`); checked once per workdir. Raises ConfigError naming each
  differing field."""
  from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
  if workdir in _CHECKED:
    return
  common.compare_with_run(
      common.read_run(workdir), job_config, common.load_split(job_config, "train"),
      remedy=f"The run in {workdir} is not the one this finding's config describes: re-run the "
             "finding with --runs_root pointing at its own runs, or delete the stale run.")
  _CHECKED.add(workdir)


def snapshot_steps(workdir):
  from diffgen_jax import checkpointing  # pylint: disable=import-outside-toplevel
  return checkpointing.snapshot_steps(workdir)


def snapshot_denoiser(job_config, workdir, step):
  """(images seen, denoiser) of one snapshot (the first EMA set); the denoiser is a pytree over the
  parameters (`models.network.network_denoiser`), compiled once for all snapshots of a network."""
  from diffgen_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from diffgen_jax.models.network import build_network, network_denoiser  # pylint: disable=import-outside-toplevel
  check_run(job_config, workdir)
  num_classes = split_arrays(job_config, "train")[3]
  key = (job_config.model.to_json(), num_classes)
  if key not in _NETWORKS:
    _NETWORKS[key] = build_network(job_config.model, num_classes, "float32")
  _, params, meta = checkpointing.load_ema_params(workdir, step)
  return int(meta["images_seen"]), network_denoiser(_NETWORKS[key], params,
                                                   job_config.training.sigma_data)


def sampler_inputs(settings, job_config):
  """The fixed noise and labels of the seed-paired samples (the same for every run and snapshot)."""
  import jax  # pylint: disable=import-outside-toplevel
  images, _, _, num_classes = split_arrays(job_config, "train")
  n = int(settings.num_samples)
  noise = np.asarray(jax.random.normal(jax.random.key(settings.sample_seed),
                                       (n,) + images.shape[1:]))
  labels = (np.arange(n) % num_classes).astype(np.int32) if num_classes > 0 else None
  return noise, labels


def snapshot_samples(ctx, name, steps=None):
  """{step: (images seen, samples (M, H, W, C))} for the run's snapshots (all, or `steps`), from the
  fixed noise; cached in WORKDIR/diagnostics/samples_<step>.npz with the sampler settings."""
  from diffgen_jax import samplers  # pylint: disable=import-outside-toplevel
  settings = ctx.config.diagnostics
  cfg = job(ctx, name)
  key = np.array([settings.num_samples, settings.num_steps, settings.sample_seed])
  cache = os.path.join(ctx.workdirs[name], DIAGNOSTICS_DIR)
  os.makedirs(cache, exist_ok=True)
  noise, labels = None, None
  out = {}
  for step in snapshot_steps(ctx.workdirs[name]):
    if steps is not None and step not in steps:
      continue
    path = os.path.join(cache, f"samples_{step}.npz")
    if os.path.exists(path):
      with np.load(path) as f:
        if np.array_equal(f["key"], key) and "images_seen" in f:
          out[step] = (int(f["images_seen"]), f["samples"])
          continue
    if noise is None:
      noise, labels = sampler_inputs(settings, cfg)
    seen, denoise = snapshot_denoiser(cfg, ctx.workdirs[name], step)
    samples = np.asarray(samplers.sample(denoise, noise, labels,
                                         num_steps=int(settings.num_steps)).samples)
    np.savez(path, samples=samples, key=key, images_seen=seen)
    out[step] = (seen, samples)
  return out


def features_fn(ctx, name):
  """The classifier-feature extractor (SmallCNN trained on the full training split's classes),
  trained once per runs root and cached there."""
  from diffgen_jax.evaluation import features  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(ctx.workdirs[name])
  path = os.path.join(root, DIAGNOSTICS_DIR, f"classifier_{ctx.config.diagnostics.classifier_steps}.npz")
  if not os.path.exists(path):
    full = _full(job(ctx, name))
    images, labels, _, num_classes = split_arrays(full, "train")
    val_images, val_labels, _, _ = split_arrays(full, "validation")
    params, accuracy = features.train_classifier(
        images, labels, num_classes, steps=int(ctx.config.diagnostics.classifier_steps), seed=0,
        val_images=val_images, val_labels=val_labels)
    features.save_params(path, params)
    print(f"[{FINDING}] feature classifier: validation accuracy {accuracy:.3f} ({path})")
  return features.load_classifier_features(path)


def last_samples(ctx, name):
  """(step, images seen, samples) of the run's last snapshot."""
  step = snapshot_steps(ctx.workdirs[name])[-1]
  seen, samples = snapshot_samples(ctx, name, [step])[step]
  return step, seen, samples


# ------------------------------------------------------------------------------------------------
# The finding


def _pairs(ctx):
  """{N: {1: run name, 2: run name}} from the sweep."""
  pairs = {}
  for name, group, value in ctx.sweep():
    pairs.setdefault(int(value), {})[int(group[1:])] = name
  return dict(sorted(pairs.items()))


def gather(ctx):
  from diffgen_jax import data, optimal  # pylint: disable=import-outside-toplevel
  from diffgen_jax.evaluation import reproducibility  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs.common import evaluation_mesh  # pylint: disable=import-outside-toplevel
  settings = ctx.config.diagnostics
  pairs = _pairs(ctx)
  entries = []
  feats = None
  for n, runs in pairs.items():
    one, two = runs[1], runs[2]
    cfg = job(ctx, one)
    e = cfg.evaluation
    sigmas = np.asarray(ctx.results[one]["protocol"]["sigmas"])
    val_x, val_y, val_ids, _ = split_arrays(cfg, "validation")
    # The evaluate job's validation subset (seeded rows, not the first: `data.evaluation_subset`).
    rows = data.seeded_rows(len(val_x), e.num_images, e.subset_seed,
                            data.SUBSET_STREAMS["validation"])
    val_x, val_y, val_ids = val_x[rows], None if val_y is None else val_y[rows], val_ids[rows]
    train = {k: split_arrays(job(ctx, runs[k]), "train") for k in (1, 2)}
    full_mean = split_arrays(_full(cfg), "train")[0].mean(axis=0)
    dens = {k: snapshot_denoiser(job(ctx, runs[k]), ctx.workdirs[runs[k]],
                                 snapshot_steps(ctx.workdirs[runs[k]])[-1]) for k in (1, 2)}
    # Batches split over every local device, as the evaluate job does.
    kw = dict(ids=val_ids, noise_seed=e.noise_seed + 1, batch_size=e.batch_size,
              mesh=evaluation_mesh(), num_resamples=settings.num_resamples)  # V's 95% over images
    mv = reproducibility.model_variance(dens[1][1], dens[2][1], val_x, val_y, sigmas, **kw)
    opt = {k: optimal.empirical_optimal_denoiser(train[k][0], train[k][1]) for k in (1, 2)}
    mv_opt = reproducibility.model_variance(opt[1], opt[2], val_x, val_y, sigmas, **kw)
    if feats is None:
      feats = features_fn(ctx, one)
    s1 = last_samples(ctx, one)[2]
    s2 = last_samples(ctx, two)[2]
    sim = reproducibility.sample_similarity(
        s1, s2, features_fn=feats, threshold=settings.similarity_threshold,
        feature_threshold=settings.feature_similarity_threshold, centre=full_mean)
    sim_raw = reproducibility.pair_cosines(s1, s2)
    copies = reproducibility.cross_copy_fractions(s1, s2, train[1][0], train[2][0],
                                                  settings.copy_ratio)
    # Control: the centred pixel cosine of unrelated real images (disjoint halves of the
    # validation split, paired by row).
    val_all = split_arrays(cfg, "validation")[0]
    h = min(len(s1), len(val_all) // 2)
    control = reproducibility.pair_cosines(val_all[:h], val_all[h:2 * h], full_mean)
    entry = {"n": n, "runs": [one, two], "images_seen": int(dens[1][0]), "sigmas": sigmas,
             "model_variance": mv.variance, "model_variance_low": mv.variance_low,
             "model_variance_high": mv.variance_high, "model_variance_numerator": mv.numerator,
             "optimal_model_variance": mv_opt.variance,
             "optimal_model_variance_low": mv_opt.variance_low,
             "optimal_model_variance_high": mv_opt.variance_high,
             "peak_model_variance": float(np.max(mv.variance)),
             "peak_model_variance_sigma": float(sigmas[int(np.argmax(mv.variance))]),
             "similarity": {space: {k: v for k, v in d.items() if k != "cosine"}
                            for space, d in sim.items()},
             "raw_pixel_cosine_mean": float(sim_raw.mean()),
             "unpaired_real_pixel_cosine_mean": float(control.mean()),
             "copy_fraction": copies,
             "membership_peak_auc": {str(k): ctx.results[runs[k]]["summary"].get(
                 "membership_peak_auc", [None])[-1] for k in (1, 2)},
             "peak_gap": {str(k): ctx.results[runs[k]]["summary"]["peak_gap"][-1] for k in (1, 2)}}
    entries.append(entry)
    print(f"[{FINDING}] N={n}: peak V = {entry['peak_model_variance']:.3f} at sigma "
          f"{entry['peak_model_variance_sigma']:.3g}; pixel cosine {sim['pixels']['mean_cosine']:.3f}"
          f" (> {settings.similarity_threshold}: {sim['pixels']['fraction_above']:.2f}); copies own "
          f"{copies['1/own']['fraction']:.2f}/{copies['2/own']['fraction']:.2f}, other "
          f"{copies['1/other']['fraction']:.2f}/{copies['2/other']['fraction']:.2f}")
    entry["_samples"] = (s1[:8], s2[:8])  # for the figure only
  _figures(ctx, entries, settings)
  for e in entries:
    e.pop("_samples", None)
  return {"pairs": entries, "features": "classifier (SmallCNN, penultimate layer)",
          "pixel_cosine_centre": "training-split mean image"}


def _full(cfg):
  """The run's config on the whole training split (for its mean image and the classifier)."""
  full = ml_collections.ConfigDict(cfg.to_dict())
  full.data.subset_size, full.data.subset_side = 0, 1
  return full


def _figures(ctx, entries, settings):
  ns = [e["n"] for e in entries]
  series = [("networks", f"N = {e['n']}", e["sigmas"], e["model_variance"], None,
             common.interval(e, "model_variance")) for e in entries]
  series += [("empirical optimal denoisers y*", f"N = {e['n']}", e["sigmas"],
              e["optimal_model_variance"], "--", common.interval(e, "optimal_model_variance"))
             for e in entries]
  common.line_plot(ctx.figure("model_variance.png"), series,
                   panels=["networks", "empirical optimal denoisers y*"], xlabel="sigma",
                   ylabel="V(sigma) (95% over images)", logx=True,
                   title="Model variance V = E|D1 - D2|^2 / E|D1 - y|^2 of two models trained "
                         "on disjoint subsets S1, S2")
  sim = lambda space, key: [e["similarity"][space][key] for e in entries]
  common.line_plot(ctx.figure("similarity_vs_n.png"), [
      ("mean cosine", "pixels (centred)", ns, sim("pixels", "mean_cosine")),
      ("mean cosine", "classifier features", ns, sim("features", "mean_cosine")),
      ("mean cosine", "unpaired real images (pixels, centred)", ns,
       [e["unpaired_real_pixel_cosine_mean"] for e in entries], ":"),
      ("fraction above threshold", f"pixels > {settings.similarity_threshold}", ns,
       sim("pixels", "fraction_above"), None, (sim("pixels", "fraction_low"),
                                               sim("pixels", "fraction_high"))),
      ("fraction above threshold", f"features > {settings.feature_similarity_threshold}", ns,
       sim("features", "fraction_above"), None, (sim("features", "fraction_low"),
                                                 sim("features", "fraction_high")))],
      panels=["mean cosine", "fraction above threshold"], xlabel="N per side", ylabel="",
      logx=True, title="Seed-paired sample similarity of the S1 and S2 models")
  cf = lambda k, f="fraction": [e["copy_fraction"][k][f] for e in entries]
  band = lambda k: (cf(k, "low"), cf(k, "high"))  # 95% Wilson over the samples
  common.line_plot(ctx.figure("copy_fraction_vs_n.png"), [
      ("model 1 (S1)", ns, cf("1/own"), None, band("1/own")),
      ("model 1 vs S2 (other)", ns, cf("1/other"), "--o", band("1/other")),
      ("model 2 (S2)", ns, cf("2/own"), None, band("2/own")),
      ("model 2 vs S1 (other)", ns, cf("2/other"), "--o", band("2/other"))],
      xlabel="N per side", ylabel="copy fraction (95% Wilson interval)", logx=True,
      title="Copies of the own and of the other training set")
  plt = common._pyplot()  # pylint: disable=protected-access
  k = min(8, min(len(e["_samples"][0]) for e in entries))
  fig, axes = plt.subplots(2 * len(entries), k, figsize=(1.1 * k, 2.3 * len(entries)),
                           squeeze=False)
  for i, e in enumerate(entries):
    for side in (0, 1):
      for j in range(k):
        ax = axes[2 * i + side, j]
        ax.imshow(np.squeeze(e["_samples"][side][j]), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
          ax.set_ylabel(f"N={e['n']} S{side + 1}", fontsize=7)
  fig.suptitle("Seed-paired samples (same noise, columns)")
  fig.savefig(ctx.figure("paired_samples.png"), dpi=110, bbox_inches="tight")
  plt.close(fig)


if __name__ == "__main__":
  common.main(FINDING, gather)
