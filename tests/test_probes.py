"""Trajectory probes, posterior-weight statistics and sample memorization (known answers)."""

import jax
import numpy as np
import pytest

from diffgen_jax import samplers
from diffgen_jax.evaluation import probes
from diffgen_jax.evaluation.features import pixel_features
from diffgen_jax.optimal import empirical_optimal_denoiser, posterior_statistics
from diffgen_jax.sharding import make_mesh


def _uniform(seed, n, shape=(4, 4, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _dense_weights(train, x, sigma, train_labels=None, labels=None):
  t = train.reshape(len(train), -1).astype(np.float64)
  q = x.reshape(len(x), -1).astype(np.float64)
  logits = -((q[:, None] - t[None]) ** 2).sum(-1) / (2 * sigma ** 2)
  if labels is not None:
    logits = np.where(train_labels[None, :] == labels[:, None], logits, -np.inf)
  w = np.exp(logits - logits.max(1, keepdims=True))
  return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 100.0])
def test_posterior_statistics_match_dense_reference(sigma):
  train = _uniform(0, 50)
  labels = np.arange(50) % 3
  x = train[:6] + 0.3 * np.random.default_rng(1).standard_normal(train[:6].shape).astype(np.float32)
  for train_labels, query_labels in ((None, None), (labels, labels[:6])):
    stats = posterior_statistics(train, train_labels, chunk_size=16)(x, sigma, query_labels)
    w = _dense_weights(train, x, sigma, labels, query_labels)
    entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=1)
    np.testing.assert_allclose(stats.entropy, entropy, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(stats.participation, 1 / np.sum(w ** 2, axis=1), rtol=1e-4)
    np.testing.assert_allclose(stats.max_weight, w.max(1), rtol=1e-4)
  if sigma == 100.0:  # nearly uniform over the query's class: 17, 17 or 16 points
    np.testing.assert_allclose(stats.effective_number, np.bincount(labels)[labels[:6]], rtol=1e-3)


def test_early_stopped_outputs_are_the_trajectory_predictions():
  train = _uniform(2, 8)
  optimal = empirical_optimal_denoiser(train)
  noise = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
  traj = samplers.sample(optimal, noise, num_steps=5, return_trajectory=True).trajectory
  outputs = traj.denoised
  assert traj.sigmas.shape == (5,) and outputs.shape == (5, 3, 4, 4, 1)
  for i in (0, 3):
    stopped = samplers.sample(optimal, noise, num_steps=5, stop_step=i).samples
    np.testing.assert_allclose(outputs[i], stopped, rtol=1e-5, atol=1e-5)


def test_trajectory_overlap_known_limits():
  train = _uniform(4, 16)
  val = _uniform(5, 8)
  optimal = empirical_optimal_denoiser(train)
  noise = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
  traj = samplers.sample(optimal, noise, num_steps=12, return_trajectory=True).trajectory
  out = probes.trajectory_overlap(traj.x, traj.sigmas, train, train[:8], val, batch_size=32,
                                  chunk_size=8)
  sig = np.asarray(traj.sigmas)
  late = sig < 0.05
  first = 0  # sigma = 80: the posterior is nearly uniform over the 16 training points
  assert late.sum() >= 2
  # The optimal denoiser's own trajectories end on training points: one point dominates.
  np.testing.assert_allclose(out["trajectory"]["effective_number"][late], 1.0, atol=1e-3)
  assert np.all(out["trajectory"]["effective_number"][first] > 12)
  # Noisy training samples at small sigma: the nearest training image is their own clean image.
  small = np.argmin(sig)
  assert np.all(out["noisy_train"]["nn_rms"][small] < 0.01)
  rel = out["noisy_train"]["relative_nn"][small]
  assert np.all((rel > 0.3) & (rel < 2.0))  # = ||n|| / sqrt(D), D = 16
  np.testing.assert_allclose(out["noisy_train"]["effective_number"][small], 1.0, atol=1e-3)
  # Noisy validation samples at small sigma are far from every training point relative to sigma.
  assert np.all(out["noisy_val"]["relative_nn"][small] > 50)
  for group in out.values():
    assert group["nn_rms"].shape[0] == 12


def test_nn_cosine_similarity_and_probe():
  ref = np.eye(4, dtype=np.float32)
  q = np.array([[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, -1]], np.float32)
  np.testing.assert_allclose(probes.nn_cosine_similarity(q, ref), [1.0, np.sqrt(0.5), 0.0],
                             atol=1e-6)

  train = _uniform(6, 12)
  val = _uniform(7, 12)
  optimal = empirical_optimal_denoiser(train)
  noise = jax.random.normal(jax.random.key(2), (4, 4, 4, 1))
  traj = samplers.sample(optimal, noise, num_steps=4, return_trajectory=True).trajectory
  res = probes.nn_similarity_probe(optimal, pixel_features, traj.sigmas, traj.denoised, train[:4],
                                   val[:4], train.reshape(12, -1), val.reshape(12, -1),
                                   batch_size=8)
  assert set(res) == {f"{a}/{b}" for a in ("trajectory", "train", "val") for b in ("train", "val")}
  for v in res.values():
    assert v.shape == (4,) and np.all(np.abs(v) <= 1 + 1e-6)
  # Batches split over the 8 devices (batch 5 rounded up to 8; the last batch padded): the same.
  split = probes.nn_similarity_probe(optimal, pixel_features, traj.sigmas, traj.denoised,
                                     train[:4], val[:4], train.reshape(12, -1), val.reshape(12, -1),
                                     batch_size=5, mesh=make_mesh())
  for k, v in res.items():
    np.testing.assert_allclose(split[k], v, atol=1e-6, err_msg=k)
  # At the smallest sigma the optimal denoiser returns training images: similarity 1 to train.
  assert res["train/train"][-1] == pytest.approx(1.0, abs=1e-5)
  assert res["val/train"][-1] == pytest.approx(1.0, abs=1e-5)


def test_nn_cosine_similarity_excludes_the_image_a_prediction_came_from():
  """A self-match is not counted (issue 26): with its own row excluded, a query equal to a
  reference row gets its cosine to the most similar OTHER row; -1 excludes nothing."""
  ref = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
  queries = ref[[0, 1, 2]]
  sims = probes.nn_cosine_similarity(queries, ref, exclude=np.array([0, -1, 2]))
  np.testing.assert_allclose(sims, [0.6, 1.0, 0.8], atol=1e-6)
  np.testing.assert_allclose(probes.nn_cosine_similarity(queries, ref), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="one row per query"):
    probes.nn_cosine_similarity(queries, ref, exclude=np.array([0]))
