"""Label fractions: stratified, >= 1 per class, nested, seeded."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.fractions import label_fraction_indices

# Imbalanced like MedMNIST: one large class, one tiny one.
LABELS = np.repeat(np.arange(5), [700, 200, 80, 17, 3])
np.random.default_rng(0).shuffle(LABELS)
FRACTIONS = (0.01, 0.1, 0.5, 1.0)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_stratified_with_every_class(fraction):
  idx = label_fraction_indices(LABELS, fraction, seed=0)
  assert np.all(np.diff(idx) > 0) and idx.dtype.kind == "i"
  for c in range(5):
    n_c = np.sum(LABELS == c)
    kept = np.sum(LABELS[idx] == c)
    assert kept >= 1
    assert abs(kept - fraction * n_c) <= 1


def test_full_fraction_is_everything():
  np.testing.assert_array_equal(
      label_fraction_indices(LABELS, 1.0, seed=3), np.arange(len(LABELS)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_nested(seed):
  subsets = [set(label_fraction_indices(LABELS, f, seed)) for f in FRACTIONS]
  for small, large in zip(subsets, subsets[1:]):
    assert small < large


def test_seeded():
  a = label_fraction_indices(LABELS, 0.1, seed=0)
  np.testing.assert_array_equal(a, label_fraction_indices(LABELS, 0.1, 0))
  assert not np.array_equal(a, label_fraction_indices(LABELS, 0.1, seed=1))


def test_multi_label_nested_and_covers_every_label():
  rates = np.array([0.5, 0.1, 0.01, 0.003, 0.0])
  labels = (np.random.default_rng(1).random((2000, 5)) < rates).astype(
      np.int32)
  previous = set()
  for fraction in FRACTIONS:
    idx = label_fraction_indices(labels, fraction, seed=0)
    assert previous <= set(idx)
    previous = set(idx)
    present = labels.sum(0) > 0
    assert np.all(labels[idx].sum(0)[present] >= 1)
    # The prefix plus at most one added example per label.
    assert abs(len(idx) - fraction * len(labels)) <= labels.shape[1] + 1
  assert len(label_fraction_indices(labels, 1.0, seed=0)) == len(labels)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), True, "1"])
def test_rejects_bad_fraction(fraction):
  with pytest.raises(ValueError, match=r"in \(0, 1\]"):
    label_fraction_indices(LABELS, fraction, seed=0)
