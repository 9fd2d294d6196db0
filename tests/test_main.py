"""main: a bad --config override or field value fails at once, in one line naming the field."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("override, message", [
    ("--config.training.lrr=1", 'diffgen_jax: --config.training.lrr: no such field (Did you mean '
                                '"lr" instead of "lrr"?)'),
    # A misspelled section (absl raises a KeyError there, an AttributeError for a field).
    ("--config.trainig.lr=1", "diffgen_jax: --config.trainig.lr: no such section 'trainig' (Did "
                              'you mean "training" instead of "trainig"?)'),
    ("--config.xyz.lr=1", "diffgen_jax: --config.xyz.lr: no such section 'xyz'"),
    ("--config.training.lr=-1", "diffgen_jax: config.training.lr=-1.0 must be > 0.0"),
    ("--config.training.lr=abc", "diffgen_jax: flag --config.training.lr=abc: must be a number "
                                 "(e.g. 2e-4)"),
    ("--config.training.total_images=1e9", "diffgen_jax: flag --config.training.total_images=1e9: "
     "must be an integer written out in digits (1000000000, not 1e9)"),
    ("--config.evaluation.sigmas=(nan,)", "diffgen_jax: config.evaluation.sigmas=(nan,) must "
     "contain only finite numbers > 0.0"),
    # The network's fields, checked with the rest before anything is printed (not when it is built).
    ("--config.model.dropout=1.5", "diffgen_jax: config.model.dropout: 1.5 must lie in [0.0, 1.0)"),
    ("--config.model.preset= --config.model.model_channels=-1",
     "diffgen_jax: config.model.model_channels: -1 must be an integer >= 1"),
])
def test_a_bad_field_is_one_line_naming_it(tmp_path, override, message):
  # As a user runs it: without the suite's simulated devices, so that main would say its CPU
  # devices (stdout) if a field were checked only after that.
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + sys.path), JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(xla_flags))
  proc = subprocess.run([sys.executable, "-m", "diffgen_jax.main",
                         f"--config={REPO}/configs/quickstart.py", f"--workdir={tmp_path / 'w'}",
                         *override.split(" ")], capture_output=True, text=True, env=env, timeout=300,
                        check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [message] and proc.stdout == ""
  assert not os.path.exists(tmp_path / "w")  # nothing written


def _main(args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "diffgen_jax.main", *args], capture_output=True,
                        text=True, cwd=cwd, timeout=300, check=False)


@pytest.mark.parametrize("case", ["no_file", "directory", "no_workdir", "no_config",
                                  "workdir_is_a_file", "workdir_under_a_file"])
def test_a_bad_config_file_or_workdir_is_one_line_naming_it(tmp_path, case):
  config, afile = f"{REPO}/configs/quickstart.py", tmp_path / "afile"
  afile.write_text("")
  args, message = {
      "no_file": ([f"--config={REPO}/configs/quickstrat.py", "--workdir=w"],
                  f"diffgen_jax: --config={REPO}/configs/quickstrat.py: {REPO}/configs/"
                  "quickstrat.py does not exist; give a config file"),
      "directory": (["--config", f"{REPO}/configs", "--workdir=w"],
                    f"diffgen_jax: --config={REPO}/configs: {REPO}/configs is a directory"),
      "no_workdir": ([f"--config={config}"], "diffgen_jax: --workdir is required: Directory for "
                     "checkpoints"),
      "no_config": (["--workdir=w"], "diffgen_jax: --config is required: Experiment config file"),
      "workdir_is_a_file": ([f"--config={config}", f"--workdir={afile}"],
                            f"diffgen_jax: --workdir={afile}: cannot make the directory {afile} "
                            "(it is a file)"),
      "workdir_under_a_file": ([f"--config={config}", f"--workdir={afile}/w"],
                               f"diffgen_jax: --workdir={afile}/w: cannot make the directory "
                               f"{afile}/w (Not a directory: {afile}/w)"),
  }[case]
  out = _main(args, cwd=tmp_path)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_a_misspelled_config_variant_is_one_line_without_the_traceback():
  out = subprocess.run([sys.executable, "-m", "diffgen_jax.main",
                        "--config=configs/factors.py:lokal", "--workdir=/tmp/never"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in lines[0], out.stderr
  assert "variant 'lokal': unknown variant(s) ['lokal']" in lines[0]
  table = subprocess.run([sys.executable, "-m", "diffgen_jax.defaults", "bogus"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
  assert table.returncode != 0 and "JOB one of ('train'" in table.stderr
  assert "Traceback" not in table.stderr
