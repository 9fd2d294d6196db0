"""The 2D toy model of paper.md section 5: seven analytic experiments, each a variant.

  python -m diffgen_jax.main --config=configs/toy2d.py --workdir=runs/toy                 # all seven
  python -m diffgen_jax.main --config=configs/toy2d.py:gap_vs_delta --workdir=runs/toy    # one
  ... --config.gap_vs_delta.deltas="(2.0, 1.5)" --config.draws=100                        # overrides

Everything runs on a laptop CPU in well under two minutes; there is no separate local variant.
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


def get_config(variant=None):
  config = ml_collections.ConfigDict()
  config.job = "toy2d"
  config.experiments = defaults.parse_variant(variant, experiments=EXPERIMENTS)["experiments"] or EXPERIMENTS

  # Shared protocol (paper.md section 5).
  config.seed = 0
  config.radius = 10.0
  config.offset = 0.01  # symmetric sets: angles 2 pi (k / N + offset)
  config.draws = 50  # noise draws per point for the gap metric, one fixed set for every sigma
  # (ours) the draws are one set of (radial, tangential) vectors shared by every point, expressed in
  # each point's local frame (common random numbers): unbiased, and on a symmetric set every
  # training point (and every validation point) sees exactly the same error. False: independent
  # world-frame draws per point.
  config.local_frame_draws = True
  config.sigma_grid_steps = 120  # the toy gap grid: the 120-step EDM schedule, ascending
  config.make_plots = True

  config.flow_field = ml_collections.ConfigDict()
  config.flow_field.dataset = "symmetric"
  config.flow_field.num_points = 20  # train = even k: 10 training points
  config.flow_field.offset = 0.001
  config.flow_field.sigmas = (28.0, 2.8, 0.63)  # nearest grid sigmas are used and recorded
  config.flow_field.grid_size = 121  # evaluation grid per axis
  config.flow_field.extent = 15.0  # the grid spans [-extent, extent]^2

  config.relative_error = ml_collections.ConfigDict()
  config.relative_error.dataset = "symmetric"
  config.relative_error.num_points = 20
  config.relative_error.num_angles = 200
  config.relative_error.draws = 500
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
  return config
