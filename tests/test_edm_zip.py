"""EDM's dataset zips (dataset_tool.py output: PNGs + dataset.json), read without TensorFlow."""

import io
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffgen_jax import data
from diffgen_jax import config_checks
from diffgen_jax.config_checks import ConfigError
from diffgen_jax.data import edm_zip


def _write_zip(path, images, labels=None, folder_size=3):
  """Writes a zip as EDM's dataset_tool does: <folder>/img<index>.png + dataset.json."""
  names = []
  with zipfile.ZipFile(path, "w") as z:
    for i, image in enumerate(images):
      name = f"{i // folder_size:05d}/img{i:08d}.png"
      buf = io.BytesIO()
      Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "png")
      z.writestr(name, buf.getvalue())
      names.append(name)
    meta = {"labels": None if labels is None else
            [[n.replace("/", "\\") if i % 2 else n, int(l)] for i, (n, l) in enumerate(zip(names, labels))]}
    z.writestr("dataset.json", json.dumps(meta))
  return names


@pytest.fixture
def zips(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  val = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  train_labels, val_labels = rng.integers(0, 4, 10), np.array([0, 1, 2, 3, 4, 0])
  _write_zip(tmp_path / "train.zip", train, train_labels)
  _write_zip(tmp_path / "val.zip", val, val_labels)
  return tmp_path, train, train_labels, val, val_labels


def test_images_and_labels_read_back_exactly(zips):
  root, train, train_labels, _, _ = zips
  images, labels = edm_zip.read_images(str(root / "train.zip"))
  np.testing.assert_array_equal(images, train)  # PNG is lossless; name order = writing order
  np.testing.assert_array_equal(labels, train_labels)  # backslash names matched too


def test_splits_in_a_seeded_order_with_ids_and_labels(zips):
  root, train, train_labels, val, val_labels = zips
  name = f"edm_zip:{root / 'train.zip'},{root / 'val.zip'}"
  tr = data.load_split(name, "train")
  va = data.load_split(name, "validation")
  assert (len(tr), len(va), tr.num_classes, va.num_classes) == (10, 6, 5, 5)  # max over both + 1
  assert sorted(tr.ids.tolist()) == list(range(10)) and tr.ids.tolist() != list(range(10))
  np.testing.assert_array_equal(tr.images[np.arange(10)], train[tr.ids])
  np.testing.assert_array_equal(tr.labels, train_labels[tr.ids])
  x, y, ids = data.first_images(va, 4)
  np.testing.assert_array_equal(ids, va.ids[:4])
  np.testing.assert_allclose(x, val[ids] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(y, val_labels[ids])
  again = data.load_split(name, "train")
  np.testing.assert_array_equal(again.ids, tr.ids)  # deterministic order
  sub = data.load_split(name, "train", subset_size=4)
  np.testing.assert_array_equal(sub.ids, tr.ids[:4])  # nested subsets
  none = data.load_split(name, "train", labels="none")
  assert none.num_classes == 0 and not none.labels.any()


def test_unlabelled_and_grayscale_zips(tmp_path):
  gray = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)
  _write_zip(tmp_path / "g.zip", gray)
  images, labels = edm_zip.read_images(str(tmp_path / "g.zip"))
  assert labels is None
  np.testing.assert_array_equal(images, gray)
  name = f"edm_zip:{tmp_path / 'g.zip'},{tmp_path / 'g.zip'}"
  with pytest.raises(ValueError, match="labels='none'"):
    data.load_split(name, "train")


def test_bad_inputs_are_named(tmp_path, zips):
  root = zips[0]
  with pytest.raises(ValueError, match="TRAIN.zip,VALIDATION.zip"):
    edm_zip.parse_name(f"edm_zip:{root / 'train.zip'}")
  (tmp_path / "bad.zip").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a zip"):
    edm_zip.read_index(str(tmp_path / "bad.zip"))
  cfg = dict(name=f"edm_zip:{root / 'train.zip'},{root / 'missing.zip'}", data_dir=None,
             subset_size=None, labels="class", x_flip=False)
  import ml_collections  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match="missing.zip does not exist"):
    config_checks.data_config(ml_collections.ConfigDict(cfg))


