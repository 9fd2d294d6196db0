"""Every default config and every configs/*.py variant, written as one canonical text file.

    python benchmarks/config_snapshot.py /tmp/before.txt   # on one commit
    python benchmarks/config_snapshot.py /tmp/after.txt    # on another
    cmp /tmp/before.txt /tmp/after.txt                     # equal: no default moved

Each config is written as its to_dict() with every key in order and every leaf as
(type name, repr), so 1 vs 1.0, a tuple vs a list and a reordered section all show as a difference.
"""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from diffgen_jax import defaults, models  # pylint: disable=wrong-import-position


def _canon(value, indent=""):
  if isinstance(value, dict):
    return "".join(f"\n{indent}{k}:{_canon(v, indent + '  ')}" for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return f" {type(value).__name__}[" + ", ".join(
        _canon(v, indent + "  ").strip() for v in value) + "]"
  return f" {type(value).__name__} {value!r}"


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def configs():
  """(name, ConfigDict) of every default and every variant of configs/*.py."""
  yield "defaults.train_config()", defaults.train_config()
  for family in models.FAMILIES:
    yield f"defaults.train_config(fashion_mnist, {family})", defaults.train_config(
        "fashion_mnist", family)
  yield "defaults.sample_evaluation_config()", defaults.sample_evaluation_config()
  yield "defaults.export_config()", defaults.export_config()
  yield "defaults.hook_model_config()", defaults.hook_model_config()
  yield "defaults.data_config()", defaults.data_config()
  yield "defaults.mesh_config()", defaults.mesh_config()
  variants = {
      "quickstart": [None],
      "nvidia": ["edm2-img64", "edm-cifar10", "local"],
      "export": [None, "smoke"],
      "ladder": [None, "local", "smoke"],
      "toy2d": [None, "paper", "paper,guidance", "flow_field", "frechet,trajectories"],
      "factors": [None, "local", "fashion", "local,fashion", "trained", "local,trained",
                  "local,fashion,trained", "granularity", "guidance,receptive_field"],
  }
  for name, names in variants.items():
    module = _module(name)
    for variant in names:
      yield f"configs/{name}.py:{variant}", (module.get_config(variant) if variant is not None
                                             else module.get_config())
  experiments = _module("experiments")
  for finding in experiments.FINDINGS:
    for mode in experiments.MODES:
      yield f"configs/experiments.py:{finding},{mode}", experiments.get_config(f"{finding},{mode}")


def main(path):
  with open(path, "w") as f:
    for name, config in configs():
      f.write(f"== {name}{_canon(config.to_dict())}\n")


if __name__ == "__main__":
  main(sys.argv[1])
