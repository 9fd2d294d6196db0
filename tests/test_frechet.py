"""Frechet distance: known closed forms, symmetry, non-negativity and singular covariances."""

import numpy as np
import pytest
from scipy import linalg

from diffgen_jax.evaluation import frechet


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T


def test_set_with_itself_is_zero():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
  assert abs(frechet.frechet_distance(x, x)) < 1e-8
  ten = rng.normal(size=(10, 2))  # a small set, as in the toy model
  assert abs(frechet.frechet_distance(ten, ten)) < 1e-10


def test_diagonal_gaussians_closed_form():
  mu1, mu2 = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 0.5])
  a, b = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.gaussian_frechet(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_matches_scipy_sqrtm_formula_for_full_covariances():
  rng = np.random.default_rng(1)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
  covmean = linalg.sqrtm(c1 @ c2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
  np.testing.assert_allclose(frechet.gaussian_frechet(mu1, c1, mu2, c2), expected, rtol=1e-8)


def test_symmetric_and_non_negative():
  rng = np.random.default_rng(2)
  for _ in range(20):
    d = int(rng.integers(1, 6))
    x = rng.normal(size=(int(rng.integers(2, 30)), d)) * rng.uniform(0.1, 3)
    y = rng.normal(size=(int(rng.integers(2, 30)), d)) + rng.normal(size=d)
    fxy, fyx = frechet.frechet_distance(x, y), frechet.frechet_distance(y, x)
    assert fxy >= 0 and fyx >= 0
    np.testing.assert_allclose(fxy, fyx, rtol=1e-7, atol=1e-10)


def test_singular_covariances():
  rng = np.random.default_rng(3)
  # Points on a line in 2D: rank-1 covariances. Against themselves: 0; against a shifted copy: the
  # squared shift; two orthogonal lines through 0 with variances a, b: a + b.
  t = rng.normal(size=(50, 1))
  line = np.concatenate([t, 2 * t], axis=1)
  assert frechet.frechet_distance(line, line) < 1e-10
  np.testing.assert_allclose(frechet.frechet_distance(line, line + [3.0, 4.0]), 25.0, rtol=1e-9)
  a, b = 2.0, 0.5
  got = frechet.gaussian_frechet(np.zeros(2), np.diag([a, 0.0]), np.zeros(2), np.diag([0.0, b]))
  np.testing.assert_allclose(got, a + b, rtol=1e-12)
  # Fewer samples than dimensions (rank 4 in 16-D), as with small feature sets: finite, real, >= 0.
  x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
  value = frechet.frechet_distance(x, y)
  assert np.isfinite(value) and value >= 0
  assert frechet.frechet_distance(x, x) < 1e-8
  # All-zero covariance: the distance is the squared mean difference plus the other trace.
  np.testing.assert_allclose(
      frechet.gaussian_frechet(np.zeros(3), np.zeros((3, 3)), np.ones(3), np.eye(3)), 6.0)


def test_gaussian_stats_and_ddof():
  x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
  mu, cov = frechet.gaussian_stats(x)
  np.testing.assert_allclose(mu, [1.0, 1.0])
  np.testing.assert_allclose(cov, np.cov(x, rowvar=False))
  _, cov0 = frechet.gaussian_stats(x, ddof=0)
  np.testing.assert_allclose(cov0, np.eye(2))


def test_fewer_vectors_than_dimensions_keep_the_covariance_factored_and_give_the_same_fd():
  """gaussian_fit: a CovarianceFactor when n < d (O(n d), e.g. 64x64 RGB pixels), the covariance
  itself when n >= d; every pairing of the two forms gives the full-matrix FD."""
  rng = np.random.default_rng(4)
  d = 40
  x = rng.normal(size=(12, d)) * rng.uniform(0.5, 2, d)
  y = rng.normal(size=(9, d)) + 0.3
  z = rng.normal(size=(60, d))  # n >= d: a matrix, exactly gaussian_stats's
  fx, fy, fz = frechet.gaussian_fit(x), frechet.gaussian_fit(y), frechet.gaussian_fit(z)
  assert isinstance(fx[1], frechet.CovarianceFactor) and fx[1].rows.shape == (12, d)
  assert isinstance(fz[1], np.ndarray) and fz[1].shape == (d, d)
  for a, b in zip(fz, frechet.gaussian_stats(z)):
    np.testing.assert_array_equal(a, b)
  full = lambda f: (f[0], f[1].covariance() if isinstance(f[1], frechet.CovarianceFactor) else f[1])
  for cov, f in ((np.cov(x, rowvar=False), fx), (np.cov(y, rowvar=False), fy)):
    np.testing.assert_allclose(full(f)[1], cov, rtol=1e-12, atol=1e-14)
  for a, b in ((fx, fy), (fy, fx), (fx, fz), (fz, fy), (fx, fx)):
    want = frechet.gaussian_frechet(*full(a), *full(b))
    # (The matrix form takes square roots of d - n rounding-level eigenvalues: ~1e-8 relative.)
    np.testing.assert_allclose(frechet.gaussian_frechet(*a, *b), want, rtol=1e-7, atol=1e-9)
  assert frechet.gaussian_frechet(*fx, *fx) < 1e-9
  assert frechet.gaussian_fit(x, ddof=0)[1].covariance() == pytest.approx(
      np.cov(x, rowvar=False, ddof=0))
  with pytest.raises(ValueError, match=r"covariance factor must be \(n, 3\)"):
    frechet.gaussian_frechet(np.zeros(3), frechet.CovarianceFactor(np.zeros((2, 4))), np.zeros(3),
                             np.eye(3))
  with pytest.raises(ValueError, match="NaN"):
    frechet.gaussian_fit(np.full((2, 5), np.nan))


def test_input_errors():
  with pytest.raises(ValueError, match="num_samples, dim"):
    frechet.frechet_distance(np.zeros(5), np.zeros(5))
  with pytest.raises(ValueError, match="more than 1 samples"):
    frechet.frechet_distance(np.zeros((1, 2)), np.zeros((5, 2)))
  with pytest.raises(ValueError, match="dimensions differ"):
    frechet.frechet_distance(np.random.rand(5, 2), np.random.rand(5, 3))
  with pytest.raises(ValueError, match="NaN"):
    frechet.frechet_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))
  with pytest.raises(ValueError, match="covariance must be"):
    frechet.gaussian_frechet(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------
# Published reference statistics: EDM's .npz and EDM2's .pkl, read without executing anything.

import io  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import zipfile  # noqa: E402

from diffgen_jax.data import DataFileError  # noqa: E402
from diffgen_jax.models.nvidia_pickle import UnsafePickleError  # noqa: E402


def _stats(seed, d):
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(3 * d, d))
  return frechet.gaussian_stats(feats)


