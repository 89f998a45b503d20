"""Seeded, stratified, nested label fractions of a training set.

Label-efficiency curves (1% / 10% / 100% labels) are only comparable when the
smaller subsets are contained in the larger ones and every class is present,
so each fraction is a prefix of one fixed seeded order: for a given seed,
fraction 0.01 ⊂ 0.1 ⊂ 1.0.

Single-label [N]: one seeded permutation per class; keep the first
max(1, round(fraction * n_class)) of each class (stratified, >= 1 per class).

Multi-label [N, L] (0/1): classes overlap, so there is no exact
stratification. We take one seeded permutation of all examples, keep the
first round(fraction * N), then, for each label with positives but none kept,
add its first positive in permutation order. This stays nested (a label
missing from a longer prefix is also missing from a shorter one, and the
added example is the same) and guarantees >= 1 positive per label.

With `groups` (one patient id per example), the same rules pick whole
patients instead of examples, so a patient's images are never split between
"labelled" and "not labelled" and the fraction counts patients. A patient's
label is its majority label (ties -> the lowest class id) for single-label
data, and the OR of its examples' labels for multi-label data; "every class
present" then means >= 1 patient whose majority label is that class.
"""
from __future__ import annotations

import math

import numpy as np


def _check_fraction(fraction: float) -> float:
  if isinstance(fraction, (int, float, np.floating)) and not isinstance(
      fraction, bool) and 0 < fraction <= 1:
    return float(fraction)
  raise ValueError(f"label fraction must be a number in (0, 1], got "
                   f"{fraction!r}")


def _round_half_up(x: float) -> int:
  # Python's round() goes to even; half-up keeps counts monotone and obvious.
  return int(math.floor(x + 0.5))


def _single_label(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  keep = [np.zeros(0, np.int64)]
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    keep.append(members[:max(1, _round_half_up(fraction * len(members)))])
  return np.concatenate(keep)


def _multi_label(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  order = np.random.default_rng(seed).permutation(len(labels))
  keep = order[:_round_half_up(fraction * len(labels))]
  positive = labels[order] > 0
  missing = ~np.any(labels[keep] > 0, axis=0) & positive.any(axis=0)
  if not missing.any():
    return keep
  first_positive = order[np.argmax(positive[:, missing], axis=0)]
  return np.concatenate([keep, first_positive])


def _select(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  if labels.ndim == 1:
    return _single_label(labels, fraction, seed)
  if labels.ndim == 2:
    return _multi_label(labels, fraction, seed)
  raise ValueError(
      f"labels must be [N] (single-label) or [N, L] (multi-label), got "
      f"shape {list(labels.shape)}")


def group_labels(labels: np.ndarray, inverse: np.ndarray,
                 num_groups: int) -> np.ndarray:
  """One label per group: majority (single-label) or OR (multi-label)."""
  if labels.ndim == 2:
    out = np.zeros((num_groups, labels.shape[1]), labels.dtype)
    np.maximum.at(out, inverse, (labels > 0).astype(labels.dtype))
    return out
  classes, label_idx = np.unique(labels, return_inverse=True)
  counts = np.zeros((num_groups, len(classes)), np.int64)
  np.add.at(counts, (inverse, label_idx.reshape(-1)), 1)
  return classes[np.argmax(counts, axis=1)]  # argmax: ties -> lowest class


def label_fraction_indices(
    labels: np.ndarray, fraction: float, seed: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
  """Sorted int64 indices of a `fraction` of the examples (see module doc).

  labels: [N] class ids (single-label) or [N, L] 0/1 (multi-label).
  groups: optional [N] patient ids; then whole patients are picked.
  fraction=1.0 returns every index.
  """
  fraction = _check_fraction(fraction)
  labels = np.asarray(labels)
  if groups is None:
    return np.unique(_select(labels, fraction, seed)).astype(np.int64)
  groups = np.asarray(groups)
  if labels.ndim not in (1, 2):
    _select(labels, fraction, seed)  # raises, naming the expected shapes
  if groups.shape != labels.shape[:1]:
    raise ValueError(f"groups must be one id per example: shape "
                     f"{list(groups.shape)} vs labels {list(labels.shape)}")
  _, inverse = np.unique(groups, return_inverse=True)
  inverse = inverse.reshape(-1)
  per_group = group_labels(labels, inverse, int(inverse.max(initial=-1)) + 1)
  kept_groups = _select(per_group, fraction, seed)
  return np.flatnonzero(np.isin(inverse, kept_groups)).astype(np.int64)
