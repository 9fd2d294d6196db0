"""The 2D toy model of paper.md section 5: seven analytic experiments, each a variant.

  python -m diffgen_jax.main --config=configs/toy2d.py --workdir=runs/toy                 # all seven
  python -m diffgen_jax.main --config=configs/toy2d.py:gap_vs_delta --workdir=runs/toy    # one
  python -m diffgen_jax.main --config=configs/toy2d.py:paper --workdir=runs/toy_paper     # (a)-(e)
  python -m diffgen_jax.main --config=configs/toy2d.py:paper,guidance --workdir=...       # one
  ... --config.gap_vs_delta.deltas="(2.0, 1.5)" --config.quadrature.spacing=0.05         # overrides

Variants: a comma list of experiment names (default all seven) and optionally `paper`.
  default  the expected curves: every expectation over the noise by quadrature (to 1e-3 of the peak
           of G), with the spread of a 50-draw estimate as a band in the gap figures.
  paper    the authors' exact realization, for comparing with their published figures: their
           numpy draws in float64, guidance weights 0, 0.2, ..., 2, the flow field at the sigmas
           they plot (grid indices 42, 60, 96), their relative-error setup. (f) and (g) have no
           published realization to reproduce, so `paper` runs (a)-(e) unless experiments are named.
Everything runs on a laptop CPU in about two minutes; there is no separate local variant.
Choices the paper leaves open are ours and are recorded in each results.json.
"""

import ml_collections

from diffgen_jax import defaults

EXPERIMENTS = ("flow_field", "relative_error", "gap_vs_delta", "gap_vs_density", "guidance",
               "trajectories", "frechet")


def _frange(start, stop, step):
  """Inclusive, rounded float range (avoids 1.2000000000000002 in configs and results)."""
  n = int(round((stop - start) / step))
  return tuple(round(start + i * step, 10) for i in range(n + 1))


