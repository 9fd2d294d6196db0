"""The convert and evaluate jobs on NVIDIA snapshots (the fixture network) and an EDM dataset zip."""

import importlib.util
import io
import json
import os
import re
import shutil
import zipfile

import numpy as np
import pytest

from diffgen_jax import checkpointing, jobs
from diffgen_jax.config_checks import ConfigError
from config_files import config_file  # tests/config_files.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKL = os.path.join(ROOT, "tests", "fixtures", "nvidia_networks", "pickles",
                   "edm2-cond-network-snapshot-0001048-0.100.stripped.pkl")


def _config(variant="local"):
  return config_file("nvidia", variant)


def _zip(path, n, seed):
  from test_edm_zip import _write_zip  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  # Every class in both splits (the evaluation queries the class-conditional y* with each).
  _write_zip(path, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.permutation(n) % 10)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("nvidia_run")
  snaps = root / "snapshots"
  snaps.mkdir()
  # An EDM2 run directory: two snapshots of EMA profile 0.100 (same weights) and one of 0.050.
  for name in ("network-snapshot-0002097-0.100.pkl", "network-snapshot-0001048-0.100.pkl",
               "network-snapshot-0001048-0.050.pkl"):
    shutil.copy(PKL, snaps / name)
  _zip(root / "train.zip", 12, 0)
  _zip(root / "val.zip", 10, 1)
  return root


def test_evaluate_job_over_a_directory_of_nvidia_snapshots(run_dir, capsys):
  config = _config()
  config.model.checkpoint = str(run_dir / "snapshots")
  config.model.checkpoint_ema = "0.100"
  config.data.name = f"edm_zip:{run_dir / 'train.zip'},{run_dir / 'val.zip'}"
  workdir = str(run_dir / "work")
  jobs.run(config, workdir)
  assert checkpointing.snapshot_steps(workdir) == [1048, 2097]  # ordered by images seen
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["summary"]["images_seen"] == [1048000, 2097000]
  a, b = (results["snapshots"][k]["ema"]["ema"] for k in ("1048", "2097"))
  assert len(a["gap"]) == 4 and np.all(np.isfinite(a["gap"]))
  assert a["e_train"] == b["e_train"] and a["e_val"] == b["e_val"]  # the same weights
  # Per-pixel MSEs of images in [-1, 1] against outputs of this network (|D| < 1 on the fixture).
  assert all(0 < v < 4 for v in a["e_train"] + a["e_val"])
  # The optimal denoiser is on in the nvidia variants (streamed from the zip over the mesh): its
  # own errors, and each network's distance to it, which differs from the network's own error.
  assert len(results["optimal"]["e_train"]) == 4 and results["optimal"]["e_train"][0] < 1e-6
  assert all(0 < d < 4 for d in a["to_optimal_train"] + a["to_optimal_val"])
  assert a["to_optimal_train"] != a["e_train"]
  assert results["settings"] == {"evaluation_devices": 8, "processes": 1}
  with open(os.path.join(workdir, "converted.json")) as f:
    converted = json.load(f)
  assert converted["model"]["family"] == "edm2" and converted["model"]["num_classes"] == 10
  assert "peak G" in capsys.readouterr().out
  # Re-running resumes: nothing converted or evaluated twice.
  jobs.run(config, workdir)
  assert checkpointing.snapshot_steps(workdir) == [1048, 2097]


def test_two_ema_profiles_at_one_kimg_need_a_choice(run_dir):
  config = _config()
  config.model.checkpoint = str(run_dir / "snapshots")
  config.model.checkpoint_ema = ""
  config.job = "convert"
  with pytest.raises(ValueError, match="EMA profiles"):
    jobs.run(config, str(run_dir / "work2"))


