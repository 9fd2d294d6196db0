"""Feature extractors (pixels, the small CNN classifier, any extractor on the host) and k-means
pseudo-labels."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import jsonio
from diffgen_jax.data import read_pseudo_labels
from diffgen_jax.evaluation import features, kmeans, neighbours


def _easy_problem(seed, n):
  """Two classes of 8x8 images: bright left half vs bright right half, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  images = rng.normal(0.0, 0.3, (n, 8, 8, 1))
  images[labels == 0, :, :4] += 0.8
  images[labels == 1, :, 4:] += 0.8
  return np.clip(images, -1, 1).astype(np.float32), labels.astype(np.int32)


def test_pixel_and_batched_features():
  x = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)
  f = features.batched_features(features.pixel_features, x, batch_size=2)
  np.testing.assert_array_equal(f, x.reshape(5, -1))


def test_classifier_trains_and_round_trips(tmp_path):
  images, labels = _easy_problem(0, 256)
  val_images, val_labels = _easy_problem(1, 128)
  params, accuracy = features.train_classifier(images, labels, 2, steps=60, seed=0, batch_size=64,
                                               width=8, feature_dim=16, val_images=val_images,
                                               val_labels=val_labels)
  assert accuracy > 0.9
  feats = features.classifier_features(params)(jnp.asarray(val_images[:5]))
  assert feats.shape == (5, 16)
  path = features.save_params(str(tmp_path / "clf" / "params.npz"), params)
  loaded = features.load_classifier_features(path)
  np.testing.assert_allclose(loaded(jnp.asarray(val_images[:5])), feats, rtol=1e-6)


@pytest.mark.parametrize("keep", [0, 5, 0.5, -30])
def test_a_cut_parameter_file_is_named(tmp_path, keep):
  """A cut .npz (or one with a changed byte: its members' CRC-32 is checked) is refused naming the
  file, and `save_params` never leaves one: it writes atomically."""
  path = features.save_params(str(tmp_path / "clf.npz"), {"Dense_0": {"kernel": np.ones((64, 64))}})
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    if keep == -30:  # one changed byte in the array data
      f.write(raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1]) + raw[len(raw) // 2 + 1:])
    else:
      f.write(raw[:int(keep * len(raw)) if isinstance(keep, float) else keep])
  with pytest.raises(jsonio.DamagedFileError,
                     match=rf"^{re.escape(path)} is not a whole parameter file .*: write it again"):
    features.load_params(path)


def test_host_features_run_any_extractor_on_numpy_and_check_its_output():
  """A feature hook's extractor (numpy in, anything np.asarray reads out) as a features_fn: numpy
  float32 batches in, (B, F) float32 out, a wrong shape or NaN refused naming what it gave."""
  seen = []

  def extract(images):
    seen.append(type(images))
    return images.reshape(len(images), -1)[:, :2] * 2.0

  fn = features.host_features(extract)
  images = jnp.linspace(-1, 1, 24, dtype=jnp.float32).reshape(3, 2, 2, 2)
  out = fn(images)
  assert seen == [np.ndarray] and out.dtype == np.float32
  np.testing.assert_allclose(out, np.asarray(images).reshape(3, -1)[:, :2] * 2.0)
  np.testing.assert_allclose(features.batched_features(fn, np.asarray(images), 2), out)
  with pytest.raises(ValueError, match=r"features of shape \(3,\) for 3 images"):
    features.host_features(lambda x: x.reshape(len(x), -1).sum(1))(images)
  with pytest.raises(ValueError, match="NaN or Inf features for a batch of 3 images"):
    features.host_features(lambda x: x.reshape(len(x), -1) * np.nan)(images)


def _blobs(seed, per_cluster=30):
  rng = np.random.default_rng(seed)
  centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0], [-8.0, -8.0, 8.0]])
  truth = np.repeat(np.arange(4), per_cluster)
  points = centres[truth] + rng.normal(0, 0.5, (len(truth), 3))
  perm = rng.permutation(len(truth))
  return points[perm].astype(np.float32), truth[perm], centres


