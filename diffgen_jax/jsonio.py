"""Results as JSON: plain Python values (no NaN or Infinity) written atomically."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


def to_jsonable(obj):
  """numpy/jax -> plain Python; non-finite floats -> None, so the JSON never holds NaN or Infinity."""
  if isinstance(obj, dict):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(obj).tolist())
  if isinstance(obj, (bool, np.bool_)):
    return bool(obj)
  if isinstance(obj, (int, np.integer)):
    return int(obj)
  if isinstance(obj, (float, np.floating)):
    value = float(obj)
    return value if math.isfinite(value) else None
  return obj


def write_json(path: str, obj) -> None:
  """Writes obj to path through a temporary file and a rename: a crash never leaves half a file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, allow_nan=False, indent=1)
  os.replace(tmp, path)
