"""The `export` job: a snapshot's samples and D(x; sigma) as EDM dataset zips that read back through
the package's `edm_zip:` reader with the pixels and labels written; its config checks."""

import hashlib
import os
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import checkpointing, data, jobs, models, samplers
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.data import edm_zip
from diffgen_jax.evaluation import gap
from diffgen_jax.jobs import common, export
from diffgen_jax.jobs import results as results_lib
from diffgen_jax.models.network import network_denoiser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 7


def _export_config(variant="smoke"):
  return runpy.run_path(os.path.join(ROOT, "configs", "export.py"))["get_config"](variant)


@pytest.fixture(scope="module")
def run_dir(tiny_unet_config, tmp_path_factory):
  """A run written with the checkpointing API (no training): the suite's tiny class-conditional
  U-Net on 32 digits (tests/conftest.py), its config.json and one snapshot of freshly initialized
  parameters."""
  c = tiny_unet_config(subset_size=32)
  workdir = str(tmp_path_factory.mktemp("export_run"))
  split = common.load_split(c, "train")
  network = common.network_of(c, split.num_classes)
  params = models.init_variables(network.module, jax.random.key(0), (8, 8, 1))["params"]
  common.write_run_record(workdir, common.new_run_record(c, c.model, split))
  ckpt = checkpointing.Checkpoints(workdir)
  ckpt.save_snapshot(STEP, {"ema": params}, {"step": STEP, "images_seen": 448})
  ckpt.wait()
  ckpt.close()
  return workdir


def _network(run_dir):
  run_config = common.read_run(run_dir).config_at()
  network = common.network_of(run_config, 10)
  params = checkpointing.load_ema_params(run_dir, STEP)[1]
  return run_config, network_denoiser(network, params, run_config.training.sigma_data)


def test_exported_zips_read_back_with_the_pixels_and_labels_written(run_dir, tmp_path):
  workdir = str(tmp_path / "export")
  config = _export_config()
  config.run_dir = run_dir
  jobs.run(config, workdir)
  res = results_lib.read(workdir)
  assert res["job"] == "export" and list(res["exports"]) == [str(STEP)]
  rec = res["exports"][str(STEP)]
  assert rec["images_seen"] == 448 and rec["ema"] == "ema" and rec["num_classes"] == 10
  out = os.path.join(workdir, "export", str(STEP))
  assert sorted(os.listdir(out)) == ["denoised_sigma0.5.zip", "denoised_sigma2.zip", "images.zip",
                                     "samples.zip"]
  assert rec["samples"]["file"] == f"export/{STEP}/samples.zip"
  for entry in [rec["samples"], rec["denoised"]["images"], *rec["denoised"]["files"].values()]:
    with open(os.path.join(workdir, entry["file"]), "rb") as f:  # the file's bytes, hashed here
      assert entry["sha256"] == hashlib.sha256(f.read()).hexdigest()

  # images.zip: the run's training images at the evaluate job's seeded rows (not the first rows),
  # the same uint8 pixels and labels as its split.
  run_config, denoise = _network(run_dir)
  split = common.load_split(run_config, "train")
  rows = data.seeded_rows(len(split), 5, 0, data.SUBSET_STREAMS["train"])
  assert not np.array_equal(rows, np.arange(5))
  images, labels = edm_zip.read_images(os.path.join(out, "images.zip"))
  np.testing.assert_array_equal(images, split.images[rows])
  np.testing.assert_array_equal(labels, split.labels[rows])
  assert rec["denoised"]["training_set"] == common.training_set(run_config, split)

  # samples.zip: Heun from normal(fold_in(key(0), i)), labels i mod 10: the same run by hand.
  noise = gap.image_noise(0, np.arange(6), (8, 8, 1))
  cycling = jnp.arange(6, dtype=jnp.int32) % 10
  by_hand = data.to_pixels(np.clip(np.asarray(
      samplers.sample(denoise, noise, cycling, num_steps=3).samples), -1, 1))
  # ... read back through the package's dataset reader (a seeded order: rows by id).
  split_back = data.load_split(f"edm_zip:{out}/samples.zip,{out}/images.zip", "train")
  back = split_back.images[np.arange(6)]
  np.testing.assert_array_equal(split_back.labels, np.arange(6)[split_back.ids] % 10)
  diff = np.abs(back.astype(int) - by_hand[split_back.ids].astype(int))
  assert diff.max() <= 1 and np.mean(diff == 0) > 0.98  # float rounding may flip a level
  assert len(np.unique(back)) > 10  # real images, not a constant

  # denoised_sigma<s>.zip: D(y + s n_y; s) of those images, the gap evaluation's noise.
  x_clean = data.to_unit_range(split.images[rows])
  y_clean, ids = split.labels[rows], split.ids[rows]
  for sigma in (0.5, 2.0):
    d = denoise(jnp.asarray(x_clean + sigma * np.asarray(gap.image_noise(0, ids, (8, 8, 1)))),
                sigma, jnp.asarray(y_clean))
    got, got_labels = edm_zip.read_images(os.path.join(out, export.denoised_file(sigma)))
    np.testing.assert_array_equal(got_labels, y_clean)
    assert np.abs(got.astype(int) - data.to_pixels(np.clip(np.asarray(d), -1, 1))).max() <= 1


