"""Memorization time scales: bootstrap intervals, threshold crossings, log-log slopes (known answers)."""

import numpy as np
import pytest

from diffgen_jax.evaluation import timescales as ts

TIMES = np.geomspace(1e3, 1e5, 9)  # snapshots a factor 10^(1/4) apart


def _linear_in_log_time(t, top=0.8):
  """A fraction rising linearly in log t from 0 at t = 1e3 to `top` at t = 1e5."""
  return top * np.log(np.asarray(t) / 1e3) / np.log(100.0)


def _crossing(times, values, threshold, **kwargs):
  """The point estimate of `bootstrap_crossing` (one resampled series: the curve itself)."""
  values = np.asarray(values, np.float64)
  return ts.bootstrap_crossing(times, values, values[None], threshold, **kwargs)


def test_crossing_time_on_monotone_curves():
  values = _linear_in_log_time(TIMES)
  truth = 1e3 * 100.0 ** (0.25 / 0.8)  # between the 4th and 5th snapshot
  assert _crossing(TIMES, values, 0.25).time == pytest.approx(truth, rel=1e-12)
  # Falling curve, linear in time, crossing downwards.
  t = np.arange(1.0, 11.0)
  down = _crossing(t, 10.0 - t, 2.5, direction="down", log_time=False)
  assert down.time == pytest.approx(7.5) and down.censored == ""
  # Censoring: already past at the first snapshot, never past.
  left = _crossing(TIMES, values + 0.5, 0.25)
  assert (left.time, left.censored) == (TIMES[0], "left")
  right = _crossing(TIMES, values, 0.95)
  assert (right.time, right.censored) == (np.inf, "right")
  with pytest.raises(ValueError, match="strictly increasing"):
    _crossing(TIMES[::-1], values, 0.2)
  with pytest.raises(ValueError, match="direction"):
    _crossing(TIMES, values, 0.2, direction="sideways")


def test_bootstrap_mean_interval_matches_binomial_width():
  flags = np.zeros(400)
  flags[:100] = 1.0  # fraction 0.25
  low, high = ts.bootstrap_mean_interval(flags, num_resamples=4000, seed=0)
  half = 1.96 * np.sqrt(0.25 * 0.75 / 400)
  assert low == pytest.approx(0.25 - half, abs=0.01) and high == pytest.approx(0.25 + half, abs=0.01)


def test_tau_mem_interval_covers_the_truth_at_about_the_nominal_rate():
  # Each sample copies from a fixed time on (u_j < f(t)), as with fixed sampler noise.
  threshold = 0.25
  truth = 1e3 * 100.0 ** (threshold / 0.8)
  reps, m = 200, 100
  covered = 0
  for rep in range(reps):
    u = np.random.default_rng(rep).random(m)
    flags = u[None, :] < _linear_in_log_time(TIMES)[:, None]
    c = ts.tau_mem(TIMES, flags, threshold, num_resamples=300, seed=1000 + rep)
    assert c.low <= c.time <= c.high and c.censored == ""
    covered += c.low <= truth <= c.high
  # Nominal 0.95; 3 binomial standard errors over 200 draws is 0.046.
  assert 0.95 - 0.046 <= covered / reps <= 0.995


def test_tau_gen_recovers_the_crossing_of_a_shrinking_offset():
  rng = np.random.default_rng(1)
  reference = rng.standard_normal((300, 4))
  offsets = np.linspace(2.0, 0.0, 5)  # FD = offset^2 when the spread equals the reference's
  samples = np.stack([reference + d * np.ones(4) / 2.0 for d in offsets])  # ||shift||^2 = d^2
  t = np.arange(1.0, 6.0)
  c = ts.tau_gen(t, samples, reference, target=1.0, log_time=False, num_resamples=100)
  # FD = d^2 = 4, 2.25, 1, ...: reaches 1 exactly at the third snapshot.
  assert c.time == pytest.approx(3.0, abs=1e-6)
  assert c.low <= 3.0 <= c.high


def test_tau_gap_and_onset_on_noiseless_errors():
  s = 3
  t = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
  peak = np.array([0.0, 0.1, 0.2, 0.4, 0.8])
  train = np.ones((5, 6, s))
  val = np.ones((5, 7, s)) * (1.0 + peak[:, None, None] * np.array([0.5, 1.0, 0.25]))
  c = ts.tau_gap(t, train, val, 0.3, num_resamples=50)
  expected = np.exp(np.log(4.0) + 0.5 * np.log(2.0))  # halfway between 0.2 and 0.4 in log time
  assert c.time == pytest.approx(expected)
  assert c.low == pytest.approx(expected) and c.high == pytest.approx(expected)
  # Overfitting onset: E_val falls, bottoms out at the 3rd snapshot, rises.
  e_val = np.array([3.0, 2.0, 1.0, 1.5, 2.0])[:, None] + 0.01 * np.arange(20)[None]
  onset = ts.onset_time(t, e_val, num_resamples=100)
  assert onset.time == 4.0 and onset.censored == "" and onset.low == onset.high == 4.0
  assert ts.onset_time(t, e_val[::-1] * 0 + np.arange(5, 0, -1.0)[:, None]).censored == "right"
  # A diverged snapshot (NaN for one image: its mean is NaN) is never the onset; all NaN is refused.
  e_nan = e_val.copy()
  e_nan[1, 0] = np.nan
  e_nan[2, 3] = np.nan  # the true minimum's snapshot diverged: the onset moves to the next best
  onset = ts.onset_time(t, e_nan, num_resamples=100)
  assert onset.time == 8.0 and onset.censored == "", onset  # the 4th snapshot (E_val 1.5)
  with pytest.raises(ValueError, match="no snapshot's mean validation error is finite"):
    ts.onset_time(t, np.full_like(e_val, np.nan))
  # An overflowed (inf) snapshot is diverged too: with the rest NaN there is no onset (it was the
  # inf snapshot), and a -inf mean is never the minimum.
  e_inf = np.full_like(e_val, np.nan)
  e_inf[0] = np.inf
  with pytest.raises(ValueError, match="no snapshot's mean validation error is finite"):
    ts.onset_time(t, e_inf)
  e_inf = e_val.copy()
  e_inf[0, 5] = -np.inf
  assert ts.onset_time(t, e_inf, num_resamples=100).time == 4.0


