"""The package's guarantees against silent wrong numbers, one section per kind of fault.

Each failing case that was reported is a test here with the right value or the right error, and so
is every other place in the package where the same kind of fault could happen.
docs/guarantees.md names these tests. Shapes are tiny: the file runs in about a minute on 2 cores.
"""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import denoisers, edm, models, optimal, samplers, training
from diffgen_jax.models import network as network_lib
from diffgen_jax.checks import check_number
from config_files import config_file  # tests/config_files.py

_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# ------------------------------------------------------------------------------------------------
# Shared small problems

TRAIN = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [-2.0, -1.0]], np.float32)
TRAIN_LABELS = np.array([0, 0, 1, 1], np.int32)
QUERIES = np.array([[0.4, 0.3], [2.0, 0.5], [-0.5, 3.0], [-1.0, -1.5]], np.float32)
NEAREST = np.array([0, 1, 2, 3])  # nearest training row of each query (all labels)


def _reference_posterior_mean(x, sigma, train):
  """numpy float64 softmax with log-sum-exp, independent of the package's streaming form."""
  x = np.asarray(x, np.float64)
  d2 = ((x[:, None, :] - train[None].astype(np.float64)) ** 2).sum(-1)
  logits = -d2 / (2.0 * sigma ** 2)
  w = np.exp(logits - logits.max(axis=1, keepdims=True))
  w /= w.sum(axis=1, keepdims=True)
  return w @ train.astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Kind 7: the sigma -> 0 limit of y* holds for every finite sigma > 0 (float32 and float64)

TINY_SIGMAS = (1e-10, 1e-19, 1e-20, 1e-25, 1e-30, 1e-38, 1e-45, 1e-200)


@pytest.mark.parametrize("sigma", TINY_SIGMAS)
def test_optimal_denoiser_tiny_sigma_returns_nearest_point_float32(sigma):
  denoise = optimal.empirical_optimal_denoiser(TRAIN)
  out = np.asarray(denoise(jnp.asarray(QUERIES), sigma))
  np.testing.assert_array_equal(out, TRAIN[NEAREST])
  # Under jit (sigma traced) too, and class-conditionally: nearest point of the query's class.
  jitted = jax.jit(lambda x, s, l: optimal.empirical_optimal_denoiser(TRAIN, TRAIN_LABELS)(x, s, l))
  labels = np.array([1, 0, 0, 1], np.int32)
  out = np.asarray(jitted(jnp.asarray(QUERIES), jnp.float32(sigma), jnp.asarray(labels)))
  expect = []
  for q, l in zip(QUERIES, labels):
    rows = np.flatnonzero(TRAIN_LABELS == l)
    expect.append(TRAIN[rows[np.argmin(((TRAIN[rows] - q) ** 2).sum(-1))]])
  np.testing.assert_array_equal(out, np.stack(expect))


def test_optimal_denoiser_tiny_sigma_float64_and_sharded():
  from jax.sharding import Mesh
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  sharded = optimal.empirical_optimal_denoiser(TRAIN, chunk_size=1, mesh=mesh)
  for sigma in (1e-25, 1e-45):
    np.testing.assert_array_equal(np.asarray(sharded(jnp.asarray(QUERIES), sigma)), TRAIN[NEAREST])
  with jax.enable_x64(True):
    denoise = optimal.empirical_optimal_denoiser(TRAIN.astype(np.float64), dtype=jnp.float64)
    for sigma in (1e-160, 1e-200, 1e-300, 5e-324):
      out = np.asarray(denoise(jnp.asarray(QUERIES, jnp.float64), sigma))
      np.testing.assert_array_equal(out, TRAIN[NEAREST].astype(np.float64))


def test_optimal_denoiser_matches_reference_across_sigma_scales():
  """Between the limits the new streaming form still equals an independent float64 softmax."""
  denoise = optimal.empirical_optimal_denoiser(TRAIN, chunk_size=3)
  # Queries nearly equidistant from two points, so the weights are not one-hot at small sigma.
  queries = np.array([[1.5, 1e-3], [1.5, 0.0], [0.1, 2.0]], np.float32)
  for sigma in (0.05, 0.3, 1.0, 7.0, 1e3, 1e10):
    got = np.asarray(denoise(jnp.asarray(queries), sigma), np.float64)
    # float32 rounding of the scores (~1e-7 of ||y||^2) is amplified by 1 / sigma^2 in the logits.
    np.testing.assert_allclose(got, _reference_posterior_mean(queries, sigma, TRAIN),
                               atol=1e-5 * max(1.0, 0.05 / sigma ** 2))


