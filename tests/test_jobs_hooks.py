"""Networks and feature extractors from anywhere through the jobs: evaluate, ladder,
factors and export with --config.model.denoiser=MODULE:FUNCTION (a factory called on each file under
--config.model.checkpoint), the PyTorch bridge behind such a hook, and a feature hook
(--config.evaluation.samples.feature=hook --config.evaluation.samples.features=MODULE:FUNCTION).
A bad hook fails at start-up, naming the field, in one line through main."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import defaults, jobs
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.evaluation import copies, frechet, gap
from diffgen_jax.jobs import common
from diffgen_jax.jobs import evaluate as ev
from diffgen_jax.jobs import results as results_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGMAS = (0.1, 0.3, 1.0, 3.0)
N = 64  # training subset = evaluation images per split

# A network that never saw the training set: the posterior mean of isotropic Gaussian data
# N(mean, var I), D(x; sigma) = mean + var / (var + sigma^2) (x - mean), its two "snapshots"
# stored as .npz files. The factory logs each call (to tell measured snapshots from skipped ones).
HOOKS = '''
import os

import jax.numpy as jnp
import numpy as np

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log")


def _read(path):
  with open(LOG, "a") as f:
    f.write(os.path.basename(path) + "\\n")
  with np.load(path) as f:
    return float(f["mean"]), float(f["var"]), int(f["seen"])


def shrink(mean, var):
  def denoise(x, sigma, labels=None):
    s2 = jnp.broadcast_to(jnp.asarray(sigma, x.dtype) ** 2, (x.shape[0],))[:, None, None, None]
    return mean + var / (var + s2) * (x - mean)
  return denoise


def make(path):
  mean, var, seen = _read(path)
  return shrink(mean, var), {"images_seen": seen}


def make_bare(path):  # images seen from the file name
  mean, var, _ = _read(path)
  return shrink(mean, var)


def make_torch(path):  # the same network in PyTorch, through the bridge
  import torch
  from diffgen_jax.denoisers import from_torch
  mean, var, seen = _read(path)

  class Shrink(torch.nn.Module):
    def forward(self, x, sigma, class_labels=None):
      s2 = (sigma ** 2)[:, None, None, None]
      return mean + var / (var + s2) * (x - mean)

  return from_torch(Shrink(), preconditioning="none", label_dim=10), {"images_seen": seen}


def make_fixed_size(path):  # a network of 8 x 8 images only
  mean, var, seen = _read(path)
  denoise = shrink(mean, var)

  def fixed(x, sigma, labels=None):
    if x.shape[1:3] != (8, 8):
      raise ValueError(f"this network takes 8 x 8 images, got {x.shape[1:3]}")
    return denoise(x, sigma, labels)
  return fixed, {"images_seen": seen}


def make_wrong_shape(path):
  return lambda x, sigma, labels=None: x[:, :2]


def features():  # two numbers per image: its mean and the mean of its top half
  def extract(images):
    images = np.asarray(images)
    return np.stack([images.mean((1, 2, 3)), images[:, :images.shape[1] // 2].mean((1, 2, 3))], 1)
  return extract


def nan_features():
  return lambda images: np.full((len(images), 3), np.nan)
'''


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory):
  """hooknets.py and two snapshots, wiener-2.npz (2,000 images seen) and wiener-10.npz (10,000):
  the natural order of the names (2 before 10, not the text order)."""
  d = tmp_path_factory.mktemp("hooks")
  (d / "hooknets.py").write_text(HOOKS)
  snapshots = d / "snapshots"
  snapshots.mkdir()
  for n, var in ((2, 0.15), (10, 0.3)):
    np.savez(snapshots / f"wiener-{n}.npz", mean=-0.4, var=var, seen=1000 * n)
  return d


def _calls(hook_dir):
  path = hook_dir / "calls.log"
  calls = path.read_text().split() if path.exists() else []
  if path.exists():
    path.unlink()
  return calls


def _spec(hook_dir, function):
  return f"{hook_dir / 'hooknets.py'}:{function}"


def _evaluate_config(data_dir, hook_dir, function="make"):
  c = defaults.train_config("digits", "ddpmpp")
  c.job = "evaluate"
  c.data.data_dir = data_dir
  c.data.subset_size = N
  c.model.denoiser = _spec(hook_dir, function)
  c.model.checkpoint = str(hook_dir / "snapshots")
  c.evaluation.update(dict(num_images=N, sigmas=SIGMAS, batch_size=N, at_sigmas=(),
                           optimal=False, model_vs_optimal=False))
  c.evaluation.samples.enabled = False
  c.tensorboard = False
  return c


def _shrink(mean, var):
  def denoise(x, sigma, labels=None):
    s2 = jnp.broadcast_to(jnp.asarray(sigma) ** 2, (x.shape[0],)).reshape(-1, 1, 1, 1)
    return mean + var / (var + s2) * (x - mean)
  return denoise


def test_evaluate_a_hook_that_never_saw_the_training_set_has_no_gap_and_resumes(
    data_dir, hook_dir, tmp_path):
  """The known answer: a denoiser that never saw the training set has E_train = E_val in
  expectation (the training subset and the validation images are draws of the same digits), so G
  is 0 within its sampling interval: |G| < 3 standard errors (delta method on the per-image
  errors), at every sigma, for both snapshots; the numbers are the denoiser's own (E recomputed
  directly); snapshots in the natural order of their names, images seen from the factory; a
  re-run measures nothing (only the start-up check calls the factory, on the first file)."""
  _calls(hook_dir)
  workdir = str(tmp_path / "eval")
  config = _evaluate_config(data_dir, hook_dir)
  jobs.run(config, workdir)
  assert _calls(hook_dir) == ["wiener-2.npz", "wiener-10.npz"]  # checked first, then measured
  res = results_lib.read(workdir)
  assert list(res["snapshots"]) == ["wiener-2.npz", "wiener-10.npz"]
  assert res["protocol"]["denoiser"] == config.model.denoiser
  assert res["summary"]["steps"] == ["wiener-2.npz", "wiener-10.npz"]
  assert res["summary"]["images_seen"] == [2000, 10000]
  split = common.load_split(config, "train")
  rows = common.evaluation_rows(split, N, config.evaluation.subset_seed)
  for key, var in (("wiener-2.npz", 0.15), ("wiener-10.npz", 0.3)):
    entry = res["snapshots"][key]
    assert entry["source"] == str(hook_dir / "snapshots" / key) and list(entry["ema"]) == ["hook"]
    record = entry["ema"]["hook"]
    direct = gap.denoising_errors(_shrink(-0.4, var), rows[0], rows[1], np.asarray(SIGMAS),
                                  ids=rows[2], noise_seed=0, batch_size=N)
    np.testing.assert_allclose(record["e_train"], direct, rtol=1e-5)
    with np.load(os.path.join(workdir, "evaluation", "per_image",
                              f"{common.output_name(key)}.npz")) as f:
      e_train, e_val = f["e_train"].astype(np.float64), f["e_val"].astype(np.float64)
    mt, mv = e_train.mean(0), e_val.mean(0)
    g = mv / mt - 1
    np.testing.assert_allclose(record["gap"], g, rtol=1e-4, atol=1e-6)
    se = np.sqrt(e_val.var(0, ddof=1) / len(e_val) / mt ** 2
                 + (mv / mt ** 2) ** 2 * e_train.var(0, ddof=1) / len(e_train))
    assert np.all(np.abs(g) < 3 * se), (key, g, se)
    assert np.all(se < 0.2)  # (an interval narrow enough to mean something)
  again = jobs.run(config, workdir)
  assert _calls(hook_dir) == ["wiener-2.npz"]  # the start-up check only: both skipped
  assert again["snapshots"] == res["snapshots"]


def test_the_pytorch_bridge_behind_a_hook_gives_the_jax_twins_numbers(data_dir, hook_dir,
                                                                       tmp_path):
  """The same shrinkage written in PyTorch (`denoisers.from_torch` in the factory): results.json
  equal to the JAX hook's within 1e-5 (relative)."""
  pytest.importorskip("torch")
  jax_run = jobs.run(_evaluate_config(data_dir, hook_dir), str(tmp_path / "jax"))
  torch_run = jobs.run(_evaluate_config(data_dir, hook_dir, "make_torch"), str(tmp_path / "torch"))
  for key in ("wiener-2.npz", "wiener-10.npz"):
    want, got = jax_run["snapshots"][key], torch_run["snapshots"][key]
    assert got["images_seen"] == want["images_seen"]
    for field in ("e_train", "e_val", "gap"):
      np.testing.assert_allclose(got["ema"]["hook"][field], want["ema"]["hook"][field],
                                 rtol=1e-5, atol=1e-7)
    for field in ("auc", "tpr"):
      np.testing.assert_allclose(got["ema"]["hook"]["membership"][field],
                                 want["ema"]["hook"]["membership"][field], rtol=1e-5)
  # The factors job's gradient score needs jax to differentiate the network: not the bridge's
  # (a pure_callback), which is then skipped with its reason; the jax twin is differentiated.
  import types  # pylint: disable=import-outside-toplevel
  from diffgen_jax import hooks  # pylint: disable=import-outside-toplevel
  from diffgen_jax.jobs import factors  # pylint: disable=import-outside-toplevel
  setup = types.SimpleNamespace(train_all=np.zeros((1, 8, 8, 1), np.float32), num_classes=10)
  path = str(hook_dir / "snapshots" / "wiener-2.npz")
  bridged = hooks.load_factory(_spec(hook_dir, "make_torch"), field="model.denoiser")(path)[0]
  assert factors._not_differentiable(bridged, setup).startswith(
      "jax cannot differentiate the hook's denoiser")
  assert factors._not_differentiable(_shrink(-0.4, 0.15), setup) is None


