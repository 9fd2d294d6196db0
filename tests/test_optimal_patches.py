"""Known answers for the analytic ladder (analytic.md section 1): LS, ELS, PSPC-square, Gaussian.

The float64 references are independent brute-force numpy implementations written from the formulas
(loops over pixels and windows, explicit softmax), not the streaming code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen_jax import data, edm, optimal, optimal_patches, sharding
from diffgen_jax.optimal import (empirical_optimal_denoiser, equivariant_local_denoiser,
                                 gaussian_denoiser, local_denoiser, patch_composite_denoiser)
from diffgen_jax.sharding import make_mesh

H, W, C = 5, 4, 2


def _data(n=9, seed=0, shape=(H, W, C)):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (n,) + shape).astype(np.float32)


def _softmax_mean(dist2, values, sigma):
  """sum_i softmax_i(-dist2 / 2 sigma^2) values_i in float64 (dist2 (M,), values (M, ...))."""
  logits = -dist2 / (2.0 * sigma ** 2)
  w = np.exp(logits - logits.max())
  w /= w.sum()
  return np.tensordot(w, values, axes=1)


def _pad(a, r, circular=False):
  """(..., H, W, C) padded by r on both image axes (zeros, or wrapped)."""
  width = [(0, 0)] * (a.ndim - 3) + [(r, r), (r, r), (0, 0)]
  return np.pad(a, width, mode="wrap" if circular else "constant")


def ls_reference(train, x, sigma, k):
  y, r = train.astype(np.float64), k // 2
  yp, xp = _pad(y, r), _pad(x.astype(np.float64), r)
  out = np.empty(x.shape)
  for i in range(x.shape[0]):
    for p in range(H):
      for q in range(W):
        d2 = np.sum((yp[:, p:p + k, q:q + k] - xp[i, p:p + k, q:q + k]) ** 2, axis=(1, 2, 3))
        out[i, p, q] = _softmax_mean(d2, y[:, p, q], sigma[i])
  return out


def pspc_reference(train, x, sigma, k):
  y, r = train.astype(np.float64), k // 2
  yp, xp = _pad(y, r), _pad(x.astype(np.float64), r)
  acc = np.zeros((x.shape[0], H + 2 * r, W + 2 * r, C))
  count = np.zeros((H + 2 * r, W + 2 * r, 1))
  for i in range(x.shape[0]):
    for p in range(H):
      for q in range(W):  # window centred at (p, q): padded rows p..p+k
        d2 = np.sum((yp[:, p:p + k, q:q + k] - xp[i, p:p + k, q:q + k]) ** 2, axis=(1, 2, 3))
        acc[i, p:p + k, q:q + k] += _softmax_mean(d2, yp[:, p:p + k, q:q + k], sigma[i])
        if i == 0:
          count[p:p + k, q:q + k] += 1
  return (acc / count)[:, r:r + H, r:r + W]


def els_reference(train, x, sigma, k, boundary):
  y, r = train.astype(np.float64), k // 2
  circ = boundary == "circular"
  yp, xp = _pad(y, r, circ), _pad(x.astype(np.float64), r, circ)
  cand = np.stack([yp[:, p:p + k, q:q + k] for p in range(H) for q in range(W)], 1)
  cand = cand.reshape(-1, k * k * C)  # (N H W, k k C), image-major
  centres = y.reshape(-1, C)
  out = np.empty(x.shape)
  for i in range(x.shape[0]):
    for p in range(H):
      for q in range(W):
        d2 = np.sum((cand - xp[i, p:p + k, q:q + k].reshape(-1)) ** 2, axis=1)
        out[i, p, q] = _softmax_mean(d2, centres, sigma[i])
  return out


def _noisy_queries(train, sigmas, per_sigma=1, seed=1):
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(train), (len(sigmas), per_sigma)).reshape(-1)
  s = np.repeat(sigmas, per_sigma)
  x = train[idx] + s[:, None, None, None] * rng.standard_normal((len(s),) + train.shape[1:])
  return x.astype(np.float32), s.astype(np.float32)


# ---- float32 against the float64 references on the 64-point gap grid ---------------------------

GRID = edm.gap_sigma_grid(64)


@pytest.mark.parametrize("kind,k", [("ls", 3), ("pspc", 3), ("els_circular", 3), ("els_zeros", 3)])
def test_float32_matches_float64_reference_on_gap_grid(kind, k):
  train = _data(8)
  x, s = _noisy_queries(train, GRID)
  if kind == "ls":
    ours, ref = local_denoiser(train, k, chunk_size=3), ls_reference(train, x, s, k)
  elif kind == "pspc":
    ours, ref = patch_composite_denoiser(train, k, chunk_size=3), pspc_reference(train, x, s, k)
  else:
    boundary = kind.split("_")[1]
    ours = equivariant_local_denoiser(train, k, boundary=boundary, chunk_size=3)
    ref = els_reference(train, x, s, k, boundary)
  got = np.asarray(ours(x, s))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)


def test_float32_matches_float64_reference_on_digits(monkeypatch):
  # Real images (sklearn's bundled 8x8 digits: flat backgrounds, many near-identical windows).
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  train = (load_digits().images[:24] / 8.0 - 1.0).astype(np.float32)[..., None]
  for name, value in (("H", 8), ("W", 8), ("C", 1)):  # the references read the module's shape
    monkeypatch.setitem(globals(), name, value)
  x, s = _noisy_queries(train, GRID)
  for k, boundary in ((3, "circular"), (5, "zeros")):
    got = np.asarray(equivariant_local_denoiser(train, k, boundary=boundary)(x, s))
    np.testing.assert_allclose(got, els_reference(train, x, s, k, boundary), atol=1e-3, rtol=0)
  np.testing.assert_allclose(np.asarray(local_denoiser(train, 5)(x, s)),
                             ls_reference(train, x, s, 5), atol=1e-3, rtol=0)


# ---- whole-image windows reproduce y* ---------------------------------------------------------

@pytest.mark.parametrize("factory", [local_denoiser, patch_composite_denoiser])
def test_whole_image_window_reproduces_optimal_denoiser(factory):
  train = _data(10)
  x, s = _noisy_queries(train, np.array([0.05, 0.3, 1.0, 5.0]), per_sigma=2)
  k = 2 * max(H, W) - 1
  want = np.asarray(empirical_optimal_denoiser(train)(x, s))
  np.testing.assert_allclose(np.asarray(factory(train, k, chunk_size=4)(x, s)), want, atol=2e-5)
  np.testing.assert_allclose(np.asarray(factory(train, k + 6, chunk_size=4)(x, s)), want, atol=2e-5)


# ---- k = 1 LS: a per-pixel posterior ----------------------------------------------------------

def _per_pixel_posterior(train, x, sigma):
  """The posterior mean of every pixel over the N training values at that pixel (brute force)."""
  y = train.astype(np.float64)
  want = np.empty(x.shape)
  for i in range(len(x)):
    for p in range(H):
      for q in range(W):
        d2 = np.sum((y[:, p, q] - x[i, p, q]) ** 2, axis=1)
        want[i, p, q] = _softmax_mean(d2, y[:, p, q], sigma[i])
  return want


def test_k1_local_denoiser_is_per_pixel_posterior():
  train = _data(7)
  x, s = _noisy_queries(train, np.array([0.1, 0.7, 3.0]), per_sigma=2)
  np.testing.assert_allclose(np.asarray(local_denoiser(train, 1)(x, s)),
                             _per_pixel_posterior(train, x, s), atol=1e-5)


# ---- equivariance ------------------------------------------------------------------------------

def test_circular_els_commutes_with_circular_shifts_exactly():
  train = _data(6, shape=(6, 6, 1))
  x, s = _noisy_queries(train, np.array([0.2, 1.0]), per_sigma=2)
  denoise = equivariant_local_denoiser(train, 3, boundary="circular", chunk_size=2)
  out = np.asarray(denoise(x, s))
  for shift in [(1, 0), (0, 2), (3, 5)]:
    shifted = np.asarray(denoise(np.roll(x, shift, axis=(1, 2)), s))
    np.testing.assert_array_equal(shifted, np.roll(out, shift, axis=(1, 2)))


def test_zero_padded_els_is_not_shift_equivariant_but_matches_reference():
  train = _data(5, shape=(H, W, C))
  x, s = _noisy_queries(train, np.array([0.3]), per_sigma=2)
  out = np.asarray(equivariant_local_denoiser(train, 3, boundary="zeros")(x, s))
  np.testing.assert_allclose(out, els_reference(train, x, s, 3, "zeros"), atol=1e-5)


# ---- sigma -> 0 and sigma -> infinity ----------------------------------------------------------

def _nearest_same_position_centre(train, x, k):
  y, r = train.astype(np.float64), k // 2
  yp, xp = _pad(y, r), _pad(x.astype(np.float64), r)
  out = np.empty(x.shape)
  for i in range(len(x)):
    for p in range(H):
      for q in range(W):
        d2 = np.sum((yp[:, p:p + k, q:q + k] - xp[i, p:p + k, q:q + k]) ** 2, axis=(1, 2, 3))
        out[i, p, q] = y[np.argmin(d2), p, q]
  return out


def _nearest_any_position_centre(train, x, k):
  y, r = train.astype(np.float64), k // 2
  yp, xp = _pad(y, r, True), _pad(x.astype(np.float64), r, True)
  cand = np.stack([yp[:, p:p + k, q:q + k] for p in range(H) for q in range(W)], 1).reshape(
      -1, k * k * C)
  centres = y.reshape(-1, C)
  out = np.empty(x.shape)
  for i in range(len(x)):
    for p in range(H):
      for q in range(W):
        out[i, p, q] = centres[np.argmin(np.sum((cand - xp[i, p:p + k, q:q + k].reshape(-1)) ** 2, 1))]
  return out


@pytest.mark.parametrize("sigma", [1e-4, 1e-19, 1e-30, 1e-38])
def test_small_sigma_limits(sigma):
  train = _data(8)
  x = np.clip(_data(3, seed=5) * 0.9 + 0.1 * train[:3], -1, 1)  # generic queries, no ties
  s = np.float32(sigma)
  np.testing.assert_array_equal(np.asarray(local_denoiser(train, 3)(x, s)),
                                _nearest_same_position_centre(train, x, 3).astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(equivariant_local_denoiser(train, 3, boundary="circular")(x, s)),
      _nearest_any_position_centre(train, x, 3).astype(np.float32))
  # PSPC at sigma -> 0: each window's nearest same-position window, averaged over covering windows.
  pspc = np.asarray(patch_composite_denoiser(train, 3)(x, s))
  np.testing.assert_allclose(pspc, pspc_reference(train, x, np.full(3, 1e-4), 3), atol=1e-6)
  for out in (pspc, np.asarray(gaussian_denoiser(train)(x, s))):
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("sigma", [1e4, 1e30])
def test_large_sigma_limits(sigma):
  train = _data(8)
  x = _data(3, seed=5)
  mean = train.astype(np.float64).mean(axis=0)
  for factory in (local_denoiser, patch_composite_denoiser):
    np.testing.assert_allclose(np.asarray(factory(train, 3)(x, sigma)),
                               np.broadcast_to(mean, x.shape), atol=1e-5)
  channel_mean = train.astype(np.float64).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(
      np.asarray(equivariant_local_denoiser(train, 3, boundary="circular")(x, sigma)),
      np.broadcast_to(channel_mean, x.shape), atol=1e-5)
  np.testing.assert_allclose(np.asarray(gaussian_denoiser(train)(x, sigma)),
                             np.broadcast_to(mean, x.shape), atol=1e-5)


def test_one_training_image():
  train = _data(1)
  x = _data(4, seed=3) * 3.0
  for sigma in (1e-3, 1.0, 100.0):
    for k in (1, 3):
      np.testing.assert_array_equal(np.asarray(local_denoiser(train, k)(x, sigma)),
                                    np.broadcast_to(train, x.shape))
      np.testing.assert_allclose(np.asarray(patch_composite_denoiser(train, k)(x, sigma)),
                                 np.broadcast_to(train, x.shape), atol=1e-6)


# ---- class conditioning, sharding, chunking, schedules -----------------------------------------

def test_class_conditional_equals_denoiser_of_class_subset_and_rejects_unknown_labels():
  train = _data(12)
  labels = np.array([0, 1, 2] * 4)
  x, s = _noisy_queries(train, np.array([0.2, 0.8]), per_sigma=3)
  q_labels = np.array([2, 0, 1, 0, 2, 1])  # balanced: the per-class denoisers share a compilation
  for factory, kw in ((local_denoiser, {}), (patch_composite_denoiser, {}),
                      (equivariant_local_denoiser, dict(boundary="zeros"))):
    cond = factory(train, 3, labels, chunk_size=5, **kw)
    got = np.asarray(cond(x, s, q_labels))
    for c in range(3):
      rows = q_labels == c
      want = factory(train[labels == c], 3, **kw)(x[rows], s[rows])
      np.testing.assert_allclose(got[rows], np.asarray(want), atol=1e-6)
    with pytest.raises(ValueError, match=r"labels \[7\] have no training points"):
      cond(x, s, np.full((6,), 7))
    assert cond.label_domain == frozenset({0, 1, 2})  # declared, as y* declares its classes
  g = gaussian_denoiser(train, train_labels=labels)
  got = np.asarray(g(x, s, q_labels))
  for c in range(3):
    rows = q_labels == c
    np.testing.assert_allclose(got[rows], np.asarray(gaussian_denoiser(train[labels == c])(
        x[rows], s[rows])), atol=1e-5)
  with pytest.raises(ValueError, match="no training points"):
    g(x, s, np.full((6,), 5))
  # Traced labels cannot be checked: a class without training images gives NaN, never a guess.
  traced = np.asarray(jax.jit(lambda d, a, b, l: d(a, b, l))(g, x, s, np.array([0, 5, 1, 9, 2, 2])))
  assert np.all(np.isnan(traced[[1, 3]])) and np.all(np.isfinite(traced[[0, 2, 4, 5]]))
  ls = local_denoiser(train, 3, labels)
  traced = np.asarray(jax.jit(lambda d, a, b, l: d(a, b, l))(ls, x, s, np.array([0, 5, 1, 9, 2, 2])))
  assert np.all(np.isnan(traced[[1, 3]])) and np.all(np.isfinite(traced[[0, 2, 4, 5]]))


@pytest.mark.parametrize("factory,kw", [(local_denoiser, {}), (patch_composite_denoiser, {}),
                                        (equivariant_local_denoiser, dict(boundary="circular"))])
def test_sharded_and_chunked_equal_unsharded(factory, kw):
  train = _data(13)
  labels = np.arange(13) % 2
  x, s = _noisy_queries(train, np.array([0.1, 0.5, 2.0]), per_sigma=2)
  q_labels = np.array([0, 1, 1, 0, 0, 1])
  want = np.asarray(factory(train, 3, labels, chunk_size=13, query_block=6, **kw)(x, s, q_labels))
  # 8 shards of 2 images (3 of them padding), blocks of 4 queries (2 of them padding).
  got = factory(train, 3, labels, chunk_size=2, query_block=4, mesh=make_mesh(data=8), **kw)
  np.testing.assert_allclose(np.asarray(got(x, s, q_labels)), want, atol=1e-5)
  got = factory(train, 3, labels, chunk_size=3, query_block=4, **kw)
  np.testing.assert_allclose(np.asarray(got(x, s, q_labels)), want, atol=1e-5)


def test_patch_size_schedule_selects_per_query_and_works_under_jit_and_vmap():
  train = _data(6)
  x, s = _noisy_queries(train, np.array([0.05, 0.05, 2.0, 2.0]))
  sched = local_denoiser(train, {0.05: 1, 2.0: 5})
  small, large = local_denoiser(train, 1), local_denoiser(train, 5)
  want = np.concatenate([np.asarray(small(x[:2], s[:2])), np.asarray(large(x[2:], s[2:]))])
  np.testing.assert_allclose(np.asarray(sched(x, s)), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(lambda d, a, b: d(a, b))(sched, x, s)), want,
                             atol=1e-6)
  per_sigma = jax.vmap(lambda sig: sched(x[:1], sig))(jnp.asarray([0.05, 2.0]))
  np.testing.assert_allclose(np.asarray(per_sigma[0]), want[:1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(per_sigma[1]), np.asarray(large(x[:1], 2.0)), atol=1e-6)


def test_reexported_from_optimal():
  from diffgen_jax import optimal_patches  # pylint: disable=import-outside-toplevel
  for name in ("local_denoiser", "equivariant_local_denoiser", "patch_composite_denoiser",
               "gaussian_denoiser"):
    assert getattr(optimal, name) is getattr(optimal_patches, name)


# ---- the Gaussian denoiser --------------------------------------------------------------------

def _gaussian_data(n=400, shape=(3, 2, 2), seed=0):
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  a = rng.standard_normal((d, d)) * 0.1
  data = rng.standard_normal((n, d)) @ a.T + 0.1
  return np.clip(data, -1, 1).reshape((n,) + shape).astype(np.float32)


def test_gaussian_denoiser_is_exact_posterior_mean_on_gaussian_data():
  train = _gaussian_data()
  flat = train.reshape(len(train), -1).astype(np.float64)
  m = flat.mean(axis=0)
  cov = (flat - m).T @ (flat - m) / len(flat)
  rng = np.random.default_rng(2)
  # One query per sigma of the 64-point gap grid, in one call with per-query sigma.
  x = flat[rng.integers(0, len(flat), 64)] + GRID[:, None] * rng.standard_normal((64, len(m)))
  # Posterior mean of N(m, S) observed through N(0, sigma^2 I): m + S (S + sigma^2 I)^-1 (x - m).
  want = np.stack([m + cov @ np.linalg.solve(cov + s ** 2 * np.eye(len(m)), xi - m)
                   for xi, s in zip(x, GRID)])
  got = gaussian_denoiser(train)(x.reshape((64,) + train.shape[1:]).astype(np.float32),
                                 GRID.astype(np.float32))
  np.testing.assert_allclose(np.asarray(got).reshape(64, -1), want, atol=1e-4)


@pytest.mark.parametrize("rank", [None, 4])
def test_gaussian_jacobian_eigenvalues(rank):
  train = _gaussian_data()
  flat = train.reshape(len(train), -1).astype(np.float64)
  lam = np.sort(np.linalg.eigvalsh(np.cov(flat.T, ddof=0)))[::-1]
  d = len(lam)
  denoise = gaussian_denoiser(train, rank=rank)
  for sigma in (0.05, 0.5):
    jac = jax.jacfwd(lambda v: denoise(v.reshape((1,) + train.shape[1:]), sigma).reshape(-1))(
        jnp.asarray(flat[0], jnp.float32))
    got = np.sort(np.linalg.eigvalsh(0.5 * (np.asarray(jac) + np.asarray(jac).T)))[::-1]
    want = lam / (lam + sigma ** 2)
    if rank is not None:
      want = np.concatenate([want[:rank], np.zeros(d - rank)])
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---- bad input --------------------------------------------------------------------------------

_TRAIN4 = np.random.default_rng(0).uniform(-1, 1, (4, H, W, C)).astype(np.float32)
_BAD_CONSTRUCTIONS = {
    # (call, the argument the error must name)
    "even size": (lambda t: local_denoiser(t, 4), "patch_size must be a positive odd integer"),
    "zero size": (lambda t: patch_composite_denoiser(t, 0), "patch_size must be a positive odd"),
    "float size": (lambda t: equivariant_local_denoiser(t, 3.0), "patch_size must be a positive odd"),
    "bool size": (lambda t: local_denoiser(t, True), "patch_size must be a positive odd"),
    "schedule size": (lambda t: local_denoiser(t, {0.1: 3, 1.0: 2}), r"patch_size\[1\] must be"),
    "schedule sigma": (lambda t: local_denoiser(t, {0.0: 3}), r"patch_size key \(a sigma\)=0.0 must be > 0"),
    "schedule nan": (lambda t: local_denoiser(t, {float("nan"): 3}), "patch_size key.*NaN"),
    "empty schedule": (lambda t: local_denoiser(t, {}), "patch_size mapping"),
    "boundary": (lambda t: equivariant_local_denoiser(t, 3, boundary="reflect"),
                 r"boundary must be one of \('circular', 'zeros'\), got 'reflect'"),
    "boundary type": (lambda t: equivariant_local_denoiser(t, 3, boundary=None), "boundary must be one of"),
    "ls chunk": (lambda t: local_denoiser(t, 3, chunk_size=0), "chunk_size=0 must be >= 1"),
    "pspc chunk": (lambda t: patch_composite_denoiser(t, 3, chunk_size=2.5), "chunk_size=2.5 must be an integer"),
    "els chunk": (lambda t: equivariant_local_denoiser(t, 3, chunk_size=-1), "chunk_size=-1 must be >= 1"),
    "ls block": (lambda t: local_denoiser(t, 3, query_block=0), "query_block=0 must be >= 1"),
    "els block": (lambda t: equivariant_local_denoiser(t, 3, query_block=0), "query_block=0 must be >= 1"),
    "dtype": (lambda t: local_denoiser(t, 3, dtype=jnp.int32), "dtype must be float32 or float64"),
    "float64 without x64": (lambda t: equivariant_local_denoiser(t, 3, dtype=jnp.float64),
                            "dtype=float64 needs"),
    "mesh axis": (lambda t: local_denoiser(t, 3, mesh=make_mesh(), axis="rows"),
                  "axis must be one of the mesh's axes"),
    "rank 0": (lambda t: gaussian_denoiser(t, rank=0), r"rank must be None or an integer in \[1, 40\]"),
    "rank too big": (lambda t: gaussian_denoiser(t, rank=41), r"rank must be .*\[1, 40\]"),
    "rank float": (lambda t: gaussian_denoiser(t, rank=2.0), "rank must be"),
    "gaussian chunk": (lambda t: gaussian_denoiser(t, chunk_size=0), "chunk_size=0 must be >= 1"),
    "gaussian labels": (lambda t: gaussian_denoiser(t, None, np.array([0, 1, -1, 0])),
                        "train_labels must be >= 0"),
    "labels shape": (lambda t: local_denoiser(t, 3, np.zeros(3, np.int32)), r"train_labels must be \(4,\)"),
    "uint8 images": (lambda t: local_denoiser((t * 127.5 + 127.5).astype(np.uint8), 3),
                     "train_images must be floating-point images.*uint8"),
    "0..255 images": (lambda t: gaussian_denoiser(t * 127.5 + 127.5),
                      r"train_images must be .*\[-1, 1\].*0..255 scale"),
    "range": (lambda t: patch_composite_denoiser(t * 2, 3), r"train_images must be .*\[-1, 1\]"),
    "nan images": (lambda t: equivariant_local_denoiser(np.where(t > 0.9, np.nan, t), 3),
                   "train_images .*NaN or Inf"),
    "rank of images": (lambda t: equivariant_local_denoiser(t.reshape(4, -1), 3), "train_images .*NHWC"),
    "no images": (lambda t: local_denoiser(t[:0], 3), "train_images must be a non-empty"),
}


@pytest.mark.parametrize("case", sorted(_BAD_CONSTRUCTIONS))
def test_bad_arguments_raise_naming_the_argument(case):
  call, message = _BAD_CONSTRUCTIONS[case]
  with pytest.raises(ValueError, match=message):
    call(_TRAIN4)


def test_bad_queries_raise_naming_the_argument():
  denoise = local_denoiser(_TRAIN4, 3, np.array([0, 1, 0, 1]))
  x = jnp.asarray(_TRAIN4[:2])
  with pytest.raises(ValueError, match="x must be"):
    denoise(x[:, :4], 1.0)
  with pytest.raises(ValueError, match="x must be floating point"):
    denoise(x.astype(jnp.int32), 1.0)
  for bad in (0.0, -1.0, np.inf, np.nan, np.array([1.0, 0.0])):
    with pytest.raises(ValueError, match="sigma must be > 0 and finite"):
      denoise(x, bad)
  with pytest.raises(ValueError, match=r"sigma must be a scalar or a \(2,\) vector"):
    denoise(x, np.ones(3))
  with pytest.raises(ValueError, match=r"labels must be \(2,\) integers"):
    denoise(x, 1.0, np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match=r"labels \[3\] have no training points"):
    denoise(x, 1.0, np.array([0, 3]))
  # The good values of the same arguments work: scalar and (B,) sigma, labels present.
  np.testing.assert_allclose(np.asarray(denoise(x, 0.5, np.array([0, 1]))),
                             np.asarray(denoise(x, np.array([0.5, 0.5]), np.array([0, 1]))))


@pytest.mark.parametrize("boundary", ["circular", "zeros"])
def test_both_boundary_values_work(boundary):
  """Each allowed boundary builds a denoiser whose sigma -> 0 output is a training pixel value and
  whose sigma -> inf output is finite (the bad-value cases are in the table above)."""
  denoise = equivariant_local_denoiser(_TRAIN4, 3, boundary=boundary, chunk_size=3, query_block=1)
  out = np.asarray(denoise(jnp.asarray(_TRAIN4[:1]), 1e-6))
  np.testing.assert_array_equal(out, _TRAIN4[:1])  # a query equal to a training image recalls it
  assert np.all(np.isfinite(np.asarray(denoise(jnp.asarray(_TRAIN4[:1]), 1e6))))


def test_optimal_denoiser_default_chunk_per_backend():
  # CPU keeps the measured 2048; accelerators take the whole shard in one chunk (up to 65,536).
  assert optimal.default_chunk_size("cpu") == 2048
  assert optimal.default_chunk_size("gpu") == optimal.default_chunk_size("tpu") == 65536
  train = _data(5)
  x, s = _noisy_queries(train, np.array([0.3]), per_sigma=2)
  np.testing.assert_array_equal(np.asarray(empirical_optimal_denoiser(train)(x, s)),
                                np.asarray(empirical_optimal_denoiser(train, chunk_size=2048)(x, s)))


def test_float64_option_matches_reference():
  train = _data(5)
  x, s = _noisy_queries(train, np.array([0.01, 0.5]), per_sigma=1)
  with jax.enable_x64(True):
    for factory, ref in ((local_denoiser, ls_reference), (patch_composite_denoiser, pspc_reference)):
      got = np.asarray(factory(train, 3, dtype=jnp.float64)(x.astype(np.float64), s))
      assert got.dtype == np.float64
      np.testing.assert_allclose(got, ref(train, x, s, 3), atol=1e-10)
  assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("factory,kw", [(local_denoiser, {}), (patch_composite_denoiser, {}),
                                        (equivariant_local_denoiser, dict(boundary="zeros"))])
def test_memory_does_not_grow_with_the_training_set(factory, kw):
  # XLA's temporaries for a call at N = 16 and N = 256 training images (same chunk): equal.
  temps = []
  for n in (16, 256):
    denoise = factory(_data(n, shape=(6, 6, 1)), 3, chunk_size=4, query_block=4, **kw)
    x = jnp.asarray(_data(8, seed=1, shape=(6, 6, 1)))
    analysis = jax.jit(lambda d, a: d(a, 1.0)).lower(denoise, x).compile().memory_analysis()
    if analysis is None or not getattr(analysis, "temp_size_in_bytes", 0):
      pytest.skip("backend reports no memory analysis")
    temps.append(analysis.temp_size_in_bytes)
  assert temps[1] <= temps[0] * 1.05, temps


# ---- training sets as sources, over every device of every process ------------------------------

def _pixels(n, shape=(H, W, C), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def _lazy(pixels):
  """A lazy source over uint8 pixels, read as a decoded split is (LazyRows, to_unit_range)."""
  return sharding.LazyRows(pixels, np.arange(len(pixels)), transform=data.to_unit_range)


def test_known_answers_with_a_lazy_source():
  """A source (LazyRows over uint8 pixels) gives the known answers and the numbers of the array."""
  pixels = _pixels(10)
  train, source = data.to_unit_range(pixels), _lazy(pixels)
  x, s = _noisy_queries(train, np.array([0.05, 0.3, 1.0, 5.0]), per_sigma=2)
  # A window covering the image (zero padding) is y*.
  k = 2 * max(H, W) - 1
  want = np.asarray(empirical_optimal_denoiser(train)(x, s))
  for factory in (local_denoiser, patch_composite_denoiser):
    np.testing.assert_allclose(np.asarray(factory(source, k, chunk_size=4)(x, s)), want, atol=2e-5)
  # k = 1 LS: the per-pixel posterior over the N values at that pixel (brute force).
  np.testing.assert_allclose(np.asarray(local_denoiser(source, 1, chunk_size=3)(x, s)),
                             _per_pixel_posterior(train, x, s), atol=1e-5)
  # Circular ELS commutes with circular shifts exactly.
  square = _pixels(6, shape=(6, 6, 1))
  denoise = equivariant_local_denoiser(_lazy(square), 3, boundary="circular", chunk_size=2)
  xs, ss = _noisy_queries(data.to_unit_range(square), np.array([0.2, 1.0]), per_sigma=2)
  out = np.asarray(denoise(xs, ss))
  for shift in [(1, 0), (3, 5)]:
    np.testing.assert_array_equal(np.asarray(denoise(np.roll(xs, shift, axis=(1, 2)), ss)),
                                  np.roll(out, shift, axis=(1, 2)))
  # sigma -> 0: the nearest window's centre (same position for LS, any position for ELS);
  # sigma -> inf: the mean image (LS, PSPC, Gaussian), the per-channel mean (circular ELS).
  q = np.clip(_data(3, seed=5) * 0.9 + 0.1 * train[:3], -1, 1)
  np.testing.assert_array_equal(np.asarray(local_denoiser(source, 3)(q, 1e-30)),
                                _nearest_same_position_centre(train, q, 3).astype(np.float32))
  np.testing.assert_array_equal(
      np.asarray(equivariant_local_denoiser(source, 3, boundary="circular")(q, 1e-30)),
      _nearest_any_position_centre(train, q, 3).astype(np.float32))
  y = train.astype(np.float64)
  mean = np.broadcast_to(y.mean(axis=0), q.shape)
  for machine in (local_denoiser(source, 3), patch_composite_denoiser(source, 3),
                  gaussian_denoiser(source, chunk_size=3)):
    np.testing.assert_allclose(np.asarray(machine(q, 1e30)), mean, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(equivariant_local_denoiser(source, 3, boundary="circular")(q, 1e30)),
      np.broadcast_to(y.mean(axis=(0, 1, 2)), q.shape), atol=1e-5)
  # The same numbers as from the array, bit for bit (the same float64 sums, in the same order).
  labels = np.arange(10) % 3
  for factory, kw in ((local_denoiser, {}), (patch_composite_denoiser, {}),
                      (equivariant_local_denoiser, dict(boundary="zeros"))):
    q_labels = np.arange(len(x)) % 3
    np.testing.assert_array_equal(
        np.asarray(factory(source, 3, labels, chunk_size=3, **kw)(x, s, q_labels)),
        np.asarray(factory(train, 3, labels, chunk_size=3, **kw)(x, s, q_labels)))
  for a, b in zip(optimal_patches.gaussian_fit(source, labels, chunk_size=3)[:3],
                  optimal_patches.gaussian_fit(train, labels, chunk_size=3)[:3]):
    np.testing.assert_array_equal(a, b)


def test_a_source_is_read_in_shards_and_chunks_once_and_checked_where_read():
  """Each machine reads every row once, the patch machines one shard at a time and the Gaussian
  chunk_size rows at a time (twice with labels: per class, then pooled); bad rows raise on read."""
  pixels = _pixels(13)
  mesh = make_mesh(data=8)
  sharding.rows_built.clear()
  local_denoiser(_lazy(pixels), 3, chunk_size=2, mesh=mesh)
  assert sharding.rows_built["source"] == 13 and sharding.rows_built["shard"] == 2
  sharding.rows_built.clear()
  gaussian_denoiser(_lazy(pixels), chunk_size=3, train_labels=np.arange(13) % 2, mesh=mesh)
  assert sharding.rows_built["source"] == 26 and sharding.rows_built["read"] <= 3
  raw = sharding.LazyRows(pixels, np.arange(13))  # uint8 rows, no conversion
  for build in (lambda: local_denoiser(raw, 3), lambda: gaussian_denoiser(raw)):
    with pytest.raises(ValueError, match="train_images must be floating-point images.*uint8"):
      build()
  wrong = sharding.LazyRows(data.to_unit_range(pixels)[:, :, :2], np.arange(13))
  wrong.shape = (13, H, W, C)  # a source whose rows do not have its declared shape
  with pytest.raises(ValueError, match="train_images: a read returned rows of shape"):
    equivariant_local_denoiser(wrong, 3)


_TWO_PROCESS_LADDER = """
from diffgen_jax import data, optimal_patches as op
from diffgen_jax.evaluation import gap
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (21, 4, 4, 1), dtype=np.uint8)  # 21 rows: the last shards are padding
train = data.to_unit_range(pixels)
source = sharding.LazyRows(pixels, np.arange(21), transform=data.to_unit_range)
labels = np.arange(21) % 3
x = (train[:8] + 0.3 * rng.standard_normal((8, 4, 4, 1))).astype(np.float32)
s = np.geomspace(0.05, 3.0, 8).astype(np.float32)
q_labels = np.arange(8) % 3


