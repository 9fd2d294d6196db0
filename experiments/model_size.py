"""Finding 3: larger models overfit the denoising objective more (and sooner).

    python experiments/model_size.py          # local: DDPM++ 16/32/64 channels, DiT hidden 32/64/128
    python experiments/model_size.py --config=configs/experiments.py:model_size,paper \
        --config.data_dir=/path/to/tfds       # EDM2 img64 XS..XL, DiT-S..XL/4 on ImageNet-64

    python experiments/model_size.py --replot  # the figures again from results.json, nothing run

Figures: peak_gap_vs_value.png (x: parameter count, log; y: log where the peaks span a decade or
more), gap_curves.png, peak_gap_over_training.png.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # noqa: E402

FINDING = "model_size"
# Peak G spans 0.45 (smallest DiT) to 27.6 (largest U-Net): 1.8 decades, which line_plot's default
# of two would leave on a linear axis that flattens the DiT.
LOG_DECADES = 1.0


def draw(ctx, numbers):
  """The finding's figures from its numbers (what gather returns, or results.json's "results")."""
  common.gap_sweep_figures(ctx, numbers["runs"], x_key="num_params", xlabel="parameters",
                           logx=True, peak_decades=LOG_DECADES)


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    m = ctx.run_config(e["run"]).model
    e["width"] = e["value"]
    e["num_params"] = common.num_params(m, (m.img_resolution, m.img_resolution, m.img_channels),
                                        m.num_classes)
  numbers = {"runs": entries}
  draw(ctx, numbers)
  return numbers


replot = functools.partial(common.redraw, FINDING, draw)  # --replot: the figures from results.json


if __name__ == "__main__":
  common.main(FINDING, gather, replot=replot)
