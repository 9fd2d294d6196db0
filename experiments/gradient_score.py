"""Finding 10: the input-gradient correlation score vs sigma (the mean distance the denoiser looks at).

Analytic: the factors job's `gradient_score` sweep (y* and y_delta); trained: its `trained` sweep
on the U-Net and the DiT (network and y* side by side).

    python experiments/gradient_score.py      # local: digits, ~5 min (+ the shared U-Net/DiT runs)
    python experiments/gradient_score.py --config=configs/experiments.py:gradient_score,paper \
        --config.data_dir=/path/to/tfds

Figure: gradient_score.png (one panel per source; train and validation images).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

FINDING = "gradient_score"


def gather(ctx):
  sources = {"analytic": ctx.results["factors_gradient_score"]["sweeps"]["gradient_score"],
             "trained U-Net": ctx.results["factors_trained_unet"]["sweeps"]["trained"]
             ["gradient_score"],
             "trained DiT": ctx.results["factors_trained_dit"]["sweeps"]["trained"]
             ["gradient_score"]}
  out, series = {}, []
  for name, section in sources.items():
    curves = [{"label": c["label"], "split": c["group"], "score": c["score"],
               **{k: c[k] for k in ("score_low", "score_high") if k in c}}
              for c in section["curves"]]
    out[name] = {"sigmas": section["sigmas"], "curves": curves}
    series += [(name, c["label"], section["sigmas"], c["score"],
                "-o" if c["split"] == "train" else "--s", common.interval(c, "score"))
               for c in curves]
  common.line_plot(ctx.figure("gradient_score.png"), series, panels=list(sources), logx=True,
                   xlabel="sigma", ylabel="mean distance looked at (pixels)",
                   title="Input-gradient correlation score")
  return out


if __name__ == "__main__":
  common.main(FINDING, gather)
