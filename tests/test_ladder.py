"""Known answers for the ladder comparison and the patch-size calibration (evaluation/ladder.py)."""

import numpy as np
import pytest

from diffgen_jax.evaluation import ladder
from diffgen_jax.evaluation.gap import image_noise
from diffgen_jax.optimal import equivariant_local_denoiser, gaussian_denoiser, local_denoiser

SHAPE = (6, 5, 1)


def _data(n, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + SHAPE).astype(np.float32)


def _identity(x, sigma, labels=None):
  return x


def _zero(x, sigma, labels=None):
  return 0.0 * x


def test_noised_inputs_use_the_gap_evaluations_per_image_noise():
  images = _data(4)
  sigmas = np.array([0.1, 2.0])
  x = ladder.noised_inputs(images, sigmas, ids=np.array([3, 1, 4, 1]), noise_seed=7)
  noise = np.asarray(image_noise(7, np.array([3, 1, 4, 1]), SHAPE))
  for i, s in enumerate(sigmas):
    np.testing.assert_allclose(x[i], images + s * noise, atol=1e-6)
  np.testing.assert_allclose(x[:, 1] - images[1], x[:, 3] - images[3], atol=1e-6)  # same id


def test_r2_of_a_denoiser_against_itself_is_one_and_closed_forms():
  train = _data(8)
  sigmas = np.array([0.05, 0.5, 5.0])
  inputs = ladder.noised_inputs(train[:5], sigmas)
  ls = local_denoiser(train, 3)
  same = ladder.agreement(ls, ls, inputs, sigmas)
  np.testing.assert_array_equal(same.r2, np.ones(3))
  np.testing.assert_array_equal(same.mse, np.zeros(3))
  # Network D(x) = x against the zero denoiser: r2 = 1 - sum ||x||^2 / sum ||x - mean x||^2 and
  # mse = mean x^2 per sigma, normalised by the NETWORK's variance (swapping the arguments is -inf).
  got = ladder.agreement(_identity, _zero, inputs, sigmas)
  flat = inputs.reshape(3, 5, -1).astype(np.float64)
  want = 1 - np.sum(flat ** 2, (1, 2)) / np.sum((flat - flat.mean(1, keepdims=True)) ** 2, (1, 2))
  np.testing.assert_allclose(got.r2, want, rtol=1e-6)
  np.testing.assert_allclose(got.mse, np.mean(flat ** 2, (1, 2)), rtol=1e-6)
  assert np.all(ladder.agreement(_zero, _identity, inputs, sigmas).r2 == -np.inf)
  # The network's own mean output as the analytic denoiser gives r2 = 0 exactly.
  net_out = ladder.network_outputs(ls, inputs, sigmas)
  mean_out = np.broadcast_to(net_out.mean(axis=1, keepdims=True), net_out.shape)
  np.testing.assert_allclose(ladder.agreement_from_outputs(net_out, mean_out, sigmas).r2, 0,
                             atol=1e-12)
  # A NaN in either denoiser's output at one sigma makes that sigma's r2 and mse NaN (the
  # network's variance is NaN too: r2 used to read -inf there), the other sigmas unchanged.
  for nan_in_network in (True, False):
    bad = net_out.copy()
    bad[1, 2, 0, 0, 0] = np.nan
    args = (bad, mean_out) if nan_in_network else (mean_out, bad)
    clean = (net_out, mean_out) if nan_in_network else (mean_out, net_out)
    got = ladder.agreement_from_outputs(*args, sigmas)
    want = ladder.agreement_from_outputs(*clean, sigmas)
    assert np.isnan(got.r2[1]) and np.isnan(got.mse[1]), got
    np.testing.assert_array_equal(got.r2[[0, 2]], want.r2[[0, 2]])


