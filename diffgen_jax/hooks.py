"""Networks and feature extractors from anywhere: `MODULE:FUNCTION` factories, imported and checked.

A hook is written `MODULE:FUNCTION`: MODULE a module importable from sys.path or the current
directory (`my_models`, `lab.nets.edm`) or the path of a Python file (`hooks/my_models.py`,
`/abs/path/my_models.py`), FUNCTION a callable of that module (`make_denoiser`, or a dotted
attribute such as `Zoo.make_denoiser`).

    factory = load_factory("my_models:make_denoiser", field="model.denoiser")
    denoise, info = check_denoiser_factory(factory, "runs/x/net-000100.npz", (8, 8, 1), 10)
    features = load_features_factory("my_feats:make", (8, 8, 1),
                                     field="evaluation.samples.features")

Two kinds of factories:
  * a denoiser factory `f(snapshot_path) -> denoise` or `-> (denoise, info)` with
    info["images_seen"] an integer >= 0; denoise(x, sigma, labels) -> x_hat follows the package's
    interface (`diffgen_jax.denoisers`): x float32 (B, H, W, C) in [-1, 1] plus noise, sigma a
    scalar or a (B,) vector, labels None or (B,) int32 classes (the null label is num_classes); it
    is traced by jax (the measurements call it under jax.jit), so it is written with jax operations
    (or bridges to another framework, e.g. `denoisers.from_torch`);
  * a feature factory `f() -> features` with features(images) -> (B, F): images float32
    (B, H, W, C) in [-1, 1] (samples may overshoot a little); it is called outside jit, so any
    framework may compute it (return a numpy or jax array).
Each is checked the moment it is loaded, on a tiny batch (two images), so that a bad hook fails at
start-up in seconds, not after hours of measurements. Every error is a config_checks.ConfigError
whose message starts with `config.<field>=<value>`. This module takes no configs: the callers
(the jobs) pass the field's name for the messages.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from diffgen_jax import checkpointing
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.denoisers import check_labels

SPEC_FORM = ("MODULE:FUNCTION, e.g. 'my_models:make_denoiser' (a module on sys.path or in the "
             "current directory) or 'path/to/my_models.py:make_denoiser' (a Python file)")
CHECK_BATCH = 2  # images in the start-up check of a hook
_MESSAGE_CHARS = 600  # of an error raised by a hook, shown in ours


def _fail(field: str, value, requirement: str):
  raise ConfigError(f"config.{field}={value!r} {requirement}")


def _brief(err: BaseException) -> str:
  text = f"{type(err).__name__}: {err}"
  return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + " ..."


def _is_file(module: str) -> bool:
  return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path: str, spec: str, field: str):
  """The module of Python file `path` (imported once per absolute path and kept in sys.modules
  under a name derived from it, so a second load returns the same module)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    _fail(field, spec, f"names the file {path}, which does not exist (the form is {SPEC_FORM})")
  stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  name = f"diffgen_jax_hook_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:12]}"
  if name in sys.modules:
    return sys.modules[name]
  module_spec = importlib.util.spec_from_file_location(name, path)
  if module_spec is None or module_spec.loader is None:
    _fail(field, spec, f"names {path}, which Python cannot import as a module (a .py file?)")
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module  # (dataclasses and pickling look their module up there)
  try:
    module_spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _import(module: str):
  """importlib.import_module(module) with the current directory searched as well (where
  `python -m` would search it; the console script `diffgen_jax` does not put it on sys.path)."""
  cwd = os.getcwd()
  if "" not in sys.path and cwd not in sys.path:
    sys.path.append(cwd)
  return importlib.import_module(module)


def load_factory(spec: str, *, field: str) -> Callable:
  """The callable that `spec` = "MODULE:FUNCTION" names (module docstring), imported now.

  field: the config field that holds spec (e.g. "model.denoiser"), named in every error.
  Raises ConfigError naming the field and the value: spec not of the form MODULE:FUNCTION; the
  module not found or raising while it is imported (its error is shown and chained); no such
  attribute; the attribute not callable.
  """
  if not isinstance(spec, str) or ":" not in spec:
    _fail(field, spec, f"must be written {SPEC_FORM}")
  module_name, _, attribute = spec.strip().rpartition(":")
  if not module_name or not attribute or not all(part.isidentifier()
                                                 for part in attribute.split(".")):
    _fail(field, spec, f"must be written {SPEC_FORM}; FUNCTION must be a Python name")
  try:
    module = (_import_file(module_name, spec, field) if _is_file(module_name)
              else _import(module_name))
  except ConfigError:
    raise
  except ModuleNotFoundError as err:
    missing = err.name or module_name
    where = (f"no module named {missing!r} on sys.path (the current directory {os.getcwd()} and "
             "PYTHONPATH are searched)" if missing == module_name
             else f"importing {module_name!r} failed: {_brief(err)}")
    raise ConfigError(f"config.{field}={spec!r}: {where}") from err
  except (Exception, SystemExit) as err:  # pylint: disable=broad-except  (the hook's own code)
    raise ConfigError(f"config.{field}={spec!r}: importing {module_name!r} failed "
                      f"({_brief(err)})") from err
  target: Any = module
  for i, part in enumerate(attribute.split(".")):
    if not hasattr(target, part):
      owner = module_name if i == 0 else ".".join(attribute.split(".")[:i])
      available = sorted(n for n in dir(target) if not n.startswith("_")
                         and callable(getattr(target, n, None)))[:20]
      _fail(field, spec, f"names {attribute!r}, but {owner!r} has no attribute {part!r} "
            f"(its public callables: {available})")
    target = getattr(target, part)
  if not callable(target):
    _fail(field, spec, f"names {attribute!r}, a {type(target).__name__}, not a callable factory")
  return target