@pytest.mark.parametrize("sigma", (1e-19, 1e-25, 1e-40))
def test_posterior_statistics_tiny_sigma_is_one_hot(sigma):
  for labels in (None, np.array([0, 0, 1, 1], np.int32)):
    stats = optimal.posterior_statistics(TRAIN, None if labels is None else TRAIN_LABELS,
                                         chunk_size=1)
    s = stats(jnp.asarray(QUERIES), sigma, labels)
    np.testing.assert_array_equal(np.asarray(s.entropy), 0.0)
    np.testing.assert_array_equal(np.asarray(s.effective_number), 1.0)
    np.testing.assert_array_equal(np.asarray(s.participation), 1.0)
    np.testing.assert_array_equal(np.asarray(s.max_weight), 1.0)


def test_posterior_statistics_matches_reference_at_moderate_sigma():
  stats = optimal.posterior_statistics(TRAIN, chunk_size=3)
  sigma = 1.3
  d2 = ((QUERIES[:, None].astype(np.float64) - TRAIN[None]) ** 2).sum(-1)
  w = np.exp(-d2 / (2 * sigma ** 2))
  w /= w.sum(1, keepdims=True)
  entropy = -(w * np.log(w)).sum(1)
  s = stats(jnp.asarray(QUERIES), sigma)
  np.testing.assert_allclose(np.asarray(s.entropy), entropy, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(s.participation), 1 / (w ** 2).sum(1), rtol=1e-4)


@pytest.mark.parametrize("sigma", (1e-25, 1e-45))
def test_error_prone_denoiser_tiny_sigma_returns_input(sigma):
  """y_delta -> x as sigma -> 0 for delta > 0 (paper.md section 4): no 0 * NaN."""
  denoise = optimal.error_prone_denoiser(optimal.empirical_optimal_denoiser(TRAIN), 0.5)
  np.testing.assert_allclose(np.asarray(denoise(jnp.asarray(QUERIES), sigma)), QUERIES)


@pytest.mark.parametrize("sigma", (0.0, -1.0, float("nan"), float("inf")))
def test_optimal_denoiser_rejects_non_positive_or_non_finite_sigma(sigma):
  denoise = optimal.empirical_optimal_denoiser(TRAIN)
  with pytest.raises(ValueError, match="sigma must be > 0 and finite"):
    denoise(jnp.asarray(QUERIES), sigma)
  with pytest.raises(ValueError, match="sigma must be > 0 and finite"):
    optimal.posterior_statistics(TRAIN)(jnp.asarray(QUERIES), sigma)


# ------------------------------------------------------------------------------------------------
# Kind 1: a label without training points is refused where the labels are concrete


def _missing_label_denoisers():
  exact = optimal.empirical_optimal_denoiser(TRAIN, TRAIN_LABELS)
  return {
      "optimal": exact,
      "error_prone": optimal.error_prone_denoiser(exact, 0.3),
      "guided": denoisers.guided(exact, optimal.error_prone_denoiser(exact, 0.8), 1.5),
  }


@pytest.mark.parametrize("name", ["optimal", "error_prone", "guided"])
def test_sampler_refuses_labels_without_training_points(name):
  denoise = _missing_label_denoisers()[name]
  noise = jnp.zeros((3, 2))
  with pytest.raises(ValueError, match=r"labels \[2, 5\] have no training points"):
    samplers.sample(denoise, noise, jnp.asarray([0, 2, 5]), num_steps=3)
  out = samplers.sample(denoise, noise, jnp.asarray([0, 1, 1]), num_steps=3).samples
  assert np.all(np.isfinite(np.asarray(out)))


def test_gap_evaluation_refuses_labels_without_training_points():
  from diffgen_jax.evaluation import gap
  exact = optimal.empirical_optimal_denoiser(TRAIN, TRAIN_LABELS)
  images = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match=r"labels \[7\] have no training points"):
    gap.denoising_errors(exact, images, np.array([0, 7, 1]), [0.5, 1.0])
  net = lambda x, s, l: x  # a denoiser with no label restriction: the reference is what is checked
  with pytest.raises(ValueError, match=r"labels \[7\] have no training points"):
    gap.errors_and_distance(net, exact, images, np.array([0, 7, 1]), [0.5, 1.0])