def test_reference_stats_in_edm_and_edm2_formats_load_to_the_same_numbers(tmp_path):
  mu, sigma = _stats(0, 6)
  mu2, sigma2 = _stats(1, 4)
  npz = tmp_path / "cifar10-32x32.npz"
  np.savez(npz, mu=mu, sigma=sigma)  # as EDM's fid.py ref writes it
  edm2 = {"num_images": 18, "fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu2,
                                                                             "sigma": sigma2}}
  pkl = tmp_path / "img64.pkl"
  pkl.write_bytes(pickle.dumps(edm2, protocol=4))  # as EDM2's calculate_metrics.py ref writes it
  # numpy 1.x (EDM2's own environment) names its globals numpy.core.*: the same stats.
  old = tmp_path / "numpy1.pkl"
  old.write_bytes(pickle.dumps(edm2, protocol=3).replace(b"numpy._core.", b"numpy.core."))
  assert b"numpy.core.multiarray\n_reconstruct" in old.read_bytes()
  from_npz = frechet.load_reference_stats(str(npz))
  assert list(from_npz) == ["fid"]
  for path in (pkl, old):
    loaded = frechet.load_reference_stats(path)
    assert sorted(loaded) == ["fd_dinov2", "fid"]
    for space, (m, s) in (("fid", (mu, sigma)), ("fd_dinov2", (mu2, sigma2))):
      np.testing.assert_array_equal(loaded[space][0], m)
      np.testing.assert_array_equal(loaded[space][1], s)
      assert loaded[space][0].dtype == np.float64 and loaded[space][1].flags.writeable
  np.testing.assert_array_equal(from_npz["fid"][0], mu)
  np.testing.assert_array_equal(from_npz["fid"][1], sigma)
  # An FD against the loaded reference is the FD against the statistics themselves.
  m3, s3 = _stats(2, 6)
  assert frechet.gaussian_frechet(m3, s3, *from_npz["fid"]) == frechet.gaussian_frechet(
      m3, s3, mu, sigma) > 0
  # float32 arrays and a Fortran-ordered covariance read the same.
  np.savez(npz, mu=mu.astype(np.float32), sigma=np.asfortranarray(sigma))
  got = frechet.load_reference_stats(npz)["fid"]
  np.testing.assert_array_equal(got[0], mu.astype(np.float32))
  np.testing.assert_array_equal(got[1], sigma)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_reference_pickle_that_would_run_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  mu, sigma = _stats(0, 3)
  for i, payload in enumerate([
      {"fid": {"mu": mu, "sigma": sigma}, "x": _RunsCode(marker)},
      {"fid": {"mu": mu, "sigma": np.array([None, 1], dtype=object)}},  # object arrays too
      _RunsCode(marker)]):
    path = tmp_path / f"evil{i}.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(UnsafePickleError, match=f"^{re.escape(str(path))}: ") as err:
      frechet.load_reference_stats(path)
    assert ("refusing global posix.system" in str(err.value) if i != 1
            else "numpy dtype dtype('O') is not a numeric dtype; refused" in str(err.value))
  assert not marker.exists()