def test_a_feature_hook_measures_fd_and_copies_in_its_features(data_dir, hook_dir, tmp_path):
  """feature='hook': G_FD in the hook's features and the copy test in its space are the numbers
  frechet and copies give on the hook's features of the same samples and references."""
  workdir = str(tmp_path / "features")
  config = _evaluate_config(data_dir, hook_dir, "make_bare")  # images seen from the names
  config.model.checkpoint = str(hook_dir / "snapshots" / "wiener-10.npz")  # one file
  s = config.evaluation.samples
  s.update(dict(enabled=True, feature="hook", features=_spec(hook_dir, "features"),
                num_samples=16, num_steps=4, num_train_subsets=1, probe_size=4, grid_size=16,
                copy_ratio=0.9, overlap=False, nn_similarity=False))
  res = jobs.run(config, workdir)
  section = res["samples"]
  assert section["protocol"]["feature"] == {"kind": "hook", "spec": s.features}
  assert res["snapshots"]["wiener-10.npz"]["images_seen"] == 10
  record = section["snapshots"]["wiener-10.npz"]
  with np.load(os.path.join(workdir, "evaluation", "sample_grids", "wiener-10.npz")) as grid:
    samples = grid["samples"]  # all 16 samples (grid_size = num_samples)
  # By hand: the hook's features of the samples and of the reference rows the setup drew.
  train, val = (common.load_split(config, split) for split in ("train", "validation"))
  ctx, _, _ = ev.sample_setup(config, workdir, train, val)
  features = ctx.features_fn
  unit = lambda split, rows: ev._unit_images(split)[np.asarray(rows)]
  f_samples = np.asarray(features(samples))
  f_train = np.asarray(features(unit(train, ctx.reference_rows["train"][0])))
  f_val = np.asarray(features(unit(val, ctx.reference_rows["val"])))
  fd_train = frechet.frechet_distance(f_samples, f_train)
  fd_val = frechet.frechet_distance(f_samples, f_val)
  got = record["fd"]["features"]
  np.testing.assert_allclose([got["train"], got["val"], got["gap"]],
                             [fd_train, fd_val, (fd_val - fd_train) / fd_train], rtol=1e-4)
  # The copy test in feature space: against every training row's features (no cap binds).
  all_train = np.asarray(features(unit(train, np.arange(len(train)))))
  want = copies.copy_fraction(f_samples, all_train, 0.9)
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  control_rows = data.seeded_rows(len(val), 16, s.seed, 15)  # the pixel control's images
  control = copies.copy_fraction(np.asarray(features(unit(val, control_rows))), all_train, 0.9)
  assert record["copy_fraction"]["features"] == want and 0 < want
  assert record["copy_fraction"]["features_validation_control"] == control
  assert section["summary"]["copy_fraction_features"] == [want]
  # The pixel test beside it: the samples against the training images.
  assert record["copy_fraction"]["samples"] == copies.copy_fraction(
      samples, unit(train, np.arange(len(train))), 0.9)