def test_null_labelled_checks_its_null_label():
  exact = optimal.empirical_optimal_denoiser(TRAIN, TRAIN_LABELS)
  with pytest.raises(ValueError, match=r"labels \[3\]"):
    denoisers.check_labels(denoisers.null_labelled(exact, 3), jnp.asarray([0, 1]))
  denoisers.check_labels(denoisers.null_labelled(exact, 0), jnp.asarray([9, 9]))  # replaced


def test_posterior_statistics_refuses_labels_without_training_points():
  with pytest.raises(ValueError, match=r"labels \[4\] have no training points"):
    optimal.posterior_statistics(TRAIN, TRAIN_LABELS)(jnp.asarray(QUERIES), 1.0,
                                                      np.array([0, 1, 4, 0]))


# ------------------------------------------------------------------------------------------------
# Kind 6: numeric parameters are checked, with an error naming them


def _tiny_network_denoiser(family):
  config = models.default_model_config(family)
  config.update(img_resolution=8, img_channels=1, num_classes=3)
  if family in ("ddpmpp", "edm2"):
    config.update(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=())
    if family == "edm2":
      config.update(channels_per_head=8)
  else:
    config.update(patch_size=2, hidden_size=16, depth=1, num_heads=2)
  module = models.build(config)
  params = models.init_variables(module, jax.random.key(0), (1, 8, 8, 1))["params"]
  # Perturb (host-side noise) so that every zero-initialised gain is on: F depends on its inputs.
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda l: np.asarray(l) + np.float32(0.1) * rs.standard_normal(
      l.shape).astype(np.float32), params)
  network = network_lib.Network(module=module, project=lambda p: p, num_classes=3)
  return network_lib.network_denoiser(network, params)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_network_denoiser_at_sigma_zero_is_identity(family):
  """D(x; 0) = x exactly for every family (c_skip = 1, c_out = 0), not 0 * F(ln 0) = NaN."""
  denoise = _tiny_network_denoiser(family)
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
  labels = jnp.asarray([0, 1, 3])
  sigma = jnp.asarray([0.0, 0.5, 2.0])
  # One compiled program (light XLA optimization: compile time dominates at this size).
  fn = jax.jit(denoise).lower(x, sigma, labels).compile(compiler_options=_FAST)
  out = np.asarray(fn(x, sigma, labels))
  np.testing.assert_array_equal(out[0], np.asarray(x[0]))
  assert np.all(np.isfinite(out))
  # The other rows are the network's (a different sigma in row 0 does not change them).
  np.testing.assert_array_equal(np.asarray(fn(x, jnp.asarray([1.0, 0.5, 2.0]), labels))[1:],
                                out[1:])
  assert not np.allclose(out[1:], np.asarray(x[1:]))
  for bad in (-0.1, float("nan"), float("inf")):  # concrete: refused before the network runs
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
      denoise(x, bad, labels)


@pytest.mark.parametrize("kwargs,name", [
    (dict(rho=0.0), "rho"), (dict(rho=-7.0), "rho"), (dict(rho=float("nan")), "rho"),
    (dict(rho=1e-4), "rho"), (dict(num_steps=0), "num_steps"), (dict(num_steps=2.5), "num_steps"),
    (dict(sigma_min=float("nan")), "sigma_min"), (dict(sigma_max=float("inf")), "sigma_max"),
    (dict(sigma_min=0.0), "sigma_min"), (dict(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
])
def test_karras_sigmas_rejects_bad_parameters(kwargs, name):
  args = dict(num_steps=5)
  args.update(kwargs)
  with pytest.raises(ValueError, match=name):
    edm.karras_sigmas(**args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num=0), "num"), (dict(sigma_min=-1.0), "sigma_min"),
    (dict(sigma_max=float("nan")), "sigma_max")])
def test_gap_sigma_grid_rejects_bad_parameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    edm.gap_sigma_grid(**kwargs)


def test_other_math_parameters_are_checked():
  with pytest.raises(ValueError, match="sigma_data"):
    edm.preconditioning(1.0, sigma_data=0.0)
  with pytest.raises(ValueError, match="sigma_data"):
    edm.precondition(lambda x, c, l: x, sigma_data=float("nan"))
  with pytest.raises(ValueError, match="p_std"):
    edm.sample_training_sigmas(jax.random.key(0), (2,), p_std=float("nan"))
  with pytest.raises(ValueError, match="delta"):
    optimal.error_prone_denoiser(optimal.empirical_optimal_denoiser(TRAIN), float("nan"))
  with pytest.raises(ValueError, match="weight"):
    denoisers.guided(lambda x, s, l: x, lambda x, s, l: x, float("inf"))
  with pytest.raises(ValueError, match="chunk_size"):
    optimal.empirical_optimal_denoiser(TRAIN, chunk_size=0)