def _npy(header, data):
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, header)
  return buf.getvalue() + data


def test_hostile_sizes_are_refused_under_a_memory_cap(tmp_path):
  """An .npz whose sigma header declares 2 GB over 64 bytes, one whose sigma exceeds
  MAX_FEATURE_DIM, pickles whose array declares 8 GB over 320 bytes or whose data declares 2 GiB:
  each refused under a 200 MiB cap, naming the file."""
  from tests import hostile
  huge = tmp_path / "huge.npz"
  with zipfile.ZipFile(huge, "w") as z:
    z.writestr("mu.npy", _npy({"descr": "<f8", "fortran_order": False, "shape": (16000,)},
                              bytes(128000)))
    z.writestr("sigma.npy", _npy({"descr": "<f8", "fortran_order": False,
                                  "shape": (16000, 16000)}, bytes(64)))
  wide = tmp_path / "wide.npz"
  with zipfile.ZipFile(wide, "w") as z:
    z.writestr("mu.npy", _npy({"descr": "<f8", "fortran_order": False, "shape": (3,)}, bytes(24)))
    z.writestr("sigma.npy", _npy({"descr": "<f8", "fortran_order": False,
                                  "shape": (10**5, 10**5)}, bytes(64)))
  small = pickle.dumps({"fid": {"mu": np.zeros(40), "sigma": np.zeros((40, 40))}}, protocol=3)
  # The mean's BUILD state: shape (40,) (BININT1 40, TUPLE1) -> (10**9,) over the same 320 bytes.
  forged = tmp_path / "forged.pkl"
  forged.write_bytes(small.replace(b"K\x28\x85", b"J\x00\xca\x9a\x3b\x85", 1))
  # Its data: BINBYTES of 320 bytes declaring 2 GiB - 1.
  declared = tmp_path / "declared.pkl"
  declared.write_bytes(small.replace(b"B\x40\x01\x00\x00", b"B\xff\xff\xff\x7f", 1))
  assert small != forged.read_bytes() and small != declared.read_bytes()
  cases = [(huge, "huge.npz:sigma.npy: the header declares shape (16000, 16000)"),
           (wide, "wide.npz:sigma.npy holds an array of dtype float64 and shape (100000, 100000)"),
           (forged, "forged.pkl is not a readable reference-statistics pickle (NetworkPickleError: "
                    "numpy array state"),
           (declared, "declared.pkl is not a readable reference-statistics pickle")]
  for path, words in cases:
    result = hostile.run_capped("from diffgen_jax.evaluation import frechet",
                                "frechet.load_reference_stats(PATH)", path=path, limit_mb=200)
    assert not result.crashed and result.error == "DataFileError", result
    assert words in result.message, result


def test_damaged_or_other_files_are_named(tmp_path):
  mu, sigma = _stats(0, 3)
  cases = {
      "text.pkl": (b"hello world", "is neither an .npz (EDM) nor a pickle (EDM2)"),
      "p5.pkl": (pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=5),
                 "is a pickle of protocol 5"),
      "cut.pkl": (pickle.dumps({"fid": {"mu": mu, "sigma": sigma}}, protocol=4)[:-40],
                  "is not a readable reference-statistics pickle"),
      "list.pkl": (pickle.dumps([mu, sigma], protocol=4), "holds a pickled list"),
      "none.pkl": (pickle.dumps({"num_images": 3}, protocol=4), "holds no feature statistics"),
      "flat.pkl": (pickle.dumps({"fid": {"mu": sigma, "sigma": sigma}}, protocol=4),
                   "fid.mu is a 2-D float64 array; it must be a 1-D float array"),
      "shape.pkl": (pickle.dumps({"fid": {"mu": mu[:2], "sigma": sigma}}, protocol=4),
                    "fid: covariance must be (2, 2)"),
      "nan.pkl": (pickle.dumps({"fid": {"mu": mu * np.nan, "sigma": sigma}}, protocol=4),
                  "mean and covariance must be finite"),
  }
  for name, (raw, words) in cases.items():
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataFileError, match=f"^{re.escape(str(path))}.*{re.escape(words)}"):
      frechet.load_reference_stats(path)
  np.savez(tmp_path / "nomu.npz", m=mu, sigma=sigma)
  with pytest.raises(DataFileError, match=r"has no array 'mu' \(it holds \['m', 'sigma'\]\)"):
    frechet.load_reference_stats(tmp_path / "nomu.npz")
  np.savez(tmp_path / "int.npz", mu=np.arange(3), sigma=sigma)
  with pytest.raises(DataFileError, match="int.npz:mu.npy holds an array of dtype int64"):
    frechet.load_reference_stats(tmp_path / "int.npz")
  with pytest.raises(FileNotFoundError):
    frechet.load_reference_stats(tmp_path / "missing.npz")