def _load_config(name, variant=None):
  import runpy  # pylint: disable=import-outside-toplevel
  return runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"](variant)


def _hook_fields(config, data_dir, hook_dir, subset_size=32):
  config.model.denoiser = _spec(hook_dir, "make")
  config.model.checkpoint = str(hook_dir / "snapshots")
  config.data.data_dir = data_dir
  config.data.subset_size = subset_size
  return config


def test_ladder_measures_the_hooks_last_snapshot(data_dir, hook_dir, tmp_path):
  """The ladder job on a hook's network (no run): its last file (wiener-10), recorded; the
  network's G(sigma) is the hook's denoiser's, computed directly on the same images and noise."""
  config = _hook_fields(_load_config("ladder", "smoke"), data_dir, hook_dir)
  config.update(dict(local_rungs=(), gaussian_ranks=(), delta=0.0, make_plots=True))
  res = jobs.run(config, str(tmp_path / "ladder"))
  for name in ("ladder_r2.png", "ladder_calibration.png", "ladder_gap.png"):  # (no run_dir)
    assert os.path.getsize(tmp_path / "ladder" / name) > 1000, name
  s = res["settings"]
  assert s["run_dir"] is None and s["step"] == "wiener-10.npz" and s["images_seen"] == 10000
  assert s["denoiser"] == config.model.denoiser and s["ema"] == "hook"
  assert s["snapshot"] == str(hook_dir / "snapshots" / "wiener-10.npz")
  assert s["rungs"] == ["y*", "gaussian"]
  train = common.load_split(common.data_of(config), "train")
  x, y, _ = common.evaluation_rows(train, config.num_images, config.subset_seed)
  direct = gap.denoising_errors(_shrink(-0.4, 0.3), x, y, np.asarray(s["sigmas"]),
                                noise_seed=config.noise_seed)  # (`ladder.rung_gaps`' noise)
  np.testing.assert_allclose(res["gaps"]["denoisers"]["network"]["e_train"], direct, rtol=1e-5)