@pytest.mark.parametrize("name,value", [
    ("s_churn", float("nan")), ("s_churn", -1.0), ("s_churn", float("inf")),
    ("s_min", float("nan")), ("s_max", float("nan")), ("s_max", -1.0), ("s_noise", float("nan")),
    ("rho", 0.0), ("sigma_min", float("nan")), ("sigma_min", 1e-45), ("sigma_max", -3.0),
    ("sigma_max", 1e39), ("num_steps", 0),
    ("stop_step", 7), ("stop_step", 1.5)])
def test_sampler_rejects_bad_numeric_arguments(name, value):
  kwargs = dict(num_steps=4, key=jax.random.key(0))
  kwargs[name] = value
  with pytest.raises(ValueError, match=name):
    samplers.sample(lambda x, s, l: 0.9 * x, jnp.ones((2, 2)), **kwargs)


def test_sampler_rejects_non_finite_or_integer_noise():
  with pytest.raises(ValueError, match="noise contains NaN"):
    samplers.sample(lambda x, s, l: x, jnp.asarray([[np.nan, 0.0]]), num_steps=2)
  with pytest.raises(ValueError, match="noise must be a floating-point array"):
    samplers.sample(lambda x, s, l: x, jnp.zeros((1, 2), jnp.int32), num_steps=2)


def test_check_number_names_the_argument():
  assert check_number(3, "n", low=1, integer=True) == 3
  assert check_number(np.float32(0.5), "w", low=0.0, high=1.0) == 0.5
  assert check_number(math.inf, "s_max", allow_inf=True) == math.inf
  for value, kwargs, message in [
      (float("nan"), {}, "x=nan must be a number, not NaN"), (math.inf, {}, "x=inf must be finite"),
      (True, {}, "x=True must be a number"), ("3", {}, "x='3' must be a number"),
      (2.5, dict(integer=True), "x=2.5 must be an integer"), (0.0, dict(low=0.0, low_open=True),
                                                             "x=0.0 must be > 0.0"),
      (1.0, dict(high=1.0, high_open=True), "x=1.0 must be < 1.0")]:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
      check_number(value, "x", **kwargs)


# ------------------------------------------------------------------------------------------------
# Kind 2: checkpoints load on any device count


_LOAD_SCRIPT = r"""
import json, sys
import numpy as np
import jax
from diffgen_jax import checkpointing
ema, meta = checkpointing.load_snapshot(sys.argv[1], int(sys.argv[2]))
out = {k: np.asarray(v).tolist() for k, v in ema["ema"].items()}
print(json.dumps({"devices": jax.device_count(), "meta": meta, "ema": out}))
"""


def test_snapshot_written_on_8_devices_loads_on_1_2_4(tmp_path):
  import json
  import os
  import subprocess
  import sys
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from diffgen_jax import checkpointing
  assert jax.device_count() == 8
  mesh = Mesh(np.asarray(jax.devices()), ("model",))
  w = np.arange(64, dtype=np.float32).reshape(8, 8) / 7.0
  b = np.linspace(-1, 1, 3).astype(np.float32)
  ema = {"ema": {"w": jax.device_put(w, NamedSharding(mesh, P("model"))),
                 "b": jax.device_put(b, NamedSharding(mesh, P()))}}
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  ckpt.save_snapshot(4, ema, {"step": 4, "images_seen": 64})
  ckpt.wait()
  ckpt.close()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for n in (1, 2, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path), "4"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["devices"] == n and got["meta"] == {"step": 4, "images_seen": 64}
    np.testing.assert_array_equal(np.asarray(got["ema"]["w"], np.float32), w)
    np.testing.assert_array_equal(np.asarray(got["ema"]["b"], np.float32), b)
  # In this process too, onto a caller's sharding (one device).
  one = jax.sharding.SingleDeviceSharding(jax.devices()[3])
  loaded, _ = checkpointing.load_snapshot(str(tmp_path), 4, sharding=one)
  assert loaded["ema"]["w"].sharding == one
  np.testing.assert_array_equal(np.asarray(loaded["ema"]["w"]), w)


# ------------------------------------------------------------------------------------------------
# Kind 3: a non-finite state is never written; float fields finite in the compute dtype


def _state(scale=1.0):
  return {"params": {"w": jnp.full((2, 3), scale, jnp.float32)},
          "ema": {"ema": {"w": jnp.ones((2, 3), jnp.float32)}},
          "opt_state": (jnp.zeros((2, 3)), jnp.asarray(0, jnp.int32))}