# ------------------------------------------------------------------------------------------------
# Hostile zips: sizes bounded before reading or decoding, under a memory cap in a child process


import struct  # noqa: E402
import zlib  # noqa: E402

import hostile  # noqa: E402  (tests/hostile.py)
from diffgen_jax.data import DataFileError, MAX_NUM_CLASSES  # noqa: E402

_READ = "from diffgen_jax.data import edm_zip"


def _zeros_deflated(mib):
  """(raw deflate stream of `mib` MiB of zeros, its CRC-32): 1 MiB compressed once and repeated
  (a full flush makes each copy independent), so a 1 GiB member costs 1 MB and no time."""
  c = zlib.compressobj(9, zlib.DEFLATED, -15)
  block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
  crc = 0
  for _ in range(mib):
    crc = zlib.crc32(bytes(1 << 20), crc)
  return block * mib + c.flush(), crc


def _raw_zip(path, members):
  """Writes a zip by hand: members (name, method 0 stored / 8 deflated, data as stored, CRC-32,
  declared size), so a member can declare any size."""
  local, central = b"", b""
  for name, method, data, crc, size in members:
    n = name.encode()
    central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                           len(data), size, len(n), 0, 0, 0, 0, 0, len(local)) + n
    local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                         len(n), 0) + n + data
  end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                    len(local), 0)
  path.write_bytes(local + central + end)
  return str(path)


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "png")
  return buf.getvalue()


def _png_declaring(width, height):
  """A 4 x 4 RGB PNG whose IHDR (CRC fixed) declares width x height: ~100 bytes that would decode
  to width * height * 3 bytes."""
  raw = bytearray(_png(np.zeros((4, 4, 3), np.uint8)))
  assert raw[12:16] == b"IHDR"
  raw[16:24] = struct.pack(">II", width, height)
  raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
  return bytes(raw)


def _stored(name, data):
  return (name, 0, data, zlib.crc32(data), len(data))


_EACH = """
class Report(Exception):
  pass
out = []
for path in PATH.split("\\n"):
  try:
    edm_zip.{reader}(path)
    out.append([None, path])
  except Exception as err:  # MemoryError too: reported, and the test fails on it
    out.append([type(err).__name__, str(err)[:900]])
raise Report(json.dumps(out))
"""


def _read_each(reader, paths, limit_mb):
  """[(error class, message)] of edm_zip.<reader>(path) for each path, all in one child process
  whose memory is capped at limit_mb (one child: the imports take seconds)."""
  result = hostile.run_capped(_READ, _EACH.format(reader=reader), path="\n".join(paths),
                              limit_mb=limit_mb)
  assert not result.crashed and result.error == "Report", str(result)
  return json.loads(result.message)


def _assert_refused(outcome, *names):
  error, message = outcome
  assert error == "DataFileError", outcome
  for name in names:
    assert name in message, outcome


def test_zip_member_declaring_1gib_is_refused_before_reading(tmp_path):
  """The issue's case: a 1 MB zip whose .png member inflates to 1 GiB cost 2.25 GB before the
  decoder refused it. Now its declared size is refused before reading, a header that lies low
  stops at the declared size, and one that claims more than deflate can compress is refused."""
  data, crc = _zeros_deflated(1024)
  assert len(data) < 1.1e6
  name = "00000/img00000000.png"
  cases = {"declared": (2 ** 30, "more than MAX_IMAGE_FILE_BYTES"),  # honest header: 1 GiB
           "lies_low": (1000, "cannot be read"),  # zipfile stops at 1000 bytes: CRC mismatch
           "ratio": (60 << 20, "deflate")}  # 60 MiB (< the cap) from 1 KiB compressed
  paths = [_raw_zip(tmp_path / f"{case}.zip", [(name, 8, data if case != "ratio" else data[:1024],
                                                 crc, size)])
           for case, (size, _) in cases.items()]
  outcomes = _read_each("read_images", paths, limit_mb=256)
  for path, (_, why), outcome in zip(paths, cases.values(), outcomes):
    _assert_refused(outcome, path, name, why)