def test_factors_trained_sweep_on_a_hook(data_dir, hook_dir, tmp_path):
  """The factors job's trained sweep on a hook's snapshots: autoguidance by the first snapshot
  equals the guided linear denoiser written by hand; crops by crop_averaged on the hook's
  (pixelwise) denoiser equal the network's curve; the gradient score of the network (jax
  differentiates the hook)."""
  from diffgen_jax.jobs import factors  # pylint: disable=import-outside-toplevel
  config = _hook_fields(_load_config("factors", "trained"), data_dir, hook_dir)
  config.update(dict(num_images=16, num_sigmas=3, batch_size=16, make_plots=False))
  config.trained.update(dict(styles=("autoguidance",), ws=(0.0, 1.0), crop_sizes=(4,),
                             sample_gap_samples=0, gradient_images=1))
  config.gradient_score.num_sigmas = 2
  res = jobs.run(config, str(tmp_path / "factors"))
  section = res["sweeps"]["trained"]
  assert section["denoiser"] == config.model.denoiser and "run_dir" not in section
  assert (section["snapshot_step"], section["negative_snapshot_step"]) == ("wiener-10.npz",
                                                                          "wiener-2.npz")
  assert section["images_seen"] == 10000 and section["negative_images_seen"] == 2000
  assert section["label_dropout"] is None and section["crop_sizes"] == [4]
  curves = {c["label"]: c for c in section["curves"]}
  assert list(curves) == ["network", "autoguidance, w=0", "autoguidance, w=1", "crop s=4"]
  setup = factors.load_setup(config)
  a = lambda var, s2: var / (var + s2)

  def guided_by_hand(x, sigma, labels=None):  # D + (D - D_neg): mean + (2 a_10 - a_2)(x - mean)
    s2 = jnp.broadcast_to(jnp.asarray(sigma) ** 2, (x.shape[0],)).reshape(-1, 1, 1, 1)
    return -0.4 + (2 * a(0.3, s2) - a(0.15, s2)) * (x + 0.4)

  from diffgen_jax.evaluation.sweeps import gap_curve  # pylint: disable=import-outside-toplevel
  want = gap_curve(setup, guided_by_hand, "by hand", 1.0)
  np.testing.assert_allclose(curves["autoguidance, w=1"]["e_train"], want["e_train"], rtol=1e-4)
  np.testing.assert_allclose(curves["autoguidance, w=1"]["e_val"], want["e_val"], rtol=1e-4)
  np.testing.assert_allclose(curves["crop s=4"]["e_train"], curves["network"]["e_train"],
                             rtol=1e-6)
  labels = [c["label"] for c in section["gradient_score"]["curves"]]
  assert labels == ["network, train", "network, val", "y*, train", "y*, val"]
  assert "network_skipped" not in section["gradient_score"]


