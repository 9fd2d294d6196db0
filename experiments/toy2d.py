"""Finding 1: the 2D toy model, experiments (a)-(g) (paper.md section 5), via the `toy2d` job.

    python experiments/toy2d.py                                           # ~2 minutes on a CPU
    python experiments/toy2d.py --config=configs/experiments.py:toy2d,paper
    python experiments/toy2d.py --config=configs/experiments.py:toy2d,smoke

local (default): the expected curves (quadrature over the noise, configs/toy2d.py), results in
experiments/results/toy2d/. paper: the authors' exact realization of (a)-(e)
(configs/toy2d.py:paper: their numpy draws, float64), results in experiments/results/paper/toy2d/.
Copies every experiment's PNG and results into the results directory.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "toy2d"


def gather(ctx):
  per_experiment = ctx.results["toy2d"]["experiments"]
  for name in sorted(per_experiment):
    ctx.copy(os.path.join(ctx.workdirs["toy2d"], name, f"{name}.png"), f"{name}.png")
  return per_experiment


if __name__ == "__main__":
  common.main(FINDING, gather)