def test_png_declaring_huge_size_is_refused_before_decoding(tmp_path):
  """A 100-byte PNG declaring 9000 x 9000 pixels (below Pillow's own bomb limit of 89M pixels) would
  decode to 243 MB: refused from its header, as the first image (MAX_IMAGE_PIXELS) and after a
  first 8 x 8 image (the dataset's size). One declaring 30000 x 30000 meets Pillow's own refusal,
  named too."""
  good = _png(np.zeros((8, 8, 3), np.uint8))
  bomb = _png_declaring(9000, 9000)
  first = _raw_zip(tmp_path / "first.zip", [_stored("a.png", bomb), _stored("b.png", good)])
  later = _raw_zip(tmp_path / "later.zip", [_stored("a.png", good), _stored("b.png", bomb)])
  huge = _raw_zip(tmp_path / "huge.zip", [_stored("a.png", _png_declaring(30000, 30000))])
  outcomes = _read_each("read_images", [first, later, huge], limit_mb=160)
  _assert_refused(outcomes[0], first, "a.png", "MAX_IMAGE_PIXELS")
  _assert_refused(outcomes[1], later, "b.png", "(9000, 9000)", "(8, 8)")
  _assert_refused(outcomes[2], huge, "a.png", "DecompressionBombError")


def test_dataset_json_too_large_or_too_deep_is_refused(tmp_path):
  good = _png(np.zeros((8, 8), np.uint8))
  data, crc = _zeros_deflated(300)  # 300 MiB of NUL bytes from a 300 KB member
  big = _raw_zip(tmp_path / "big.zip", [_stored("a.png", good),
                                        ("dataset.json", 8, data, crc, 300 << 20)])
  deep = b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
  deep = _raw_zip(tmp_path / "deep.zip", [_stored("a.png", good), _stored("dataset.json", deep)])
  outcomes = _read_each("read_index", [big, deep], limit_mb=128)
  _assert_refused(outcomes[0], f"{big}:dataset.json", "more than 1 MiB + JSON_BYTES_PER_IMAGE")
  _assert_refused(outcomes[1], f"{deep}:dataset.json", "nested too deeply")


# ------------------------------------------------------------------------------------------------
# Labels, modes, damaged members: refused at start-up naming the zip and the image


def _labelled_zip(path, labels_json, n=3):
  images = np.zeros((n, 4, 4, 1), np.uint8)
  with zipfile.ZipFile(path, "w") as z:
    for i in range(n):
      z.writestr(f"img{i}.png", _png(images[i, ..., 0]))
    z.writestr("dataset.json", labels_json)
  return str(path)


_BAD_LABELS = {
    "negative": ([["img0.png", -1], ["img1.png", 0], ["img2.png", 1]], "img0.png has label -1"),
    "bool": ([["img0.png", True], ["img1.png", 0], ["img2.png", 1]], "img0.png has label True"),
    "float": ([["img0.png", 0], ["img1.png", 2.5], ["img2.png", 1]], "img1.png has label 2.5"),
    "string": ([["img0.png", 0], ["img1.png", 1], ["img2.png", "3"]], "img2.png has label 3"),
    "vector": ([["img0.png", 0], ["img1.png", [1]], ["img2.png", 1]], "img1.png has label [1]"),
    "1e9": ([["img0.png", 10 ** 9], ["img1.png", 0], ["img2.png", 1]], "at most MAX_NUM_CLASSES"),
    "max": ([["img0.png", MAX_NUM_CLASSES], ["img1.png", 0], ["img2.png", 1]],
            "img0.png has label"),
    "short entry": ([["img0.png", 0], ["img1.png"], ["img2.png", 1]], "labels entry 1 is"),
    "name not a string": ([["img0.png", 0], [1, 1], ["img2.png", 1]], "labels entry 1 is"),
    "entry not a pair": ([["img0.png", 0], "img1.png", ["img2.png", 1]], "labels entry 1 is"),
    "twice": ([["img0.png", 0], ["img1.png", 1], ["img1.png", 2], ["img2.png", 1]],
              "img1.png is labelled twice"),
    "twice alike": ([["img0.png", 0], ["img1.png", 1], ["img1.png", 1], ["img2.png", 1]],
                    "img1.png is labelled twice"),
    "missing": ([["img0.png", 0], ["img1.png", 1]], "no label for 1 images"),
    "labels a string": ("img0.png 0", "'labels' is a JSON str"),
    "labels a number": (3, "'labels' is a JSON int"),
}


