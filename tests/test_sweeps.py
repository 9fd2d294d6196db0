"""The factor sweeps (`evaluation.sweeps`): known answers of each sweep, pseudo-labels, analytic
baselines."""


import numpy as np

from diffgen_jax import data, models
from diffgen_jax.evaluation import gap, sweeps as fs
from diffgen_jax.models.network import valid_network_crop_sizes

H = 6
SIGMAS = np.array([0.01, 0.3, 1.0, 5.0])


def _setup(num_classes=3, n_train=24, n_val=12, seed=0):
  rng = np.random.default_rng(seed)
  images = lambda n: rng.uniform(-1, 1, (n, H, H, 1)).astype(np.float32)
  labels = lambda n: rng.integers(0, max(num_classes, 1), n).astype(np.int32)
  return fs.make_setup(images(n_train), labels(n_train), images(n_val), labels(n_val), num_classes,
                       SIGMAS, num_images=8, batch_size=8)


def _curve(section, label):
  (curve,) = [c for c in section["curves"] if c["label"] == label]
  return curve


def _assert_same_curve(a, b):
  """Equal up to float32 rounding: the conditional and unconditional machines are two programs,
  whose sums XLA may order differently (G divides by E_train, so its tolerance is the larger)."""
  for key, rtol in (("e_train", 1e-6), ("e_val", 1e-6), ("gap", 1e-5)):
    np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=0, err_msg=key)


def _numpy_y_delta(train, x, sigma, delta):
  """float64 reference of y_delta (paper.md section 4) on flattened images: the posterior mean
  under Gaussians of variance sigma^2 + delta^2 around the training points, shrunk toward x."""
  t = train.reshape(len(train), -1).astype(np.float64)
  q = x.reshape(len(x), -1).astype(np.float64)
  var = sigma ** 2 + delta ** 2
  logits = -((q[:, None, :] - t[None]) ** 2).sum(-1) / (2 * var)
  w = np.exp(logits - logits.max(axis=1, keepdims=True))
  y_star = (w / w.sum(axis=1, keepdims=True)) @ t
  return ((delta ** 2 * q + sigma ** 2 * y_star) / var).reshape(x.shape)


def test_autoguidance_curve_matches_an_independent_numpy_reference():
  setup = _setup()
  section = fs.sweep_guidance(setup, (0.0, 1.5), styles=("autoguidance",), delta=0.3,
                              delta_pos=0.3, delta_neg=0.6)
  noise = {split: np.asarray(gap.image_noise(seed, ids, setup.train_x.shape[1:]), np.float64)
           for split, seed, ids in (("train", 0, setup.train_ids), ("val", 1, setup.val_ids))}
  for w in (0.0, 1.5):
    curve = _curve(section, f"autoguidance, w={w:g}")
    for split, images in (("train", setup.train_x), ("val", setup.val_x)):
      want = []
      for s in SIGMAS:
        x = images + s * noise[split]
        pos = _numpy_y_delta(setup.train_all, x, s, 0.3)
        neg = _numpy_y_delta(setup.train_all, x, s, 0.6)
        want.append(np.mean((pos + w * (pos - neg) - images) ** 2))
      np.testing.assert_allclose(curve[f"e_{split}"], want, rtol=2e-4, atol=1e-9)
  # Guidance moves the curve: w = 1.5 differs from w = 0 by more than rounding.
  assert not np.allclose(_curve(section, "autoguidance, w=1.5")["e_val"],
                         _curve(section, "autoguidance, w=0")["e_val"], rtol=1e-3)


def test_one_cluster_and_one_class_equal_unconditional():
  setup = _setup()
  section = fs.sweep_granularity(setup, (1,), (0.0,), include_classes=False)
  _assert_same_curve(_curve(section, "k=1, delta=0"), _curve(section, "none, delta=0"))
  # y* recalls noisy training images exactly at small sigma: E_train = 0, G infinite there, and
  # the peak is taken over the finite values.
  curve = _curve(section, "none, delta=0")
  assert curve["e_train"][0] == 0.0 and np.isinf(curve["gap"][0])
  assert np.isfinite(curve["peak_gap"])
  single = _setup(num_classes=1)
  assert np.all(single.train_labels == 0)
  section = fs.sweep_granularity(single, (), (0.3,))
  _assert_same_curve(_curve(section, "class, delta=0.3"), _curve(section, "none, delta=0.3"))
  assert [c["value"] for c in section["curves"]] == [1, 1]