def test_export_writes_the_hooks_samples(data_dir, hook_dir, tmp_path):
  """The export job on a hook's network writes the zips `export_denoiser` writes for the same
  denoiser (the same pixels and labels), under its file name."""
  from diffgen_jax.jobs import export  # pylint: disable=import-outside-toplevel
  config = _hook_fields(_load_config("export", "smoke"), data_dir, hook_dir)
  res = jobs.run(config, str(tmp_path / "export"))
  record = res["exports"]["wiener-10.npz"]
  assert record["run_dir"] is None and record["images_seen"] == 10000
  assert record["samples"]["file"] == "export/wiener-10/samples.zip"  # (not wiener-10.npz/)
  assert record["image_shape"] == [8, 8, 1] and record["num_classes"] == 10
  train = common.load_split(common.data_of(config), "train")
  from diffgen_jax import data  # pylint: disable=import-outside-toplevel
  # The training images at the evaluate job's seeded rows, as the job draws them.
  rows = data.evaluation_subset(train, config.denoised.num_images, config.denoised.subset_seed,
                                "train")
  direct = export.export_denoiser(
      _shrink(-0.4, 0.3), str(tmp_path / "direct"), image_shape=(8, 8, 1), num_classes=10,
      num_samples=config.num_samples, num_steps=config.num_steps, seed=config.seed,
      batch_size=config.batch_size, mesh=common.evaluation_mesh(),
      clean=(data.to_unit_range(train.images[rows]), train.labels[rows], train.ids[rows]),
      sigmas=config.denoised.sigmas, noise_seed=config.denoised.noise_seed)
  from diffgen_jax.data import edm_zip  # pylint: disable=import-outside-toplevel
  written = [record["samples"]["file"]] + [f["file"] for f in record["denoised"]["files"].values()]
  wanted = [direct["samples"]["file"]] + [f["file"] for f in direct["denoised"]["files"].values()]
  assert len(written) == 3
  for got, want in zip(written, wanted):  # the same pixels and labels (the zips' dates differ)
    got_images, got_labels = edm_zip.read_images(str(tmp_path / "export" / got))
    want_images, want_labels = edm_zip.read_images(str(tmp_path / "direct" / want))
    np.testing.assert_array_equal(got_images, want_images)
    np.testing.assert_array_equal(got_labels, want_labels)


# ------------------------------------------------------------------------------------------------
# Bad hooks: refused at start-up, naming the field


@pytest.mark.parametrize("overrides, message", [
    # Not importable: refused by the validation, before any data is read.
    ({"model.denoiser": "no_such_hook_module:make"},
     "diffgen_jax: config.model.denoiser='no_such_hook_module:make': no module named "
     "'no_such_hook_module' on sys.path"),
    # The wrong output shape: refused by the check on two images of the data, before anything is
    # measured.
    ({"model.denoiser": "HOOKS:make_wrong_shape"},
     "diffgen_jax: config.model.denoiser='HOOKS:make_wrong_shape' gave a denoiser that returns "
     "shape (2, 2, 8, 1) dtype float32 on a batch of 2 images x of shape (2, 8, 8, 1)"),
    # NaN features: refused by the feature hook's check on two images.
    ({"evaluation.samples.feature": "hook", "evaluation.samples.features": "HOOKS:nan_features"},
     "diffgen_jax: config.evaluation.samples.features='HOOKS:nan_features' gave features holding "
     "NaN or Inf for 2 images of shape (2, 8, 8, 1) float32 in [-1, 1]"),
])
def test_a_bad_hook_fails_at_start_up_in_one_line_through_main(data_dir, hook_dir, tmp_path,
                                                               overrides, message):
  hooks_file = str(hook_dir / "hooknets.py")
  args = [f"--config.{k}={v.replace('HOOKS', hooks_file)}" for k, v in overrides.items()]
  if "model.denoiser" not in overrides:
    args.append(f"--config.model.denoiser={hooks_file}:make")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path), JAX_PLATFORMS="cpu")
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", "diffgen_jax.main", f"--config={ROOT}/configs/quickstart.py",
       f"--workdir={workdir}", "--config.job=evaluate", f"--config.data.data_dir={data_dir}",
       f"--config.model.checkpoint={hook_dir / 'snapshots'}", *args],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message.replace("HOOKS", hooks_file)), lines
  assert not workdir.exists()  # nothing written


