"""Positive pairs beyond two views of one image: partner rows by metadata.

Contrastive methods learn what stays the same between the two images of a
pair. With `views` (the default) both are augmentations of one image. Medical
data offers natural positives: two images of the same patient (Azizi et al.,
ICCV 2021, "Big Self-Supervised Models Advance Medical Image
Classification": multi-instance contrastive learning), of one study, nearby
slices of one series (Chaitanya et al., NeurIPS 2020, local/global
contrastive learning on volumes), or patients who share sex and age (Vu et
al., MLHC 2021, "MedAug": metadata-selected positive pairs).

Pure numpy, no TF. `build_partners` turns per-image metadata columns into a
`PartnerTable`; `sample_partners` draws one partner per row, seeded. The
input pipeline gathers the partners' images as the batch's `pair_image`.

Representation (so no mode costs O(N^2), even 200k images within 5 years of
age): rows sorted by (group, position); each row's candidates are a window
[lo, hi) of that order (same group, |position difference| <= gap) minus the
rows of its own `owner` (itself, or its own patient in `metadata` mode).
Sampling draws uniformly from the window and redraws excluded rows.

Missing values: an image without a patient/study/series id ('' or NaN, as
sources allowing missing metadata write them) has no partner by that id and
falls back to itself (counted); missing sex, age or slice index is an error
naming the row.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ssl_jax.registry import Registry

# Metadata column names (data sources name their columns so).
PATIENT, STUDY, SERIES = "patient_id", "study_id", "series_id"
SLICE, AGE, SEX = "slice_index", "age", "sex"

# Redraws before the exact (enumerating) draw for the rows still excluded.
_MAX_REDRAWS = 32


@dataclasses.dataclass(frozen=True)
class PartnerTable:
  """Each row's candidate partners (see the module doc), precomputed once."""
  mode: str
  order: np.ndarray  # int64 [N]: rows sorted by (group, position)
  lo: np.ndarray     # int64 [N]: window start of each row, index into order
  hi: np.ndarray     # int64 [N]: window end (exclusive)
  owner: np.ndarray  # int64 [N]: a candidate of the row's own owner is excluded
  count: np.ndarray  # int64 [N]: valid candidates; 0 -> the partner is itself
  fell_back: int     # rows that found no candidate and pair with themselves

  @property
  def num_rows(self) -> int:
    return len(self.order)

  def candidates(self, row: int) -> np.ndarray:
    """The rows `row` may pair with, sorted (empty: it pairs with itself)."""
    window = self.order[self.lo[row]:self.hi[row]]
    return np.sort(window[self.owner[window] != self.owner[row]])

  def stats(self) -> dict[str, float | int | str]:
    """What a report states about the pairing."""
    return {"mode": self.mode, "rows": self.num_rows,
            "fell_back_to_self": self.fell_back,
            "mean_candidates": float(np.mean(self.count)) if len(self.count)
                               else 0.0}