def machines(mesh):
  return dict(ls=op.local_denoiser(source, 3, labels, chunk_size=2, mesh=mesh),
              pspc=op.patch_composite_denoiser(source, 3, chunk_size=2, mesh=mesh),
              els_circular=op.equivariant_local_denoiser(source, 3, boundary="circular",
                                                         chunk_size=2, mesh=mesh),
              els_zeros=op.equivariant_local_denoiser(source, 3, boundary="zeros", chunk_size=2,
                                                      mesh=mesh),
              gaussian=op.gaussian_denoiser(source, None, labels, chunk_size=2, mesh=mesh))


def outputs(found, prefix):
  # Eagerly on host queries (replicated queries, the result gathered once).
  conditional = ("ls", "gaussian")
  return {prefix + name: sharding.fetch(machine(x, s, q_labels if name in conditional else None))
          for name, machine in found.items()}


mesh = sharding.make_mesh()
sharding.rows_built.clear()
found = machines(mesh)
out = dict(shard=np.array(sharding.rows_built["shard"]),
           read=np.array(sharding.rows_built["source"]))
out.update(outputs(found, ""))
# Inside the gap evaluation's jit, batches split over the data axis (a shard_map'd machine with a
# replicated extra argument, ELS's mean patch).
out["els_circular_gap"] = gap.denoising_errors(found["els_circular"], train[:16], None, s[:3],
                                               batch_size=8, mesh=mesh)
