"""Finding 3: larger models overfit the denoising objective more (and sooner).

    python experiments/model_size.py          # local: DDPM++ 16/32/64 channels, DiT hidden 32/64/128
    python experiments/model_size.py --config=configs/experiments.py:model_size,paper \
        --config.data_dir=/path/to/tfds       # EDM2 img64 XS..XL, DiT-S..XL/4 on ImageNet-64

Figures: peak_gap_vs_value.png (x: parameter count), gap_curves.png, peak_gap_over_training.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "model_size"


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    m = ctx.run_config(e["run"]).model
    e["width"] = e["value"]
    e["num_params"] = common.num_params(m, (m.img_resolution, m.img_resolution, m.img_channels),
                                        m.num_classes)
  common.gap_sweep_figures(ctx, entries, x_key="num_params", xlabel="parameters", logx=True)
  return {"runs": entries}


if __name__ == "__main__":
  common.main(FINDING, gather)