@pytest.mark.parametrize("case", _BAD_LABELS)
def test_bad_labels_are_refused_when_the_split_is_read(tmp_path, case):
  """A label of -1 trained as the null label to the end of the run: every label must be an integer
  in [0, MAX_NUM_CLASSES), one [name, label] pair per image, refused when the split is read."""
  labels, why = _BAD_LABELS[case]
  bad = _labelled_zip(tmp_path / "bad.zip", json.dumps({"labels": labels}))
  good = _labelled_zip(tmp_path / "good.zip",
                       json.dumps({"labels": [[f"img{i}.png", i] for i in range(3)]}))
  for split, name in (("train", f"edm_zip:{bad},{good}"), ("validation", f"edm_zip:{good},{bad}")):
    with pytest.raises(DataFileError) as err:
      data.load_split(name, split)
    assert f"{bad}:dataset.json" in str(err.value)
    assert why in str(err.value)


def test_good_labels_in_both_forms_and_the_class_limit(tmp_path):
  pairs = [["img0.png", 0], ["img1.png", MAX_NUM_CLASSES - 1], ["img2.png", 1]]
  as_pairs = _labelled_zip(tmp_path / "pairs.zip", json.dumps({"labels": pairs}))
  as_object = _labelled_zip(tmp_path / "object.zip", json.dumps({"labels": dict(pairs)}))
  for path in (as_pairs, as_object):
    _, labels = edm_zip.read_index(path)
    np.testing.assert_array_equal(labels, [0, MAX_NUM_CLASSES - 1, 1])
  assert data.load_split(f"edm_zip:{as_pairs},{as_object}", "train").num_classes == MAX_NUM_CLASSES
  # Labels that are not class labels (EDM's float vectors) are not read with labels="none".
  vectors = _labelled_zip(tmp_path / "vectors.zip",
                          json.dumps({"labels": [[f"img{i}.png", [0.5, 1.0]] for i in range(3)]}))
  split = data.load_split(f"edm_zip:{vectors},{vectors}", "train", labels="none")
  assert split.num_classes == 0 and len(split) == 3
  with pytest.raises(DataFileError, match="float label vectors"):
    data.load_split(f"edm_zip:{vectors},{vectors}", "train")


@pytest.mark.parametrize("text, why", [
    (b'{"labels": [["img0.png", 0]', "is not valid JSON"),
    (b'{"labels": [["img0.png", 0], ["img1.png", 1], ["img2.png", 2]], "labels": null}',
     "appears twice"),
    (b'\xff\xfe\x00', "is not valid JSON"),
    (b'[["img0.png", 0]]', "holds a JSON list"),
])
def test_corrupt_dataset_json_names_the_zip_and_member(tmp_path, text, why):
  path = _labelled_zip(tmp_path / "bad.zip", text)
  with pytest.raises(DataFileError, match=why) as err:
    edm_zip.read_index(path)
  assert f"{path}:dataset.json" in str(err.value)


def _zip_of(path, images):
  """images: {name: PIL image}, written as PNG."""
  with zipfile.ZipFile(path, "w") as z:
    for name, im in images.items():
      buf = io.BytesIO()
      im.save(buf, "png")
      z.writestr(name, buf.getvalue())
  return str(path)