PAPER_EXPERIMENTS = EXPERIMENTS[:5]  # (a)-(e): the ones with a published realization


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, experiments=EXPERIMENTS, realization=("paper",))
  paper = bool(chosen["realization"])
  config = ml_collections.ConfigDict()
  config.job = "toy2d"
  config.experiments = chosen["experiments"] or (PAPER_EXPERIMENTS if paper else EXPERIMENTS)

  # Shared protocol (paper.md section 5).
  config.seed = 0
  config.radius = 10.0
  config.offset = 0.01  # symmetric sets: angles 2 pi (k / N + offset)
  # How E_n ||D(y + sigma n) - y|| is taken: "expected" (quadrature: the expected curve),
  # "paper_draws" (the authors' numpy draws) or "draws" (ours: jax draws, see local_frame_draws).
  config.estimate = "expected"
  config.quadrature = ml_collections.ConfigDict()
  config.quadrature.spacing = 0.1  # lattice rule h: error O(h^3), < 1e-4 of the peak G at 0.1
  config.quadrature.radius = 8.0  # nodes within |n| <= 8 (tail mass 1.3e-14); 20,108 nodes
  # Draws per point: of the band (the spread of a `draws`-draw estimate) for "expected", of the
  # estimate itself otherwise (one fixed set for every sigma).
  config.draws = 50
  config.legacy_seed = 0  # "paper_draws": np.random.seed(legacy_seed) for the gap experiments
  # "draws" / "paper_draws": also compute the expected curve of every gap curve and draw it (dashed,
  # with its band) beside the estimate: where the realization sits within its spread.
  config.compare_expected = False
  # "draws" only: (ours) one set of (radial, tangential) vectors shared by every point, expressed in
  # each point's local frame (common random numbers). False: independent world-frame draws.
  config.local_frame_draws = True
  # float64 (the job switches jax's 64-bit mode on for it): float32 rounding alone moves G by ~3e-5
  # where the errors are tiny (sigma -> 0); the toy model is small enough not to care about speed.
  config.dtype = "float64"
  config.sigma_grid_steps = 120  # the toy gap grid: the 120-step EDM schedule, ascending
  config.make_plots = True

  config.flow_field = ml_collections.ConfigDict()
  config.flow_field.dataset = "symmetric"
  config.flow_field.num_points = 20  # train = even k: 10 training points
  config.flow_field.offset = 0.001
  config.flow_field.sigmas = (28.0, 2.8, 0.63)  # nearest grid sigmas are used and recorded
  config.flow_field.sigma_indices = ()  # if given: grid[indices] instead of `sigmas`
  config.flow_field.grid_size = 121  # evaluation grid per axis
  config.flow_field.extent = 15.0  # the grid spans [-extent, extent]^2

  config.relative_error = ml_collections.ConfigDict()
  config.relative_error.dataset = "symmetric"
  config.relative_error.num_points = 20
  config.relative_error.all_training = False  # True: all num_points points are training points
  config.relative_error.num_angles = 200
  config.relative_error.test_angles = "circle"  # 2 pi (k/200 + offset); "half_circle": pi k/200
  config.relative_error.draws = 500  # "draws" / "paper_draws" only
  config.relative_error.legacy_seed = 1  # "paper_draws": np.random.seed(1), (500, 2) shared
  config.relative_error.sigma = 1.0  # nearest grid sigma is used
  config.relative_error.deltas = (2.0, 1.6, 1.2)

  config.gap_vs_delta = ml_collections.ConfigDict()
  config.gap_vs_delta.dataset = "symmetric"
  config.gap_vs_delta.num_points = 20
  config.gap_vs_delta.deltas = _frange(2.2, 1.2, -0.1)

  config.gap_vs_density = ml_collections.ConfigDict()
  config.gap_vs_density.dataset = "symmetric"
  config.gap_vs_density.num_points = tuple(range(16, 31, 2))  # 8..15 training points
  config.gap_vs_density.delta = 1.6

  config.guidance = ml_collections.ConfigDict()
  config.guidance.dataset = "symmetric"
  config.guidance.num_points = 20
  config.guidance.delta_pos = 1.8
  config.guidance.delta_neg = 2.2
  config.guidance.weights = _frange(0.0, 2.0, 0.25)

  config.trajectories = ml_collections.ConfigDict()
  config.trajectories.dataset = "symmetric"
  config.trajectories.num_points = 20
  config.trajectories.deltas = (0.0, 0.5, 1.2)
  config.trajectories.num_samples = 1000
  config.trajectories.num_plotted = 40
  config.trajectories.num_steps = 120  # (ours) the EDM schedule with 120 steps
  config.trajectories.solver = "euler"
  config.trajectories.tolerance = 1e-2  # "lands on a point": endpoint within this distance

  config.frechet = ml_collections.ConfigDict()
  # (ours) the random set: on a symmetric set the train and validation halves have identical means
  # and covariances (0 and r^2/2 I), so FD_train == FD_val for any samples and G_FD is identically 0.
  config.frechet.dataset = "random"
  config.frechet.num_points = 20
  config.frechet.deltas = _frange(0.0, 2.2, 0.2)
  config.frechet.num_samples = 1000
  config.frechet.num_steps = 120
  config.frechet.solver = "heun"
  config.frechet.ddof = 0  # covariance normalization: 0 = the point sets' own moments (ours)
  if paper:
    _paper(config)
  return config


def _paper(config):
  """The authors' exact realization (their released numpy code, as issue 14 records it)."""
  config.estimate = "paper_draws"
  config.dtype = "float64"
  config.draws = 50
  config.legacy_seed = 0  # np.random.seed(0), reset for every curve
  config.compare_expected = True  # the expected curves beside theirs (dashed, with bands)
  # The sigmas their flow-field figure shows: indices of the ascending 120-step grid,
  # 25.5 / 2.61 / 0.585 (their text says 28 / 2.8 / 0.63).
  config.flow_field.sigma_indices = (96, 60, 42)
  # Relative error: 10 points, all training (offset 0.001), 200 test
  # angles on [0, pi), one shared set of 500 world-coordinate draws from np.random.seed(1).
  config.relative_error.num_points = 10
  config.relative_error.all_training = True
  config.relative_error.offset = 0.001
  config.relative_error.test_angles = "half_circle"
  config.relative_error.draws = 500
  config.relative_error.legacy_seed = 1
  config.guidance.weights = _frange(0.0, 2.0, 0.2)
