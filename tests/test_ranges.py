"""Numeric arguments are range-checked, with errors that name them; the rules between config fields.

For every check: a bad value raises with the argument's (or field's) name in the message, and a good
value at the boundary still works, with a known answer where there is one. Tiny shapes, no training.
Each config field alone is checked against its declaration in tests/test_defaults.py.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import config_checks, denoisers, ema, jobs, models, samplers, toy2d
from diffgen_jax.evaluation import (frechet, kmeans, membership, neighbours, probes,
                                    reproducibility, timescales)
from diffgen_jax.models import network as network_lib, nvidia
from config_files import config_file  # tests/config_files.py

NAN, INF = float("nan"), float("inf")


def _raises(name, fn, *args, error=ValueError, **kwargs):
  """fn(*args, **kwargs) raises `error` whose message names `name`."""
  with pytest.raises(error) as info:
    fn(*args, **kwargs)
  assert name in str(info.value), (name, str(info.value))


# ------------------------------------------------------------------------------------------------
# Nearest neighbours, k-means, Frechet distance


def test_nearest_neighbours_chunk_sizes_and_k():
  rng = np.random.default_rng(0)
  ref, q = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
  for bad in (0, -1, 1.5, NAN, True):
    _raises("chunk_size", neighbours.nearest_neighbours, q, ref, chunk_size=bad)
    _raises("query_batch", neighbours.nearest_neighbours, q, ref, query_batch=bad)
  for bad in (0, 2.0, NAN, 6):
    _raises("k", neighbours.nearest_neighbours, q, ref, bad)
  # Boundary: one reference row per step and one query per call, k = N: the brute-force answer.
  idx, dist = neighbours.nearest_neighbours(q, ref, 5, chunk_size=1, query_batch=1)
  brute = np.linalg.norm(q[:, None] - ref[None], axis=-1)
  np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable"))
  np.testing.assert_allclose(dist, np.sort(brute, axis=1), rtol=1e-5)


def test_kmeans_arguments():
  x = np.array([[0.0], [0.1], [10.0], [10.1]])
  for name, kwargs in (("k", dict(k=-1)), ("k", dict(k=1.5)), ("seed", dict(k=2, seed=-1)),
                       ("iters", dict(k=2, iters=0)), ("chunk_size", dict(k=2, chunk_size=0)),
                       ("seed", dict(k=2, seed=NAN))):
    _raises(name, kmeans.kmeans, x, **kwargs)
  _raises("NaN", kmeans.kmeans, np.array([[0.0], [NAN]]), 1)
  _raises("chunk_size", kmeans.assign, x, x[:2], chunk_size=0)
  # Boundaries: one Lloyd iteration and one centroid per step still split the two clusters.
  centroids, labels = kmeans.kmeans(x, 2, seed=0, iters=1, chunk_size=1)
  assert labels[0] == labels[1] != labels[2] == labels[3]
  np.testing.assert_allclose(np.sort(centroids[:, 0]), [0.05, 10.05], rtol=1e-6)
  assert np.all(kmeans.kmeans(x, 0)[1] == 0)  # k = 0: unconditional


def test_frechet_ddof():
  x = np.random.default_rng(1).normal(size=(6, 2))
  for bad in (2, -1, 0.5, NAN, True):
    _raises("ddof", frechet.frechet_distance, x, x + 1.0, ddof=bad)
  for ddof in (0, 1):  # both boundaries: a shift by c has FD = ||c||^2
    assert frechet.frechet_distance(x, x + np.array([1.0, 2.0]), ddof=ddof) == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------------
# Probes


def _images(n, seed):
  return np.asarray(np.random.default_rng(seed).uniform(-0.9, 0.9, (n, 2, 2, 1)), np.float32)


def test_probe_batch_and_chunk_sizes():
  train, vp = _images(4, 0), _images(2, 2)
  tp = train[:2]  # training probes: noised training images
  states, sigmas = np.stack([_images(2, 3), _images(2, 4)]), np.array([1.0, 0.5])
  call = lambda **kw: probes.trajectory_overlap(states, kw.pop("sigmas", sigmas), train, tp, vp,
                                                **kw)
  for name, kwargs in (("batch_size", dict(batch_size=0)), ("chunk_size", dict(chunk_size=0)),
                       ("noise_seed", dict(noise_seed=-1)), ("batch_size", dict(batch_size=2.5)),
                       ("sigmas", dict(sigmas=np.array([1.0, 0.0]))),
                       ("sigmas", dict(sigmas=np.array([1.0, NAN])))):
    _raises(name, call, **kwargs)
  _raises("chunk_size", probes.nn_cosine_similarity, train, train, chunk_size=0)
  ident = lambda x, s, l=None: x
  for name, kwargs in (("batch_size", dict(batch_size=0)), ("noise_seed", dict(noise_seed=-2)),
                       ("sigmas", dict(sigmas=np.array([INF, 1.0])))):
    kw = dict(sigmas=sigmas, **kwargs) if "sigmas" not in kwargs else kwargs
    sig = kw.pop("sigmas")
    _raises(name, probes.nn_similarity_probe, ident, lambda im: im.reshape(len(im), -1), sig,
            states, tp, vp, train.reshape(4, -1), train.reshape(4, -1), **kw)
  # Boundaries: one reference row per step, one state per batch. Known answers: a reference set
  # queried with itself has cosine 1; at small sigma a noisy training probe sits on its own image
  # (nn_rms ~ sigma) and y*'s posterior is one point (effective number 1).
  np.testing.assert_allclose(probes.nn_cosine_similarity(train, train, chunk_size=1), 1.0,
                             rtol=1e-6)
  out = call(batch_size=1, chunk_size=1, sigmas=np.array([1e-3, 1e-4]))
  assert out["noisy_train"]["nn_rms"].shape == (2, 2)
  assert np.all(out["noisy_train"]["nn_rms"] < 1e-2)
  np.testing.assert_allclose(out["noisy_train"]["effective_number"], 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# EMA helpers


def test_ema_halflife_arguments():
  for name, args in (("batch_size", (100, 0, 1000.0)), ("batch_size", (100, 2.5, 1000.0)),
                     ("halflife_images", (100, 8, 0.0)), ("halflife_images", (100, 8, NAN)),
                     ("halflife_images", (100, 8, INF)), ("rampup_ratio", (100, 8, 1000.0, -0.1)),
                     ("rampup_ratio", (100, 8, 1000.0, NAN)), ("images_seen", (-1, 8, 1000.0)),
                     ("images_seen", (NAN, 8, 1000.0))):
    _raises(name, ema.halflife_beta, *args)
  # Boundaries: rampup 0 or None = no ramp-up, images_seen 0 (the first step), batch 1.
  for ramp in (0.0, None):
    assert float(ema.halflife_beta(0, 1, 1000.0, ramp)) == pytest.approx(0.5 ** (1 / 1000.0))
  # Traced images_seen (inside the train step) is not checked, and gives the same value.
  assert float(jax.jit(lambda n: ema.halflife_beta(n, 8, 1000.0, 0.0))(16.0)) == pytest.approx(
      0.5 ** (8 / 1000.0))


def test_ema_power_arguments():
  for bad in (0.0, -0.1, NAN, ema.MAX_SIGMA_REL, 0.3, INF):
    _raises("sigma_rel", ema.std_to_exponent, bad)
    _raises("sigma_rel", ema.power_beta, 64, 8, bad)
  _raises("batch_size", ema.power_beta, 64, 0, 0.05)
  _raises("images_seen_after", ema.power_beta, -8, 8, 0.05)
  # Boundaries: gamma = 0 has sigma_rel sqrt(1/12) = 0.28868; the first step (t = batch) gives
  # beta = 0.
  assert 0.0 < ema.std_to_exponent(0.2885) < 0.01
  assert float(ema.power_beta(8, 8, 0.05)) == 0.0


# ------------------------------------------------------------------------------------------------
# Reproducibility, time scales, membership


def test_reproducibility_arguments():
  a = _images(3, 5)
  for name, kwargs in (("threshold", dict(threshold=NAN)), ("threshold", dict(threshold=1.0)),
                       ("feature_threshold", dict(feature_threshold=-1.0)),
                       ("batch_size", dict(batch_size=0)), ("confidence", dict(confidence=1.0))):
    _raises(name, reproducibility.sample_similarity, a, a, **kwargs)
  train = _images(4, 6)
  for name, kwargs in (("ratio", dict(ratio=0.0)), ("ratio", dict(ratio=NAN)),
                       ("chunk_size", dict(chunk_size=0)), ("confidence", dict(confidence=0.0))):
    _raises(name, reproducibility.cross_copy_fractions, a, a, train, train, **kwargs)
  # Boundary threshold just above -1: identical samples have cosine 1, so every pair counts.
  out = reproducibility.sample_similarity(a, a, threshold=-0.999)
  assert out["pixels"]["fraction_above"] == 1.0


def test_timescales_arguments():
  times, values = np.array([1.0, 2.0, 4.0]), np.array([0.0, 0.5, 1.0])
  for bad in (NAN, INF):
    _raises("threshold", timescales.bootstrap_crossing, times, values, values[None], bad)
    _raises("threshold", timescales.tau_mem, times, np.zeros((3, 2)), bad, num_resamples=2)
  _raises("times", timescales.bootstrap_crossing, np.array([1.0, 2.0, INF]), values, values[None],
          0.5)
  for name, args in (("num_resamples", (3, 0, 0)), ("num_resamples", (3, 1.5, 0)),
                     ("seed", (3, 2, -1)), ("num_items", (0, 2, 0))):
    _raises(name, timescales.resample_counts, *args)
  for bad in (0.0, 1.0, NAN):
    _raises("confidence", timescales.bootstrap_mean_interval, values, confidence=bad)
  _raises("num_draws", timescales.loglog_slope, [1, 2, 4], [1.0, 2.0, 4.0], [0.5, 1, 2],
          [2, 4, 8], num_draws=0)
  _raises("target", timescales.tau_gen, times, np.zeros((3, 4, 2)), np.eye(2), NAN)
  # Boundaries: a threshold equal to a value crosses at that snapshot; one resample, seed 0.
  assert timescales.bootstrap_crossing(times, values, values[None], 0.5).time == 2.0
  assert timescales.resample_counts(3, 1, 0).sum() == 3


def test_membership_arguments():
  tr, va = np.array([0.0, 0.1]), np.array([1.0, 2.0])
  for bad in (NAN, 1.0, -0.1):
    _raises("fpr", membership.tpr_at_fpr, tr, va, bad)
    _raises("fpr", membership.membership_by_sigma, tr, va, fpr=bad)
  for bad in (0.0, 1.0, NAN):
    _raises("confidence", membership.membership_by_sigma, tr, va, confidence=bad)
    _raises("confidence", membership.clopper_pearson, 1, 2, bad)
  _raises("trials", membership.clopper_pearson, 0, 0)
  _raises("successes", membership.clopper_pearson, 3, 2)
  _raises("num_train", membership.auc_standard_error, 0.5, 0, 3)
  _raises("value", membership.auc_standard_error, 1.5, 2, 3)
  # Boundaries: fpr = 0 with separated errors gives TPR 1; 0 successes of n have the exact upper
  # bound 1 - (alpha / 2)^(1 / n).
  assert float(membership.tpr_at_fpr(tr, va, 0.0)[0]) == 1.0
  low, high = membership.clopper_pearson(0, 4, 0.9)
  assert float(low) == 0.0 and float(high) == pytest.approx(1 - 0.05 ** 0.25)


# ------------------------------------------------------------------------------------------------
# The toy model


def test_toy2d_arguments():
  for name, kwargs in (("num_points", dict(num_points=1)), ("num_points", dict(num_points=2.5)),
                       ("radius", dict(num_points=4, radius=0.0)),
                       ("radius", dict(num_points=4, radius=NAN)),
                       ("offset", dict(num_points=4, offset=INF)),
                       ("seed", dict(num_points=4, seed=-1)),
                       ("seed", dict(num_points=4, seed=2 ** 32))):
    _raises(name, toy2d.make_dataset, "symmetric", **kwargs)
  _raises("spacing", toy2d.lattice_rule, NAN)
  _raises("radius", toy2d.lattice_rule, 0.5, INF)
  _raises("num_draws", toy2d.noise_draws, jax.random.key(0), np.ones((2, 2)), 0)
  _raises("seed", toy2d.legacy_numpy_draws, np.zeros(2), 3, seed=-1)
  _raises("num_angles", toy2d.relative_error_angles, "circle", 0, 0.0)
  _raises("target", toy2d.nearest_grid_sigma, [0.1, 1.0], 0.0)
  _raises("num_draws", toy2d.legacy_numpy_shared_draws, 2, 0, 1)
  split = toy2d.make_dataset("symmetric", 4)
  ystar = lambda x, s, l=None: x
  _raises("sigmas", toy2d.denoising_errors, ystar, split.train, [1.0, 0.0], np.zeros((2, 1, 2)))
  rule = toy2d.NoiseRule(np.zeros((1, 2)), np.ones(1))  # one node at n = 0, weight 1
  _raises("max_queries", toy2d.expected_errors, ystar, split.train, [1.0], rule, max_queries=0)
  _raises("spread_draws", toy2d.expected_gap, ystar, split, [1.0], rule, spread_draws=0)
  _raises("tol", toy2d.is_rotation_orbit, split.train, NAN)
  # Boundaries with known answers: two points (one per half), the largest legacy seed, one
  # node (n = 0, weight 1): the identity denoiser's error is exactly sigma |n| = 0.
  assert toy2d.make_dataset("symmetric", 2).train.shape == (1, 2)
  assert toy2d.legacy_numpy_draws(np.zeros(1), 1, seed=2 ** 32 - 1).shape == (1, 1, 2)
  mean, _ = toy2d.expected_errors(ystar, split.train, [1.0], rule, max_queries=1)
  np.testing.assert_array_equal(mean, 0.0)


# ------------------------------------------------------------------------------------------------
# The NVIDIA loader


def test_nvidia_loader_numbers():
  base = dict(img_resolution=8, img_channels=3, label_dim=0)
  for name, bad in (("img_resolution", dict(img_resolution=0)),
                    ("img_channels", dict(img_channels=1.5)), ("label_dim", dict(label_dim=-1)),
                    ("sigma_data", dict(sigma_data=0.0)), ("sigma_data", dict(sigma_data=NAN)),
                    ("dropout", dict(dropout=1.0))):
    _raises(name, nvidia.model_config_from_kwargs, "Precond", dict(base, **bad),
            error=nvidia.ConversionError)
  _raises("num_classes", nvidia.labels_from_one_hot, np.zeros((1, 0)), 0)
  _raises("num_classes", nvidia.nvidia_interface, lambda x, s, l=None: x, -1)
  # Boundaries: an unconditional network (label_dim 0), dropout 0, a one-class one-hot vector.
  config, sigma_data = nvidia.model_config_from_kwargs("Precond", dict(base, dropout=0.0))
  assert config.num_classes == 0 and sigma_data == 0.5
  np.testing.assert_array_equal(nvidia.labels_from_one_hot(np.array([[1.0], [0.0]]), 1), [0, 1])


# ------------------------------------------------------------------------------------------------
# The network denoiser

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_net():
  """A one-level 8x8 DDPM++ of 3 classes with random params (shapes by eval_shape: no init run)."""
  config = models.default_model_config("ddpmpp")
  config.update(img_resolution=8, img_channels=1, model_channels=8, channel_mult=(1,),
                num_blocks=1, attn_resolutions=(), dropout=0.0)
  net = network_lib.build_network(config, NUM_CLASSES)
  shapes = jax.eval_shape(models.init_fn(net.module, (1, 8, 8, 1), NUM_CLASSES),
                          jax.random.key(0))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda l: jnp.asarray(0.1 * rng.normal(size=l.shape), l.dtype), shapes)
  return net, params


def test_network_denoiser_refuses_bad_construction_at_once(tiny_net):
  net, params = tiny_net
  _raises("params", network_lib.network_denoiser, net, None)
  _raises("params", network_lib.network_denoiser, net, 3.0)
  _raises("'params' entry", network_lib.network_denoiser, net, {"params": params})
  for bad in (0.0, NAN, -0.5):
    _raises("sigma_data", network_lib.network_denoiser, net, params, bad)


def test_network_denoiser_checks_x_and_labels(tiny_net):
  net, params = tiny_net
  denoise = network_lib.network_denoiser(net, params)
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
  lab = jnp.array([0, 1])
  _raises("dtype", denoise, x.astype(jnp.int32), 1.0, lab)
  _raises("NHWC", denoise, x[..., 0], 1.0, lab)
  _raises("NHWC", denoise, jnp.concatenate([x, x], -1), 1.0, lab)
  _raises("8x8", denoise, x[:, :4, :4], 1.0, lab)
  _raises("labels", denoise, x, 1.0, jnp.array([0.0, 1.0]))
  for bad in ([0, NUM_CLASSES + 1], [-1, 0]):
    _raises("labels", denoise, x, 1.0, jnp.array(bad))
    # The consumers' eager check (samplers, gap, probes) reaches the network's class range too.
    _raises("labels", denoisers.check_labels, denoise, jnp.array(bad))
    _raises("labels", samplers.sample, denoise, x, jnp.array(bad), num_steps=1)
  # Boundaries: the last class and the null label (num_classes) pass the eager checks and give
  # finite outputs (one compiled program for all calls below).
  edge = jnp.array([NUM_CLASSES - 1, NUM_CLASSES])
  network_lib.check_network_labels(NUM_CLASSES, edge)
  denoisers.check_labels(denoise, edge)
  jitted = jax.jit(lambda d, xx, l: d(xx, 1.0, l))
  out = jitted(denoise, x, edge)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # Traced labels cannot be checked (documented): compiled code maps them to the null label.
  np.testing.assert_allclose(jitted(denoise, x, jnp.array([NUM_CLASSES + 5, 7])),
                             jitted(denoise, x, jnp.array([NUM_CLASSES, NUM_CLASSES])), atol=1e-6)


def test_network_helpers_numbers(tiny_net):
  net, params = tiny_net
  config = models.default_model_config("ddpmpp")
  config.update(img_resolution=8, img_channels=1, channel_mult=(1, 2))
  _raises("num_classes", network_lib.build_network, config, -1)
  _raises("num_classes", network_lib.build_network, config, 2.5)
  _raises("crop_size", network_lib.params_for_crops, net, params, 8, 9, 1)
  _raises("crop_size", network_lib.params_for_crops, net, params, 8, 0, 1)
  _raises("channels", network_lib.params_for_crops, net, params, 8, 4, 0)
  _raises("image_size", network_lib.valid_network_crop_sizes, config, 0)
  _raises("image_shape[2]", network_lib.num_params, config, (8, 8, 0), 0)
  # Boundaries: the whole image is its own crop (the same params); sizes in [H/2, H] that two
  # levels accept (even sizes); a 1-class network builds.
  assert network_lib.params_for_crops(net, params, 8, 8, 1) is params
  assert network_lib.valid_network_crop_sizes(config, 8) == [4, 6, 8]
  assert network_lib.build_network(config, 1).num_classes == 1


def test_unconditional_network_only_checks_label_dtype():
  network_lib.check_network_labels(0, np.array([5, 9]))  # ignored by the network
  _raises("labels", network_lib.check_network_labels, 0, np.array([0.5]))
  network_lib.check_network_labels(NUM_CLASSES, None)


# ------------------------------------------------------------------------------------------------
# Rules between config fields (each field alone: tests/test_defaults.py)


_config = config_file


def test_factors_sample_gap_samples_zero_or_at_least_two(tmp_path):
  config = _config("factors", "trained")
  run = tmp_path / "run"
  run.mkdir()
  config.run_dir = str(run)
  for bad in (1, -1):
    config.trained.sample_gap_samples = bad
    with pytest.raises(config_checks.ConfigError, match=r"config\.trained\.sample_gap_samples"):
      jobs.validate(config)
  for good in (0, 2):
    config.trained.sample_gap_samples = good
    jobs.validate(config)  # no config.json in the run: the guidance check waits for the run


def _run_dir(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  return str(tmp_path / "run")


@pytest.mark.parametrize("name,variant,changes,message", [
    ("ladder", "smoke", {"calibration.sizes": (1, 4)}, r"config\.calibration\.sizes=\(1, 4\) "
     "must be distinct odd"),
    ("ladder", "smoke", {"calibration.sizes": (3, 3)}, r"config\.calibration\.sizes=\(3, 3\) "
     "must be distinct odd"),
    ("ladder", "smoke", {"local_rungs": ("LS", "LS")}, r"config\.local_rungs=.*distinct"),
    ("factors", "local", {"num_sigmas": 1}, r"config\.num_sigmas=1 must be >= 2"),
    ("quickstart", None, {"training.loss": "edm2"}, r"config\.training\.loss='edm2' needs "
     r"config\.model\.family='edm2'"),
])
def test_rules_between_fields_name_them(tmp_path, name, variant, changes, message):
  config = _config(name, variant)
  if name == "ladder":
    config.run_dir = _run_dir(tmp_path)
  jobs.validate(config)  # the config as given passes
  for field, value in changes.items():
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    jobs.validate(config)
  if name == "factors":  # an explicit grid needs no num_sigmas
    config.sigmas = (0.5, 1.0)
    jobs.validate(config)


# ------------------------------------------------------------------------------------------------
# The query contract (denoisers.check_query): found by a newcomer check, y* cast integer queries
# and truncated float labels silently, and the network broadcast a single label over the batch.


def test_optimal_denoiser_refuses_integer_queries_float_labels_and_bad_lengths():
  from diffgen_jax import optimal  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  train = rng.uniform(-1, 1, (8, 4, 4, 1)).astype(np.float32)
  labels = np.arange(8) % 2
  x = train[:2]
  ys = optimal.empirical_optimal_denoiser(train)
  ysc = optimal.empirical_optimal_denoiser(train, labels)
  with pytest.raises(ValueError, match="x must be floating point"):
    ys(np.round(x).astype(np.int32), 0.5)
  with pytest.raises(ValueError, match="x must be floating point"):
    ys(((x + 1) * 127.5).astype(np.uint8), 0.5)
  with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
    ysc(x, 0.5, np.array([1.7, 0.2]))
  with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
    ysc(x, 0.5, np.array([0, 1, 1]))
  with pytest.raises(ValueError, match=r"sigma must be a scalar or a \(2,\) vector"):
    ys(x, np.array([0.5, 0.5, 0.5]))
  # The good query: float x, (B,) integer labels; at tiny sigma each training image is its own
  # nearest point of its class.
  np.testing.assert_allclose(ysc(x, 1e-4, labels[:2]), x, atol=1e-6)


def test_network_denoiser_refuses_labels_that_would_broadcast(tiny_net):
  net, params = tiny_net
  denoise = network_lib.network_denoiser(net, params)
  x = np.zeros((2, 8, 8, 1), np.float32)
  for bad in (np.array([1]), np.int32(1), np.array([1, 2, 3])):
    with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
      denoise(x, 0.5, bad)
  assert denoise(x, 0.5, np.array([1, 2])).shape == x.shape


def test_timescales_refuse_a_copy_fraction_threshold_above_one_and_non_positive_sizes():
  from diffgen_jax.evaluation import timescales  # pylint: disable=import-outside-toplevel
  times = np.array([1.0, 2.0, 4.0])
  flags = np.array([[0, 0], [1, 0], [1, 1]], bool)
  with pytest.raises(ValueError, match="threshold"):
    timescales.tau_mem(times, flags, 2.0)
  assert timescales.tau_mem(times, flags, 1.0).time <= 4.0  # reached at the last snapshot
  with pytest.raises(ValueError, match="sizes"):
    timescales.loglog_slope([-1, 2, 4], [1, 2, 3])
  # tau = N exactly: slope 1.
  assert timescales.loglog_slope([1, 2, 4], [1, 2, 4]).slope == pytest.approx(1.0)