def _palette(colors, indices):
  im = Image.fromarray(np.asarray(indices, np.uint8), "P")
  im.putpalette([c for rgb in colors for c in rgb] + [0] * (768 - 3 * len(colors)))
  return im


def test_palette_and_other_modes_are_converted_or_refused(tmp_path):
  """A palette PNG among grayscale images was read as its palette indices: it is converted to the
  dataset's mode (the first image's: L or RGB) where nothing is lost, else refused naming it."""
  gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
  idx = np.tile(np.array([0, 1], np.uint8), (4, 2))
  gray_palette = _palette([(200, 200, 200), (7, 7, 7)], idx)  # indices 0/1, pixels 200/7
  color_palette = _palette([(255, 0, 0), (0, 0, 255)], idx)
  path = _zip_of(tmp_path / "l.zip", {"a.png": Image.fromarray(gray), "b.png": gray_palette,
                                      "c.png": Image.fromarray(gray > 50)})  # mode "1"
  images, _ = edm_zip.read_images(path)
  assert images.shape == (3, 4, 4, 1)
  np.testing.assert_array_equal(images[1, ..., 0], np.where(idx == 0, 200, 7))
  np.testing.assert_array_equal(images[2, ..., 0], np.where(gray > 50, 255, 0))
  rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  path = _zip_of(tmp_path / "rgb.zip", {"a.png": Image.fromarray(rgb), "b.png": color_palette,
                                        "c.png": Image.fromarray(gray)})
  images, _ = edm_zip.read_images(path)
  np.testing.assert_array_equal(images[1], np.where(idx[..., None] == 0, [255, 0, 0], [0, 0, 255]))
  np.testing.assert_array_equal(images[2], np.repeat(gray[..., None], 3, -1))
  path = _zip_of(tmp_path / "p.zip", {"a.png": color_palette, "b.png": Image.fromarray(rgb)})
  assert edm_zip.read_images(path)[0].shape == (2, 4, 4, 3)  # a palette first image: RGB
  refused = {
      "color among gray": ({"a.png": Image.fromarray(gray), "b.png": color_palette},
                           "b.png is a color image (mode 'P') among grayscale"),
      "rgba": ({"a.png": Image.fromarray(rgb), "b.png": Image.fromarray(rgb).convert("RGBA")},
               "b.png has image mode 'RGBA'"),
      "rgba first": ({"a.png": Image.fromarray(rgb).convert("RGBA")},
                     "a.png has image mode 'RGBA'"),
      "16-bit": ({"a.png": Image.fromarray(gray.astype(np.uint16) * 256)},
                 "a.png has image mode 'I;16'"),
  }
  for case, (members, why) in refused.items():
    path = _zip_of(tmp_path / f"{case}.zip", members)
    with pytest.raises(DataFileError, match=re.escape(why)) as err:
      edm_zip.read_images(path)
    assert path in str(err.value), case
  transparent = _palette([(255, 0, 0), (0, 0, 255)], idx)
  transparent.info["transparency"] = 0
  path = _zip_of(tmp_path / "t.zip", {"a.png": Image.fromarray(rgb), "b.png": transparent})
  with pytest.raises(DataFileError, match="b.png is a palette image with transparency"):
    edm_zip.read_images(path)


def test_damaged_members_are_named(tmp_path):
  good = _png(np.zeros((4, 4), np.uint8))
  flipped = bytearray(good)
  flipped[40] ^= 0xFF
  cases = {
      "crc": ([("a.png", 0, bytes(flipped), zlib.crc32(good), len(good))], "a.png cannot be read"),
      "not an image": ([_stored("a.png", b"hello, not a png")], "a.png is not a readable image"),
      "twice": ([_stored("a.png", good), _stored("a.png", good)],
                "several members named ['a.png']"),
  }
  for case, (members, why) in cases.items():
    path = _raw_zip(tmp_path / f"{case}.zip", members)
    with pytest.raises(DataFileError, match=re.escape(why)) as err:
      edm_zip.read_images(path)
    assert path in str(err.value), case


# ------------------------------------------------------------------------------------------------
# The writer


