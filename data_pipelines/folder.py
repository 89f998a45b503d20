"""Images listed in a CSV (`csv:/path/labels.csv`): your own data, same contract.

The CSV has a header row and one row per image file:
- `path` (options.path_column): the file, relative to options.root if set
  (itself relative to the CSV's folder), else to the CSV's folder.
  PNG/JPEG/TIFF, DICOM (.dcm) and NIfTI (.nii, .nii.gz); see medical_io.py
  for bit depths, windowing and resizing. A NIfTI volume or a multi-frame
  DICOM gives one dataset row per slice (metadata `slice_index`, and
  `series_id` = the file as written in the CSV unless the CSV names one).
- labels, one of:
    `label` (options.label_column): class names or int ids. The classes are
    options.classes if given (a value must be one of those names, or an int
    index into them); else 0..max if every value is an int; else the sorted
    distinct names. options.label_column="" means unlabelled (labels -1,
    num_classes 0, task 'unlabeled').
    options.label_columns=[...]: several 0/1 columns = multi-label; the
    classes are those column names.
- metadata, optional: patient_id, study_id, series_id, view, laterality,
  age (years, a number), sex, and the acquisition time for longitudinal
  tasks: days (a number, any origin) or study_date (YYYY-MM-DD, read as days
  since 1970-01-01). A column that is present is used, so an
  empty/NaN cell in it is a bad row, unless the column is listed in
  options.allow_missing_metadata (then '' or NaN is kept). DICOM headers fill
  the columns the CSV lacks (an absent tag gives '' / NaN).
- further columns, named in options: options.numeric_columns (numbers, e.g.
  bmi; a cell that is not a number is a bad row naming the column) and
  options.text_columns (kept as written: categories such as smoker=yes/no, or
  a free-text `report`). They are required (a CSV without one is refused,
  naming it) and ride with the metadata above, under the same rules for
  empty cells. Multimodal objectives read them (data_pipelines/vocab.py).
- `split` (options.split_column), optional: train / val / test. Without it,
  whole patients (or whole CSV rows when there is no patient id) are split by
  options.split_fractions with options.split_seed (splits.py). Either way a
  patient found in two splits is an error.

Bad rows (missing/unreadable file, wrong bit depth, label outside the
classes, empty metadata, bad split value) raise a ValueError naming the CSV,
the row in spreadsheet numbering (header = row 1, first data row = row 2)
and the problem; with options.on_bad_row="skip" they are skipped instead and
listed, with reasons, in the data report (`report()` / `write_data_report`).
Nothing is dropped silently.

Classes found in the labels (no options.classes) are listed with their rows
on the console at load; names equal up to case and punctuation ('Benign',
'benign?') and classes with very few rows (< FEW_ROWS and < 1% of the rows)
are warned about: they are usually typos.

Channels: options.channels if set, else those of most files (a tie gives 3,
which loses nothing). A file of the other kind is converted (RGB ->
luminance, ITU-R 601-2; grayscale -> replicated to RGB), and the conversions
are counted, with their rows, in the data report and on the console.

`data_dir` is not used: the CSV says where its files are.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import math
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

from data_pipelines import medical_io, source, splits
from data_pipelines.source import SPLITS, TASKS, DatasetInfo
from ssl_jax import files

METADATA_COLUMNS = (
    "patient_id", "study_id", "series_id", "view", "laterality", "age", "sex",
    "days", "study_date")
NUMERIC_METADATA = ("age", "days", "study_date")
ON_BAD_ROW = ("error", "skip")


def _days_since_epoch(value: str) -> float:
  """'2021-03-04' -> days since 1970-01-01 (a float, as every number here)."""
  return float((datetime.date.fromisoformat(value.strip())
                - datetime.date(1970, 1, 1)).days)


# How a numeric metadata cell is read, and what the error says it must be.
NUMBER_PARSERS = {"study_date": (_days_since_epoch, "a date (YYYY-MM-DD)")}
UNLABELED = "unlabeled"
_EMPTY = ("", "nan", "na", "n/a")  # a missing metadata value
_NO_LABEL = ("", "nan")
FEW_ROWS = 10  # a found class with fewer rows (and < 1% of them) is warned about
# The conversion a file of the other kind gets, by the channels chosen.
CONVERSIONS = {1: "RGB -> grayscale (luminance)",
               3: "grayscale -> RGB (replicated)"}


@dataclasses.dataclass(frozen=True)
class CSVOptions:
  """`config.data.options` of a `csv:` dataset (see the module doc)."""

  root: str | None = None
  path_column: str = "path"
  label_column: str | None = "label"
  label_columns: tuple[str, ...] | None = None
  classes: tuple[str, ...] | None = None
  task: str | None = None
  channels: int | None = None  # None: those of most files (a tie: 3)
  window: tuple[float, float] | None = None
  on_bad_row: str = "error"
  allow_missing_metadata: tuple[str, ...] = ()
  numeric_columns: tuple[str, ...] = ()
  text_columns: tuple[str, ...] = ()
  allow_binary: bool = False
  split_column: str = "split"
  split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
  split_seed: int = 0
  license: str = "unknown (set options.license)"
  citation: str = ""

  @classmethod
  def from_mapping(cls, options: Mapping[str, Any] | None) -> "CSVOptions":
    options = source.known_options(cls, options, "csv")
    for key in ("label_columns", "classes", "allow_missing_metadata",
                "numeric_columns", "text_columns"):
      if options.get(key) is not None:
        values = options[key]
        if isinstance(values, str):
          values = (values,)
        # --config.data.options.classes=a,b arrives as ('a,b',): split it.
        options[key] = tuple(v.strip() for value in values
                             for v in str(value).split(",") if v.strip())
    for key in ("window", "split_fractions"):
      if options.get(key) is not None:
        options[key] = tuple(float(v) for v in options[key])
    opts = cls(**options)
    opts.check()
    return opts

  def check(self) -> None:
    if self.on_bad_row not in ON_BAD_ROW:
      raise ValueError(f"csv source: options.on_bad_row={self.on_bad_row!r}; "
                       f"allowed: {', '.join(ON_BAD_ROW)}")
    if self.channels not in (None, 1, 3):
      raise ValueError(f"csv source: options.channels={self.channels!r}; "
                       "allowed: 1, 3")
    if self.window is not None and (len(self.window) != 2
                                    or self.window[1] <= 0):
      raise ValueError(f"csv source: options.window={self.window!r}; "
                       "expected (centre, width) with width > 0")
    self._check_further_columns()
    carried = METADATA_COLUMNS + self.further_columns()
    bad = sorted(set(self.allow_missing_metadata) - set(carried))
    if bad:
      raise ValueError(f"csv source: options.allow_missing_metadata has "
                       f"{bad}; allowed: {', '.join(carried)}")
    if self.task is not None and self.task not in TASKS + (UNLABELED,):
      raise ValueError(f"csv source: options.task={self.task!r}; allowed: "
                       f"{', '.join(TASKS + (UNLABELED,))}")
    splits.check_fractions(self.split_fractions)

  def further_columns(self) -> tuple[str, ...]:
    """The options' columns that are not known metadata, in option order."""
    return tuple(c for c in self.numeric_columns + self.text_columns
                 if c not in METADATA_COLUMNS)

  def numeric(self) -> frozenset[str]:
    """Every metadata column read as a number."""
    return frozenset(NUMERIC_METADATA) | frozenset(self.numeric_columns)

  def _check_further_columns(self) -> None:
    """numeric_columns / text_columns: disjoint, not the path, label or
    split column, and a known metadata column only under its own kind."""
    both = sorted(set(self.numeric_columns) & set(self.text_columns))
    if both:
      raise ValueError(f"csv source: {both} in both options.numeric_columns "
                       "and options.text_columns; a column is one or the other")
    roles = {self.path_column: "path_column", self.split_column: "split_column"}
    roles.update({c: "label_columns" for c in self.label_columns or ()})
    if self.label_column:
      roles[self.label_column] = "label_column"
    for option, kind_is_numeric in (("numeric_columns", True),
                                    ("text_columns", False)):
      for column in getattr(self, option):
        if column in roles:
          raise ValueError(f"csv source: options.{option} has {column!r}, "
                           f"which is options.{roles[column]}")
        if column in METADATA_COLUMNS and (
            (column in NUMERIC_METADATA) != kind_is_numeric):
          kind = "a number" if column in NUMERIC_METADATA else "text"
          raise ValueError(f"csv source: options.{option} has {column!r}, a "
                           f"known metadata column read as {kind}; leave it "
                           "out (it is carried anyway)")