def test_conditions_are_taken_at_the_evaluation_subsets_own_rows():
  """y* conditioned on each image's own class (or cluster) recalls a training image exactly at
  small sigma: E_train = 0 for every condition. The evaluation subsets are seeded rows, not the
  first ones, so labels taken from the first rows would condition most images on another class
  (E_train > 0 there)."""
  setup = _setup(num_classes=3, n_train=24, n_val=12)
  assert not np.array_equal(setup.train_rows, np.arange(len(setup.train_x)))  # not the first rows
  np.testing.assert_array_equal(setup.train_y, setup.train_labels[setup.train_rows])
  section = fs.sweep_granularity(setup, (3,), (0.0,))
  assert [c["condition"] for c in section["curves"]] == ["none", "class", "k=3"]
  for c in section["curves"]:
    assert c["e_train"][0] == 0.0, c["label"]
  # And the class curve is the class-conditional y* measured with the subsets' own labels.
  own = fs.gap_curve(setup, fs.optimal_denoiser(setup, setup.train_labels), "own", 3,
                     conditional=True)
  _assert_same_curve(_curve(section, "class, delta=0"), own)


def test_pseudo_label_files_are_readable_by_the_data_pipeline(tmp_path):
  setup = _setup()
  section = fs.sweep_granularity(setup, (0, 2, 4), (0.3,), include_classes=False,
                                 pseudo_label_dir=str(tmp_path))
  assert sorted(section["pseudo_label_files"]) == ["2", "4"]  # k = 0 is the unconditional curve
  for k in (2, 4):
    path = str(tmp_path / f"k{k}.npz")
    train = data.read_pseudo_labels(path, "train")
    val = data.read_pseudo_labels(path, "validation")
    assert train.shape == (len(setup.train_all),) and val.shape == (len(setup.val_all),)
    assert set(np.unique(train)) == set(range(k)) and val.max() < k
  assert [c["condition"] for c in section["curves"]] == ["none", "k=2", "k=4"]


def _numpy_crop_averaged_y_delta(train, x, sigma, delta, s):
  """float64 reference of the restricted receptive field: y_delta of the pooled s x s corner crops
  of the training images, applied to each corner crop of x, overlapping pixels averaged."""
  h = x.shape[1]
  corners = [(0, 0), (0, h - s), (h - s, 0), (h - s, h - s)]
  pooled = np.concatenate([train[:, i:i + s, j:j + s] for i, j in corners])
  total, count = np.zeros(x.shape), np.zeros(x.shape)
  for i, j in corners:
    total[:, i:i + s, j:j + s] += _numpy_y_delta(pooled, x[:, i:i + s, j:j + s], sigma, delta)
    count[:, i:i + s, j:j + s] += 1.0
  return total / count


def test_receptive_field_curves_match_an_independent_numpy_reference():
  """Crops of 3 (four overlapping corners) and of the full size H (the unwrapped y_delta)."""
  setup = _setup()
  section = fs.sweep_receptive_field(setup, (3, H), (0.3,))
  noise = {split: np.asarray(gap.image_noise(seed, ids, setup.train_x.shape[1:]), np.float64)
           for split, seed, ids in (("train", 0, setup.train_ids), ("val", 1, setup.val_ids))}
  for size in (3, H):
    curve = _curve(section, f"s={size}, delta=0.3")
    for split, images in (("train", setup.train_x), ("val", setup.val_x)):
      want = [np.mean((_numpy_crop_averaged_y_delta(setup.train_all, images + s * noise[split], s,
                                                    0.3, size) - images) ** 2) for s in SIGMAS]
      np.testing.assert_allclose(curve[f"e_{split}"], want, rtol=2e-4, atol=1e-9)
  assert fs.pooled_crops(setup.train_all, 3).shape == (4 * len(setup.train_all), 3, 3, 1)