def test_written_zips_read_back_with_identical_pixels_and_labels(tmp_path):
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (5, 5, 6, 1), dtype=np.uint8)
  labels = np.array([3, 0, 1, 2, 3, 1, 0])
  train, val = str(tmp_path / "train.zip"), str(tmp_path / "val.zip")
  with edm_zip.ZipWriter(train) as w:  # in two batches
    w.add(rgb[:4], labels[:4])
    w.add(rgb[4:], labels[4:].astype(np.int32))
  assert edm_zip.write_images(val, gray) == val
  images, got = edm_zip.read_images(train)
  np.testing.assert_array_equal(images, rgb)
  np.testing.assert_array_equal(got, labels)
  images, got = edm_zip.read_images(val)
  np.testing.assert_array_equal(images, gray)
  assert got is None and images.dtype == np.uint8
  with zipfile.ZipFile(train) as z:  # dataset_tool.py's layout
    names = sorted(n for n in z.namelist() if n.endswith(".png"))
    assert names == [f"00000/img{i:08d}.png" for i in range(7)]
    assert json.loads(z.read("dataset.json")) == {"labels": [[n, int(l)] for n, l in
                                                             zip(names, labels)]}
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
  with zipfile.ZipFile(val) as z:
    assert json.loads(z.read("dataset.json")) == {"labels": None}
  assert edm_zip.image_name(1234) == "00001/img00001234.png"
  # Through the package's `edm_zip:` dataset reader: the same pixels and labels, row by row.
  rgb_val = edm_zip.write_images(str(tmp_path / "rgb_val.zip"), rgb[:3], labels[:3])
  split = data.load_split(f"edm_zip:{train},{rgb_val}", "train")
  np.testing.assert_array_equal(split.images[np.arange(7)], rgb[split.ids])
  np.testing.assert_array_equal(split.labels, labels[split.ids])
  assert split.num_classes == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb_val.zip", "train.zip", "val.zip"]


def test_writer_refuses_bad_input_and_leaves_nothing_behind(tmp_path):
  path = str(tmp_path / "x.zip")
  ok = np.zeros((2, 4, 4, 3), np.uint8)
  cases = [((ok.astype(np.float32),), "images must be uint8 pixels (B, H, W, C)"),
           ((ok[..., :2],), "C 1 or 3, got uint8 of shape (2, 4, 4, 2)"),
           ((ok[0],), "images must be uint8"),
           ((ok, np.array([0, 1, 2])), "labels must be (2,) integers"),
           ((ok, np.array([0.0, 1.0])), "labels must be (2,) integers"),
           ((ok, np.array([0, -1])), "labels must be (2,) integers in [0, 100000)")]
  for args, words in cases:
    with pytest.raises(ValueError, match=re.escape(words)):
      edm_zip.write_images(path, *args)
  with pytest.raises(ValueError, match="labels must be given with every batch or with none"):
    with edm_zip.ZipWriter(path) as w:
      w.add(ok, [0, 1])
      w.add(ok)
  with pytest.raises(ValueError, match=r"images of shape \(4, 4, 1\) after images of shape"):
    with edm_zip.ZipWriter(path) as w:
      w.add(ok)
      w.add(ok[..., :1])
  with pytest.raises(ValueError, match="no images were written"):
    with edm_zip.ZipWriter(path):
      pass
  assert list(tmp_path.iterdir()) == []  # atomic: neither the zip nor a temporary file


def test_to_pixels_inverts_to_unit_range():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  np.testing.assert_array_equal(data.to_pixels(data.to_unit_range(pixels)), pixels)
  x = np.array([-1.2, -1.0, -0.999, 0.0, 0.004, 0.99, 1.0, 1.5], np.float32).reshape(1, 1, 8, 1)
  np.testing.assert_array_equal(data.to_pixels(x).ravel(), [0, 0, 0, 128, 128, 254, 255, 255])
  with pytest.raises(ValueError, match="got uint8 pixels"):
    data.to_pixels(pixels)
