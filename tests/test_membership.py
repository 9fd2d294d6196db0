"""Membership inference by sigma: AUC and TPR at low FPR from per-image errors (known answers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax.evaluation import gap, membership
from diffgen_jax.optimal import empirical_optimal_denoiser


def _brute_force_auc(train, val):
  greater = (val[None, :] > train[:, None]).mean()
  ties = (val[None, :] == train[:, None]).mean()
  return greater + 0.5 * ties


def test_auc_matches_pairwise_count_with_ties():
  rng = np.random.default_rng(0)
  train = rng.integers(0, 6, (23, 3)).astype(float)  # many ties
  val = rng.integers(1, 8, (17, 3)).astype(float)
  np.testing.assert_allclose(membership.auc(train, val),
                             [_brute_force_auc(train[:, s], val[:, s]) for s in range(3)])
  assert membership.auc([0.0, 0.1], [0.2, 0.3])[0] == 1.0
  assert membership.auc([0.2, 0.3], [0.0, 0.1])[0] == 0.0


def test_tpr_at_fpr_known_values():
  val = np.arange(1.0, 201.0)  # 200 non-members; 1% FPR allows flagging 2 of them
  train = np.array([0.5, 1.5, 2.5, 3.5, 10.0])
  # Threshold just below val's 3rd smallest (3.0): flags 0.5, 1.5, 2.5.
  assert membership.tpr_at_fpr(train, val, 0.01)[0] == pytest.approx(3 / 5)
  assert membership.tpr_at_fpr(train, val, 0.0)[0] == pytest.approx(1 / 5)
  with pytest.raises(ValueError, match="fpr"):
    membership.tpr_at_fpr(train, val, 1.0)


def test_clopper_pearson_known_values():
  low, high = membership.clopper_pearson(0, 10)
  assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))  # (alpha/2)^(1/n) rule
  low, high = membership.clopper_pearson(10, 10)
  assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))


def test_auc_standard_error_at_one_half_is_the_mann_whitney_null():
  nt, nv = 37, 53
  np.testing.assert_allclose(membership.auc_standard_error(0.5, nt, nv),
                             np.sqrt((nt + nv + 1) / (12.0 * nt * nv)))


def _uniform(seed, n, shape=(4, 4, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def test_optimal_denoiser_at_small_sigma_identifies_every_member():
  train, val = _uniform(1, 20), _uniform(2, 20)
  optimal = empirical_optimal_denoiser(train)
  sigmas = [1e-3, 1e-2]
  _, e_train = gap.denoising_errors(optimal, train, sigmas=sigmas, return_per_image=True)
  _, e_val = gap.denoising_errors(optimal, val, sigmas=sigmas, ids=np.arange(20, 40),
                                  return_per_image=True)
  out = membership.membership_by_sigma(e_train, e_val)
  np.testing.assert_array_equal(out["auc"], 1.0)
  np.testing.assert_array_equal(out["tpr"], 1.0)


def _shrink(x, sigma, labels=None):
  s = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1,) + (1,) * (x.ndim - 1))
  return 0.25 / (0.25 + s ** 2) * x


def test_data_independent_denoiser_on_exchangeable_sets_gives_one_half():
  # 30 independent (train, validation) pairs of sets drawn from one distribution.
  sets, n = 30, 40
  images = _uniform(3, 2 * sets * n)
  sigmas = [0.1, 1.0]
  denoise = jax.tree_util.Partial(_shrink)
  _, errors = gap.denoising_errors(denoise, images, sigmas=sigmas, return_per_image=True)
  errors = errors.reshape(sets, 2, n, len(sigmas))
  inside = []
  for k in range(sets):
    out = membership.membership_by_sigma(errors[k, 0], errors[k, 1])
    z = np.abs(out["auc"] - 0.5) / membership.auc_standard_error(0.5, n, n)
    assert np.all(z < 4.0)  # a 4-sd excursion has probability 6e-5
    inside.append((out["auc_low"] <= 0.5) & (0.5 <= out["auc_high"]))
    assert np.all(out["tpr_low"] <= out["tpr"]) and np.all(out["tpr"] <= out["tpr_high"])
  # Nominal 95% coverage; 3 binomial standard errors over 30 sets per sigma is 0.12.
  assert np.all(np.mean(inside, axis=0) >= 0.95 - 0.12)


def test_evaluate_summary_never_picks_a_nan_auc_as_the_peak():
  from diffgen_jax.jobs import evaluate  # pylint: disable=import-outside-toplevel
  sigmas = np.array([0.1, 1.0, 10.0])

  def record(aucs):
    return {"ema": {"ema_0": {"gap": [0.1, 0.3, 0.2], "e_val": [1.0, 1.0, 1.0],
                              "membership": {"auc": aucs, "tpr": [0.1, 0.2, 0.3]}}}}

  results = {"snapshots": {
      "1": dict(record([np.nan, 0.7, 0.6]), images_seen=100),  # a NaN AUC used to be the peak
      "2": dict(record([np.nan, np.nan, np.nan]), images_seen=200)}}
  summary = evaluate.summarize(results, sigmas, ())
  assert summary["membership_peak_auc"][0] == 0.7 and summary["membership_peak_sigma"][0] == 1.0
  assert np.isnan(summary["membership_peak_auc"][1]) and np.isnan(summary["membership_peak_sigma"][1])
