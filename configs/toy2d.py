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
Choices the paper leaves open are ours and are recorded in each results.json. Fields:
`defaults.TOY2D`.
"""

from diffgen_jax import defaults

EXPERIMENTS = defaults.TOY2D_EXPERIMENTS
PAPER_EXPERIMENTS = EXPERIMENTS[:5]  # (a)-(e): the ones with a published realization

def get_config(variant=None):
  chosen = defaults.parse_variant(variant, experiments=EXPERIMENTS, realization=("paper",))
  paper = bool(chosen["realization"])
  config = defaults.toy2d_config()
  config.experiments = chosen["experiments"] or (PAPER_EXPERIMENTS if paper else EXPERIMENTS)
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
  config.guidance.weights = defaults.frange(0.0, 2.0, 0.2)
