"""defaults: every declared field's default passes its declaration, and a value just outside each
bound, of the wrong type, or not among the choices is refused naming the field (one line).

Driven by the declarations themselves (defaults.JOB_SETTINGS), so a new field is covered when it is
declared; the ranges a user reads in the docs are also stated here independently (DOCUMENTED).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffgen_jax import config_checks, defaults, jobs
from diffgen_jax.config_checks import ConfigError
from config_files import config_file  # tests/config_files.py

BUILDERS = {"train": defaults.train_config, "export": defaults.export_config,
            "ladder": defaults.ladder_config, "factors": defaults.factors_config,
            "toy2d": defaults.toy2d_config}
FIELDS = [(job, field) for job in BUILDERS for field in defaults.job_settings(job)]


def _set(config, field, value):
  *path, name = field.split(".")
  node = config
  for part in path:
    node = node[part]
  with node.ignore_type():
    node[name] = value


def _below(bound, kind):
  return bound - 1 if kind is int else float(np.nextafter(bound, -math.inf))


def _above(bound, kind):
  return bound + 1 if kind is int else float(np.nextafter(bound, math.inf))


def bad_values(setting):
  """Values the declaration must refuse: just outside each bound, NaN, a wrong type, a
  non-member of the choices."""
  kind = setting.entry_kind
  bad = []
  if setting.low is not None:
    bad.append(setting.low if setting.low_open else _below(setting.low, kind))
  if setting.high is not None:
    bad.append(setting.high if setting.high_open else _above(setting.high, kind))
  if kind is int:
    bad += [1.5, True, "1"]
  elif kind is float:
    bad += [math.nan, math.inf, "1.0"]  # (a float field stores True as 1.0)
  elif kind is bool:
    bad += [1, "True"]
  else:
    bad += [1]
  if setting.choices is not None and kind is str:
    bad.append("bogus")
  elif setting.choices is not None:
    bad.append(max(setting.choices) + 1)
  return bad


def _check(job, config):
  config_checks.check_settings(config, defaults.job_settings(job))


@pytest.mark.parametrize("job,field", FIELDS)
def test_declared_field_default_passes_and_bad_values_are_refused_by_name(job, field):
  setting = defaults.job_settings(job)[field]
  config = BUILDERS[job]()
  if setting.optional:
    _set(config, field, setting.default)
  _check(job, config)  # the default
  for bad in bad_values(setting):
    value = (bad,) if setting.sequence else bad
    config = BUILDERS[job]()
    _set(config, field, value)
    with pytest.raises(ConfigError) as info:
      _check(job, config)
    message = str(info.value)
    assert message.startswith(f"config.{field}="), message
    assert "\n" not in message
  if setting.low is not None and not setting.low_open:  # the closed bounds themselves pass
    config = BUILDERS[job]()
    _set(config, field, (setting.low,) if setting.sequence else setting.low)
    _check(job, config)
  if setting.high is not None and not setting.high_open:
    config = BUILDERS[job]()
    _set(config, field, (setting.high,) if setting.sequence else setting.high)
    _check(job, config)


@pytest.mark.parametrize("job,field", [(j, f) for j, f in FIELDS
                                       if defaults.job_settings(j)[f].sequence])
def test_tuple_fields_refuse_non_tuples_and_empty_ones_unless_declared(job, field):
  setting = defaults.job_settings(job)[field]
  config = BUILDERS[job]()
  _set(config, field, {"a": 1})
  with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}="):
    _check(job, config)
  config = BUILDERS[job]()
  _set(config, field, ())
  if setting.empty_ok:
    _check(job, config)
  else:
    with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}=\(\) must be a "
                                          "non-empty tuple"):
      _check(job, config)


def _leaves(tree, prefix=""):
  for key, value in tree.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key


@pytest.mark.parametrize("job", BUILDERS)
def test_every_field_of_a_job_config_is_declared(job):
  """One declaration per setting: each field of the built config (the model section aside, which
  `models` declares with its presets) has a Setting, and each Setting a field."""
  config = BUILDERS[job]()
  fields = {f for f in _leaves(config) if not f.startswith("model.")}
  declared = {f for f, s in defaults.job_settings(job).items() if not s.optional}
  assert fields == declared


def test_a_single_number_or_a_comma_string_counts_as_a_tuple():
  config = defaults.factors_config()
  _set(config, "delta.deltas", 0.3)
  _set(config, "sweeps", "delta,guidance")
  _check("factors", config)
  _set(config, "delta.deltas", -0.3)
  with pytest.raises(ConfigError, match=r"^config\.delta\.deltas=\(-0\.3,\) must contain only "
                                        r"finite numbers >= 0\.0$"):
    _check("factors", config)


def test_a_missing_field_is_left_alone():
  """A saved run's config from before a field existed is read with that field's default."""
  config = defaults.train_config()
  del config.evaluation["optimal"]
  _check("train", config)


# Ranges as the docs state them (EDM's paper, Adam, paper.md), independent of the declarations:
# (field, values accepted, values refused).
DOCUMENTED = [
    ("training.lr", (1e-12, 1.0), (0.0, -1e-3)),
    ("training.adam_b1", (0.0, 0.999999), (1.0, -1e-9)),
    ("training.adam_b2", (0.0, 0.999999), (1.0, -1e-9)),
    ("training.adam_eps", (1e-30,), (0.0,)),
    ("training.label_dropout", (0.0, 0.99), (1.0, -0.1)),
    ("training.sigma_data", (1e-6,), (0.0,)),
    ("training.p_std", (1e-6,), (0.0,)),
    ("training.grad_clip", (0.0, 5.0), (-1e-9,)),
    ("training.ema.halflife_images", (1.0,), (0.0,)),
    ("training.ema.sigma_rels", ((0.01, 0.28),), ((0.0,), (0.2887,))),  # gamma >= 0: < 1/sqrt(12)
    ("evaluation.samples.copy_ratio", (1e-3, 0.999), (0.0, 1.0)),
    ("evaluation.samples.num_samples", (2,), (1,)),  # a covariance needs two samples
    ("data.subset_side", (1, 2), (0, 3)),
    ("mesh.data", (-1, 1), (-2,)),
]


@pytest.mark.parametrize("field,good,bad", DOCUMENTED)
def test_documented_ranges(field, good, bad):
  for value in good:
    config = defaults.train_config()
    _set(config, field, value)
    _check("train", config)
  for value in bad:
    config = defaults.train_config()
    _set(config, field, value)
    with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}"):
      _check("train", config)


# ------------------------------------------------------------------------------------------------
# Through jobs.validate: the declarations are checked at start-up, before the jobs' rules


_config_file = config_file


CONFIG_FILES = [("quickstart", None), ("factors", None), ("factors", "local,fashion"),
                ("toy2d", None), ("toy2d", "paper"), ("ladder", "smoke"), ("export", "smoke")]


@pytest.mark.parametrize("name,variant", CONFIG_FILES)
def test_config_files_pass_their_declarations(name, variant):
  config = _config_file(name, variant)
  job = config.job
  _check(job, config)
  if job not in ("ladder", "export"):  # (they need a run_dir: tests/test_jobs_ladder.py)
    assert jobs.validate(config) == job


@pytest.mark.parametrize("job,field,value", [
    ("train", "training.lr", -1.0), ("factors", "gradient_score.num_images", 0),
    ("toy2d", "frechet.ddof", 3), ("ladder", "calibration.on", "test"),
    ("export", "denoised.num_images", 0)])
def test_jobs_validate_checks_every_declared_field_even_one_the_run_does_not_read(
    job, field, value):
  """e.g. a toy2d run of flow_field only still refuses a bad frechet.ddof."""
  config = BUILDERS[job]()
  if job == "toy2d":
    config.experiments = ("flow_field",)
  if job == "factors":
    config.sweeps = ("delta",)
  _set(config, field, value)
  with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}={value!r}"):
    jobs.validate(config)


def test_unread_sections_are_not_held_to_their_declarations():
  config = defaults.train_config()
  config.evaluation.after_training = False
  config.monitor.every_images = 0
  _set(config, "evaluation.ema", "bogus")
  _set(config, "monitor.batch_size", 0)
  assert jobs.validate(config) == "train"
  config.monitor.every_images = 1000  # the monitor reads its fields and the evaluation's seeds
  with pytest.raises(ConfigError, match=r"^config\.monitor\.batch_size=0"):
    jobs.validate(config)
  config.monitor.batch_size = 8
  _set(config, "evaluation.noise_seed", -1)
  with pytest.raises(ConfigError, match=r"^config\.evaluation\.noise_seed=-1"):
    jobs.validate(config)


FLOAT_LEAVES = sorted({(job, field.split("[")[0]) for job in ("train", "factors", "toy2d")
                       for field, _ in config_checks.float_leaves(BUILDERS[job]())})


@pytest.mark.parametrize("job,field", FLOAT_LEAVES)
def test_every_float_field_is_finite_in_float32(job, field):
  """Every float of a config (the model section's too): NaN and values infinite in float32
  (1e39) are refused at start-up naming the field."""
  for value in (math.nan, 1e39):
    config = BUILDERS[job]()
    current = config_checks.get(config, field)
    _set(config, field, tuple(value for _ in current) if isinstance(current, (list, tuple))
         else value)
    with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}"):
      jobs.validate(config)


def test_describe_lists_every_field_with_its_help():
  lines = defaults.describe("ladder").splitlines()
  assert len(lines) == len(defaults.job_settings("ladder"))
  assert lines[2] == ("step = -1  (an integer >= -1)  the snapshot measured: -1 = the last, else "
                      "a snapshot step of the run")


def test_a_float_beyond_float32_is_said_in_float32_also_for_bfloat16_compute():
  """The parameters and schedules are float32 whatever training.compute_dtype: the message says
  float32 (not "the compute dtype float32" of a bfloat16 run)."""
  config = BUILDERS["train"]()
  config.training.compute_dtype = "bfloat16"
  config.training.lr = 1e39
  with pytest.raises(ConfigError) as err:
    jobs.validate(config)
  assert str(err.value) == ("config.training.lr=1e+39 is not finite in float32 (largest finite "
                            "value 3.403e+38; bfloat16 has the same range): it would reach the "
                            "computation as inf")


@pytest.mark.parametrize("field, value", [("training.lr", 1e-50), ("evaluation.sigmas", (1e-50,)),
                                          ("training.lr", -1e-46)])
def test_a_non_zero_float_that_is_zero_in_float32_is_refused(field, value):
  """lr = 1e-50 is 0 in float32: the run would train at learning rate 0 without a word."""
  config = BUILDERS["train"]()
  _set(config, field, value)
  with pytest.raises(ConfigError, match=rf"^config\.{field.replace('.', '[.]')}(\[0\])?=.* is 0 in float32 "
                     r"\(smallest positive value 1\.401e-45\)"):
    jobs.validate(config)
  _set(config, field, (1e-44,) if isinstance(value, tuple) else 1e-44)  # subnormal, not 0: allowed
  jobs.validate(config)