@pytest.mark.parametrize("part", ["params", "ema", "opt_state"])
def test_non_finite_state_is_never_written(tmp_path, part):
  from diffgen_jax import checkpointing
  ckpt = checkpointing.Checkpoints(str(tmp_path), keep_states=10)
  ckpt.save_state(2, _state(), {"step": 2})
  ckpt.wait()
  bad = _state()
  if part == "params":
    bad["params"]["w"] = bad["params"]["w"].at[0, 1].set(jnp.inf)
  elif part == "ema":
    bad["ema"]["ema"]["w"] = bad["ema"]["ema"]["w"] * jnp.nan
  else:
    bad["opt_state"] = (jnp.full((2, 3), jnp.nan), bad["opt_state"][1])
  with pytest.raises(FloatingPointError,
                     match=rf"state at step 4: non-finite .*{part}.*last finite checkpoint is step 2"):
    ckpt.save_state(4, bad, {"step": 4})
  if part == "ema":
    with pytest.raises(FloatingPointError, match="EMA snapshot at step 4"):
      ckpt.save_snapshot(4, bad["ema"], {"step": 4})
  ckpt.wait()
  assert ckpt.state.all_steps() == [2] and ckpt.snapshots.all_steps() == []
  ckpt.close()


def test_non_finite_state_on_disk_is_refused_on_resume(tmp_path):
  import orbax.checkpoint as ocp
  from diffgen_jax import checkpointing
  ckpt = checkpointing.Checkpoints(str(tmp_path), keep_states=10)
  bad = _state(jnp.nan)  # as an older version could have written it, bypassing the check
  ckpt.state.save(6, args=ocp.args.Composite(state=ocp.args.StandardSave(bad),
                                             meta=ocp.args.JsonSave({"step": 6})))
  ckpt.wait()
  with pytest.raises(FloatingPointError, match=r"step 6 holds non-finite values .*params"):
    ckpt.restore_state(6, checkpointing.abstract_on(bad, checkpointing.replicated_sharding()))
  ckpt.close()


def _tiny_train_config(batch=16, steps=6):
  """A tiny DDPM++ on 64 8x8 digits (as in test_training.py), no evaluation after training."""
  from diffgen_jax import defaults
  c = defaults.train_config("digits", "ddpmpp")
  c.data.subset_size = 64
  c.model.update(preset="", model_channels=8, channel_mult=(1,), num_blocks=1,
                 attn_resolutions=(), img_resolution=8, img_channels=1, num_classes=10, dropout=0.0)
  c.training.update(batch_size=batch, total_images=batch * steps, lr=2e-3, warmup_images=0)
  c.training.ema.halflife_images = 4 * batch
  c.checkpoint.update(state_every_images=2 * batch, snapshot_every_images=2 * batch, keep_states=10)
  c.sampling.grid_size = 0
  c.log_every_steps = 1
  c.evaluation.after_training = False
  return c


@pytest.mark.parametrize("field,value", [
    ("training.lr", 1e39), ("training.lr", float("inf")), ("training.adam_eps", float("nan")),
    ("training.p_mean", -1e40), ("training.ema.sigma_rels", (0.05, float("nan"))),
    ("evaluation.sigmas", (0.5, 1e39))])
def test_float_fields_must_be_finite_in_the_compute_dtype(tmp_path, monkeypatch, field, value):
  from diffgen_jax import config_checks, jobs
  monkeypatch.setattr(training, "compile_training", lambda *a, **k: pytest.fail("compiled"))
  config = _tiny_train_config()
  *path, name = field.split(".")
  node = config
  for part in path:
    node = node[part]
  node[name] = value
  with pytest.raises(config_checks.ConfigError, match=rf"config\.{field.replace('.', '[.]')}"):
    jobs.run(config, str(tmp_path))


