"""A run's snapshot as EDM dataset zips, for the field's own scorers (job `export`).

  python -m diffgen_jax.main --config=configs/export.py --config.run_dir=runs/quickstart \
      --workdir=runs/export_quickstart                 # 1000 samples of the last snapshot
  python -m diffgen_jax.main --config=configs/export.py --config.run_dir=RUN --workdir=DIR \
      --config.num_samples=50000 --config.denoised.sigmas=0.5,2.0

writes WORKDIR/export/<step>/samples.zip (and, with denoised.sigmas, D(x; sigma) of noised training
images: denoised_sigma<sigma>.zip beside their clean images.zip), readable by EDM2's
calculate_metrics.py (`calc --images=WORKDIR/export/<step>/samples.zip --ref=...`) and by this
package as "edm_zip:TRAIN.zip,VALIDATION.zip". Fields: `defaults.export_config`. Variant `smoke`:
the test's sizes.
"""

from diffgen_jax import defaults

MODES = ("smoke",)


def get_config(variant=None):
  chosen = defaults.parse_variant(variant, mode=MODES)
  config = defaults.export_config()
  if "smoke" in chosen["mode"]:
    config.num_samples = 6
    config.num_steps = 3
    config.batch_size = 4
    config.denoised.update(dict(sigmas=(0.5, 2.0), num_images=5))
  return config
