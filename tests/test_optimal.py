"""The exact empirical optimal denoiser and the error-prone denoiser y_delta."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counted import Counted  # tests/counted.py
from diffgen_jax import edm
from diffgen_jax.optimal import empirical_optimal_denoiser, error_prone_denoiser
from diffgen_jax.sharding import make_mesh


def reference(train, x, sigma):
  """Dense float64 numpy posterior mean: (B, N, D) differences, softmax over N, weighted sum."""
  train = np.asarray(train, np.float64).reshape(len(train), -1)
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  sigma = np.broadcast_to(np.asarray(sigma, np.float64), (len(x),))
  out = np.empty_like(x)
  for i in range(len(x)):
    logits = -np.sum((x[i][None, :] - train) ** 2, axis=1) / (2 * sigma[i] ** 2)
    w = np.exp(logits - logits.max())
    out[i] = w @ train / w.sum()
  return out


def _data(key, n, d):
  return np.asarray(jax.random.uniform(jax.random.key(key), (n, d), minval=-1.0, maxval=1.0))


def _queries(train, sigmas, b_near, b_rand, seed):
  """For every sigma: b_near queries y_i + sigma n and b_rand uniform queries in [-1.2, 1.2]."""
  rng = np.random.default_rng(seed)
  n, d = train.shape
  xs, ss = [], []
  for s in sigmas:
    idx = rng.integers(0, n, b_near)
    xs.append(train[idx] + s * rng.standard_normal((b_near, d)))
    xs.append(rng.uniform(-1.2, 1.2, (b_rand, d)))
    ss.append(np.full(b_near + b_rand, s))
  return np.concatenate(xs).astype(np.float32), np.concatenate(ss).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# (a) float32 accuracy against a float64 dense reference at every sigma of the gap grid.


@pytest.mark.parametrize("n,d", [(200, 2), (100, 16), (40, 3072)])
def test_float32_matches_float64_reference_on_gap_grid(n, d):
  train = _data(n + d, n, d)
  sigmas = edm.gap_sigma_grid()
  x, s = _queries(train, sigmas, 3, 3, seed=d)
  denoise = empirical_optimal_denoiser(train, chunk_size=64)
  got = np.asarray(denoise(jnp.asarray(x), jnp.asarray(s)))
  want = reference(train, x, s)
  err = np.abs(got - want).reshape(len(sigmas), -1).max(axis=1)
  assert err.max() <= 1e-3, f"worst sigma {sigmas[err.argmax()]}: {err.max()}"


# (b) float64 option, with x64 switched on only inside the test.


def test_float64_option_matches_reference():
  train = _data(5, 60, 16)
  sigmas = edm.gap_sigma_grid()[::4]
  with jax.enable_x64(True):
    x, s = _queries(train, sigmas, 2, 2, seed=0)
    denoise = empirical_optimal_denoiser(train, chunk_size=16, dtype=jnp.float64)
    got = denoise(jnp.asarray(x, jnp.float64), jnp.asarray(s, jnp.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), reference(train, x, s), rtol=0, atol=1e-10)
  assert not jax.config.jax_enable_x64


# (c) limits with known answers.


def _separated(n=24, d=8, seed=0):
  """Points on a grid of spacing 1: every pair at distance >= 1."""
  rng = np.random.default_rng(seed)
  pts = rng.choice(5 ** 3, n, replace=False)
  base = np.stack([pts // 25, (pts // 5) % 5, pts % 5], 1).astype(np.float32) * 0.5 - 1.0
  extra = rng.uniform(-1, 1, (n, d - 3)).astype(np.float32) * 0.05
  return np.concatenate([base * 2.0, extra], 1).astype(np.float32)


@pytest.mark.parametrize("chunk_size,sharded", [(5, False), (2048, False), (3, True)])
def test_small_sigma_returns_nearest_training_point_exactly(chunk_size, sharded):
  train = _separated()
  rng = np.random.default_rng(1)
  idx = rng.integers(0, len(train), 16)
  x = (train[idx] + 0.2 * rng.standard_normal(train[idx].shape)).astype(np.float32)
  nearest = np.argmin(((x[:, None] - train[None]) ** 2).sum(-1), axis=1)
  mesh = make_mesh() if sharded else None
  denoise = empirical_optimal_denoiser(train, chunk_size=chunk_size, mesh=mesh)
  got = np.asarray(denoise(jnp.asarray(x), 1e-4))
  np.testing.assert_array_equal(got, train[nearest])  # bitwise


def test_large_sigma_returns_mean_and_class_mean():
  train = _data(2, 90, 16)
  labels = np.arange(90) % 3
  x = jnp.asarray(_data(3, 6, 16))
  got = empirical_optimal_denoiser(train, chunk_size=32)(x, 1e4)
  np.testing.assert_allclose(got, np.broadcast_to(train.mean(0), (6, 16)), atol=1e-5)
  cond = empirical_optimal_denoiser(train, labels, chunk_size=32)
  q = np.array([0, 1, 2, 2, 1, 0])
  got = cond(x, 1e4, jnp.asarray(q))
  class_means = np.stack([train[labels == c].mean(0) for c in range(3)])
  np.testing.assert_allclose(got, class_means[q], atol=1e-5)


# (d) finite everywhere.


def test_finite_for_extreme_sigmas_and_far_queries():
  train = _data(4, 50, 3072)
  rng = np.random.default_rng(0)
  x = np.concatenate([
      train[:2],  # on training points
      rng.uniform(-1, 1, (2, 3072)),
      np.full((1, 3072), 100.0), np.full((1, 3072), -1e3),  # far from the data
      1e3 * rng.standard_normal((2, 3072)),
  ]).astype(np.float32)
  denoise = jax.jit(empirical_optimal_denoiser(train, chunk_size=16))
  for sigma in np.geomspace(1e-4, 1e4, 17):
    out = np.asarray(denoise(jnp.asarray(x), sigma))
    assert np.all(np.isfinite(out)), sigma
    # A convex combination of training points stays inside their bounding box.
    assert np.all(out >= train.min(0) - 1e-5) and np.all(out <= train.max(0) + 1e-5), sigma


# (e) class-conditional.


def test_class_conditional_equals_denoiser_of_class_subset():
  train = _data(6, 70, 5)
  labels = np.random.default_rng(0).integers(0, 4, 70)
  x, s = _queries(train, [0.05, 0.3, 1.0, 3.0], 3, 3, seed=2)
  q = np.random.default_rng(1).integers(0, 4, len(x))
  got = np.asarray(empirical_optimal_denoiser(train, labels, chunk_size=8)(
      jnp.asarray(x), jnp.asarray(s), jnp.asarray(q)))
  for c in range(4):
    subset = empirical_optimal_denoiser(train[labels == c], chunk_size=8)
    sel = q == c
    want = np.asarray(subset(jnp.asarray(x[sel]), jnp.asarray(s[sel])))
    np.testing.assert_allclose(got[sel], want, atol=1e-6)
    np.testing.assert_allclose(got[sel], reference(train[labels == c], x[sel], s[sel]), atol=1e-5)
  # labels=None would be the unconditional mean, another question: refused, naming labels.
  with pytest.raises(ValueError, match=r"labels=None for a class-conditional denoiser .* pass "
                                       r"labels, \(24,\) integers"):
    empirical_optimal_denoiser(train, labels)(jnp.asarray(x), jnp.asarray(s))


# (f) chunking, (g) sharding.


@pytest.fixture(scope="module")
def chunk_case():
  train = _data(7, 50, 12)
  labels = np.arange(50) % 3
  x, s = _queries(train, [0.02, 0.2, 0.7, 2.0, 20.0], 2, 2, seed=3)
  q = np.arange(len(x)) % 3
  base = empirical_optimal_denoiser(train, labels, chunk_size=50)
  want = np.asarray(base(jnp.asarray(x), jnp.asarray(s), jnp.asarray(q)))
  np.testing.assert_allclose(want, np.concatenate(
      [reference(train[labels == q[i]], x[i:i + 1], s[i]) for i in range(len(x))]), atol=1e-5)
  return train, labels, x, s, q, want


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 64])
def test_chunk_size_independence(chunk_case, chunk_size):
  train, labels, x, s, q, want = chunk_case
  got = empirical_optimal_denoiser(train, labels, chunk_size=chunk_size)(
      jnp.asarray(x), jnp.asarray(s), jnp.asarray(q))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mesh_shape,chunk_size", [((8, 1), 4), ((8, 1), 2048), ((4, 2), 3)])
def test_sharded_equals_unsharded(chunk_case, mesh_shape, chunk_size):
  train, labels, x, s, q, want = chunk_case
  mesh = make_mesh(*mesh_shape)
  assert mesh.shape["data"] == mesh_shape[0]
  denoise = empirical_optimal_denoiser(train, labels, chunk_size=chunk_size, mesh=mesh)
  got = denoise(jnp.asarray(x), jnp.asarray(s), jnp.asarray(q))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  got_jit = jax.jit(denoise)(jnp.asarray(x), jnp.asarray(s), jnp.asarray(q))
  np.testing.assert_allclose(got_jit, want, rtol=0, atol=1e-6)


# (h) transformations and sigma shapes.


def test_vmap_over_sigmas_jit_and_per_query_sigma():
  train = _data(8, 40, 6).reshape(40, 2, 3)  # image-shaped items
  x = jnp.asarray(_data(9, 5, 6).reshape(5, 2, 3))
  denoise = empirical_optimal_denoiser(train, chunk_size=16)
  sigmas = jnp.asarray([0.05, 0.3, 1.0, 4.0])
  loop = np.stack([np.asarray(denoise(x, s)) for s in sigmas])
  assert loop.shape == (4, 5, 2, 3)
  np.testing.assert_allclose(
      loop.reshape(4, 5, 6), np.stack([reference(train, x, s) for s in sigmas]), atol=1e-5)
  np.testing.assert_allclose(jax.vmap(denoise, in_axes=(None, 0))(x, sigmas), loop, atol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(denoise, in_axes=(None, 0)))(x, sigmas), loop,
                             atol=1e-6)
  np.testing.assert_allclose(jax.jit(denoise)(x, sigmas[1]), loop[1], atol=1e-6)
  per_query = jnp.asarray([0.05, 0.3, 1.0, 4.0, 0.3])
  want = np.stack([loop[[0, 1, 2, 3, 1][i], i] for i in range(5)])
  np.testing.assert_allclose(denoise(x, per_query), want, atol=1e-6)
  np.testing.assert_allclose(jax.jit(denoise)(x, per_query), want, atol=1e-6)


# (i) streaming: no (queries x training set) array anywhere in the program.


def _all_avals(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield v.aval
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _all_avals(inner)


def test_streaming_memory_structure():
  n, d, b, chunk = 20_000, 64, 16, 256
  # Non-constant data: an all-zero training set lets XLA fold it into splats and skews the counts.
  train = np.random.default_rng(0).uniform(-1, 1, (n, d)).astype(np.float32)
  denoise = empirical_optimal_denoiser(train, chunk_size=chunk)
  x = jnp.zeros((b, d))
  closed = jax.make_jaxpr(denoise)(x, 1.0)
  shapes = [tuple(a.shape) for a in _all_avals(closed.jaxpr) if hasattr(a, "shape")]
  assert (b, chunk) in shapes  # the per-chunk logits exist ...
  big = [s for s in shapes if b in s and int(np.prod(s)) >= b * n // 4]
  assert not big, big  # ... and nothing of size ~ queries x N does.
  # XLA's own accounting agrees where the backend reports it (CPU: ~0.15 MB of temporaries, the
  # per-chunk slices; a dense (B, N, D) implementation reports ~6 MB).
  analysis = jax.jit(denoise).lower(x, 1.0).compile().memory_analysis()
  if analysis is not None and getattr(analysis, "temp_size_in_bytes", 0) > 0:
    assert analysis.temp_size_in_bytes < b * n * 4 / 4, analysis.temp_size_in_bytes


# (j) the error-prone denoiser y_delta.


def test_error_prone_denoiser():
  train = _data(10, 30, 4)
  optimal = empirical_optimal_denoiser(train, chunk_size=8)
  x, s = _queries(train, [0.01, 0.3, 1.0, 5.0], 2, 2, seed=4)
  x, s = jnp.asarray(x), jnp.asarray(s)
  np.testing.assert_array_equal(error_prone_denoiser(optimal, 0.0)(x, s), optimal(x, s))
  delta = 0.7
  got = np.asarray(error_prone_denoiser(optimal, delta)(x, s))
  var = np.asarray(s, np.float64)[:, None] ** 2
  want = (delta ** 2 * np.asarray(x, np.float64) +
          var * reference(train, x, np.sqrt(var[:, 0] + delta ** 2))) / (var + delta ** 2)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # sigma -> 0: the data are Gaussians of std delta, so the clean point is the query itself.
  np.testing.assert_allclose(error_prone_denoiser(optimal, 1.0)(x, 1e-4), x, atol=1e-6)
  with pytest.raises(ValueError, match="delta"):
    error_prone_denoiser(optimal, -0.1)


def test_error_prone_single_point_closed_form():
  y0 = np.array([[0.3, -0.8, 0.5]], np.float32)
  optimal = empirical_optimal_denoiser(y0)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)), jnp.float32)
  for delta in (0.1, 1.0, 2.2):
    for sigma in (0.01, 0.5, 3.0, 80.0):
      want = (delta ** 2 * np.asarray(x) + sigma ** 2 * y0) / (sigma ** 2 + delta ** 2)
      np.testing.assert_allclose(error_prone_denoiser(optimal, delta)(x, sigma), want,
                                 rtol=1e-5, atol=1e-6)


# (k) bad input.


def test_bad_input_raises_clear_errors():
  train = _data(11, 10, 4)
  with pytest.raises(ValueError, match="non-empty"):
    empirical_optimal_denoiser(np.zeros((0, 4), np.float32))
  with pytest.raises(ValueError, match="NaN or Inf"):
    empirical_optimal_denoiser(np.full((3, 4), np.nan, np.float32))
  with pytest.raises(ValueError, match="chunk_size"):
    empirical_optimal_denoiser(train, chunk_size=0)
  denoise = empirical_optimal_denoiser(train)
  with pytest.raises(ValueError, match="item shape"):
    denoise(jnp.zeros((2, 5)), 1.0)
  for sigma in (0.0, -1.0, jnp.asarray([1.0, 0.0])):
    with pytest.raises(ValueError, match="sigma must be > 0"):
      denoise(jnp.zeros((2, 4)), sigma)
  cond = empirical_optimal_denoiser(train, np.array([0, 1] * 5))
  with pytest.raises(ValueError, match=r"labels \[7\] have no training points"):
    cond(jnp.zeros((2, 4)), 1.0, jnp.asarray([0, 7]))
  with pytest.raises(ValueError, match="train_labels"):
    empirical_optimal_denoiser(train, np.array([0, 1]))
  with pytest.raises(ValueError, match="train_labels must be >= 0"):
    empirical_optimal_denoiser(train, -np.ones(10, np.int32))
  assert not jax.config.jax_enable_x64
  with pytest.raises(ValueError, match="jax_enable_x64"):
    empirical_optimal_denoiser(train, dtype=jnp.float64)
  with pytest.raises(ValueError, match="dtype"):
    empirical_optimal_denoiser(train, dtype=jnp.float16)


# (l) a training set given as a source, read where it lives.


def _uint8_split(n=45, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (n, 3, 2, 1), dtype=np.uint8)
  return pixels, np.random.default_rng(seed + 1).integers(0, 3, n)


@pytest.mark.parametrize("mesh_shape", [None, (8, 1), (4, 2)])
def test_source_equals_array_bitwise_and_is_read_twice_a_block_at_a_time(mesh_shape):
  """A lazily decoded split (uint8 pixels through to_unit_range) gives the bits of its decoded
  array: every row is read exactly twice (the centre's sum, then its shard), never more than a
  chunk at once, and no process holds more than one shard of rows."""
  from diffgen_jax import data, sharding  # pylint: disable=import-outside-toplevel
  pixels, _ = _uint8_split()
  counted = Counted(pixels)
  source = sharding.LazyRows(counted, np.arange(len(pixels)), transform=data.to_unit_range)
  whole = data.to_unit_range(pixels)
  mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
  x, s = _queries(whole.reshape(45, -1), [0.01, 0.3, 3.0], 2, 2, seed=5)
  x = x.reshape(-1, 3, 2, 1)
  sharding.rows_built.clear()
  lazy = empirical_optimal_denoiser(source, chunk_size=4, mesh=mesh)
  reads = np.concatenate(counted.reads)
  assert np.array_equal(np.bincount(reads, minlength=45), np.full(45, 2))
  assert max(len(r) for r in counted.reads) <= 4
  shards = 1 if mesh is None else mesh.shape["data"]
  if mesh is not None:
    assert sharding.rows_built["shard"] <= -(-45 // shards) + 4
  want = empirical_optimal_denoiser(whole, chunk_size=4, mesh=mesh)(jnp.asarray(x), jnp.asarray(s))
  np.testing.assert_array_equal(lazy(jnp.asarray(x), jnp.asarray(s)), want)


def test_source_limits_small_and_large_sigma():
  """sigma -> 0: the nearest training point, bit for bit; sigma -> inf: the (class) mean."""
  from diffgen_jax import data, sharding  # pylint: disable=import-outside-toplevel
  pixels, labels = _uint8_split(60, seed=3)
  whole = data.to_unit_range(pixels)
  source = sharding.LazyRows(pixels, np.arange(60), transform=data.to_unit_range)
  flat = whole.reshape(60, -1)
  rng = np.random.default_rng(4)
  x = (whole[:8] + 0.01 * rng.standard_normal(whole[:8].shape)).astype(np.float32)
  nearest = np.argmin(((x.reshape(8, 1, -1) - flat[None]) ** 2).sum(-1), axis=1)
  q = labels[:8].astype(np.int32)
  for mesh in (None, make_mesh()):
    denoise = empirical_optimal_denoiser(source, chunk_size=7, mesh=mesh)
    np.testing.assert_array_equal(denoise(jnp.asarray(x), 1e-4), whole[nearest])
    np.testing.assert_allclose(denoise(jnp.asarray(x), 1e4), np.broadcast_to(whole.mean(0), x.shape),
                               atol=1e-5)
    cond = empirical_optimal_denoiser(source, labels, chunk_size=7, mesh=mesh)
    np.testing.assert_array_equal(cond(jnp.asarray(x), 1e-4, jnp.asarray(q)), whole[:8])
    class_means = np.stack([whole[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(cond(jnp.asarray(x), 1e4, jnp.asarray(q)), class_means[q],
                               atol=1e-5)


def test_class_conditional_layout_by_label_and_chunks_skipped():
  """The rows are laid out by label, each class in its order; a chunk is read only when it holds
  a point of some query's class (or any valid point, for an unconditional query)."""
  from diffgen_jax import optimal  # pylint: disable=import-outside-toplevel
  train = _data(12, 30, 4)
  labels = np.random.default_rng(0).integers(0, 3, 30)
  cond = empirical_optimal_denoiser(train, labels, chunk_size=4)
  leaves = cond.args[0]
  order = np.argsort(labels, kind="stable")
  np.testing.assert_array_equal(np.asarray(leaves["train_labels"])[:30], labels[order])
  np.testing.assert_array_equal(np.asarray(leaves["train"])[:30], train[order])
  needed = lambda q, chunk: bool(optimal._chunk_needed(jnp.asarray(q, jnp.int32),
                                                       jnp.asarray(chunk, jnp.int32)))
  assert needed([1], [0, 1, 1, 2]) and needed([0, 2], [2, 2, -1, -1]) and needed([-2], [0, 0, 0, 0])
  assert not needed([1], [2, 2, 3, 3]) and not needed([0, 3], [1, 2, 2, 2])
  assert not needed([-2], [-1, -1, -1, -1]) and not needed([0], [-1, -1, -1, -1])
  # A batch of one class equals the denoiser of that class alone.
  x, s = _queries(train, [0.05, 0.5, 5.0], 2, 2, seed=6)
  for c in range(3):
    got = cond(jnp.asarray(x), jnp.asarray(s), jnp.full((len(x),), c, jnp.int32))
    np.testing.assert_allclose(got, reference(train[labels == c], x, s), atol=1e-5)


def test_lazy_source_value_checks():
  from diffgen_jax import sharding  # pylint: disable=import-outside-toplevel
  bad = np.zeros((10, 2, 2, 1), np.float32)
  bad[7, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN or Inf"):
    empirical_optimal_denoiser(sharding.LazyRows(bad, np.arange(10)), chunk_size=3)
  with pytest.raises(ValueError, match=r"got values in \[0, 255\]"):
    empirical_optimal_denoiser(sharding.LazyRows(np.arange(40.0).reshape(10, 2, 2, 1) * 255 / 39,
                                                 np.arange(10)), chunk_size=3)
  with pytest.raises(ValueError, match="floating point"):
    empirical_optimal_denoiser(sharding.LazyRows(np.zeros((10, 4), np.uint8), np.arange(10)))


def test_posterior_statistics_sharded_equals_unsharded():
  from diffgen_jax.optimal import posterior_statistics  # pylint: disable=import-outside-toplevel
  train = _data(13, 40, 6)
  labels = np.arange(40) % 3
  x, s = _queries(train, [0.02, 0.3, 3.0], 2, 2, seed=7)
  q = jnp.asarray(np.arange(len(x)) % 3)
  for lab, ql in ((None, None), (labels, q)):
    want = posterior_statistics(train, lab, chunk_size=4)(jnp.asarray(x), jnp.asarray(s), ql)
    for mesh_shape in ((8, 1), (4, 2)):
      got = posterior_statistics(train, lab, chunk_size=3, mesh=make_mesh(*mesh_shape))(
          jnp.asarray(x), jnp.asarray(s), ql)
      for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


# (m) 2 processes x 4 devices equal 1 process x 8 devices.

_TWO_PROCESS_YSTAR = """
from diffgen_jax import optimal
rng = np.random.default_rng(0)
N = 75
whole = rng.uniform(-1, 1, (N, 2, 3)).astype(np.float32)
labels = rng.integers(0, 3, N)

from counted import Counted  # tests/counted.py
source = Counted(whole)
mesh = sharding.make_mesh()
x = rng.uniform(-1.2, 1.2, (16, 2, 3)).astype(np.float32)
sigma = np.geomspace(0.01, 10, 16).astype(np.float32)
q = rng.integers(0, 3, 16).astype(np.int32)
sharding.rows_built.clear()
uncond = optimal.empirical_optimal_denoiser(source, chunk_size=4, mesh=mesh)
shard, read = sharding.rows_built["shard"], np.concatenate(source.reads)
source.reads.clear()
cond = optimal.empirical_optimal_denoiser(source, labels, chunk_size=4, mesh=mesh)
read_cond = np.concatenate(source.reads)
jitted = jax.jit(lambda d, x, s, l: d(x, s, l))(cond, sharding.put_batch(x, mesh),
                                                sharding.put_batch(sigma, mesh),
                                                sharding.put_batch(q, mesh))
stats = optimal.posterior_statistics(source, labels, chunk_size=4, mesh=mesh)(x, sigma, q)
out = dict(eager=np.asarray(uncond(x, sigma)), eager_cond=np.asarray(cond(x, sigma, q)),
           jitted=sharding.fetch(jitted), shard=np.array(shard), read=read, read_cond=read_cond,
           entropy=np.asarray(stats.entropy), participation=np.asarray(stats.participation))
# Without a mesh every process reads every row and sums on its own (nothing added over processes).
out["none"] = np.asarray(optimal.empirical_optimal_denoiser(whole, chunk_size=4)(x, sigma))
out["none_cond"] = np.asarray(optimal.empirical_optimal_denoiser(whole, labels, chunk_size=4)(
    x, sigma, q))
report(**out)
"""


def test_two_processes_equal_one_and_read_only_their_rows(tmp_path):
  """y* and its posterior statistics from a source split over 2 processes x 4 devices equal
  1 x 8 (and mesh=None), eagerly with host queries and inside jit with a batch split over the
  data axis; each process reads only the rows its devices hold, twice, and builds at most
  ceil(N / (P D)) + chunk rows at once (N = 75 over 8 devices in chunks of 4: shards of 12 rows,
  process 0 rows 0..47, process 1 rows 48..74 and padding)."""
  import multiprocess  # pylint: disable=import-outside-toplevel  (tests/multiprocess.py)
  two = multiprocess.run(_TWO_PROCESS_YSTAR, tmp_path / "two", processes=2, devices=4)
  (one,) = multiprocess.run(_TWO_PROCESS_YSTAR, tmp_path / "one", processes=1, devices=8)
  rng = np.random.default_rng(0)  # the body's labels: its second draw
  rng.uniform(-1, 1, (75, 2, 3))
  labels = rng.integers(0, 3, 75)
  order = np.argsort(labels, kind="stable")
  spans = [np.arange(0, 48), np.arange(48, 75)]
  for p, r in enumerate(two):
    assert int(r["shard"]) == 12 <= -(-75 // 8) + 4
    np.testing.assert_array_equal(np.bincount(r["read"], minlength=75),
                                  2 * np.isin(np.arange(75), spans[p]))
    np.testing.assert_array_equal(np.bincount(r["read_cond"], minlength=75),
                                  2 * np.isin(np.arange(75), order[spans[p]]))
    for key in ("eager", "eager_cond", "jitted", "entropy", "participation"):
      np.testing.assert_allclose(r[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_array_equal(np.bincount(one["read"], minlength=75), np.full(75, 2))
  np.testing.assert_allclose(one["jitted"], one["eager_cond"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(one["eager"], one["none"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one["eager_cond"], one["none_cond"], rtol=1e-5, atol=1e-6)
  for r in two:  # mesh=None on each of 2 processes: the one-process bits
    np.testing.assert_array_equal(r["none"], one["none"])
    np.testing.assert_array_equal(r["none_cond"], one["none_cond"])