def test_loglog_slope_exact_and_interval_propagation():
  sizes = np.array([64.0, 128.0, 256.0, 512.0])
  taus = 3.0 * sizes
  fit = ts.loglog_slope(sizes, taus)
  assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(np.log(3.0))
  assert fit.method == "ols" and fit.low == pytest.approx(1.0) and fit.high == pytest.approx(1.0)
  # Intervals of +-0.2 in log tau (sd 0.2 / z): the slope's half-width is 0.2 / sqrt(sum (x - x̄)^2).
  x = np.log(sizes)
  expected_half = 0.2 / np.sqrt(np.sum((x - x.mean()) ** 2))
  fit = ts.loglog_slope(sizes, taus, taus * np.exp(-0.2), taus * np.exp(0.2), num_draws=20000)
  assert fit.method == "intervals"
  assert fit.high - 1.0 == pytest.approx(expected_half, rel=0.05)
  assert 1.0 - fit.low == pytest.approx(expected_half, rel=0.05)
  # Non-finite taus are left out; fewer than two usable points is an error.
  fit = ts.loglog_slope(np.r_[sizes, 1024.0], np.r_[taus, np.inf])
  assert list(fit.used) == [True] * 4 + [False]
  with pytest.raises(ValueError, match="2 or more"):
    ts.loglog_slope(sizes[:2], [1.0, np.inf])


def test_wilson_interval_closed_forms_and_coverage():
  """Closed forms (Wilson 1927): 5 of 10 at 95% is the tabulated [0.2366, 0.7634]; 0 of n is
  [0, z^2 / (n + z^2)]; n of n mirrors it. Its coverage over binomial draws is near 95%."""
  np.testing.assert_allclose(ts.wilson_interval(0.5, 10), (0.2366, 0.7634), atol=1e-4)
  z2 = 1.959964 ** 2
  np.testing.assert_allclose(ts.wilson_interval(0.0, 256), (0.0, z2 / (256 + z2)),
                             rtol=1e-6)
  np.testing.assert_allclose(ts.wilson_interval(1.0, 256), (256 / (256 + z2), 1.0),
                             rtol=1e-6)
  for n in range(1, 2001):  # the ends exact at 0 and 1, never a rounding hair inside
    assert ts.wilson_interval(0.0, n)[0] == 0.0 and ts.wilson_interval(1.0, n)[1] == 1.0
  low, high = ts.wilson_interval(0.3, 100, confidence=0.5)
  assert 0.25 < low < 0.3 < high < 0.35  # narrower at 50%
  rng = np.random.default_rng(0)
  for p, n in ((0.05, 64), (0.3, 256)):
    k = rng.binomial(n, p, size=4000)
    covered = [lo <= p <= hi for lo, hi in (ts.wilson_interval(c / n, n) for c in k)]
    assert 0.93 <= np.mean(covered) <= 0.98, (p, n, np.mean(covered))
  for bad, named in ((dict(fraction=1.5, num_items=10), "fraction"),
                     (dict(fraction=0.5, num_items=0), "num_items"),
                     (dict(fraction=0.5, num_items=10, confidence=1.0), "confidence")):
    with pytest.raises(ValueError, match=f"^{named}="):
      ts.wilson_interval(**bad)


def test_every_percentile_bootstrap_needs_a_resample_in_each_tail():
  """num_resamples=1 made a point look like an interval: every percentile bootstrap of the package
  refuses fewer than 2 / (1 - confidence) resamples (40 at 95%, 20 at 90%), naming the argument."""
  from diffgen_jax.evaluation import frechet, gap, ladder, reproducibility, samples  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  per = rng.gamma(2.0, 1.0, (12, 3))
  out = rng.normal(size=(2, 12, 4))
  feats = rng.normal(size=(30, 3))
  refs = {"train": [frechet.gaussian_fit(rng.normal(size=(30, 3)))],
          "val": frechet.gaussian_fit(rng.normal(1.0, 1.0, (30, 3)))}
  calls = {
      "bootstrap_mean_interval": lambda **k: ts.bootstrap_mean_interval(per, **k),
      "bootstrap_relative_gap": lambda **k: gap.bootstrap_relative_gap(per, per + 1.0, **k),
      "r2_interval": lambda **k: ladder.r2_interval(out, out + 0.1, **k),
      "bootstrap_ratio_of_means": lambda **k: reproducibility.bootstrap_ratio_of_means(per, per,
                                                                                       **k),
      "fd_gap_interval": lambda **k: samples.fd_gap_interval(feats, refs, **k),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match=r"^num_resamples=39 must be >= 40"):
      call(num_resamples=39)
    with pytest.raises(ValueError, match=r"^num_resamples=19 must be >= 20"):
      call(num_resamples=19, confidence=0.9)
    low, high = call(num_resamples=40)
    assert np.all(np.asarray(low) <= np.asarray(high)), name