def test_training_stops_before_saving_non_finite_parameters(tmp_path, monkeypatch, data_dir):
  """The loss of a step is computed before its update: a finite loss can come with non-finite
  parameters (the issue's lr = 1e39 case). Those are never saved; the error names the last
  finite checkpoint, from which the run resumes."""
  from diffgen_jax import checkpointing, jobs
  make = training.make_train_step
  poison_after = 3  # the update of step index 3 makes params and EMA NaN; its loss is finite

  def poisoned(network, optimizer, settings):
    step = make(network, optimizer, settings)

    def train_step(state, batch, key):
      new, metrics = step(state, batch, key)
      scale = jnp.where(state.step == poison_after, jnp.nan, 1.0)
      return new.replace(params=jax.tree.map(lambda p: p * scale, new.params),
                         ema=jax.tree.map(lambda p: p * scale, new.ema)), metrics

    return train_step

  monkeypatch.setattr(training, "make_train_step", poisoned)
  config = _tiny_train_config(steps=4)
  config.data.data_dir = data_dir
  with pytest.raises(FloatingPointError,
                     match=r"EMA snapshot at step 4: non-finite .*last finite checkpoint is step 2"):
    jobs.run(config, str(tmp_path))
  ckpt = checkpointing.Checkpoints(str(tmp_path))
  assert ckpt.state.all_steps() == [2] and ckpt.snapshots.all_steps() == [2]
  ckpt.close()


# ------------------------------------------------------------------------------------------------
# Kind 4: images on the wrong scale are refused, saying which scale they are on


def _images(n=10, seed=0):
  """(n, 4, 4, 1) float images in [-1, 1] from uint8 pixels, as the data pipeline makes them."""
  from diffgen_jax import data
  pixels = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
  return pixels, data.to_unit_range(pixels)


def test_to_unit_range_takes_only_integer_pixels():
  from diffgen_jax import data
  np.testing.assert_array_equal(data.to_unit_range(np.array([[[0, 255]]], np.uint8)),
                                np.array([[[[-1.0], [1.0]]]], np.float32))
  _, images = _images()
  with pytest.raises(ValueError, match=r"integer pixels in \[0, 255\].*float32.*already in \[-1, 1\]"):
    data.to_unit_range(images)
  with pytest.raises(ValueError, match=r"integer pixels in \[0, 255\]"):
    data.to_unit_range(np.array([[[-3, 300]]], np.int32))


def test_copy_fraction_refuses_mixed_scales():
  from diffgen_jax.evaluation import copies as probes
  pixels, images = _images()
  assert probes.copy_fraction(images, images) == 1.0  # the right value, on one scale
  with pytest.raises(ValueError, match=r"samples must be floating-point images.*uint8 pixels"):
    probes.copy_fraction(pixels, images)
  with pytest.raises(ValueError, match=r"train_images must be .*uint8 pixels"):
    probes.copy_fraction(images, pixels)
  with pytest.raises(ValueError, match=r"samples must be .*float32 values in \[0, 249\] \(the 0\.\.255 scale"):
    probes.copy_fraction(pixels.astype(np.float32), images)
  with pytest.raises(ValueError, match=r"samples must be .*NaN or Inf"):
    probes.copy_fraction(images * np.nan, images)


def test_optimal_denoisers_refuse_images_on_another_scale():
  """y* and its posterior statistics on uint8 pixels or the 0..255 float scale would return a
  posterior mean on that scale without a word; on [-1, 1] images the sigma -> 0 limit holds."""
  pixels, images = _images(8)
  x = images[:2] + 0.01
  np.testing.assert_allclose(optimal.empirical_optimal_denoiser(images)(x, 1e-6), images[:2])
  for make in (optimal.empirical_optimal_denoiser, optimal.posterior_statistics):
    with pytest.raises(ValueError, match=r"train_images must be floating point.*got dtype uint8"):
      make(pixels)
    with pytest.raises(ValueError, match=r"train_images .* must lie in \[-1, 1\]; got values in \[0, 2"):
      make(pixels.astype(np.float32))


