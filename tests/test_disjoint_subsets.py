"""Disjoint training subsets S1, S2 (data.subset_side): disjoint, nested, seeded, stratified."""

import warnings

import numpy as np
import pytest

from diffgen_jax import config_checks, data, defaults
from diffgen_jax.config_checks import ConfigError


@pytest.mark.parametrize("labels", [None, np.arange(101) % 7])
def test_sides_are_disjoint_nested_and_seeded(labels):
  n = 101
  rows = {side: {k: data.subset_rows(n, k, seed=3, labels=labels, side=side)
                 for k in (1, 10, 37, 50)} for side in (1, 2)}
  for side in (1, 2):
    for small, large in ((1, 10), (10, 37), (37, 50)):
      assert set(rows[side][small]) <= set(rows[side][large])  # nested in the size
    for k, r in rows[side].items():
      assert len(r) == len(set(r)) == k and np.all(np.diff(r) > 0)  # sorted, distinct
  for k in (1, 10, 37, 50):  # 2k <= n: disjoint
    assert not set(rows[1][k]) & set(rows[2][k])
  # 2k = n - 1 = 100: the two sides leave exactly one row out; above n / 2 they overlap by 2k - n.
  with pytest.warns(UserWarning, match=f"overlaps side 1 in {2 * 60 - n} of {n} rows"):
    side2 = data.subset_rows(n, 60, 3, labels, side=2)
  assert len(set(data.subset_rows(n, 60, 3, labels, side=1)) & set(side2)) == 2 * 60 - n
  with warnings.catch_warnings():  # side 1 alone, and side 2 up to n // 2, are silent
    warnings.simplefilter("error")
    data.subset_rows(n, 60, 3, labels, side=1)
    data.subset_rows(n, n // 2, 3, labels, side=2)
  # Seeded: same seed same rows, another seed other rows.
  np.testing.assert_array_equal(data.subset_rows(n, 37, 3, labels, side=2), rows[2][37])
  assert set(data.subset_rows(n, 37, 4, labels, side=2)) != set(rows[2][37])


def test_side_one_is_the_earlier_subset_and_side_two_is_stratified():
  labels = np.repeat(np.arange(4), [40, 30, 20, 10])
  order = data.subset_order(100, 5, labels)
  np.testing.assert_array_equal(data.subset_rows(100, 30, 5, labels), np.sort(order[:30]))
  side2 = data.subset_rows(100, 50, 5, labels, side=2)
  counts = np.bincount(labels[side2], minlength=4)
  assert np.all(np.abs(counts - np.array([40, 30, 20, 10]) / 2) <= 2)
  # Complementary at 2k = n.
  side1 = data.subset_rows(100, 50, 5, labels, side=1)
  np.testing.assert_array_equal(np.sort(np.r_[side1, side2]), np.arange(100))


def test_bad_side_is_a_clear_error():
  for side in (3, 2.0, True):  # a float or bool side was accepted (2.0 in (1, 2))
    with pytest.raises(ValueError, match="side"):
      data.subset_rows(10, 3, 0, side=side)
  config = defaults.data_config("digits")
  config.subset_side = 0
  with pytest.raises(ConfigError, match="subset_side"):
    config_checks.check_settings(config, config_checks.settings_of(defaults.DATA), prefix="data")
  config.subset_side = 2  # side 2 of the whole split is meaningless
  with pytest.raises(ConfigError, match="subset_size"):
    config_checks.data_config(config)
  config.subset_size = 64
  config_checks.data_config(config)


def test_load_split_sides_on_digits(data_dir):
  one = data.load_split("digits", "train", data_dir=data_dir, subset_size=300, subset_seed=1)
  two = data.load_split("digits", "train", data_dir=data_dir, subset_size=300, subset_seed=1,
                        subset_side=2)
  assert len(one) == len(two) == 300 and not set(one.ids) & set(two.ids)
  full = data.load_split("digits", "train", data_dir=data_dir)
  np.testing.assert_array_equal(two.images, full.images[two.ids])
  np.testing.assert_array_equal(two.labels, full.labels[two.ids])