@pytest.mark.parametrize("machine,planted", [("ls", 5), ("els", 3)])
def test_calibration_returns_the_planted_patch_size(machine, planted):
  train = _data(6)
  labels = np.arange(6) % 2
  kw = dict(boundary="circular") if machine == "els" else {}
  factory = local_denoiser if machine == "ls" else equivariant_local_denoiser
  network = factory(train, planted, labels, **kw)
  sigmas = np.array([0.05, 0.3, 1.0, 3.0])
  noised = ladder.noised_inputs(_data(4, seed=9), sigmas)  # held-out images: no exact ties
  q_labels = labels[:4]
  cal = ladder.calibrate(network, train, [1, 3, 5], noised, sigmas, q_labels, train_labels=labels,
                         machine=machine, **kw)
  np.testing.assert_array_equal(cal.best_size, np.full(4, planted))
  assert cal.mse.shape == (3, 4) and np.all(cal.mse[[1, 3, 5].index(planted)] == 0)
  assert np.all(np.delete(cal.mse, [1, 3, 5].index(planted), axis=0) > 0)
  assert cal.schedule() == {float(s): planted for s in sigmas}
  if machine == "ls":  # and along the network's own sampling trajectory
    t_sigmas, states = ladder.trajectory_inputs(
        network, np.random.default_rng(1).standard_normal((4,) + SHAPE), q_labels, num_steps=5,
        sigma_min=0.2, sigma_max=10.0)  # below ~0.05 the state sits on a training image: all tie
    cal = ladder.calibrate(network, train, [1, 3, 5], states, t_sigmas, q_labels,
                           train_labels=labels)
    np.testing.assert_array_equal(cal.best_size, np.full(len(t_sigmas), planted))


def test_ladder_agreement_and_bad_input():
  train = _data(8)
  sigmas = np.array([0.2, 2.0])
  inputs = ladder.noised_inputs(train[:3], sigmas)
  rungs = dict(ls3=local_denoiser(train, 3), gaussian=gaussian_denoiser(train))
  report = ladder.ladder_agreement(rungs["ls3"], rungs, dict(train=(inputs, sigmas, None)))
  np.testing.assert_array_equal(report["train"]["ls3"].r2, [1.0, 1.0])
  want = ladder.agreement(rungs["ls3"], rungs["gaussian"], inputs, sigmas)
  np.testing.assert_allclose(report["train"]["gaussian"].r2, want.r2)
  assert np.all(want.r2 < 1)
  with pytest.raises(ValueError, match="inputs must be"):
    ladder.agreement(_identity, _zero, inputs[0], sigmas)
  with pytest.raises(ValueError, match="sigmas must be"):
    ladder.agreement(_identity, _zero, inputs, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="machine must be one of"):
    ladder.calibrate(_identity, train, [1, 3], inputs, sigmas, machine="pspc")
  with pytest.raises(ValueError, match="patch_size|sizes"):
    ladder.calibrate(_identity, train, [2], inputs, sigmas)
  conditional = local_denoiser(train, 3, np.arange(8) % 2)
  with pytest.raises(ValueError, match=r"labels \[5\] have no training points"):
    ladder.agreement(_identity, conditional, inputs, sigmas, labels=np.array([0, 5, 1]))
  with pytest.raises(ValueError, match="images must be floating-point images.*uint8"):
    ladder.noised_inputs(np.zeros((2,) + SHAPE, np.uint8), sigmas)