# A mode's builder: (metadata, num_rows, mode, max_age_gap, series_max_gap)
# -> (group codes, positions or None (whole group), gap, owner codes).
Windows = tuple[np.ndarray, np.ndarray | None, float, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PairMode:
  name: str
  columns: tuple[str, ...]  # required metadata columns (optional ones aside)
  windows: Callable[..., Windows]
  description: str
  pairs_with_self: bool = False  # `views`: self is the design, not a fallback


MODES: Registry[PairMode] = Registry("pairs mode")


# ---------------------------------------------------------------- columns --

def _column(metadata: dict[str, np.ndarray], name: str, mode: str,
            n: int) -> np.ndarray:
  if name not in metadata:
    raise ValueError(f"pairs mode {mode!r} needs the metadata column {name!r}; "
                     f"the data source has: {sorted(metadata) or 'none'}")
  values = np.asarray(metadata[name])
  if values.shape != (n,):
    raise ValueError(f"metadata column {name!r}: expected shape ({n},) "
                     f"(one value per image), got {list(values.shape)}")
  return values


def _missing(values: np.ndarray) -> np.ndarray:
  """Where a categorical value is missing: None, NaN or '' (as sources that
  allow missing metadata write it)."""
  if values.dtype == object:
    return np.array([v is None or v != v or str(v).strip() == ""
                     for v in values], bool)  # v != v: NaN
  if np.issubdtype(values.dtype, np.floating):
    return np.isnan(values)
  if values.dtype.kind in "US":
    return np.char.str_len(np.char.strip(values)) == 0
  return np.zeros(len(values), bool)


def _codes(values: np.ndarray, name: str, *, missing_alone: bool) -> np.ndarray:
  """Integer codes of a categorical column (ids, sex). A missing value is an
  error, or (`missing_alone`, for ids) a group of its own: such a row has
  no partner by that id and falls back to itself, counted."""
  missing = _missing(values)
  if missing.any() and not missing_alone:
    raise ValueError(f"metadata column {name!r} is missing at row "
                     f"{int(np.flatnonzero(missing)[0])} ({int(missing.sum())} "
                     "such rows); expected a value for every image")
  present = values[~missing]
  if values.dtype == object:
    present = present.astype(str)
  codes = np.empty(len(values), np.int64)
  codes[~missing] = np.unique(present, return_inverse=True)[1].reshape(-1)
  codes[missing] = len(present) + np.arange(int(missing.sum()))
  return codes


def _check_finite(values: np.ndarray, name: str) -> None:
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise ValueError(f"metadata column {name!r} is {values[bad[0]]} at row "
                     f"{int(bad[0])} ({bad.size} such rows); expected a "
                     "finite number")


def _numbers(values: np.ndarray, name: str) -> np.ndarray:
  try:
    values = values.astype(np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"metadata column {name!r}: expected numbers, got "
                     f"{values.dtype}") from None
  _check_finite(values, name)
  return values


# ----------------------------------------------------------------- windows --

def _group_windows(groups: np.ndarray, positions: np.ndarray | None,
                   gap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(order, lo, hi): rows sorted by (group, position); each row's window
  holds its group's rows with |position difference| <= gap (all of the
  group when positions is None)."""
  n = len(groups)
  keys = (groups,) if positions is None else (positions, groups)
  order = np.lexsort(keys).astype(np.int64)  # stable: ties keep row order
  sorted_groups = groups[order]
  starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
  ends = np.r_[starts[1:], n]
  lo, hi = np.empty(n, np.int64), np.empty(n, np.int64)
  if positions is None:
    size = np.diff(np.r_[starts, n])
    lo[order] = np.repeat(starts, size)
    hi[order] = np.repeat(ends, size)
    return order, lo, hi
  sorted_positions = positions[order]
  for start, end in zip(starts, ends):
    p = sorted_positions[start:end]
    rows = order[start:end]
    lo[rows] = start + np.searchsorted(p, p - gap, side="left")
    hi[rows] = start + np.searchsorted(p, p + gap, side="right")
  return order, lo, hi


def _by_id(column: str) -> Callable[..., Windows]:
  def windows(metadata, n, mode, max_age_gap, series_max_gap) -> Windows:
    del max_age_gap, series_max_gap
    groups = _codes(_column(metadata, column, mode, n), column,
                    missing_alone=True)
    return groups, None, 0.0, np.arange(n, dtype=np.int64)
  return windows


def _views(metadata, n, mode, max_age_gap, series_max_gap) -> Windows:
  del metadata, mode, max_age_gap, series_max_gap
  rows = np.arange(n, dtype=np.int64)  # each row alone in its group
  return rows, None, 0.0, rows


def _series(metadata, n, mode, max_age_gap, series_max_gap) -> Windows:
  """Slices of one series within `series_max_gap` slices: by `slice_index`
  when the source has it, else by row order within the series."""
  del max_age_gap
  groups = _codes(_column(metadata, SERIES, mode, n), SERIES,
                  missing_alone=True)
  if SLICE in metadata:
    positions = _numbers(_column(metadata, SLICE, mode, n), SLICE)
  else:  # rank of each row within its series, in row order
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    positions = np.empty(n, np.float64)
    positions[order] = np.arange(n) - first
  return groups, positions, float(series_max_gap), np.arange(n, dtype=np.int64)


def _metadata(metadata, n, mode, max_age_gap, series_max_gap) -> Windows:
  """Another patient of the same sex with |age difference| <= max_age_gap.
  Without a `patient_id` (column or value) an image is its own patient.
  Missing sex or age is an error: no neighbour can be defined."""
  del series_max_gap
  sex = _codes(_column(metadata, SEX, mode, n), SEX, missing_alone=False)
  age = _numbers(_column(metadata, AGE, mode, n), AGE)
  owner = (_codes(_column(metadata, PATIENT, mode, n), PATIENT,
                  missing_alone=True)
           if PATIENT in metadata else np.arange(n, dtype=np.int64))
  return sex, age, float(max_age_gap), owner


MODES.add("views", PairMode(
    "views", (), _views, pairs_with_self=True,
    description="Two augmentations of one image (SimCLR's pair)."))
MODES.add("patient", PairMode(
    "patient", (PATIENT,), _by_id(PATIENT),
    description="Another image of the same patient (Azizi et al. 2021)."))
MODES.add("study", PairMode(
    "study", (STUDY,), _by_id(STUDY),
    description="Another image of the same study."))
MODES.add("series", PairMode(
    "series", (SERIES,), _series,
    description="Another slice of the same series within series_max_gap "
                "slices (Chaitanya et al. 2020)."))
MODES.add("metadata", PairMode(
    "metadata", (SEX, AGE), _metadata,
    description="Another patient of the same sex, |age difference| <= "
                "max_age_gap (Vu et al. 2021)."))


def names() -> list[str]:
  return MODES.names()


# ------------------------------------------------------------------ public --

def build_partners(mode: str, metadata: dict[str, np.ndarray] | None, *,
                   num_rows: int | None = None, max_age_gap: float = 5.0,
                   series_max_gap: int = 1) -> PartnerTable:
  """Each row's candidate partners under `mode` (see `MODES`).

  `metadata` maps column names to one value per image (rows in the order of
  the images). A row is never its own partner when it has a candidate; rows
  without one pair with themselves and are counted in `fell_back`.
  `num_rows` is needed only when no column gives it (`views` mode).
  """
  spec = MODES.get(mode)
  metadata = dict(metadata or {})
  if max_age_gap < 0 or series_max_gap < 0:
    raise ValueError(f"pairs.max_age_gap={max_age_gap} and pairs."
                     f"series_max_gap={series_max_gap} must be >= 0")
  if num_rows is None:
    if not metadata:
      raise ValueError(f"pairs mode {mode!r}: pass num_rows or metadata")
    num_rows = len(next(iter(metadata.values())))
  for column in spec.columns:
    _column(metadata, column, mode, num_rows)
  groups, positions, gap, owner = spec.windows(
      metadata, num_rows, mode, max_age_gap, series_max_gap)
  order, lo, hi = _group_windows(groups, positions, gap)
  # Rows of the row's own owner inside its window: same group, same owner.
  _, own_lo, own_hi = _group_windows(
      np.unique(np.stack([groups, owner], 1), axis=0, return_inverse=True)[1]
      .reshape(-1).astype(np.int64), positions, gap)
  count = (hi - lo) - (own_hi - own_lo)
  fell_back = 0 if spec.pairs_with_self else int(np.sum(count == 0))
  return PartnerTable(mode=mode, order=order, lo=lo, hi=hi, owner=owner,
                      count=count, fell_back=fell_back)


def sample_partners(table: PartnerTable, rows: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
  """One partner per row, uniform over its candidates (itself if none).

  Deterministic given the rng's state.
  """
  rows = np.asarray(rows, np.int64)
  if rows.size and (rows.min() < 0 or rows.max() >= table.num_rows):
    raise ValueError(f"rows must be in [0, {table.num_rows}), got "
                     f"{rows.min()}..{rows.max()}")
  partners = rows.copy()
  todo = np.flatnonzero(table.count[rows] > 0)
  for _ in range(_MAX_REDRAWS):
    if todo.size == 0:
      return partners
    row = rows[todo]
    picked = table.order[rng.integers(table.lo[row], table.hi[row])]
    ok = table.owner[picked] != table.owner[row]
    partners[todo[ok]] = picked[ok]
    todo = todo[~ok]
  for i in todo:  # windows crowded by the row's own owner: enumerate
    partners[i] = rng.choice(table.candidates(int(rows[i])))
  return partners


def batch_columns(metadata: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Metadata as batch columns a device can hold: numbers stay numbers
  (age float32, slice_index int32), ids and other strings become int32
  codes (equal code = equal id), so a loss may use patient / study / series
  identity, e.g. to mask same-patient negatives. File paths are left out."""
  out = {}
  for name, values in metadata.items():
    values = np.asarray(values)
    if name == "path":
      continue
    if np.issubdtype(values.dtype, np.integer):
      out[name] = values.astype(np.int32)
    elif np.issubdtype(values.dtype, np.floating):
      out[name] = values.astype(np.float32)
    else:
      out[name] = np.unique(values.astype(str), return_inverse=True)[1].astype(
          np.int32).reshape(values.shape)
  return out
