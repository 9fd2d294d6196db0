"""Finding 4: more training data lowers the denoising gap.

    python experiments/dataset_size.py        # local: digits subsets 128/256/512/1024
    python experiments/dataset_size.py --config=configs/experiments.py:dataset_size,paper \
        --config.data_dir=/path/to/tfds       # CIFAR-10 subsets 2.5k..50k, DDPM++

Figures: peak_gap_vs_value.png (x: training images), gap_curves.png, peak_gap_over_training.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "dataset_size"


def gather(ctx):
  entries = common.gap_sweep(ctx)
  for e in entries:
    e["subset_size"] = e["value"]
  common.gap_sweep_figures(ctx, entries, x_key="subset_size", xlabel="training images")
  return {"runs": entries}


if __name__ == "__main__":
  common.main(FINDING, gather)