def test_hook_fields_are_checked_naming_them(data_dir, hook_dir, tmp_path):
  """What the jobs refuse of a hook before measuring anything, each error naming the field."""
  config = _evaluate_config(data_dir, hook_dir)
  config.job = "train"
  with pytest.raises(ConfigError, match=r"config\.model\.denoiser=.* is read by the evaluate, "
                                        r"ladder, factors and export jobs"):
    jobs.validate(config)
  config = _evaluate_config(data_dir, hook_dir)
  config.model.checkpoint = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match=r"config\.model\.checkpoint=.*nowhere' does not exist"):
    jobs.validate(config)
  ladder = _hook_fields(_load_config("ladder", "smoke"), data_dir, hook_dir)
  ladder.run_dir = str(tmp_path)
  with pytest.raises(ConfigError, match=r"config\.run_dir=.* must be '' with "
                                        r"config\.model\.denoiser="):
    jobs.validate(ladder)
  factors = _hook_fields(_load_config("factors", "trained"), data_dir, hook_dir)
  with pytest.raises(ConfigError, match=r"config\.trained\.styles=\('cfg', 'autoguidance'\) asks "
                                        r"for classifier-free guidance of the hook's network"):
    jobs.validate(factors)
  factors.sweeps = ("delta",)
  with pytest.raises(ConfigError, match=r"config\.model\.denoiser=.* is read only by the "
                                        r"'trained' sweep"):
    jobs.validate(factors)
  # A crop size the hook's denoiser refuses: before any sweep runs (nothing written).
  factors.sweeps = ("delta", "trained")
  factors.trained.update(dict(styles=("autoguidance",), crop_sizes=(5,)))
  factors.model.denoiser = _spec(hook_dir, "make_fixed_size")
  factors.update(dict(num_images=8, num_sigmas=2))
  with pytest.raises(ConfigError, match=r"config\.trained\.crop_sizes=\(5,\): the hook's "
                                        r"denoiser refuses 5 x 5 crops"):
    jobs.run(factors, str(tmp_path / "factors"))
  assert not (tmp_path / "factors").exists()
  # The snapshot files' order: images seen must increase along the natural order of the names.
  bad = tmp_path / "bad"
  bad.mkdir()
  np.savez(bad / "a-1.npz", mean=0.0, var=0.2, seen=500)
  np.savez(bad / "a-2.npz", mean=0.0, var=0.2, seen=100)
  series = common.hook_series(_spec(hook_dir, "make"), str(bad), (8, 8, 1), 10)
  series.load("a-1.npz")
  with pytest.raises(ConfigError, match=r"config\.model\.checkpoint=.* holds 'a-1\.npz' \(500 "
                                        r"images seen\) before 'a-2\.npz' \(100\)"):
    series.load("a-2.npz")
  np.savez(bad / "last.npz", mean=0.0, var=0.2, seen=1)  # a bare factory needs numbered names
  with pytest.raises(ConfigError, match=r"config\.model\.denoiser=.*make_bare' returns a bare "
                                        r"denoiser.* 'last\.npz' .* holds no number"):
    common.hook_series(_spec(hook_dir, "make_bare"), str(bad), (8, 8, 1), 10)


def test_own_files_without_a_hook_say_to_set_the_hook(data_dir, hook_dir, tmp_path):
  """A newcomer's slip: one's own network files in model.checkpoint without model.denoiser are
  read as NVIDIA networks; the error says so and names the field to set (was a traceback)."""
  config = _evaluate_config(data_dir, hook_dir)
  config.model.denoiser = ""
  with pytest.raises(ConfigError, match=r"config\.model\.checkpoint=.*snapshots.*holds no network "
                                        r"snapshots.*set config\.model\.denoiser=MODULE:FUNCTION"):
    jobs.run(config, str(tmp_path / "w"))


# ------------------------------------------------------------------------------------------------
# Denoisers that give NaN or Inf where the start-up check does not look: one line naming the
# denoiser, the sigmas and the measurement

# NaN in a band of sigma around 0.3 and around 3 (the grid's 0.3 and 3.0), finite at the start-up
# check's sigmas (0.5, 2.0; a scalar 1.0 only traced); and a scale D = 1e10 x, finite at every
# sigma but its samples diverge (each Heun step multiplies the state by about 1e10).
BAD_HOOKS = """
import jax.numpy as jnp
import numpy as np


def _seen(path):
  with np.load(path) as f:
    return int(f["seen"])


def nan_off_check(path):
  def denoise(x, sigma, labels=None):
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))[:, None, None, None]
    bad = ((s > 0.25) & (s < 0.35)) | ((s > 2.5) & (s < 3.5))
    return jnp.where(bad, jnp.nan, 0.5 * x)
  return denoise, {"images_seen": _seen(path)}


def scaled(path):
  return (lambda x, sigma, labels=None: 1e10 * x), {"images_seen": _seen(path)}
"""


