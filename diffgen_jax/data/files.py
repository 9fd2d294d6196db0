"""Reading dataset files that come from users or the internet (EDM dataset zips, pseudo-label files,
idx and csv sources): every size bounded before it is allocated, every error naming the file.

    DataFileError   a damaged, hostile or unexpected dataset file (a ValueError naming the file)
    read_capped     at most `limit` bytes of a stream, whatever a header claimed
    read_zip_member   a zip member: declared size and compression checked first, the read capped
    load_json       a JSON document, a damaged or too deeply nested one refused naming the file
    npy_header      (shape, fortran order, dtype, data offset) of .npy bytes, before any allocation
    check_class_labels   class labels in [0, num_classes)
"""

from __future__ import annotations

import collections
import io
import json
import zipfile
import zlib

import numpy as np

# A class label of 10**9 would make a 10**9-row label embedding; ImageNet-21k has 21,843 classes.
MAX_NUM_CLASSES = 100_000
# Deflate compresses at most 1032:1 (a run of zeros), so a deflated member declaring more lies about
# its size; a stored member's two sizes are equal.
DEFLATE_MAX_RATIO = 1032


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


def read_zip_member(z: zipfile.ZipFile, path: str, name: str, limit: int,
                    limit_name: str = "the limit") -> bytes:
  """The bytes of member `name` of open zip `z` (of file `path`): its declared size checked against
  `limit` (called `limit_name` in errors) and its compression before reading, the read capped at
  limit + 1 bytes whatever the header claims. Raises DataFileError naming "path:name" (too large,
  missing, damaged, encrypted)."""
  where = f"{path}:{name}"
  try:
    info = z.getinfo(name)
  except KeyError:
    raise DataFileError(f"{path} has no member {name!r}") from None
  if info.file_size > limit:
    raise DataFileError(f"{where} declares {info.file_size} bytes, more than {limit_name}="
                        f"{limit} bytes for this member: not a file this reader accepts")
  if ((info.compress_type == zipfile.ZIP_DEFLATED and
       info.file_size > DEFLATE_MAX_RATIO * max(info.compress_size, 1)) or
      (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size and
       not info.flag_bits & 0x1)):  # (an encrypted member's compressed size includes 12 bytes)
    raise DataFileError(f"{where} declares {info.file_size} bytes from {info.compress_size} "
                        f"compressed bytes, more than deflate's 1:{DEFLATE_MAX_RATIO} (or a stored "
                        "member's 1:1): the zip's header is damaged or forged")
  try:
    with z.open(info) as f:
      return read_capped(f, limit, where)
  except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
          OSError) as err:  # damaged, an unsupported compression, encrypted
    raise DataFileError(f"{where} cannot be read ({err}): the file is damaged; fetch or write it "
                        "again") from None


def npy_header(raw: bytes, where: str):
  """(shape, fortran_order, dtype, offset of the data) of the .npy file `raw` (bytes read with a
  size cap): nothing is allocated from what the header declares. Raises DataFileError naming
  `where` when the header does not parse (not .npy, format other than 1.0 / 2.0)."""
  header = io.BytesIO(raw)
  try:
    version = np.lib.format.read_magic(header)
    if version not in ((1, 0), (2, 0)):
      raise ValueError(f"npy format version {version}")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(header)
  except ValueError as err:
    raise DataFileError(f"{where} is not a readable .npy array ({err})") from None
  return shape, fortran, dtype, header.tell()


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


def check_class_labels(labels: np.ndarray, where: str,
                       num_classes: int = MAX_NUM_CLASSES) -> np.ndarray:
  """Integer class labels `labels` unchanged, or DataFileError naming `where` when one lies outside
  [0, num_classes)."""
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataFileError(f"{where}: class label {bad.reshape(-1)[0]} outside [0, {num_classes}) "
                        "(a negative label would train as the null label; num_classes is at most "
                        f"MAX_NUM_CLASSES={MAX_NUM_CLASSES})")
  return labels