def test_samples_are_the_same_whatever_their_number_and_batch(run_dir, tmp_path):
  """Sample i depends on (seed, i) alone: 3 samples in batches of 2 are the first 3 of 6 in one
  batch; an unconditional export is labelled null."""
  _, denoise = _network(run_dir)
  kw = dict(image_shape=(8, 8, 1), num_classes=10, num_steps=2)
  export.export_denoiser(denoise, str(tmp_path / "a"), num_samples=3, batch_size=2, **kw)
  export.export_denoiser(denoise, str(tmp_path / "b"), num_samples=6, batch_size=6, **kw)
  a, la = edm_zip.read_images(str(tmp_path / "a" / "samples.zip"))
  b, lb = edm_zip.read_images(str(tmp_path / "b" / "samples.zip"))
  assert np.abs(a.astype(int) - b[:3].astype(int)).max() <= 1
  np.testing.assert_array_equal(la, lb[:3])
  gaussian = lambda x, sigma, labels=None: x / (1 + jnp.asarray(sigma) ** 2)  # not a pytree
  record = export.export_denoiser(gaussian, str(tmp_path / "c"), image_shape=(4, 4, 3),
                                  num_classes=0, num_samples=2, num_steps=2)
  c, lc = edm_zip.read_images(str(tmp_path / "c" / "samples.zip"))
  assert c.shape == (2, 4, 4, 3) and lc is None and record["samples"]["labels"] is None


def test_export_config_checks(run_dir, tmp_path):
  def refused(words, **changes):
    config = _export_config()
    config.run_dir = run_dir
    for field, value in changes.items():
      node = config
      *parents, leaf = field.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
    with pytest.raises(ConfigError, match=words):
      jobs.run(config, str(tmp_path / "w"))

  refused(r"config.run_dir='' must name a train job's workdir", run_dir="")
  refused(r"has no config.json", run_dir=str(tmp_path))
  refused(r"config.step=3 is not a snapshot step of the run; allowed values \(7,\)", step=3)
  refused(r"config.num_samples=0 with config.denoised.sigmas=\(\) exports nothing",
          **{"num_samples": 0, "denoised.sigmas": ()})
  refused(r"config.denoised.sigmas=\(0.0,\) must contain only finite numbers > 0",
          **{"denoised.sigmas": (0.0,)})
  refused(r"config.batch_size=0 must be an integer >= 1", batch_size=0)
  assert not os.path.exists(tmp_path / "w")
  with pytest.raises(ConfigError, match="holds the results of job 'train'"):
    results_lib.write(str(tmp_path / "t"), "train", {})
    config = _export_config()
    config.run_dir = run_dir
    jobs.run(config, str(tmp_path / "t"))


def test_non_finite_outputs_stop_the_export_naming_the_denoiser(tmp_path):
  """A denoiser whose samples diverge, and one that is NaN at sigma 2 only: jobs.MeasurementError
  naming the denoiser and what was measured (samples.zip; D(x; sigma) at sigma 2), checked on the
  host after each batch (was data.to_pixels' ValueError naming neither)."""
  kw = dict(image_shape=(4, 4, 1), num_classes=0, num_steps=3, batch_size=4)
  with pytest.raises(jobs.MeasurementError, match=r"^snapshot 7 \(EMA set 'ema'\) gives NaN or "
                                                  r"Inf in the samples of samples\.zip "
                                                  r"\(deterministic Heun, 3 steps"):
    export.export_denoiser(lambda x, sigma, labels=None: 1e30 * x, str(tmp_path / "a"),
                           num_samples=2, denoiser="snapshot 7 (EMA set 'ema')", **kw)

  def nan_at_two(x, sigma, labels=None):
    return jnp.where(jnp.abs(jnp.asarray(sigma) - 2.0) < 1e-6, jnp.nan, 0.5 * x)

  clean = (np.zeros((3, 4, 4, 1), np.float32), None, np.arange(3))
  with pytest.raises(jobs.MeasurementError, match=r"^the hook gives NaN or Inf at sigma 2 in "
                                                  r"D\(x; sigma\) of denoised_sigma2\.zip"):
    export.export_denoiser(nan_at_two, str(tmp_path / "b"), num_samples=0, clean=clean,
                           sigmas=(0.5, 2.0), denoiser="the hook", **kw)
