"""configs/<name>.py's get_config, the file loaded by path as ml_collections' config_flags loads a
--config file (configs/ is not a package)."""

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def config_file(name, variant=None):
  """configs/<name>.py's get_config(variant) (get_config() when variant is None)."""
  spec = importlib.util.spec_from_file_location(f"_configs_{name}",
                                                os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if variant is None else module.get_config(variant)