def test_every_image_taking_function_checks_the_convention():
  from diffgen_jax.evaluation import copies, features, gap, gradient_score, probes
  from diffgen_jax.evaluation import ladder
  from diffgen_jax.evaluation import reproducibility as rep
  pixels, images = _images(8)
  exact = optimal.empirical_optimal_denoiser(images)
  states = np.zeros((2, 8, 4, 4, 1), np.float32)
  calls = {
      "gap.denoising_errors": lambda im: gap.denoising_errors(exact, im, sigmas=[1.0]),
      "features.pixel_features": lambda im: features.pixel_features(im),
      "features.batched_features": lambda im: features.batched_features(
          features.pixel_features, im),
      "features.train_classifier": lambda im: features.train_classifier(
          im, np.zeros(8, np.int32), 2, steps=1),
      "probes.trajectory_overlap": lambda im: probes.trajectory_overlap(
          states, np.array([1.0, 0.5]), im, images[:2], images[:2]),
      "probes.nn_similarity_probe": lambda im: probes.nn_similarity_probe(
          exact, features.pixel_features, [1.0], states[:1], im[:2], images[:2],
          np.zeros((8, 16)), np.zeros((8, 16))),
      "copies.copy_fraction": lambda im: copies.copy_fraction(im, images),
      "gradient_score.gradient_correlation_vs_sigma": lambda im: (
          gradient_score.gradient_correlation_vs_sigma(
          exact, im, [1.0])),
      "ladder.noised_inputs": lambda im: ladder.noised_inputs(im, [1.0]),
      "reproducibility.model_variance": lambda im: rep.model_variance(exact, exact, im, sigmas=[1.0]),
      "reproducibility.sample_similarity": lambda im: rep.sample_similarity(
          images, im),
      "reproducibility.sample_similarity(features_fn)": lambda im: rep.sample_similarity(
          im, images, features_fn=features.pixel_features),
      "reproducibility.cross_copy_fractions": lambda im: rep.cross_copy_fractions(
          im, images, images, images),
  }
  nan_images = images.copy()
  nan_images[0, 1, 2, 0] = np.nan  # in the first rows, which some calls slice (im[:2])
  # The README: image-taking functions refuse NaN (data/convention.check_images).
  for name, call in calls.items():
    with pytest.raises(ValueError, match=r"uint8 pixels"):
      call(pixels)
    with pytest.raises(ValueError, match=r"0\.\.255 scale"):
      call(pixels.astype(np.float32) + 20.0)
    with pytest.raises(ValueError, match=r"NaN or Inf"):
      call(nan_images)
      pytest.fail(f"{name} took NaN images")


# ------------------------------------------------------------------------------------------------
# Kind 5: duplicated training images do not hide copies


def test_duplicated_training_image_does_not_hide_its_copy():
  from diffgen_jax.evaluation import copies as probes
  _, images = _images(10, seed=1)
  train = np.concatenate([images, images[3:4]])  # image 3 twice in the training set
  copies = images.copy()  # ten exact copies of the ten distinct training images
  assert probes.copy_fraction(copies, train) == 1.0  # was 0.9: d1 = d2 = 0 for image 3
  near = copies + 0.01 * np.random.default_rng(2).standard_normal(copies.shape).astype(np.float32)
  np.testing.assert_array_equal(probes.copy_flags(near, train), True)
  idx, dist, duplicates = probes.nearest_distinct(copies, train)
  assert duplicates == 1
  np.testing.assert_array_equal(idx[:, 0], np.arange(10))  # first occurrences
  assert np.all(dist[:, 0] == 0) and np.all(dist[:, 1] > 0)
  with pytest.raises(ValueError, match="at least 2 distinct training images"):
    probes.copy_fraction(copies[:1], np.concatenate([images[:1]] * 3))


# ------------------------------------------------------------------------------------------------
# Kind 1 at start-up: a run whose training subset misses classes is refused before it trains


def _quickstart():
  return config_file("quickstart")


def test_quickstart_with_five_training_images_is_refused_at_start_up(tmp_path, monkeypatch,
                                                                      data_dir):
  """The issue's command: --config=configs/quickstart.py --config.data.subset_size=5 (five of the
  ten classes then have no training image) used to train and write null errors for y*."""
  from diffgen_jax import config_checks, jobs
  monkeypatch.setattr(training, "compile_training", lambda *a, **k: pytest.fail("compiled"))
  config = _quickstart()
  config.data.subset_size = 5
  config.data.data_dir = data_dir
  with pytest.raises(config_checks.ConfigError,
                     match=r"config\.data\.subset_size=5 .*labels \[.*\] have no training points"):
    jobs.run(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_a_run_that_never_queries_y_star_may_lack_classes(tmp_path, monkeypatch, data_dir):
  """Without y* (evaluation.optimal=False) and without samples nothing queries the class-conditional
  optimal denoiser, so five training images of ten classes are a valid run: it gets past the
  start-up checks to compiling."""
  from diffgen_jax import jobs

  class Compiled(Exception):
    pass

  def compile_training(*args, **kwargs):
    raise Compiled
  monkeypatch.setattr(training, "compile_training", compile_training)
  config = _quickstart()
  config.data.update(subset_size=5, data_dir=data_dir)
  config.evaluation.optimal = False
  config.evaluation.samples.enabled = False
  with pytest.raises(Compiled):
    jobs.run(config, str(tmp_path))


def test_evaluation_and_factors_jobs_check_labels_at_start_up(data_dir):
  from diffgen_jax import config_checks
  from diffgen_jax.jobs import common
  from diffgen_jax.jobs import factors as factors_job
  config = _quickstart()
  config.data.update(subset_size=5, data_dir=data_dir)
  train, val = common.load_split(config, "train"), common.load_split(config, "validation")
  present = sorted(set(np.asarray(train.labels).tolist()))
  missing = sorted(set(range(10)) - set(present))
  with pytest.raises(config_checks.ConfigError,
                     match=re.escape(f"labels {missing} have no training points")):
    common.check_optimal_labels(config, train, val)
  config.data.update(subset_size=0)  # the whole split holds every class: accepted
  common.check_optimal_labels(config, common.load_split(config, "train"), val)
  factors = _config("factors")
  factors.data.update(subset_size=5, data_dir=data_dir)
  with pytest.raises(config_checks.ConfigError, match=r"have no training points"):
    factors_job.load_setup(factors)


_config = config_file


# ------------------------------------------------------------------------------------------------
# Kind 8: classifier-free guidance is refused for a network that never learned the null label


def _fake_run(tmp_path, label_dropout, labels="class"):
  import json
  from diffgen_jax import defaults
  run = defaults.train_config("digits", "ddpmpp")
  run.training.label_dropout = label_dropout
  run.data.labels = labels
  run_dir = tmp_path / f"run_{label_dropout}_{labels}"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps(run.to_dict()))
  return str(run_dir)