def test_convert_job_and_train_job_refusals(run_dir):
  config = _config()
  config.job = "convert"
  config.model.checkpoint = str(run_dir / "nowhere.pkl")
  with pytest.raises(ConfigError, match="does not exist"):
    jobs.run(config, str(run_dir / "work3"))
  config.job = "train"
  config.model.checkpoint = PKL
  config.data.name = "digits"
  with pytest.raises(ConfigError, match="train job trains from scratch"):
    jobs.run(config, str(run_dir / "work4"))


def test_the_convert_job_names_a_file_that_is_not_a_network_pickle(tmp_path):
  """An empty download, a cut one, a torch.save zip: the job's error names the file and the fix."""
  from diffgen_jax.models import nvidia_pickle  # pylint: disable=import-outside-toplevel
  with open(PKL, "rb") as f:
    good = f.read()
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as z:
    z.writestr("archive/data.pkl", good[:100])
  config = _config()
  config.job = "convert"
  for data, phrase in [(b"", "is empty (0 bytes)"),
                       (good[:len(good) // 3], "download the file again"),
                       (buffer.getvalue(), "torch.save checkpoint, not an EDM/EDM2 network")]:
    path = tmp_path / "network-snapshot-0001048-0.100.pkl"
    path.write_bytes(data)
    config.model.checkpoint = str(path)
    with pytest.raises(nvidia_pickle.NetworkPickleError, match=re.escape(phrase)) as err:
      jobs.run(config, str(tmp_path / "work"))
    assert str(err.value).startswith(f"{path}: "), err.value


def _benchmark(name):
  spec = importlib.util.spec_from_file_location(name,
                                                os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_imagenet64_protocol_runs_to_the_end_at_a_small_size(tmp_path):
  """benchmarks/imagenet64_e2e.py's path (issue 23, part 3) at 200 images of 16x16, 8 classes:
  an EDM dataset zip pair from the package's writer, a random EDM2 network in NVIDIA's format,
  then configs/nvidia.py:edm2-img64 (y* on, samples on, the reference cap) converts it and
  measures the gap, y* and the distance to it, membership and the samples."""
  e2e = _benchmark("imagenet64_e2e")
  train_zip, val_zip = e2e.write_dataset(str(tmp_path / "data"), train=200, val=40, resolution=16,
                                         classes=8)
  network = e2e.write_edm2_network(str(tmp_path / "network"), resolution=16, classes=8, kimg=7)
  config = _config("edm2-img64")
  e = config.evaluation
  assert e.optimal and e.model_vs_optimal and e.samples.enabled
  assert e.samples.reference_images == 50_000
  e2e.apply(config, e2e.overrides(train_zip, val_zip, network, num_images=16, num_sigmas=3,
                                  batch_size=16, num_samples=16, num_steps=3, classifier_steps=5,
                                  reference_images=32, probe_size=8, grid_size=4))
  workdir = str(tmp_path / "work")
  jobs.run(config, workdir)
  with open(os.path.join(workdir, "converted.json")) as f:
    model = json.load(f)["model"]
  assert (model["family"], model["num_classes"], model["img_resolution"]) == ("edm2", 8, 16)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert {"optimal", "snapshots", "summary", "samples", "settings"} <= set(results)
  assert results["settings"] == {"evaluation_devices": 8, "processes": 1}
  record = results["snapshots"]["7"]["ema"]["ema"]
  assert len(record["gap"]) == 3 and np.all(np.isfinite(record["gap"]))
  assert results["optimal"]["e_train"][0] < 1e-6  # y* recalls its training images at small sigma
  assert all(0 < d < 4 for d in record["to_optimal_train"] + record["to_optimal_val"])
  assert len(record["membership"]["auc"]) == 3
  s = results["samples"]
  assert s["protocol"]["reference_images"] == {"cap": 32, "seed": 0, "train": 32, "val": 32}
  assert s["feature"]["kind"] == "classifier" and s["feature"]["trained"]
  fd = s["snapshots"]["7"]["fd"]
  assert all(np.isfinite(fd[space]["gap"]) for space in ("features", "pixels"))
  assert s["snapshots"]["7"]["copy_fraction"]["samples"] == 0  # noise images: nothing copied