class BadRow(ValueError):
  """A CSV row that cannot be used; `reason` is its key in the report."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Row:
  number: int  # spreadsheet row: header = 1, first data row = 2
  file: str  # as written in the CSV
  path: pathlib.Path
  label: Any  # int, tuple of 0/1 ints, or -1 (unlabelled)
  meta: dict[str, Any]
  split: str | None


@dataclasses.dataclass
class Parsed:
  rows: list[Row]
  classes: tuple[str, ...]
  columns: tuple[str, ...]  # metadata columns the CSV has
  has_split: bool
  num_data_rows: int
  blank_lines: int
  bad: list[dict[str, Any]]


@dataclasses.dataclass
class Loaded:
  images: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  metadata: dict[str, dict[str, np.ndarray]]
  report: dict[str, Any]


def _is_empty(value: str, empty: tuple[str, ...] = _EMPTY) -> bool:
  return value.strip().lower() in empty


def _as_int(value: str) -> int | None:
  try:
    f = float(value)
  except ValueError:
    return None
  return int(f) if f.is_integer() else None


def _peek_channels(path) -> int | None:
  """A file's channels for the majority vote; None for an unreadable file,
  which the reader reports (or skips) as a bad row with its CSV row."""
  try:
    return medical_io.peek_channels(path)
  except Exception:  # noqa: BLE001  (any decoder's error: not a vote)
    return None


class CSVSource:
  """`csv:<file>`: images listed in a CSV file (see the module doc)."""

  def __init__(self, spec: str, options: Mapping[str, Any] | None = None):
    if not spec:
      raise ValueError("csv source: expected 'csv:<path to a .csv file>'")
    self.name = f"csv:{spec}"
    self.csv_path = pathlib.Path(spec).expanduser()
    self.opts = CSVOptions.from_mapping(options)
    self._parsed: Parsed | None = None
    self._loaded: dict[int, Loaded] = {}
    self._channels: int | None = self.opts.channels
    self._file_channels: dict[int, int] | None = None  # CSV row -> 1 or 3

  # --- the Source contract -------------------------------------------------

  def info(self, size: int = 28) -> DatasetInfo:
    parsed = self.parsed()
    loaded = self._loaded.get(size)
    multi = self.opts.label_columns is not None
    return DatasetInfo(
        name=self.name, task=self._task(parsed, multi),
        num_classes=len(parsed.classes), num_channels=self.channels(),
        image_size=size, multi_label=multi, license=self.opts.license,
        citation=self.opts.citation, class_names=tuple(parsed.classes),
        num_examples=({s: len(loaded.labels[s]) for s in SPLITS}
                      if loaded else {}))

  def load(self, split: str, size: int = 28,
           data_dir: str | os.PathLike | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    del data_dir  # the CSV says where its files are
    loaded = self._load(size)
    return loaded.images[_check_split(split)], loaded.labels[split]

  def metadata(self, split: str, size: int = 28,
               data_dir: str | os.PathLike | None = None
               ) -> dict[str, np.ndarray]:
    """One array per metadata column, aligned with `load(split)`'s rows:
    the CSV's metadata columns and those a DICOM header filled, plus
    `csv_row` (spreadsheet row) and `path` (as in the CSV), and
    `slice_index` when some file is a volume (0 for 2D images). Strings are
    numpy str arrays ('' = missing), age float64 (NaN = missing)."""
    del data_dir
    return dict(self._load(size).metadata[_check_split(split)])

  def report(self, size: int = 28,
             data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What was read, skipped (with reasons) and put in each split."""
    del data_dir
    return self._load(size).report

  # --- parsing (once per source) -------------------------------------------

  def _where(self, number: int) -> str:
    return (f"{self.csv_path}, row {number} "
            "(spreadsheet numbering, header = row 1)")

  def _bad(self, bad: list[dict[str, Any]], number: int, e: Exception,
           reason: str) -> None:
    """Raise (on_bad_row='error') or record one bad row."""
    if self.opts.on_bad_row == "error":
      raise ValueError(
          f"{self._where(number)}: {e} [{reason}]. Fix the row, or skip "
          f"such rows with {source.option_flag('on_bad_row', 'skip')} (in a "
          "config file: c.data.options.on_bad_row = 'skip'); skipped rows "
          "are counted on the console and listed in data_report.json") from e
    bad.append({"row": number, "reason": reason, "detail": str(e)})

  def _root(self) -> pathlib.Path:
    base = self.csv_path.parent
    return base / self.opts.root if self.opts.root else base

  def parsed(self) -> Parsed:
    if self._parsed is None:
      self._parsed = self._parse()
    return self._parsed

  def _parse(self) -> Parsed:
    if not self.csv_path.is_file():
      raise FileNotFoundError(f"csv source: {self.csv_path} does not exist")
    with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
      records = list(csv.reader(f))
    if not records:
      raise ValueError(f"{self.csv_path}: empty file; expected a header row")
    header = [h.strip() for h in records[0]]
    self._check_header(header)
    col = {name: i for i, name in enumerate(header)}
    columns = tuple(c for c in METADATA_COLUMNS if c in col) + (
        self.opts.further_columns())
    has_split = self.opts.split_column in col
    raw_labels, cells, bad, blank = [], [], [], 0
    for number, record in enumerate(records[1:], start=2):
      if not any(cell.strip() for cell in record):
        blank += 1
        continue
      if len(record) != len(header):
        self._bad(bad, number, BadRow("bad_cell_count", (
            f"{len(record)} cells, the header has {len(header)}")),
                  "bad_cell_count")
        continue
      row = {name: record[i].strip() for name, i in col.items()}
      cells.append((number, row))
      if self._single_label():
        raw_labels.append(row[self.opts.label_column])
    classes = self._classes(raw_labels)
    rows = []
    for number, row in cells:
      try:
        rows.append(self._row(number, row, classes, columns, has_split))
      except BadRow as e:
        self._bad(bad, number, e, e.reason)
    if not rows:
      raise ValueError(f"{self.csv_path}: no usable data rows "
                       f"({len(bad)} bad, {blank} blank)")
    return Parsed(rows, classes, columns, has_split, len(records) - 1,
                  blank, bad)

  def _single_label(self) -> bool:
    return self.opts.label_columns is None and bool(self.opts.label_column)

  def _check_header(self, header: list[str]) -> None:
    needed = [(self.opts.path_column, "the file path", "path_column")]
    if self.opts.label_columns is not None:
      needed += [(c, "a multi-label class", "label_columns")
                 for c in self.opts.label_columns]
    elif self.opts.label_column:
      needed.append((self.opts.label_column, "the label", "label_column"))
    needed += [(c, "a number", "numeric_columns")
               for c in self.opts.numeric_columns]
    needed += [(c, "text", "text_columns") for c in self.opts.text_columns]
    for column, role, option in needed:
      if column not in header:
        raise ValueError(
            f"{self.csv_path}, row 1 (header): no column {column!r} for "
            f"{role}; columns are {header}. Rename it or set "
            f"{source.option_flag(option, '<column>')}")

  def _classes(self, raw_labels: list[str]) -> tuple[str, ...]:
    if self.opts.label_columns is not None:
      return self.opts.label_columns
    if self.opts.classes is not None:
      return self.opts.classes
    if not self._single_label():
      return ()
    values = [v for v in raw_labels if not _is_empty(v, _NO_LABEL)]
    ints = [_as_int(v) for v in values]
    if values and all(i is not None and i >= 0 for i in ints):
      return tuple(str(i) for i in range(max(ints) + 1))
    return tuple(sorted(set(values)))

  def _label(self, row: dict[str, str], classes: tuple[str, ...]) -> Any:
    if self.opts.label_columns is not None:
      values = []
      for column in self.opts.label_columns:
        value = _as_int(row[column])
        if value not in (0, 1):
          raise BadRow("bad_label", f"multi-label column {column!r} is "
                       f"{row[column]!r}; expected 0 or 1")
        values.append(value)
      return tuple(values)
    if not self._single_label():
      return -1
    value = row[self.opts.label_column]
    if _is_empty(value, _NO_LABEL):
      raise BadRow("missing_label", f"empty label in column "
                   f"{self.opts.label_column!r}")
    if value in classes:
      return classes.index(value)
    index = _as_int(value)
    if index is not None and 0 <= index < len(classes):
      return index
    shown = list(classes) if len(classes) <= 20 else f"{len(classes)} classes"
    raise BadRow("label_not_in_classes", f"label {value!r} is not one of "
                 f"the classes {shown} (nor an index into them)")

  def _meta(self, row: dict[str, str], columns: tuple[str, ...]
            ) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for column in columns:
      value = row[column]
      if _is_empty(value):
        if column not in self.opts.allow_missing_metadata:
          raise BadRow("missing_metadata", (
              f"empty {column!r}; the column is present so it is used (list "
              f"it in {source.option_flag('allow_missing_metadata', column)} to "
              "allow blanks)"))
        meta[column] = math.nan if column in self.opts.numeric() else ""
        continue
      if column in self.opts.numeric():
        parse, want = NUMBER_PARSERS.get(column, (float, "a number"))
        try:
          meta[column] = parse(value)
        except ValueError:
          raise BadRow("bad_metadata", f"{column} {value!r} is not "
                       f"{want}") from None
      else:
        meta[column] = value
    return meta

  def _row(self, number: int, row: dict[str, str], classes: tuple[str, ...],
           columns: tuple[str, ...], has_split: bool) -> Row:
    file = row[self.opts.path_column]
    if not file:
      raise BadRow("missing_path", f"empty {self.opts.path_column!r}")
    split = None
    if has_split:
      split = row[self.opts.split_column].lower()
      if split not in SPLITS:
        raise BadRow("bad_split", f"split {row[self.opts.split_column]!r}; "
                     f"allowed: {', '.join(SPLITS)}")
    label = self._label(row, classes)
    meta = self._meta(row, columns)
    return Row(number, file, self._root() / file, label, meta, split)

  def channels(self) -> int:
    """options.channels, else the channels most files have (a tie: 3, which
    loses nothing); the other files are converted and counted (`_read`)."""
    if self._channels is None:
      counts = collections.Counter(self.file_channels().values())
      self._channels = 3 if counts[3] >= counts[1] else 1
    return self._channels

  def file_channels(self) -> dict[int, int]:
    """Each existing file's own channels (1 or 3), by CSV row number."""
    if self._file_channels is None:
      peeked = {r.number: _peek_channels(r.path)
                for r in self.parsed().rows if r.path.is_file()}
      self._file_channels = {k: v for k, v in peeked.items() if v is not None}
    return self._file_channels

  def _task(self, parsed: Parsed, multi: bool) -> str:
    if self.opts.task:
      return self.opts.task
    if multi:
      return "multi-label, binary-class"
    if not parsed.classes:
      return UNLABELED
    return "binary-class" if len(parsed.classes) == 2 else "multi-class"

  # --- reading (once per image size) ---------------------------------------

  def _load(self, size: int) -> Loaded:
    if size not in self._loaded:
      self._loaded[size] = self._read(size)
    return self._loaded[size]

  def _read(self, size: int) -> Loaded:
    parsed = self.parsed()
    opts = medical_io.ReadOptions(size=size, channels=self.channels(),
                                  window=self.opts.window,
                                  allow_binary=self.opts.allow_binary)
    bad = list(parsed.bad)
    images, labels, metas, rows = [], [], [], []
    converted: dict[str, list[int]] = {}
    for row in parsed.rows:
      try:
        slices = medical_io.read(row.path, opts)
      except medical_io.ReadError as e:
        self._bad(bad, row.number, e, e.reason)
        continue
      own = self.file_channels().get(row.number, opts.channels)
      if own != opts.channels:
        converted.setdefault(CONVERSIONS[opts.channels], []).extend(
            [row.number] * len(slices))
      for s in slices:
        images.append(s.image)
        labels.append(row.label)
        metas.append(_merge_meta(row, s.meta, len(slices) > 1))
        rows.append(row)
    if not images:
      raise ValueError(f"{self.csv_path}: no readable images "
                       f"({len(bad)} bad rows)")
    columns = _metadata_columns(parsed.columns, metas)
    meta = {c: _column(c, [m.get(c) for m in metas], self.opts.numeric())
            for c in columns}
    split_of = self._splits(parsed, rows, meta)
    images_arr = np.stack(images)
    labels_arr = np.asarray(labels, np.int32)
    out = Loaded({}, {}, {}, {})
    for name in SPLITS:
      idx = np.flatnonzero(split_of == name)
      out.images[name] = images_arr[idx]
      out.labels[name] = labels_arr[idx]
      out.metadata[name] = {c: v[idx] for c, v in meta.items()}
    out.report = self._report(parsed, bad, out, size, converted)
    return out

  def _splits(self, parsed: Parsed, rows: list[Row],
              meta: dict[str, np.ndarray]) -> np.ndarray:
    patients = meta.get("patient_id")
    if parsed.has_split:
      split_of = np.array([r.split for r in rows])
    else:
      # Unit of splitting: the patient, else the CSV row (which keeps the
      # slices of one volume together).
      groups = [f"<csv row {r.number}>" for r in rows]
      if patients is not None:
        groups = [p if p != "" else g for p, g in zip(patients, groups)]
      split_of = splits.assign_splits(groups, self.opts.split_fractions,
                                      self.opts.split_seed)
    if patients is not None:
      numbers = np.array([r.number for r in rows])

      def describe(patient, split):
        found = numbers[(patients == patient) & (split_of == split)]
        return "rows " + ", ".join(map(str, sorted(set(found))[:5]))

      try:
        splits.check_disjoint_groups(
            {s: patients[split_of == s] for s in SPLITS}, describe=describe)
      except ValueError as e:
        raise ValueError(f"{self.csv_path}: {e}") from None
    return split_of

  def _report(self, parsed: Parsed, bad: list[dict[str, Any]],
              out: Loaded, size: int, converted: dict[str, list[int]]
              ) -> dict[str, Any]:
    per_split = {}
    for name in SPLITS:
      meta = out.metadata[name]
      entry: dict[str, Any] = {
          "images": int(len(out.labels[name])),
          "rows": int(len(set(meta["csv_row"].tolist()))),
      }
      if "patient_id" in meta:
        entry["patients"] = splits.count_groups(meta["patient_id"].tolist())
      labels = out.labels[name]
      if parsed.classes:
        counts = (labels.sum(0) if labels.ndim == 2 else
                  np.bincount(labels, minlength=len(parsed.classes)))
        entry["label_counts"] = dict(zip(parsed.classes,
                                         map(int, counts)))
      per_split[name] = entry
    class_rows = self._class_rows(parsed, out)
    unit = "patient_id" if "patient_id" in out.metadata["train"] else "CSV row"
    split_by = (f"CSV column {self.opts.split_column!r}" if parsed.has_split
                else f"{unit} groups by fractions "
                f"{list(self.opts.split_fractions)}, seed "
                f"{self.opts.split_seed}")
    return {
        "source": self.name,
        "csv": str(self.csv_path),
        "image_size": size,
        "channels": self.channels(),
        "channels_from": ("options.channels" if self.opts.channels else
                          "most files (a tie: 3)"),
        "files_by_channels": {
            name: sum(c == n for c in self.file_channels().values())
            for n, name in ((1, "grayscale"), (3, "colour"))},
        "converted": {k: len(v) for k, v in converted.items()},
        "converted_rows": {k: sorted(set(v)) for k, v in converted.items()},
        "window": (list(self.opts.window) if self.opts.window else
                   "per-image min-max for >8-bit images (DICOM: header window "
                   "if present)"),
        "classes": list(parsed.classes),
        "classes_from": self._classes_from(),
        "class_rows": class_rows,
        "warnings": self._class_warnings(class_rows),
        "data_rows": parsed.num_data_rows,
        "blank_lines": parsed.blank_lines,
        "rows_used": len(set().union(
            *(out.metadata[s]["csv_row"].tolist() for s in SPLITS))),
        "skipped": {
            "count": len(bad),
            "by_reason": dict(collections.Counter(b["reason"] for b in bad)),
            "rows": sorted(bad, key=lambda b: b["row"]),
        },
        "split_by": split_by,
        "splits": per_split,
    }


  def _classes_from(self) -> str:
    if self.opts.label_columns is not None:
      return "options.label_columns"
    if self.opts.classes is not None:
      return "options.classes"
    return "the label column" if self._single_label() else "none (unlabelled)"

  def _class_rows(self, parsed: Parsed, out: Loaded) -> dict[str, int]:
    """CSV rows used per class (multi-label: rows where it is 1)."""
    if not parsed.classes:
      return {}
    seen: set[tuple[int, int]] = set()
    for name in SPLITS:
      rows, labels = out.metadata[name]["csv_row"].tolist(), out.labels[name]
      if labels.ndim == 2:  # multi-label 0/1
        seen.update((r, k) for r, label in zip(rows, labels.tolist())
                    for k, v in enumerate(label) if v)
      else:
        seen.update(zip(rows, labels.tolist()))
    counts = collections.Counter(k for _, k in seen)
    return {c: counts[k] for k, c in enumerate(parsed.classes)}

  def _class_warnings(self, class_rows: dict[str, int]) -> list[str]:
    """Likely label typos among classes found in the data (no
    options.classes): names equal up to case and punctuation, and classes
    with very few rows."""
    if self._classes_from() != "the label column":
      return []
    fix = (f"fix the labels, or list the classes with "
           f"{source.option_flag('classes', '<a>,<b>')} (other labels then "
           "are bad rows)")
    warnings = []
    groups = collections.defaultdict(list)
    for name in class_rows:
      groups[re.sub(r"[\W_]+", "", name.casefold())].append(name)
    for names in groups.values():
      if len(names) > 1:
        shown = ", ".join(f"{n!r} ({class_rows[n]} rows)" for n in names)
        warnings.append(f"{self.csv_path}: classes {shown} differ only in "
                        f"case or punctuation: a typo? {fix}")
    total = sum(class_rows.values())
    for name, count in class_rows.items():
      if count < FEW_ROWS and count < 0.01 * total:
        warnings.append(f"{self.csv_path}: class {name!r} has {count} of "
                        f"{total} rows: a typo? {fix}")
    return warnings


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
  return split