def test_kmeans_recovers_separated_clusters_deterministically():
  points, truth, _ = _blobs(0)
  centroids, labels = kmeans.kmeans(points, 4, seed=1, iters=50, chunk_size=16)
  # Labels match up to a permutation: each found cluster is exactly one true cluster.
  pairs = set(zip(labels.tolist(), truth.tolist()))
  assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4
  again = kmeans.kmeans(points, 4, seed=1, iters=50, chunk_size=16)
  np.testing.assert_array_equal(again[1], labels)
  np.testing.assert_array_equal(again[0], centroids)
  # assign: the nearest centroid, checked against a dense computation.
  queries = np.random.default_rng(2).uniform(-12, 12, (20, 3)).astype(np.float32)
  dense = np.argmin(((queries[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(kmeans.assign(queries, centroids), dense)


def test_kmeans_edge_cases_and_nearest_neighbours():
  points, _, _ = _blobs(3, per_cluster=5)
  c0, l0 = kmeans.kmeans(points, 0)
  assert c0.shape == (0, 3) and np.all(l0 == 0)
  assert np.all(kmeans.assign(points, c0) == 0)
  c1, l1 = kmeans.kmeans(points, 1)
  np.testing.assert_allclose(c1[0], points.mean(0), rtol=1e-5, atol=1e-5)
  assert np.all(l1 == 0)
  # Only 3 distinct points but k = 4: no empty clusters, no NaNs.
  dup = np.repeat(np.array([[0.0, 0], [5, 0], [0, 5]], np.float32), 4, axis=0)
  c, l = kmeans.kmeans(dup, 4, seed=0)
  assert np.all(np.isfinite(c)) and set(l.tolist()) == {0, 1, 2, 3}
  # Chunked k-NN equals a dense computation; exact copies have distance exactly 0.
  ref = points[:11]
  idx, dist = neighbours.nearest_neighbours(points, ref, 2, chunk_size=4, query_batch=7)
  dense = np.sqrt(((points[:, None] - ref[None]) ** 2).sum(-1))
  np.testing.assert_array_equal(idx[:, 0], np.argmin(dense, axis=1))
  np.testing.assert_allclose(dist, np.sort(dense, axis=1)[:, :2], rtol=1e-5, atol=1e-5)
  assert np.all(dist[:11, 0] == 0)


def test_pseudo_labels_round_trip_through_the_data_pipeline(tmp_path):
  train, _, _ = _blobs(4)
  val, _, _ = _blobs(5, per_cluster=3)
  tl, vl = kmeans.pseudo_labels(train, val, k=4, seed=0)
  path = kmeans.write_pseudo_labels(str(tmp_path / "labels" / "k4.npz"), tl, vl)
  np.testing.assert_array_equal(read_pseudo_labels(path, "train"), tl)
  np.testing.assert_array_equal(read_pseudo_labels(path, "validation"), vl)
  assert not [f for f in os.listdir(tmp_path / "labels") if f.endswith(".tmp")]
  with pytest.raises(ValueError):
    kmeans.write_pseudo_labels(str(tmp_path / "bad.npz"), np.array([-1]), vl)


def test_features_and_classifier_from_a_source_read_batch_by_batch():
  """A source (here counted) gives the features and the classifier of the array it holds, read a
  batch at a time: the classifier reads only the subset it is given (rows of LazyRows), the
  features split every batch over the mesh (8 devices: batch 5 -> 8 rows, the last padded)."""
  from counted import Counted  # pylint: disable=import-outside-toplevel
  from diffgen_jax.sharding import LazyRows, make_mesh  # pylint: disable=import-outside-toplevel
  images, labels = _easy_problem(0, 40)
  source = Counted(images)
  got = features.batched_features(features.pixel_features, source, batch_size=5, mesh=make_mesh())
  np.testing.assert_array_equal(got, images.reshape(40, -1))
  assert [len(r) for r in source.reads] == [8] * 5
  rows = np.arange(3, 40, 2)  # a subset of 19 rows
  subset = Counted(images)
  kw = dict(steps=3, seed=0, batch_size=8, width=4, feature_dim=8)
  params, accuracy = features.train_classifier(LazyRows(subset, rows), labels[rows], 2, **kw)
  want, want_accuracy = features.train_classifier(images[rows], labels[rows], 2, **kw)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert accuracy == want_accuracy
  read = np.concatenate(subset.reads)
  assert set(read) == set(rows) and max(len(r) for r in subset.reads) <= 8
  with pytest.raises(ValueError, match="images"):  # uint8 rows are refused as they are read
    features.train_classifier(LazyRows(Counted((images * 100).astype(np.uint8)), rows),
                              labels[rows], 2, **kw)
