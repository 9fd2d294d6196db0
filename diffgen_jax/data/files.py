"""Reading dataset files that come from users or the internet (EDM dataset zips, pseudo-label files,
idx and csv sources): every size bounded before it is allocated, every error naming the file.

    DataFileError   a damaged, hostile or unexpected dataset file (a ValueError naming the file)
    read_capped     at most `limit` bytes of a stream, whatever a header claimed
    load_json       a JSON document, a damaged or too deeply nested one refused naming the file
    check_class_labels   class labels: integers in [0, MAX_NUM_CLASSES)
"""

from __future__ import annotations

import collections
import json

import numpy as np

# A class label of 10**9 would make a 10**9-row label embedding; ImageNet-21k has 21,843 classes.
MAX_NUM_CLASSES = 100_000


class DataFileError(ValueError):
  """A dataset file that is damaged, hostile or not what its reader expects. The message names the
  file (with the member, "ZIP:MEMBER", inside a zip) and what is allowed or what to do."""


def read_capped(f, limit: int, where: str) -> bytes:
  """The rest of binary stream `f`, reading at most limit + 1 bytes whatever a header declared.

  Raises DataFileError naming `where` when the stream holds more than `limit` bytes.
  """
  data = f.read(limit + 1)
  if len(data) > limit:
    raise DataFileError(f"{where} holds more than {limit} bytes, the limit for this file (more "
                        "than its header declared, or than any such file of a dataset holds)")
  return data


def load_json(raw: bytes, where: str):
  """The JSON document `raw` (bytes read with a size cap). Raises DataFileError naming `where` for
  a damaged document (not JSON, not UTF-8, a number of more than 4300 digits, a key twice in one
  object) or one nested deeper than Python's recursion limit."""
  try:
    return json.loads(raw, object_pairs_hook=_unique_keys)
  except RecursionError:
    raise DataFileError(f"{where} is nested too deeply to be read (deeper than Python's recursion "
                        "limit); a dataset's JSON is a few levels deep") from None
  except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limit, a key twice
    raise DataFileError(f"{where} is not valid JSON ({err}); the file is damaged: write it "
                        "again (or fetch it again)") from None


def _unique_keys(pairs):
  """A JSON object's pairs as a dict, refusing a key twice (json would keep the last silently)."""
  out = dict(pairs)
  if len(out) != len(pairs):
    twice = [k for k, c in collections.Counter(k for k, _ in pairs).items() if c > 1]
    raise ValueError(f"the key {twice[0]!r} appears twice in one object")
  return out


def check_class_labels(labels: np.ndarray, where: str) -> np.ndarray:
  """Class labels `labels` (an integer array) unchanged, or DataFileError naming `where` when one
  lies outside [0, MAX_NUM_CLASSES) or they are not integers (bool is not)."""
  labels = np.asarray(labels)
  if labels.dtype.kind not in "iu":
    raise DataFileError(f"{where}: class labels of dtype {labels.dtype}; class labels are "
                        f"integers in [0, {MAX_NUM_CLASSES})")
  if labels.size and (labels.min() < 0 or labels.max() >= MAX_NUM_CLASSES):
    bad = labels[(labels < 0) | (labels >= MAX_NUM_CLASSES)]
    raise DataFileError(f"{where}: class label {bad.reshape(-1)[0]} outside [0, {MAX_NUM_CLASSES}) "
                        "(num_classes is at most MAX_NUM_CLASSES; a negative label would train as "
                        "the null label)")
  return labels