_T8 = np.random.default_rng(0).uniform(-1, 1, (8,) + SHAPE).astype(np.float32)
_S2 = np.array([0.2, 2.0])
_IN = np.zeros((2, 3) + SHAPE, np.float32)
_BAD_LADDER_CALLS = {
    "sigmas zero": (lambda: ladder.noised_inputs(_T8, [0.0, 1.0]), "sigmas must be > 0 and finite"),
    "sigmas nan": (lambda: ladder.agreement(_identity, _zero, _IN, [np.nan, 1.0]), "sigmas must be > 0"),
    "sigmas 2-D": (lambda: ladder.network_outputs(_identity, _IN, np.ones((2, 1))), "sigmas must be a non-empty 1-D"),
    "noise_seed": (lambda: ladder.noised_inputs(_T8, _S2, noise_seed=-1), "noise_seed=-1 must be >= 0"),
    "ids": (lambda: ladder.noised_inputs(_T8, _S2, ids=np.arange(3)), r"ids must be \(8,\) integers"),
    "batch_size": (lambda: ladder.agreement(_identity, _zero, _IN, _S2, batch_size=0), "batch_size=0 must be >= 1"),
    "batch_size float": (lambda: ladder.network_outputs(_identity, _IN, _S2, batch_size=1.5),
                         "batch_size=1.5 must be an integer"),
    "labels": (lambda: ladder.network_outputs(_identity, _IN, _S2, labels=np.zeros(2, np.int32)),
               r"labels must be None or \(3,\) integers"),
    "outputs": (lambda: ladder.agreement_from_outputs(_IN, _IN[:, :2], _S2), "net_out and an_out must"),
    "sizes int": (lambda: ladder.calibrate(_identity, _T8, 3, _IN, _S2), "sizes must be a list"),
    "sizes even": (lambda: ladder.calibrate(_identity, _T8, [3, 4], _IN, _S2), r"sizes\[1\] must be a positive odd"),
    "sizes repeated": (lambda: ladder.calibrate(_identity, _T8, [3, 3], _IN, _S2), "distinct"),
    "machine": (lambda: ladder.calibrate(_identity, _T8, [1], _IN, _S2, machine="pspc"), "machine must be one of"),
    "els_boundary": (lambda: ladder.ladder_rungs(_T8, els_boundary="wrap"), "els_boundary must be one of"),
    "delta": (lambda: ladder.ladder_rungs(_T8, delta=-0.5), "delta=-0.5 must be >= 0"),
    "ls_size": (lambda: ladder.ladder_rungs(_T8, ls_size=2), "ls_size must be a positive odd"),
    "els_size": (lambda: ladder.ladder_rungs(_T8, els_size={0.5: 0}), r"els_size\[0.5\] must be"),
    "pspc_size": (lambda: ladder.ladder_rungs(_T8, pspc_size=-3), "pspc_size must be a positive odd"),
    "gaussian rank": (lambda: ladder.ladder_rungs(_T8, gaussian_ranks=(None, 31)),
                      r"gaussian_ranks\[1\]=31 must be <= 30"),
    "gaussian ranks": (lambda: ladder.ladder_rungs(_T8, gaussian_ranks=2), "gaussian_ranks must be a sequence"),
    "gap batch": (lambda: ladder.rung_gaps({}, _T8, _T8, _S2, batch_size=0), "batch_size=0 must be >= 1"),
    "gap seed": (lambda: ladder.rung_gaps({}, _T8, _T8, _S2, noise_seed=0.5), "noise_seed=0.5 must be an integer"),
}


@pytest.mark.parametrize("case", sorted(_BAD_LADDER_CALLS))
def test_bad_ladder_arguments_raise_naming_the_argument(case):
  call, message = _BAD_LADDER_CALLS[case]
  with pytest.raises(ValueError, match=message):
    call()


@pytest.mark.parametrize("boundary", ["circular", "zeros"])
def test_ladder_rungs_take_both_els_boundaries(boundary):
  rungs = ladder.ladder_rungs(_T8, els_size=3, els_boundary=boundary, gaussian_ranks=())
  assert list(rungs) == ["y*", "ELS"]
  want = equivariant_local_denoiser(_T8, 3, boundary=boundary)
  x = _T8[:2] + 0.1
  np.testing.assert_array_equal(np.asarray(rungs["ELS"](x, 0.3)), np.asarray(want(x, 0.3)))


def test_ladder_rungs_and_their_own_gaps():
  train, val = _data(8), _data(4, seed=3)
  rungs = ladder.ladder_rungs(train, delta=0.5, ls_size={0.1: 1, 1.0: 3}, pspc_size=3,
                              gaussian_ranks=(None, 2))
  assert list(rungs) == ["y*", "y_delta", "LS", "PSPC", "gaussian", "gaussian_r2"]
  sigmas = np.array([1e-3, 0.5, 1e4])
  gaps = ladder.rung_gaps({k: rungs[k] for k in ("y*", "LS")}, train, val, sigmas)
  # y* recalls its training images at small sigma (E_train ~ 0), not the validation images.
  assert gaps["y*"]["e_train"][0] < 1e-8 < gaps["y*"]["e_val"][0]
  np.testing.assert_allclose(gaps["LS"]["gap"],
                             (gaps["LS"]["e_val"] - gaps["LS"]["e_train"]) / gaps["LS"]["e_train"])
  # At sigma >> 1 every rung is the training mean: the same errors for y* and LS.
  np.testing.assert_allclose(gaps["LS"]["e_val"][2], gaps["y*"]["e_val"][2], rtol=1e-4)


