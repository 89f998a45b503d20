"""Patient-level splits, the disjointness check, patient-aware label fractions."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import fractions, splits
from data_pipelines.fractions import label_fraction_indices

# 40 patients with 1-5 images each, in shuffled row order.
_RNG = np.random.default_rng(0)
GROUPS = _RNG.permutation(np.repeat([f"p{i}" for i in range(40)],
                                    _RNG.integers(1, 6, 40)))


def test_assign_splits_keeps_groups_whole_with_exact_counts():
  split_of = splits.assign_splits(GROUPS, (0.7, 0.1, 0.2), seed=0)
  by_split = {s: set(GROUPS[split_of == s]) for s in splits.SPLITS}
  assert {s: len(g) for s, g in by_split.items()} == {
      "train": 28, "val": 4, "test": 8}
  splits.check_disjoint_groups(by_split)  # no patient in two splits
  for g in set(GROUPS):
    assert len(set(split_of[GROUPS == g])) == 1


def test_assign_splits_seeded_and_independent_of_row_order():
  a = splits.assign_splits(GROUPS, (0.5, 0.25, 0.25), seed=1)
  order = np.random.default_rng(9).permutation(len(GROUPS))
  b = splits.assign_splits(GROUPS[order], (0.5, 0.25, 0.25), seed=1)
  np.testing.assert_array_equal(a[order], b)
  c = splits.assign_splits(GROUPS, (0.5, 0.25, 0.25), seed=2)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("n,fractions,expected", [
    (10, (0.7, 0.1, 0.2), [7, 1, 2]),
    (5, (0.7, 0.1, 0.2), [3, 1, 1]),  # val would round to 0: takes one
    (3, (0.8, 0.1, 0.1), [1, 1, 1]),
    (2, (0.5, 0.0, 0.5), [1, 0, 1]),
    (1, (0.7, 0.1, 0.2), [1, 0, 0]),
])
def test_split_counts(n, fractions, expected):
  assert splits.split_counts(n, fractions) == expected


@pytest.mark.parametrize("bad", [(0.7, 0.2), (0.7, 0.2, 0.2), (1.2, -0.1, 0.1),
                                 "abc"])
def test_bad_fractions(bad):
  with pytest.raises(ValueError, match="split_fractions must be 3 numbers"):
    splits.check_fractions(bad)


def test_disjoint_check_names_the_patient_and_where():
  with pytest.raises(ValueError, match=r"patient 'p7' is in both the 'train' "
                     r"and the 'test' split \(train: at train; test: at test\)"):
    splits.check_disjoint_groups(
        {"train": ["p1", "p7"], "val": ["p2"], "test": ["p7", "p3"]},
        describe=lambda g, s: f"at {s}")
  splits.check_disjoint_groups({"train": ["", "p1"], "test": ["", "p2"]})


# --- label fractions by patient -----------------------------------------------

# 60 patients, 3 images each; patient i's images have label i % 3, except
# one image of each patient flipped to (i + 1) % 3 (a minority label).
PATIENTS = np.repeat(np.arange(60), 3)
LABELS = PATIENTS % 3
LABELS[::3] = (PATIENTS[::3] + 1) % 3


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.5, 1.0])
def test_group_fraction_picks_whole_patients_per_class(fraction):
  idx = label_fraction_indices(LABELS, fraction, seed=0, groups=PATIENTS)
  kept = set(PATIENTS[idx])
  assert len(idx) == 3 * len(kept)  # every image of a kept patient
  for c in range(3):  # majority label of patient i is i % 3: 20 per class
    n_kept = sum(1 for p in kept if p % 3 == c)
    assert n_kept == max(1, int(np.floor(fraction * 20 + 0.5)))


def test_group_fractions_nested_and_seeded():
  previous = set()
  for fraction in (0.05, 0.1, 0.5, 1.0):
    kept = set(label_fraction_indices(LABELS, fraction, 3, groups=PATIENTS))
    assert previous <= kept
    previous = kept
  a = label_fraction_indices(LABELS, 0.1, 0, groups=PATIENTS)
  b = label_fraction_indices(LABELS, 0.1, 1, groups=PATIENTS)
  assert not np.array_equal(a, b)


def test_group_majority_tie_goes_to_the_lowest_class():
  labels = np.array([2, 1, 0, 0, 2, 2, 1])
  inverse = np.array([0, 0, 1, 1, 2, 2, 2])  # a: 1 vs 2 tie; c: 2 wins
  np.testing.assert_array_equal(fractions.group_labels(labels, inverse, 3),
                                [1, 0, 2])


def test_group_multi_label_covers_every_label():
  rng = np.random.default_rng(1)
  labels = (rng.random((300, 4)) < [0.5, 0.1, 0.02, 0.0]).astype(np.int32)
  groups = np.repeat(np.arange(100), 3)
  idx = label_fraction_indices(labels, 0.01, 0, groups=groups)
  assert len(idx) % 3 == 0 and set(np.unique(groups[idx]).tolist())
  assert np.all(labels[idx].max(0)[:3] == 1)
  np.testing.assert_array_equal(
      idx, np.flatnonzero(np.isin(groups, groups[idx])))


def test_no_groups_is_unchanged_and_shape_checked():
  np.testing.assert_array_equal(
      label_fraction_indices(LABELS, 0.1, 0),
      label_fraction_indices(LABELS, 0.1, 0, groups=None))
  with pytest.raises(ValueError, match="one id per example"):
    label_fraction_indices(LABELS, 0.1, 0, groups=PATIENTS[:-1])