# A span held by devices of both processes (a model axis across hosts) counts once in the sums.
across = sharding.make_mesh(data=1, model=8)
out["across_els"] = sharding.fetch(
    op.equivariant_local_denoiser(source, 3, chunk_size=2, mesh=across)(x, s))
out["across_gaussian"] = sharding.fetch(
    op.gaussian_denoiser(source, chunk_size=2, mesh=across)(x, s))
# Without a mesh every process reads every row and sums on its own (nothing added over processes).
out["local_gaussian"] = sharding.fetch(
    op.gaussian_denoiser(source, None, labels, chunk_size=2)(x, s, q_labels))
if NUM_PROCESSES == 1:
  out.update(outputs(machines(None), "none_"))
# Hosts whose eigendecompositions disagree get process 0's (here: arrays that differ on purpose).
agreed = op._same_on_every_process(np.full(3, PROCESS + 0.5), np.full(2, -1.25))
report(**out, agreed_0=agreed[0], agreed_1=agreed[1])
"""


def test_two_processes_equal_one_and_read_only_their_rows(tmp_path):
  """LS (class-conditional), PSPC, ELS (both boundaries) and the Gaussian (class-conditional) on a
  training source split over 2 processes x 4 devices equal 1 process x 8 devices and mesh=None
  within float rounding, eagerly and inside the gap evaluation; each process builds shards of at
  most ceil(N / 8) + chunk rows and reads only its rows (together: what one process reads)."""
  import multiprocess  # pylint: disable=import-outside-toplevel  (tests/multiprocess.py)
  two = multiprocess.run(_TWO_PROCESS_LADDER, tmp_path / "two", processes=2, devices=4)
  (one,) = multiprocess.run(_TWO_PROCESS_LADDER, tmp_path / "one", processes=1, devices=8)
  names = ("ls", "pspc", "els_circular", "els_zeros", "gaussian", "els_circular_gap", "across_els",
           "across_gaussian")
  for name in names:
    for r in two:
      np.testing.assert_allclose(r[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    if "none_" + name in one:
      np.testing.assert_allclose(one[name], one["none_" + name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(one["across_els"], one["els_circular"], rtol=1e-5, atol=1e-6)
  for r in two + [one]:
    np.testing.assert_array_equal(r["local_gaussian"], one["none_gaussian"])
  chunk = 2
  for r in two:
    assert int(r["shard"]) <= -(-21 // 8) + chunk
  # Each row is read once per machine over all processes, and each process reads less than all.
  assert sum(int(r["read"]) for r in two) == int(one["read"])
  assert all(int(r["read"]) < int(one["read"]) for r in two)
  for r in two:
    np.testing.assert_array_equal(r["agreed_0"], np.full(3, 0.5))
    np.testing.assert_array_equal(r["agreed_1"], np.full(2, -1.25))
