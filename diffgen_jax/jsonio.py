"""The files the package writes and reads back: written atomically, read naming the file.

`atomic_open(path)` writes a file under a unique temporary name in its directory and renames it into
place when complete, so a reader (another process, a resumed run) sees either the previous file or
the whole new one, never half a file, and two writers of one path never touch each other's
temporary file. `write_json` writes results as JSON through it (plain Python values, no NaN or
Infinity); `read_json` reads a JSON file back, raising `DamagedFileError` naming the file when it
does not parse.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from typing import IO, Iterator

import jax
import numpy as np


class DamagedFileError(ValueError):
  """A file the package wrote earlier does not read back (cut, damaged or edited); the message
  names the file and says what to do."""


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


def _umask() -> int:
  """The process's umask, read without changing it (os.umask would, for a moment, for every
  thread)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)  # elsewhere: the usual two-call read
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """A file object ("w": text, "wb": binary) whose contents replace `path` when the block ends.

  The data go to a unique temporary file beside `path` (same filesystem, so the rename is atomic),
  flushed to disk, then renamed onto `path` (with the permissions open() would give it); on an exception the temporary file is removed and
  `path` is left as it was. Creates the directory if needed.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
  path = os.path.expanduser(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  # mkstemp makes the file private (0600); results are for the team to read: the mode open()
  # would give, 0666 less the umask.
  os.chmod(tmp, 0o666 & ~_umask())
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # the rename must not reach the disk before the data
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_json(path: str, obj) -> None:
  """Writes obj (`to_jsonable`) to path atomically (`atomic_open`)."""
  text = json.dumps(to_jsonable(obj), allow_nan=False, indent=1)
  with atomic_open(path) as f:
    f.write(text)


def read_json(path: str, what_to_do: str):
  """The JSON value in `path`; DamagedFileError naming the file, the parser's complaint and
  `what_to_do` when it does not parse (FileNotFoundError when it does not exist)."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return json.loads(raw)
  except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
    raise DamagedFileError(f"{os.path.abspath(path)} is damaged or cut ({err}; {len(raw)} bytes): "
                           f"{what_to_do}") from None