def test_guidance_needs_label_dropout(tmp_path):
  from diffgen_jax.config_checks import ConfigError
  from diffgen_jax.jobs import factors as factors_job
  config = _config("factors", "trained")
  config.run_dir = _fake_run(tmp_path, 0.0)
  with pytest.raises(ConfigError, match=r"config\.training\.label_dropout=0\.0.*null label"):
    factors_job.validate_config(config)
  with pytest.raises(ConfigError, match=r"label_dropout"):  # also where the sweep runs
    factors_job.sweep_trained(config, None, None, str(tmp_path))
  # What is accepted: the explicit override, no cfg, only w = 0, a run with label dropout, or an
  # unconditional run (no label to drop).
  config.trained.allow_cfg_without_label_dropout = True
  factors_job.validate_config(config)
  config.trained.allow_cfg_without_label_dropout = False
  config.trained.styles = ("autoguidance",)
  factors_job.validate_config(config)
  config.trained.styles = ("cfg", "autoguidance")
  config.trained.ws = (0.0,)
  factors_job.validate_config(config)
  config.trained.ws = (0.0, 1.0)
  config.run_dir = _fake_run(tmp_path, 0.1)
  factors_job.validate_config(config)
  config.run_dir = _fake_run(tmp_path, 0.0, labels="none")
  factors_job.validate_config(config)


def test_measurement_parameters_are_checked_by_name():
  from diffgen_jax.evaluation import features, gap
  _, images = _images(4)
  exact = optimal.empirical_optimal_denoiser(images)
  for kwargs, name in [(dict(batch_size=0), "batch_size"), (dict(sigma_chunk=2.5), "sigma_chunk"),
                       (dict(noise_seed=-1), "noise_seed")]:
    with pytest.raises(ValueError, match=name):
      gap.denoising_errors(exact, images, sigmas=[1.0], **kwargs)
  for kwargs, name in [(dict(steps=0), "steps"), (dict(learning_rate=float("nan")), "learning_rate"),
                       (dict(batch_size=-4), "batch_size")]:
    with pytest.raises(ValueError, match=name):
      features.train_classifier(images, np.zeros(4, np.int32), 2, **kwargs)
  for size in (2.5, float("nan"), 0):
    with pytest.raises(ValueError, match="crop_size"):
      denoisers.crop_averaged(exact, size, 4)


def test_checks_run_on_concrete_values_inside_a_trace():
  """The train job samples inside jit with the noise closed over: the checks must use the host
  values (jnp ops there would give tracers), and still refuse bad ones."""
  from diffgen_jax.evaluation import features
  noise = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  out = jax.jit(lambda: samplers.sample(lambda x, s, l: 0.5 * x, noise, num_steps=3).samples)()
  assert np.all(np.isfinite(np.asarray(out)))
  images = jnp.zeros((2, 4, 4, 1))
  assert jax.jit(lambda: features.pixel_features(images))().shape == (2, 16)
  bad = noise.at[0, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="noise contains NaN"):
    jax.jit(lambda: samplers.sample(lambda x, s, l: x, bad, num_steps=2).samples)()
  with pytest.raises(ValueError, match="got dtype uint8"):  # traced: dtype and rank are checked
    jax.jit(lambda: features.pixel_features(jnp.zeros((2, 4, 4, 1), jnp.uint8)))()