@pytest.fixture
def bad_hooks(tmp_path):
  (tmp_path / "badnets.py").write_text(BAD_HOOKS)
  return lambda function: f"{tmp_path / 'badnets.py'}:{function}"


def test_nan_off_the_check_sigmas_stops_evaluate_in_one_line_through_main(data_dir, hook_dir,
                                                                          bad_hooks, tmp_path):
  """A hook that passes the start-up check (sigma 0.5, 2) but returns NaN at the grid's 0.3 and 3:
  exit 2 with one line naming the hook, its snapshot, the sigmas and the measurement (was a
  ValueError from the membership code naming none of them)."""
  spec = bad_hooks("nan_off_check")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "diffgen_jax.main", f"--config={ROOT}/configs/quickstart.py",
       f"--workdir={tmp_path / 'w'}", "--config.job=evaluate", f"--config.data.data_dir={data_dir}",
       f"--config.model.denoiser={spec}", f"--config.model.checkpoint={hook_dir / 'snapshots'}",
       "--config.evaluation.sigmas=(0.1,0.3,1.0,3.0)", "--config.evaluation.num_images=16",
       "--config.evaluation.optimal=False", "--config.evaluation.model_vs_optimal=False",
       "--config.evaluation.samples.enabled=False", "--config.tensorboard=False"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith(
      f"diffgen_jax: config.model.denoiser='{spec}' on 'wiener-2.npz' gives NaN or Inf at sigma "
      "0.3, 3 in the denoising gap and membership (E_train on 16 training images)"), lines


def test_diverging_samples_stop_in_one_line_naming_the_snapshot_and_sampler(
    data_dir, hook_dir, bad_hooks, tmp_path):
  """A scaled hook (D = 1e10 x): its errors are finite, its samples are not: MeasurementError
  naming the snapshot, the sampler and its guidance, and that the samples are not finite (was a
  ValueError traceback from the Frechet distance)."""
  config = _evaluate_config(data_dir, hook_dir, "make")
  config.model.denoiser = bad_hooks("scaled")
  config.evaluation.samples.update(dict(enabled=True, feature="pixels", num_samples=16,
                                        num_steps=4, num_train_subsets=1, grid_size=0,
                                        overlap=False, nn_similarity=False))
  with pytest.raises(jobs.MeasurementError) as err:
    jobs.run(config, str(tmp_path / "w"))
  assert str(err.value).startswith(
      f"the samples of config.model.denoiser='{config.model.denoiser}' on 'wiener-2.npz' "
      "(deterministic Heun, 4 steps, no guidance, 16 samples) are not finite: 16 of 16 samples "
      "hold NaN or Inf; the denoiser's outputs are first non-finite at step "), str(err.value)


@pytest.mark.parametrize("job", ["ladder", "factors"])
def test_nan_off_the_check_sigmas_stops_ladder_and_factors_naming_the_hook(
    data_dir, hook_dir, bad_hooks, tmp_path, job):
  """The same NaN hook through the ladder job (its trajectories or agreement) and the factors
  job's trained sweep (the network's curve): MeasurementError naming the hook and its last file
  (the ladder's) or the sweep's snapshot, the sigmas and the measurement."""
  config = _hook_fields(_load_config(job, "smoke" if job == "ladder" else "trained"), data_dir,
                        hook_dir)
  config.model.denoiser = bad_hooks("nan_off_check")
  if job == "ladder":
    config.update(dict(local_rungs=(), gaussian_ranks=(), delta=0.0, make_plots=False,
                       sigmas=(0.1, 0.3, 1.0, 3.0)))
  else:
    config.update(dict(num_images=8, sigmas=(0.1, 0.3, 1.0, 3.0), batch_size=16,
                       make_plots=False))
    config.trained.update(dict(styles=("autoguidance",), ws=(0.0,), crop_sizes=(),
                               sample_gap_samples=0))
  with pytest.raises(jobs.MeasurementError) as err:
    jobs.run(config, str(tmp_path / job))
  message = str(err.value)
  assert message.startswith(f"config.model.denoiser='{config.model.denoiser}' on 'wiener-10.npz' "
                            "gives NaN or Inf at sigma "), message
  if job == "factors":
    assert ("at sigma 0.3, 3 in the trained sweep's curve 'network' (E_train, E_val)"
            in message), message


