"""Patient-level train/val/test splits, and the check that keeps them apart.

Images of one patient are strongly correlated (same anatomy, scanner, often
the same study); a patient with images in both train and test inflates every
test metric. So splits are made over *groups* (patients, or whole CSV rows
when there is no patient id, which keeps the slices of one volume together),
and a split given by the data itself is checked for shared patients.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from data_pipelines.source import SPLITS


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  """(train, val, test) fractions, each >= 0, summing to 1."""
  try:
    values = tuple(float(f) for f in fractions)
  except (TypeError, ValueError):
    values = ()
  if len(values) != len(SPLITS) or min(values) < 0 or not math.isclose(
      sum(values), 1.0, abs_tol=1e-6):
    raise ValueError(f"split_fractions must be 3 numbers >= 0 for "
                     f"{'/'.join(SPLITS)} summing to 1, got {fractions!r}")
  return values  # type: ignore[return-value]


def split_counts(num_groups: int, fractions: Sequence[float]) -> list[int]:
  """Groups per split: largest remainder, so counts sum to `num_groups`;
  a split with a positive fraction gets >= 1 group while there are enough
  (taken from the largest split), so a tiny dataset still has a val set."""
  fractions = check_fractions(fractions)
  exact = [f * num_groups for f in fractions]
  counts = [math.floor(e) for e in exact]
  by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
  for i in by_remainder[:num_groups - sum(counts)]:
    counts[i] += 1
  wanted = [i for i, f in enumerate(fractions) if f > 0]
  if num_groups >= len(wanted):
    for i in wanted:
      if counts[i] == 0:
        counts[int(np.argmax(counts))] -= 1
        counts[i] = 1
  return counts


def assign_splits(groups: Sequence, fractions: Sequence[float],
                  seed: int) -> np.ndarray:
  """Split name per row ('train'/'val'/'test'), whole groups at a time.

  groups: one id per row (rows with the same id land in the same split).
  The groups are sorted, then permuted with `seed`, so the result depends
  only on the set of ids, the fractions and the seed, not on row order.
  """
  ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
  order = np.random.default_rng(seed).permutation(len(ids))
  split_of_group = np.empty(len(ids), dtype=f"<U{max(map(len, SPLITS))}")
  start = 0
  for name, count in zip(SPLITS, split_counts(len(ids), fractions)):
    split_of_group[order[start:start + count]] = name
    start += count
  return split_of_group[inverse.reshape(-1)]


def check_disjoint_groups(
    groups_by_split: Mapping[str, Iterable],
    *,
    describe: Callable[[object, str], str] | None = None,
) -> None:
  """Raises ValueError naming a group (patient) found in two splits.

  describe(group, split) may add where it was found (e.g. the CSV rows).
  Empty ids ('') are not a patient and are ignored.
  """
  seen: dict[object, str] = {}
  for split, groups in groups_by_split.items():
    for group in dict.fromkeys(groups):
      if isinstance(group, str) and group == "":
        continue
      if isinstance(group, np.generic):
        group = group.item()  # 'p0', not np.str_('p0'), in the message
      first = seen.setdefault(group, split)
      if first != split:
        where = ""
        if describe is not None:
          where = (f" ({first}: {describe(group, first)}; "
                   f"{split}: {describe(group, split)})")
        raise ValueError(
            f"patient {group!r} is in both the {first!r} and the {split!r} "
            f"split{where}; a patient's images must all be in one split, "
            f"or test metrics are inflated")


def count_groups(groups: Sequence) -> int:
  """Distinct non-empty ids."""
  return len({g for g in groups if not (isinstance(g, str) and g == "")})