def test_calibration_never_picks_a_nan_candidate_and_says_where_none_is_finite():
  """Newcomer's probe: candidate k=3 outputs NaN, k=1 is closest, k=5 farther -> best size was 3
  (np.argmin returns a NaN's position). Where the network itself is NaN, no size is made up."""
  import jax.numpy as jnp
  train = _data(6)
  sigmas = np.array([0.05, 0.3, 1.0, 3.0])
  noised = ladder.noised_inputs(_data(4, seed=9), sigmas)

  def factory(images, k, labels=None, **kw):
    machine = local_denoiser(images, k, labels, **kw)
    if k != 3:
      return machine
    return lambda x, sigma, labels=None: machine(x, sigma, labels) * jnp.nan

  cal = ladder.calibrate(local_denoiser(train, 1), train, [1, 3, 5], noised, sigmas,
                         machine_factory=factory)
  assert np.all(np.isnan(cal.mse[1])) and np.all(cal.mse[0] == 0) and np.all(cal.mse[2] > 0)
  np.testing.assert_array_equal(cal.best_size, [1, 1, 1, 1])
  assert cal.schedule() == {float(s): 1 for s in sigmas}

  ls1 = local_denoiser(train, 1)

  def network(x, sigma, labels=None):  # NaN at sigma 3 only
    return jnp.where(jnp.reshape(sigma, (-1, 1, 1, 1)) > 2.0, jnp.nan, ls1(x, sigma, labels))

  cal = ladder.calibrate(network, train, [5, 1, 3], noised, sigmas, machine_factory=factory)
  np.testing.assert_array_equal(cal.best_size, [1, 1, 1, ladder.NO_SIZE])
  assert ladder.NO_SIZE == -1 and np.all(np.isnan(cal.mse[:, 3]))
  with pytest.raises(ValueError, match=r"no calibrated patch size at sigma \[3\.0\]"):
    cal.schedule()


def test_calibration_never_picks_an_overflowed_candidate():
  """An inf mse (the machine's output overflowed) is not a distance: with the other candidate NaN
  no size is chosen (was the inf one), and beside a finite one the finite one wins."""
  import jax.numpy as jnp
  train = _data(6)
  sigmas = np.array([0.3, 3.0])
  noised = ladder.noised_inputs(_data(4, seed=9), sigmas)

  def factory(images, k, labels=None, **kw):
    machine = local_denoiser(images, k, labels, **kw)
    shift = {1: jnp.inf, 3: jnp.nan}.get(k, 0.0)  # k=1 overflowed to +inf, k=3 NaN
    return lambda x, sigma, labels=None: machine(x, sigma, labels) + shift

  cal = ladder.calibrate(local_denoiser(train, 1), train, [1, 3], noised, sigmas,
                         machine_factory=factory)
  assert np.all(np.isinf(cal.mse[0])) and np.all(np.isnan(cal.mse[1]))
  np.testing.assert_array_equal(cal.best_size, [ladder.NO_SIZE] * 2)
  cal = ladder.calibrate(local_denoiser(train, 1), train, [1, 3, 5], noised, sigmas,
                         machine_factory=factory)
  np.testing.assert_array_equal(cal.best_size, [5, 5])


def test_calibration_ties_within_rounding_go_to_the_smaller_size():
  """Two windows that both cover the image are the same machine; their distances to the network
  differed in the 7th digit (float32 rounding), and the larger size could win on that. Within
  ladder.TIE_RTOL the smaller size is chosen; a real difference still wins."""
  import jax.numpy as jnp
  train = _data(6)
  sigmas = np.array([0.3, 3.0])
  noised = ladder.noised_inputs(_data(4, seed=9), sigmas)
  machine = local_denoiser(train, 1)
  network = lambda x, sigma, labels=None: machine(x, sigma, labels) + 0.01

  def factory(shift):
    return lambda images, k, labels=None, **kw: (
        lambda x, sigma, labels=None: machine(x, sigma, labels) + shift[k])

  # k=5 is closer by a relative 2e-6 of the mse: rounding, a tie -> 3.
  cal = ladder.calibrate(network, train, [5, 3], noised, sigmas,
                         machine_factory=factory({3: 0.0, 5: jnp.float32(1e-8)}))
  assert np.all(cal.mse[0] < cal.mse[1])  # rows in the given order [5, 3]; 5 barely closer
  np.testing.assert_allclose(cal.mse[0], cal.mse[1], rtol=1e-5)
  np.testing.assert_array_equal(cal.best_size, [3, 3])
  # A real difference (mse 8.1e-5 against 1e-4) wins.
  cal = ladder.calibrate(network, train, [3, 5], noised, sigmas,
                         machine_factory=factory({3: 0.0, 5: 0.001}))
  np.testing.assert_array_equal(cal.best_size, [5, 5])
  assert ladder.first_least([2.0, 1.0 + 1e-6, 1.0, np.nan]) == 1
  assert ladder.first_least([np.nan, np.nan]) is None
  assert ladder.first_least([0.3, 0.3 + 2e-4, 0.1 + 5e-5, 0.1], relative=False) == 2
  # Infinite least values tie only with themselves (no inf - inf slack); NaN is never chosen.
  assert ladder.first_least([1.0, -np.inf]) == 1
  assert ladder.first_least([-np.inf, 1.0, -np.inf]) == 0
  assert ladder.first_least([np.inf, np.nan, np.inf]) == 0
  assert ladder.first_least([1.0, -np.inf], relative=False) == 1