def _merge_meta(row: Row, file_meta: dict[str, Any],
                is_volume: bool) -> dict[str, Any]:
  """CSV values win; the file (DICOM header, slice index) fills the rest."""
  meta = dict(file_meta)
  for column, value in row.meta.items():
    if value != "" and not (isinstance(value, float) and math.isnan(value)):
      meta[column] = value
    else:
      meta.setdefault(column, value)
  if is_volume and not row.meta.get("series_id"):
    meta["series_id"] = row.file
  meta["csv_row"] = row.number
  meta["path"] = row.file
  return meta


def _metadata_columns(csv_columns: tuple[str, ...],
                      metas: list[dict[str, Any]]) -> list[str]:
  present = set(csv_columns).union(*(m.keys() for m in metas))
  ordered = list(METADATA_COLUMNS) + ["slice_index", "csv_row", "path"]
  return [c for c in ordered if c in present] + sorted(
      present - set(ordered))


def _column(name: str, values: list[Any],
            numeric: frozenset[str] = frozenset(NUMERIC_METADATA)
            ) -> np.ndarray:
  if name in numeric:
    return np.array([math.nan if v is None else v for v in values],
                    np.float64)
  if name in ("slice_index", "csv_row"):
    return np.array([0 if v is None else v for v in values], np.int32)
  return np.array(["" if v is None else str(v) for v in values], dtype=str)


def write_data_report(path: str | os.PathLike, report: Mapping[str, Any]
                      ) -> None:
  """The report as indented JSON, written atomically (temp file + rename)."""
  files.write_json_atomic(path, report, default=_json_default)


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)
