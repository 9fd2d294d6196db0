"""The `factors` job (`jobs.factors`): config validation, the results layout and the plots."""

import os
import re

import numpy as np
import pytest

from configs import factors as factors_config
from diffgen_jax import data, jobs
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.evaluation import sweeps
from diffgen_jax.jobs import factors as factors_job
from diffgen_jax.jobs import results as results_lib


@pytest.mark.parametrize("field, value, message", [
    ("sweeps", ("delta", "bogus"), "config.sweeps"),
    ("granularity.ks", (2, -1), "config.granularity.ks"),
    ("guidance.ws", (0.0, -0.5), "config.guidance.ws"),
    ("receptive_field.crop_sizes", (4, 9), "config.receptive_field.crop_sizes"),
    ("receptive_field.crop_sizes", (3,), "allowed values (4, 5, 6, 7, 8)"),
    ("guidance.delta_neg", 0.1, "config.guidance.delta_neg"),
    ("granularity.features", "inception", "config.granularity.features"),
])
def test_validate_config_names_the_field(field, value, message):
  config = factors_config.get_config("local")
  factors_job.validate_config(config)
  section, _, key = field.rpartition(".")
  (config[section] if section else config)[key] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    jobs.validate(config)  # each field's declaration (defaults.FACTORS), then the job's rules


def test_trained_sweep_needs_a_run_dir():
  config = factors_config.get_config("trained")
  with pytest.raises(ConfigError, match="config.run_dir"):
    factors_job.validate_config(config)
  with pytest.raises(ValueError, match="unknown variant"):
    factors_config.get_config("local,bogus")


def _assert_within(low, value, high):
  """low <= value <= high wherever all three are numbers (null: G infinite, no interval)."""
  rows = [(a, v, b) for a, v, b in zip(low, value, high) if None not in (a, v, b)]
  assert rows and all(a <= v + 1e-12 and v <= b + 1e-12 for a, v, b in rows), (low, value, high)


def test_job_writes_results_and_plots(data_dir, tmp_path):
  config = factors_config.get_config("local")
  config.data.data_dir = data_dir
  config.data.subset_size = 200
  config.num_images = 16
  config.num_sigmas = 5
  config.delta.deltas = (0.2, 0.5)
  config.granularity.ks = (2,)
  config.guidance.ws = (0.0, 1.0)
  config.receptive_field.crop_sizes = (4, 8)
  config.gradient_score.num_images = 1
  config.gradient_score.num_sigmas = 2
  workdir = str(tmp_path / "factors")
  factors_job.run(config, workdir)
  results = results_lib.read(workdir)
  assert results["job"] == "factors"
  settings = results["settings"]
  assert settings["num_train_set"] == 200 and settings["num_train_eval"] == 16
  assert len(settings["sigmas"]) == 5
  assert list(results["sweeps"]) == list(factors_job.ANALYTIC_SWEEPS)
  for name, section in results["sweeps"].items():
    assert section["factor"] == name and section["curves"]
    for c in section["curves"]:
      assert {"label", "group", "value"} <= set(c)
      if name == "gradient_score":
        assert len(c["score"]) == len(c["score_low"]) == len(c["score_high"]) == 2
        _assert_within(c["score_low"], c["score"], c["score_high"])
        continue
      assert len(c["gap"]) == len(c["e_train"]) == len(c["e_val"]) == 5
      assert c["peak_sigma"] in section["sigmas"] and np.isfinite(c["peak_gap"])
      # The 95% interval over images, beside every value; the peak's at the peak's sigma.
      assert len(c["gap_low"]) == len(c["gap_high"]) == 5
      _assert_within(c["gap_low"], c["gap"], c["gap_high"])
      i = section["sigmas"].index(c["peak_sigma"])
      assert (c["peak_gap_low"], c["peak_gap_high"]) == (c["gap_low"][i], c["gap_high"][i])
      assert c["peak_gap_low"] <= c["peak_gap"] <= c["peak_gap_high"]
    assert section["interval"] == {**sweeps.INTERVAL}  # seeded, recorded
    png = ["gradient_score.png"] if name == "gradient_score" else [f"{name}.png", f"{name}_peak.png"]
    for p in png:
      assert os.path.getsize(os.path.join(workdir, p)) > 1000
  assert [c["label"] for c in results["sweeps"]["delta"]["curves"]] == ["delta=0.2", "delta=0.5"]
  assert data.read_pseudo_labels(os.path.join(workdir, "pseudo_labels", "k2.npz"),
                                 "train").shape == (200,)


@pytest.mark.parametrize("changes, message", [
    ({"data.subset_size": 100000}, "subset_size"),  # more than the split holds
    # Refused before the first sweep (delta) runs: these used to fail only when the granularity
    # sweep came, after the delta sweep had written its results.
    ({"data.subset_size": 200, "granularity.ks": (2, 2000)}, "config.granularity.ks: [2000]"),
    ({"data.subset_size": 200, "data.labels": "none", "granularity.features": "classifier"},
     "config.granularity.features='classifier'"),
    ({"data.subset_size": 200, "granularity.features": "classifier",
      "granularity.classifier_params": "/nonexistent/classifier.npz"},
     "config.granularity.classifier_params='/nonexistent/"),
])
def test_a_refused_run_leaves_no_workdir(data_dir, tmp_path, changes, message):
  config = factors_config.get_config("local")
  config.data.data_dir = data_dir
  config.sweeps = ("delta", "granularity")
  for field, value in changes.items():
    section, key = field.split(".")
    config[section][key] = value
  workdir = str(tmp_path / "factors")
  with pytest.raises(ValueError, match=re.escape(message)):
    factors_job.run(config, workdir)
  assert not os.path.exists(workdir)
