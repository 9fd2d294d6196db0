"""The `convert` job: NVIDIA's published EDM / EDM2 networks -> snapshots of this package.

    python -m diffgen_jax.main --config=configs/nvidia.py:edm2-img64 \
        --config.job=convert --config.model.checkpoint=/data/edm2-img64-s --workdir=runs/edm2-s

reads every network at `config.model.checkpoint` (one .pkl, a state_dict.npz + config.json
directory, or a run directory of snapshots; `config.model.checkpoint_ema` keeps one EDM2 EMA
profile, e.g. "0.100") with `models.nvidia` (nothing from the files is executed) and writes each as
an orbax snapshot WORKDIR/checkpoints/snapshots/<kimg> with EMA set "ema" and metadata
{"images_seen": kimg * 1000, "kimg", "source", NVIDIA's class and kwargs}; images seen come from
the file name (`...-0134217-0.100.pkl` = 134,217 kimg). WORKDIR/converted.json records the model
config of the networks and each snapshot's source (as the train job's WORKDIR/config.json does). Re-running converts only snapshots not yet written. The evaluate job with
`config.model.checkpoint` set runs this first, then evaluates the workdir's snapshots as any run's.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import ml_collections
from absl import logging

from diffgen_jax import checkpointing, config_checks, jsonio
from diffgen_jax.models import nvidia

CONVERTED_FILE = "converted.json"
_DAMAGED_RECORD = ("move it aside and re-run the convert job into a new workdir (the snapshots "
                   "beside it are then written again)")


def validate_config(config) -> None:
  if config.model.get("denoiser"):
    raise config_checks.ConfigError(
        f"config.model.denoiser={config.model.denoiser!r}: with a hook, config.model.checkpoint "
        "names the hook's snapshot files (read by the evaluate, ladder, factors and export jobs), "
        "not NVIDIA networks to convert; set model.denoiser='' to convert")
  path = config.model.get("checkpoint", "")
  if not path:
    raise config_checks.ConfigError("config.model.checkpoint is empty: the convert job needs the "
                                    "path of an NVIDIA network (.pkl) or of a directory of them")
  if not os.path.exists(os.path.expanduser(path)):
    raise config_checks.ConfigError(f"config.model.checkpoint={path!r} does not exist")


def run(config, workdir: str) -> Dict[str, Any]:
  """Converts the networks; returns the contents of WORKDIR/converted.json."""
  path = os.path.expanduser(config.model.checkpoint)
  try:
    paths = nvidia.snapshot_paths(path, config.model.get("checkpoint_ema", "") or None)
  except FileNotFoundError as err:  # (a directory of one's own network's files, most likely)
    raise config_checks.ConfigError(
        f"config.model.checkpoint={config.model.checkpoint!r}: {err}. Without "
        "config.model.denoiser it names NVIDIA networks; for your own network's files set "
        "config.model.denoiser=MODULE:FUNCTION (docs/own_network.md)") from None
  record_path = os.path.join(workdir, CONVERTED_FILE)
  record = {"checkpoint": path, "snapshots": {}}
  if os.path.exists(record_path):
    record = jsonio.read_json(record_path, _DAMAGED_RECORD)
  os.makedirs(workdir, exist_ok=True)
  done = set(checkpointing.snapshot_steps(workdir))
  ckpt = checkpointing.Checkpoints(workdir)
  try:
    for kimg, source in paths:
      if kimg in done:
        continue
      logging.info("Converting %s (%d kimg) ...", source, kimg)
      network = nvidia.read_network(source)
      nvidia.check_network(network)
      model = network.model_config.to_dict()
      if record.get("model") not in (None, model):
        raise config_checks.ConfigError(
            f"{source} is another architecture than the networks already converted into "
            f"{workdir} ({record['checkpoint']}); use a new workdir")
      record["model"], record["sigma_data"] = model, network.sigma_data
      meta = {"images_seen": int(kimg) * 1000, "kimg": int(kimg), "source": source,
              "nvidia_class": network.nvidia_class, "nvidia_kwargs": network.nvidia_kwargs}
      ckpt.save_snapshot(int(kimg), {"ema": network.params}, meta)
      ckpt.wait()
      record["snapshots"][str(kimg)] = source
      jsonio.write_json(record_path, record)
  finally:
    ckpt.close()
  if "model" not in record:
    raise config_checks.ConfigError(f"nothing converted into {workdir}")
  print(f"{len(record['snapshots'])} NVIDIA snapshots as diffgen_jax snapshots in "
        f"{os.path.join(workdir, checkpointing.SNAPSHOT_DIR)}/")
  return record


def converted_config(config, workdir: str):
  """The config with its model replaced by the converted networks' (after `run`).

  Returns an unlocked copy: config.model = the networks' model config (num_classes = NVIDIA's
  label_dim, keeping checkpoint / checkpoint_ema and the config's compute dtype),
  config.training.sigma_data = the preconditioner's.
  """
  record = jsonio.read_json(os.path.join(workdir, CONVERTED_FILE), _DAMAGED_RECORD)
  out = ml_collections.ConfigDict(config.to_dict())
  model = ml_collections.ConfigDict(record["model"])
  model.checkpoint = config.model.checkpoint
  model.checkpoint_ema = config.model.get("checkpoint_ema", "")
  model.dtype = config.model.get("dtype", "float32")
  out.model = model
  out.training.sigma_data = float(record["sigma_data"])
  return out
