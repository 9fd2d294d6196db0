"""`jsonio`: files written atomically under unique temporary names, read back naming the file
(issue 22, kind 11)."""

import json
import os
import threading

import numpy as np
import pytest

from diffgen_jax import jsonio


def test_two_writers_and_a_reader_of_one_file(tmp_path):
  """The issue's case: two writers of one results.json (two evaluate jobs, or the processes of one
  job) crashed with FileNotFoundError on the one fixed `.tmp` name, and readers saw empty or cut
  files. Every write must succeed and every read see one writer's whole file."""
  path = str(tmp_path / "results.json")
  jsonio.write_json(path, {"writer": -1, "rows": []})
  bodies = {w: {"writer": w, "rows": list(range(20000 * (w + 1)))} for w in (0, 1)}
  errors, seen = [], set()
  done = threading.Event()

  def write(w):
    try:
      for _ in range(30):
        jsonio.write_json(path, bodies[w])
    except Exception as err:  # pylint: disable=broad-except
      errors.append(err)

  def read():
    try:
      while not done.is_set():
        with open(path) as f:
          got = json.load(f)  # never empty, never cut
        assert got["rows"] == list(range(len(got["rows"])))
        seen.add(got["writer"])
    except Exception as err:  # pylint: disable=broad-except
      errors.append(err)

  reader = threading.Thread(target=read)
  writers = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
  reader.start()
  for t in writers:
    t.start()
  for t in writers:
    t.join()
  done.set()
  reader.join()
  assert errors == []
  assert jsonio.read_json(path, "") in bodies.values()
  assert seen - {-1} and seen <= {-1, 0, 1}
  assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_file(tmp_path):
  path = str(tmp_path / "sub" / "a.json")
  jsonio.write_json(path, {"a": 1})
  with pytest.raises(ZeroDivisionError):
    with jsonio.atomic_open(path) as f:
      f.write('{"a": ')
      raise ZeroDivisionError  # e.g. the object does not serialize halfway
  with pytest.raises(ValueError, match="'w' or 'wb'"):
    with jsonio.atomic_open(path, "a"):
      pass
  assert jsonio.read_json(path, "") == {"a": 1}
  assert os.listdir(tmp_path / "sub") == ["a.json"]


@pytest.mark.parametrize("content", [b"", b'{"job": "train", "snaps', b"\xff\xfe{}"])
def test_a_damaged_json_file_is_named(tmp_path, content):
  path = tmp_path / "results.json"
  path.write_bytes(content)
  with pytest.raises(jsonio.DamagedFileError) as err:
    jsonio.read_json(str(path), "move it aside and re-run the job")
  message = str(err.value)
  assert message.startswith(f"{path} is damaged or cut (") and f"; {len(content)} bytes)" in message
  assert message.endswith(": move it aside and re-run the job")


def test_to_jsonable_has_no_nan():
  out = jsonio.to_jsonable({"a": np.array([1.0, np.nan, np.inf]), "b": np.float32(2.5),
                           "c": (np.int64(3),)})
  assert out == {"a": [1.0, None, None], "b": 2.5, "c": [3]}
  json.dumps(out, allow_nan=False)


def test_atomic_files_get_the_permissions_open_would_give(tmp_path):
  """mkstemp's private 0600 would hide results from the rest of a team sharing a workdir."""
  import stat  # pylint: disable=import-outside-toplevel
  old = os.umask(0o022)
  try:
    jsonio.write_json(str(tmp_path / "r.json"), {"a": 1})
    with open(tmp_path / "plain.json", "w") as f:
      f.write("{}")
  finally:
    os.umask(old)
  mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
  assert mode(tmp_path / "r.json") == mode(tmp_path / "plain.json") == 0o644