# ------------------------------------------------------------------------------------------------
# The snapshot files a denoiser factory is called on


def snapshot_files(path: str, *, field: str = "model.checkpoint") -> List[str]:
  """The snapshot files at `path`, in training order: [path] for a file; for a directory, its
  regular files (not those whose name starts with "."), in the natural order of their names
  (`checkpointing.natural_key`: net-2 before net-10), so name them in the order they were
  trained. Raises ConfigError naming config.<field> when path is empty, does not exist, or is a
  directory without files."""
  if not isinstance(path, str) or not path:
    _fail(field, path, "must name the snapshot file, or the directory of snapshot files, that the "
          "denoiser factory reads")
  full = os.path.expanduser(path)
  if os.path.isfile(full):
    return [full]
  if not os.path.isdir(full):
    _fail(field, path, "does not exist (the snapshot file, or the directory of snapshot files, "
          "that the denoiser factory reads)")
  names = [n for n in os.listdir(full) if not n.startswith(".")
           and os.path.isfile(os.path.join(full, n))]
  if not names:
    _fail(field, path, "is a directory without snapshot files")
  return [os.path.join(full, n) for n in checkpointing.snapshot_order(names)]


def images_seen_of_name(path: str) -> Optional[int]:
  """The last number in a snapshot file's name without its extension (net-000100.npz: 100), the
  images seen of a factory that does not say them; None when the name holds no number."""
  numbers = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
  return int(numbers[-1]) if numbers else None


# ------------------------------------------------------------------------------------------------
# The start-up checks


def _check_shape(image_shape) -> Tuple[int, ...]:
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) of positive integers, got {image_shape}")
  return shape


