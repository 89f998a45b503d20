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


def label_fraction_indices(
    labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
  """Sorted int64 indices of a `fraction` of the examples (see module doc).

  labels: [N] class ids (single-label) or [N, L] 0/1 (multi-label).
  fraction=1.0 returns every index.
  """
  fraction = _check_fraction(fraction)
  labels = np.asarray(labels)
  if labels.ndim == 1:
    keep = _single_label(labels, fraction, seed)
  elif labels.ndim == 2:
    keep = _multi_label(labels, fraction, seed)
  else:
    raise ValueError(
        f"labels must be [N] (single-label) or [N, L] (multi-label), got "
        f"shape {list(labels.shape)}")
  return np.unique(keep).astype(np.int64)