# ------------------------------------------------------------------------------------------------
# Intervals over the inputs


def _r2_reference(net_out, an_out, num_resamples, seed, confidence=0.95):
  """Brute force: build each resampled set explicitly (inputs repeated by their counts) and take
  agreement_from_outputs' r2 on it (SST about that set's own mean), then the percentiles."""
  from diffgen_jax.evaluation import timescales  # pylint: disable=import-outside-toplevel
  s, b = net_out.shape[:2]
  counts = timescales.resample_counts(b, num_resamples, seed)
  sigmas = np.linspace(0.5, 1.0, s)
  r2 = np.stack([ladder.agreement_from_outputs(net_out[:, np.repeat(np.arange(b), c)],
                                               an_out[:, np.repeat(np.arange(b), c)], sigmas).r2
                 for c in counts])
  tail = 50 * (1 - confidence)
  return np.percentile(r2, tail, axis=0), np.percentile(r2, 100 - tail, axis=0)


def test_r2_interval_equals_the_brute_force_bootstrap_and_holds_the_point():
  rng = np.random.default_rng(0)
  net = rng.normal(size=(3, 12, 4, 4, 1))
  an = net + rng.normal(scale=[[[[[0.2]]]], [[[[0.6]]]], [[[[1.5]]]]], size=net.shape)
  low, high = ladder.r2_interval(net, an, num_resamples=200, seed=5)
  ref_low, ref_high = _r2_reference(net, an, 200, 5)
  np.testing.assert_allclose(low, ref_low, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(high, ref_high, rtol=1e-9, atol=1e-12)
  point = ladder.agreement_from_outputs(net, an, np.ones(3)).r2
  assert np.all(low <= point) and np.all(point <= high) and np.all(low < high)


def test_r2_interval_known_cases():
  rng = np.random.default_rng(1)
  net = rng.normal(size=(2, 10, 3, 3, 1))
  # The rung equals the network: r2 = 1 on every resample.
  low, high = ladder.r2_interval(net, net.copy())
  np.testing.assert_array_equal(low, [1.0, 1.0]) and np.testing.assert_array_equal(high, [1.0, 1.0])
  # The rung outputs the network's own mean image: SSE = SST on the full set, r2 = 0; a resample
  # has SSE = SST + B ||its mean - the full mean||^2 >= SST, so r2 <= 0 on every resample.
  mean = np.broadcast_to(net.mean(axis=1, keepdims=True), net.shape)
  low, high = ladder.r2_interval(net, mean)
  assert np.all(high <= 1e-12) and np.all(low < 0)
  # A network whose output does not vary: r2 is 1 where the rung agrees exactly, -inf elsewhere.
  flat = np.ones((1, 6, 2, 2, 1))
  assert ladder.r2_interval(flat, flat) == (np.array([1.0]), np.array([1.0]))
  # A non-finite output: no interval (NaN), as r2 itself is NaN.
  bad = net.copy()
  bad[1, 0, 0, 0, 0] = np.nan
  low, high = ladder.r2_interval(net, bad)
  assert np.isfinite(low[0]) and np.isnan(low[1]) and np.isnan(high[1])
  with pytest.raises(ValueError, match="confidence"):
    ladder.r2_interval(net, net, confidence=1.0)
  with pytest.raises(ValueError, match="net_out and an_out"):
    ladder.r2_interval(net, net[:, :5])


def test_r2_interval_width_shrinks_as_one_over_root_n():
  """4x the inputs: about half the width (0.5 within +-20%: the spread of per-input errors is
  estimated to ~1/sqrt(2B), 9% at B = 60, and the percentile ends of 1000 resamples to ~5%;
  seeded, so deterministic)."""
  rng = np.random.default_rng(2)
  widths = []
  for b in (60, 240):
    net = rng.normal(size=(1, b, 3, 3, 1))
    an = net + rng.normal(scale=0.7, size=net.shape)
    low, high = ladder.r2_interval(net, an)
    widths.append(float(high[0] - low[0]))
  assert 0.4 <= widths[1] / widths[0] <= 0.6, widths


def test_ladder_agreement_and_rung_gaps_carry_their_intervals():
  train, val = _data(8), _data(6, seed=3)
  sigmas = np.array([0.2, 2.0])
  inputs = ladder.noised_inputs(val, sigmas)
  rungs = dict(ls3=local_denoiser(train, 3), gaussian=gaussian_denoiser(train))
  report = ladder.ladder_agreement(rungs["ls3"], rungs, dict(val=(inputs, sigmas, None)))
  a = report["val"]["gaussian"]
  net_out = ladder.network_outputs(rungs["ls3"], inputs, sigmas)
  an_out = ladder.network_outputs(rungs["gaussian"], inputs, sigmas)
  np.testing.assert_array_equal(a.r2, ladder.agreement_from_outputs(net_out, an_out, sigmas).r2)
  np.testing.assert_array_equal((a.r2_low, a.r2_high), ladder.r2_interval(net_out, an_out))
  assert np.all(a.r2_low <= a.r2) and np.all(a.r2 <= a.r2_high)
  assert ladder.ladder_agreement(rungs["ls3"], rungs, dict(val=(inputs, sigmas, None)),
                                 intervals=False)["val"]["gaussian"].r2_low is None
  gaps = ladder.rung_gaps(rungs, train, val, np.array([0.5, 3.0]))
  for c in gaps.values():
    assert np.all(c["gap_low"] <= c["gap"]) and np.all(c["gap"] <= c["gap_high"])


def _summary_results(r2_rows, gap_curves, sigmas=(0.5, 2.0)):
  """The (agreement, gaps) sections of a ladder job's results, one input set 'train'."""
  return ({"train": {"sigmas": list(sigmas), "rungs": {n: {"r2": r} for n, r in r2_rows.items()}}},
          {"sigmas": list(sigmas), "denoisers": gap_curves})


def test_summary_never_picks_a_nan_rung_and_leaves_undefined_sigmas_out():
  """Newcomer: every rung's r2 NaN at sigma 0.5 -> best_rung 'y*' there (the first rung), counted
  in best_rung_predicts_gap. Now None / NaN there, and left out of the fraction."""
  e = lambda val, train: {"e_val": val, "e_train": train}
  curves = {"network": e([2.0, 2.0], [1.0, 1.0]),        # log(1 + G) = log 2 at both sigmas
            "gaussian": e([None, 4.0], [None, 1.0]),     # distance NaN at 0.5 (missing), log 2
            "y*": e([2.0, 2.0], [1.0, 1.0])}             # distance 0 at both
  s = ladder.summarize(*_summary_results(
      {"y*": [None, 0.5], "gaussian": [None, 0.9]}, curves))
  assert s["best_rung"]["train"] == [None, "gaussian"]
  assert np.isnan(s["best_r2"]["train"][0]) and s["best_r2"]["train"][1] == 0.9
  assert s["closest_gap_rung"] == ["y*", "y*"]  # the NaN distance of gaussian at 0.5 loses
  assert s["gap_log_distance"]["gaussian"][0] is None
  assert s["best_rung_predicts_gap"]["train"] == 0.0  # only sigma 2.0 counts (was 0.5)
  # A NaN r2 never wins over a number, even -inf; NaN wherever nothing is defined.
  s = ladder.summarize(*_summary_results(
      {"y*": [np.nan, -np.inf], "gaussian": [0.1, np.nan]},
      {"network": e([None, None], [None, None]), "y*": e([4.0, 4.0], [1.0, 1.0])}))
  assert s["best_rung"]["train"] == ["gaussian", "y*"] and s["best_r2"]["train"] == [0.1, -np.inf]
  assert s["closest_gap_rung"] == [None, None]
  assert np.isnan(s["best_rung_predicts_gap"]["train"])


def test_summary_leaves_rounding_level_errors_out_of_the_gap_comparison():
  """Same local machine on 1 and 2 devices: E_train 2.8e-16 and 1.3e-16 at sigma 0.002 (float32
  rounding of an exact recall), which moved the closest-G rung there from y_delta to ELS. An
  error at or below gap.FLOAT32_ERROR_FLOOR is not a measurement: G is undefined there."""
  from diffgen_jax.evaluation import gap
  assert gap.FLOAT32_ERROR_FLOOR == pytest.approx(np.finfo(np.float32).eps ** 2)
  e = lambda val, train: {"e_val": val, "e_train": train}
  net = e([4.3e-6, 2.0], [3.9e-6, 1.0])
  for tiny in (2.77e-16, 1.32e-16, 0.0):
    s = ladder.summarize(*_summary_results({"y_delta": [0.9, 0.9], "ELS": [0.5, 0.5]}, {
        "network": net,
        "y_delta": e([4.0e-6, 2.0], [3.0e-6, 1.0]),   # |log(4/3) - log(4.3/3.9)| = 0.19
        "ELS": e([3.3e-16, 4.0], [tiny, 1.0])}))       # log of rounding noise
    assert s["gap_log_distance"]["ELS"][0] is None
    assert s["closest_gap_rung"] == ["y_delta", "y_delta"]
  # Just above the floor an error is a number again (an exponentially small posterior weight).
  s = ladder.summarize(*_summary_results({"ELS": [0.5, 0.5]}, {
      "network": net, "ELS": e([4.3e-13, 2.0], [3.9e-13, 1.0])}))
  assert s["gap_log_distance"]["ELS"] == [pytest.approx(0.0, abs=1e-12)] * 2
  # E_val at the floor too: a rung that recalls validation images exactly is undefined as well.
  s = ladder.summarize(*_summary_results({"ELS": [0.5, 0.5]}, {
      "network": net, "ELS": e([1e-15, 2.0], [1e-9, 1.0])}))
  assert s["gap_log_distance"]["ELS"][0] is None


def test_summary_breaks_rounding_level_ties_by_the_ladder_order():
  """LS and PSPC with a window covering the 8x8 image are y* itself; their r2 and G differed from
  y*'s in the 8th-9th digit, and which one was "best" changed between 1 and 2 devices. Within
  TIE_RTOL the first rung listed (y*) is chosen; a real difference still wins."""
  e = lambda val, train: {"e_val": val, "e_train": train}
  for eps in (+3e-9, -3e-9):  # either rounding direction: the same answer
    s = ladder.summarize(*_summary_results(
        {"y*": [0.9386552742, 0.90], "LS": [0.9386552742 + eps, 0.95],
         "PSPC": [0.9386552742 + 2 * eps, 0.90]},
        {"network": e([2.0, 2.0], [1.0, 1.0]), "y*": e([3.0, 3.0], [1.0, 1.0]),
         "LS": e([3.0 * (1 + eps), 3.0], [1.0, 1.0]), "PSPC": e([3.0, 2.5], [1.0, 1.0])}))
    assert s["best_rung"]["train"] == ["y*", "LS"]  # LS really better (0.95) at sigma 2
    assert s["closest_gap_rung"] == ["y*", "PSPC"]
    assert s["closest_gap_rung_overall"] == "PSPC"  # medians 0.405 (y*, LS) and 0.314
  assert ladder.TIE_RTOL == 1e-4
  # Just outside the tolerance the better rung wins: 1 - r2 = 0.1 vs 0.1 (1 - 2e-4).
  s = ladder.summarize(*_summary_results(
      {"y*": [0.9, 0.9], "LS": [0.9 + 2e-5, 0.9]},
      {"network": e([2.0, 2.0], [1.0, 1.0]), "y*": e([3.0, 3.0], [1.0, 1.0]),
       "LS": e([3.0, 3.0], [1.0, 1.0])}))
  assert s["best_rung"]["train"] == ["LS", "y*"]