def probe_images(image_shape, seed: int = 0) -> np.ndarray:
  """The CHECK_BATCH float32 images (B, H, W, C) uniform in [-1, 1] a hook is checked on."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, (CHECK_BATCH,) + _check_shape(image_shape)).astype(np.float32)


def check_denoiser(denoise, image_shape: Sequence[int], num_classes: int, *,
                   field: str = "model.denoiser", value: Any = None) -> None:
  """Runs `denoise` on CHECK_BATCH noisy images of image_shape (H, W, C) as the measurements do.

  Three calls: traced (jax.eval_shape) with a (B,) sigma vector (the gap evaluation's form) and
  with a scalar sigma (the samplers' form), then compiled (jax.jit) with the vector; labels
  [0, num_classes - 1] int32 when num_classes > 0, else None. The output must have x's shape and
  floating-point dtype, and be finite. Raises ConfigError naming config.<field>=<value> and what
  failed (the denoiser's own error is shown and chained).
  """
  shown = value if value is not None else getattr(denoise, "__name__", type(denoise).__name__)
  if not callable(denoise):
    _fail(field, shown, f"gave a {type(denoise).__name__}, not a denoiser "
          "denoise(x, sigma, labels)")
  images = probe_images(image_shape)
  noise = np.random.default_rng(1).standard_normal(images.shape).astype(np.float32)
  sigma = np.asarray([0.5, 2.0], np.float32)
  x = jnp.asarray(images + sigma[:, None, None, None] * noise)
  labels = (jnp.asarray([0, num_classes - 1], jnp.int32) if num_classes > 0 else None)
  what = (f"on a batch of {CHECK_BATCH} images x of shape {tuple(x.shape)} float32, sigma "
          f"{{}} and labels {None if labels is None else np.asarray(labels).tolist()}")
  try:
    check_labels(denoise, labels)
  except ValueError as err:
    _fail(field, shown, f"gave a denoiser that refuses the labels "
          f"{np.asarray(labels).tolist()} of {num_classes} classes: {_brief(err)}")
  for sigma_arg, sigma_text in ((jnp.asarray(sigma), "(0.5, 2.0)"),
                                (jnp.float32(1.0), "1.0 (a scalar)")):
    try:
      out = jax.eval_shape(denoise, x, sigma_arg, labels)
    except Exception as err:  # pylint: disable=broad-except  (the hook's own code)
      raise ConfigError(
          f"config.{field}={shown!r}: the denoiser fails when traced by jax (the measurements call "
          f"it under jax.jit) {what.format(sigma_text)}: {_brief(err)}") from err
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != x.shape or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
      _fail(field, shown, f"gave a denoiser that returns "
            f"{type(out).__name__ if shape is None else f'shape {tuple(shape)} dtype {dtype}'} "
            f"{what.format(sigma_text)}; it must return D(x; sigma), an array of x's shape "
            f"{tuple(x.shape)} in floating point")
  try:
    out = np.asarray(jax.jit(denoise)(x, jnp.asarray(sigma), labels))
  except Exception as err:  # pylint: disable=broad-except  (the hook's own code)
    raise ConfigError(f"config.{field}={shown!r}: the denoiser fails under jax.jit "
                      f"{what.format('(0.5, 2.0)')}: {_brief(err)}") from err
  if not np.all(np.isfinite(out)):
    _fail(field, shown, "gave a denoiser whose output holds NaN or Inf "
          + what.format("(0.5, 2.0)"))


def check_denoiser_factory(factory: Callable, snapshot_path: str, image_shape: Sequence[int],
                           num_classes: int, *, field: str = "model.denoiser",
                           value: Any = None) -> Tuple[Callable, Dict[str, Any]]:
  """Calls a denoiser factory on one snapshot and checks what it returns (`check_denoiser`).

  factory(snapshot_path) must return denoise or (denoise, info) with info["images_seen"] an
  integer >= 0. value: the hook as written (shown in errors; default the factory's name).
  Returns (denoise, info): info a new dict, {} when the factory returned a bare denoiser.
  Raises ConfigError naming config.<field>=<value>: the factory raises (its error is chained),
  returns something else, or the denoiser fails its check.
  """
  shown = value if value is not None else getattr(factory, "__name__", repr(factory))
  try:
    made = factory(snapshot_path)
  except Exception as err:  # pylint: disable=broad-except  (the hook's own code)
    raise ConfigError(f"config.{field}={shown!r}: the factory fails on the snapshot "
                      f"{snapshot_path!r}: {_brief(err)}") from err
  info: Dict[str, Any] = {}
  denoise = made
  if isinstance(made, tuple):
    if len(made) != 2 or not callable(made[0]) or not isinstance(made[1], dict):
      _fail(field, shown, f"returned a tuple of {len(made)} values for {snapshot_path!r}; a "
            "factory returns denoise or (denoise, info) with info a dict holding 'images_seen'")
    denoise, info = made[0], dict(made[1])
    seen = info.get("images_seen")
    if isinstance(seen, bool) or not isinstance(seen, (int, np.integer)) or seen < 0:
      _fail(field, shown, f"returned info['images_seen']={seen!r} for {snapshot_path!r}; it must "
            "be the number of training images the network had seen, an integer >= 0")
    info["images_seen"] = int(seen)
  check_denoiser(denoise, image_shape, num_classes, field=field, value=shown)
  return denoise, info


def check_features_factory(factory: Callable, image_shape: Sequence[int], *,
                           field: str = "evaluation.samples.features",
                           value: Any = None) -> Callable:
  """Calls a feature factory (no arguments) and checks its extractor on CHECK_BATCH images.

  features(images) with images float32 (B, H, W, C) in [-1, 1] must return a (B, F) array, F >= 1,
  of finite real numbers (numpy, jax or anything np.asarray reads). Returns the extractor.
  Raises ConfigError naming config.<field>=<value>: the factory or the extractor raises (their
  error is chained), returns no callable, or features of another shape, dtype or with NaN / Inf.
  """
  shown = value if value is not None else getattr(factory, "__name__", repr(factory))
  try:
    features = factory()
  except Exception as err:  # pylint: disable=broad-except  (the hook's own code)
    raise ConfigError(f"config.{field}={shown!r}: the factory fails: {_brief(err)}") from err
  if not callable(features):
    _fail(field, shown, f"returned a {type(features).__name__}, not a feature extractor "
          "features(images) -> (B, F)")
  images = probe_images(image_shape)
  what = f"for {CHECK_BATCH} images of shape {images.shape} float32 in [-1, 1]"
  try:
    out = np.asarray(features(jnp.asarray(images)))
  except Exception as err:  # pylint: disable=broad-except  (the hook's own code)
    raise ConfigError(f"config.{field}={shown!r}: the feature extractor fails {what}: "
                      f"{_brief(err)}") from err
  if out.ndim != 2 or out.shape[0] != CHECK_BATCH or out.shape[1] < 1:
    _fail(field, shown, f"gave features of shape {out.shape} {what}; they must be "
          f"({CHECK_BATCH}, F): one row of F >= 1 numbers per image")
  if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)):
    _fail(field, shown, f"gave features of dtype {out.dtype} {what}; they must be real numbers")
  if not np.all(np.isfinite(out)):
    _fail(field, shown, f"gave features holding NaN or Inf {what}")
  return features


def load_features_factory(spec: str, image_shape: Sequence[int], *,
                          field: str = "evaluation.samples.features") -> Callable:
  """`load_factory` then `check_features_factory`: the checked extractor."""
  return check_features_factory(load_factory(spec, field=field), image_shape, field=field,
                                value=spec)