def test_a_count_larger_than_a_split_is_clamped_said_and_recorded_and_pixels_said_once(
    data_dir, hook_dir, tmp_path, capsys, caplog):
  """evaluation.num_images above both splits: each split's images are all used, a warning names
  the field and the split's size, the protocol records the counts. With feature='pixels' the
  summary states the pixels' G_FD once. A hook's per-image errors and sample grid are named by
  its file name without the extension (per_image/wiener-10.npz, not wiener-10.npz.npz);
  16 samples against 64 pixels: G_FD's scale carries a note and a warning."""
  config = _evaluate_config(data_dir, hook_dir)
  config.model.checkpoint = str(hook_dir / "snapshots" / "wiener-10.npz")
  config.evaluation.num_images = 1000
  config.evaluation.samples.update(dict(enabled=True, feature="pixels", num_samples=16,
                                        num_steps=4, num_train_subsets=1, grid_size=16,
                                        overlap=False, nn_similarity=False))
  workdir = tmp_path / "w"
  res = jobs.run(config, str(workdir))
  num_val = len(common.load_split(config, "validation"))
  assert res["protocol"]["num_train"] == N and res["protocol"]["num_val"] == num_val
  assert (f"config.evaluation.num_images=1000 is more than the {N} images of the training split: "
          f"all {N} are used") in caplog.text
  assert (f"config.evaluation.num_images=1000 is more than the {num_val} images of the "
          f"validation split") in caplog.text
  out = capsys.readouterr().out
  line, = [l for l in out.splitlines() if l.startswith("Samples: Frechet-distance gap")]
  assert line.count("(pixels)") == 1 and "features)" not in line, line
  summary = res["samples"]["summary"]  # with the intervals (G_FD's bootstrap, the copies' Wilson)
  assert (f"{summary['gap_fd_pixels'][-1]:.4f} [{summary['gap_fd_pixels_low'][-1]:.4f}, "
          f"{summary['gap_fd_pixels_high'][-1]:.4f}] (pixels)") in line, line
  assert (f"{summary['copy_fraction'][-1]:.3f} [{summary['copy_fraction_low'][-1]:.3f}, "
          f"{summary['copy_fraction_high'][-1]:.3f}]") in line, line
  baselines = res["samples"]["baselines"]
  assert baselines["note"].startswith("16 samples against the 64 dimensions of the features and "
                                      "the 64 of the pixels: FD's covariances are rank-deficient")
  assert baselines["note"] in caplog.text and "Unreliable: " in out
  for sub in ("per_image", "sample_grids"):
    assert os.listdir(workdir / "evaluation" / sub) == ["wiener-10.npz"], sub


def test_a_changed_protocol_names_each_field_and_both_values(tmp_path):
  """A re-run whose evaluation protocol differs from results.json's: one ConfigError naming each
  differing field with the saved and the new value (the sigma grid included: was '(grids
  differ)'); a long grid as its length, range and first differing position."""
  grid = [float(v) for v in np.geomspace(0.002, 80, 64)]
  saved = {"sigmas": grid, "num_train": 64, "num_val": 64, "subset_seed": 0, "training_set": {}}
  results_lib.write(str(tmp_path), "evaluate", {"protocol": saved, "snapshots": {}})
  now = dict(saved, sigmas=grid[:5] + [0.5] + grid[6:], num_val=32)
  with pytest.raises(ConfigError) as err:
    ev._read_results(str(tmp_path), now)
  assert ("was computed with another evaluation protocol (saved vs now): num_val: 64 vs 32; "
          "sigmas: 64 values 0.002 .. 80 vs 64 values 0.002 .. 80 (first difference at position "
          f"5: {grid[5]:.6g} vs 0.5). Use the same evaluation config") in str(err.value)
  short = dict(saved, sigmas=[0.1, 0.3], num_val=64)
  results_lib.write(str(tmp_path), "evaluate", {"protocol": short, "snapshots": {}})
  with pytest.raises(ConfigError, match=r"\(saved vs now\): sigmas: \[0\.1, 0\.3\] vs "
                                        r"\[0\.1, 0\.5\]\. Use"):
    ev._read_results(str(tmp_path), dict(short, sigmas=[0.1, 0.5]))
  assert ev._read_results(str(tmp_path), short)["protocol"] == short