def test_network_crop_sizes():
  m = models.apply_preset(models.default_model_config("ddpmpp"), "ddpmpp-tiny")
  assert valid_network_crop_sizes(m, 8) == [4, 8]
  assert valid_network_crop_sizes(m, 28) == [16, 20, 24, 28]


def test_analytic_denoisers_known_answers():
  train = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [11.0, 10.0]], np.float32)
  classes = np.array([0, 1, 0, 1])
  clusters = np.array([0, 0, 1, 1])
  from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser  # pylint: disable=import-outside-toplevel
  ds = {(c, d): error_prone_denoiser(empirical_optimal_denoiser(train, labels), d)
        for c, labels in (("unconditional", None), ("class", classes), ("cluster", clusters))
        for d in (0.0, 0.5)}
  q = np.asarray([[0.1, 0.0]])
  np.testing.assert_allclose(ds[("unconditional", 0.0)](q, 0.01), [[0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ds[("class", 0.0)](q, 0.01, np.array([1])), [[1.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ds[("cluster", 0.0)](q, 0.01, np.array([1])), [[10.0, 10.0]],
                             atol=1e-5)
  # y_delta at sigma -> 0 keeps the input (the model error broadens every point).
  np.testing.assert_allclose(ds[("class", 0.5)](q, 1e-4, np.array([0])), q, atol=1e-4)


def test_gap_curve_split_over_the_mesh_equals_one_device():
  """The factors job passes every local device (8 simulated): batches of 5 -> 8, one per device."""
  from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser  # pylint: disable=import-outside-toplevel
  from diffgen_jax.sharding import make_mesh  # pylint: disable=import-outside-toplevel
  setup = _setup()._replace(batch_size=5)
  denoise = error_prone_denoiser(empirical_optimal_denoiser(setup.train_all, setup.train_labels),
                                 0.3)
  one = fs.gap_curve(setup, denoise, "y_delta", 0.3, conditional=True)
  split = fs.gap_curve(setup._replace(mesh=make_mesh()), denoise, "y_delta", 0.3,
                       conditional=True)
  for key in ("e_train", "e_val", "gap"):
    np.testing.assert_allclose(split[key], one[key], rtol=1e-5, err_msg=key)
  # sigma = 0.01 << delta: y_delta is nearly the identity, so the error is about sigma^2 per pixel.
  np.testing.assert_allclose([one["e_train"][0], one["e_val"][0]], 1e-4, rtol=0.25)


# ------------------------------------------------------------------------------------------------
# Intervals over the evaluation images


def _zero_denoiser(x, sigma, labels):
  """D = 0: each image's error is mean(y^2) whatever the noise (a known per-image error)."""
  del sigma, labels
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jnp.zeros_like(x)


def _constant_images(value, n):
  return np.full((n, H, H, 1), value, np.float32)


def _interval_setup(train, val):
  return fs.make_setup(train, None, val, None, 0, SIGMAS, num_images=len(train),
                       batch_size=len(train))


def test_gap_curve_interval_holds_the_point_and_is_seeded():
  rng = np.random.default_rng(3)
  setup = _interval_setup(rng.uniform(-1, 1, (32, H, H, 1)).astype(np.float32),
                          rng.uniform(-0.9, 0.9, (32, H, H, 1)).astype(np.float32))
  c = fs.gap_curve(setup, _zero_denoiser, "zero", 0.0)
  assert np.all(c["gap_low"] <= c["gap"]) and np.all(c["gap"] <= c["gap_high"])
  assert np.all(c["gap_low"] < c["gap_high"])  # images that differ: an interval of some width
  # The bootstrap is gap.bootstrap_relative_gap on the per-image errors with the recorded seed.
  _, per_train = gap.denoising_errors(_zero_denoiser, setup.train_x, ids=setup.train_ids,
                                      sigmas=SIGMAS, return_per_image=True)
  _, per_val = gap.denoising_errors(_zero_denoiser, setup.val_x, ids=setup.val_ids, sigmas=SIGMAS,
                                    noise_seed=1, return_per_image=True)
  low, high = gap.bootstrap_relative_gap(per_val, per_train, seed=fs.INTERVAL["seed"],
                                         num_resamples=fs.INTERVAL["num_resamples"],
                                         confidence=fs.INTERVAL["confidence"])
  np.testing.assert_array_equal(c["gap_low"], low)
  np.testing.assert_array_equal(c["gap_high"], high)
  again = fs.gap_curve(setup, _zero_denoiser, "zero", 0.0)
  np.testing.assert_array_equal(again["gap_low"], c["gap_low"])  # seeded: reproducible
  # The peak's interval is the curve's at the peak's sigma.
  i = list(SIGMAS).index(c["peak_sigma"])
  assert (c["peak_gap_low"], c["peak_gap_high"]) == (c["gap_low"][i], c["gap_high"][i])
  assert c["peak_gap_low"] <= c["peak_gap"] <= c["peak_gap_high"]


def test_gap_interval_collapses_for_identical_per_image_errors():
  # Every training image 0.5, every validation image 0.7: E_train = 0.25, E_val = 0.49 for every
  # image, so every resample gives G = 0.96 exactly.
  setup = _interval_setup(_constant_images(0.5, 16), _constant_images(0.7, 16))
  c = fs.gap_curve(setup, _zero_denoiser, "zero", 0.0)
  expected = (0.7 ** 2 - 0.5 ** 2) / 0.5 ** 2
  np.testing.assert_allclose(c["gap"], expected, rtol=1e-6)
  np.testing.assert_array_equal(c["gap_low"], c["gap"])
  np.testing.assert_array_equal(c["gap_high"], c["gap"])
  assert c["peak_gap_low"] == c["peak_gap"] == c["peak_gap_high"]


def test_gap_interval_width_shrinks_as_one_over_root_n():
  """4x the images: about half the width. Tolerance: the width is ~ 2 * 1.96 * sd / sqrt(n) with
  sd the images' spread; its sample estimate varies by ~1/sqrt(2n) (9% at n = 64) and the
  percentile ends of 1000 resamples by ~5%: the ratio is 0.5 within +-20% (~2 standard errors);
  the draw is seeded, so the test is deterministic."""
  rng = np.random.default_rng(0)
  widths = []
  for n in (64, 256):
    setup = _interval_setup(rng.uniform(-1, 1, (n, H, H, 1)).astype(np.float32),
                            rng.uniform(-1, 1, (n, H, H, 1)).astype(np.float32) * 1.2)
    c = fs.gap_curve(setup, _zero_denoiser, "zero", 0.0)
    widths.append(np.mean(np.asarray(c["gap_high"]) - np.asarray(c["gap_low"])))
  assert 0.4 <= widths[1] / widths[0] <= 0.6, widths


def test_sweep_sections_record_the_interval_settings():
  section = fs.sweep_delta(_setup(num_classes=0), (0.3,))
  assert section["interval"]["seed"] == 0 and section["interval"]["confidence"] == 0.95
  c = section["curves"][0]
  finite = np.isfinite(c["gap_low"]) & np.isfinite(c["gap_high"])
  assert finite.any()
  assert np.all(c["gap_low"][finite] <= c["gap"][finite] + 1e-12)
  assert np.all(c["gap"][finite] <= c["gap_high"][finite] + 1e-12)


def test_score_interval_is_the_bootstrap_of_the_mean_over_finite_entries():
  rng = np.random.default_rng(1)
  per = rng.uniform(1, 3, (3, 20))  # (S, N)
  per[1, :5] = np.nan  # no dependence on the input for 5 images at one sigma
  per[2, :] = 2.0  # identical per-image scores: the interval collapses
  low, high = fs.score_interval(per)
  mean = np.nanmean(per, axis=1)
  assert np.all(low <= mean) and np.all(mean <= high)
  assert low[2] == high[2] == 2.0
  # Without NaN it is the library's bootstrap of a mean with the same seed.
  from diffgen_jax.evaluation import timescales  # pylint: disable=import-outside-toplevel
  ref = timescales.bootstrap_mean_interval(per[0], num_resamples=fs.INTERVAL["num_resamples"],
                                           seed=fs.INTERVAL["seed"])
  np.testing.assert_allclose((low[0], high[0]), ref, rtol=1e-12)
