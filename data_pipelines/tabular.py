"""Tabular metadata as model inputs, with statistics fitted on the train split.

ContIG (Taleb et al., CVPR 2022) contrasts images with a patient's other
data; here the "other data" are metadata columns of the source (age, sex,
or any column a CSV carries through options.numeric_columns /
text_columns). Numbers are standardised and categories coded with what the
*train* split shows, so validation and test rows never shape the inputs.

A vocabulary is a JSON-able dict (written to the pretraining workdir's
vocab.json):
  {"numeric": [{"column": "age", "mean": 51.2, "std": 12.3}, ...],
   "categorical": [{"column": "sex", "categories": ["F", "M"]}, ...]}
Numbers: (x - train mean) / train std (a constant column: std 1).
Categories: code 0 = missing or not seen in train, 1.. = the train
categories in sorted order (numbers used as categories are written '%g').
Missing values are declared, never guessed: the CSV source refuses an
empty cell unless options.allow_missing_metadata lists its column; such a
declared missing number becomes the train mean (0 once standardised), a
missing category code 0.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ssl_jax import columns

MISSING = 0  # the code of a missing or unseen category


def _where_row(where: str, metadata: Mapping[str, np.ndarray], i: int) -> str:
  """'data X, train split, CSV row 7' when the source numbers its rows."""
  rows = metadata.get("csv_row")
  return f"{where}, CSV row {int(rows[i])}" if rows is not None else (
      f"{where}, row {i}")


def _column(metadata: Mapping[str, np.ndarray], column: str, where: str,
            field: str) -> np.ndarray:
  if column not in metadata:
    raise ValueError(
        f"{where}: no column {column!r} for config.objective.{field}; the "
        f"data has {sorted(metadata) or 'no metadata'} (a csv: source "
        "carries further columns listed in data.options.numeric_columns or "
        "data.options.text_columns)")
  return np.asarray(metadata[column])


def numbers(metadata: Mapping[str, np.ndarray], column: str,
            where: str) -> np.ndarray:
  """float64 values of a numeric column (NaN = declared missing); text or
  infinite values are refused, naming the column and row."""
  values = _column(metadata, column, where, "numeric_columns")
  if not (np.issubdtype(values.dtype, np.number)
          or values.dtype == np.bool_):
    example = next((v for v in values.tolist() if str(v).strip()), "")
    raise ValueError(
        f"{where}: column {column!r} holds text (e.g. {example!r}); "
        "config.objective.numeric_columns expects numbers. List it in "
        "data.options.numeric_columns (a csv: source then parses every cell "
        "and names a bad one), or use it as a category "
        "(config.objective.categorical_columns)")
  values = values.astype(np.float64)
  bad = np.flatnonzero(np.isinf(values))
  if bad.size:
    raise ValueError(f"{_where_row(where, metadata, bad[0])}: column "
                     f"{column!r} is {values[bad[0]]}; expected a finite "
                     "number")
  return values


def categories(metadata: Mapping[str, np.ndarray], column: str,
               where: str) -> np.ndarray:
  """str values of a categorical column ('' = declared missing)."""
  values = _column(metadata, column, where, "categorical_columns")
  if np.issubdtype(values.dtype, np.floating):
    return np.array(["" if np.isnan(v) else format(v, "g")
                     for v in values.tolist()], dtype=str)
  return np.char.strip(values.astype(str))


def fit(metadata: Mapping[str, np.ndarray], *, numeric: Sequence[str],
        categorical: Sequence[str], where: str) -> dict[str, Any]:
  """Train statistics of the numeric columns and categories of the others."""
  if not numeric and not categorical:
    raise ValueError("config.objective.numeric_columns and "
                     "categorical_columns are both empty: name at least one "
                     "tabular column")
  stats = []
  for column in numeric:
    values = numbers(metadata, column, where)
    present = values[~np.isnan(values)]
    if not present.size:
      raise ValueError(f"{where}: column {column!r} has no value in the "
                       "train split; nothing to standardise it by")
    std = float(present.std())
    stats.append({"column": column, "mean": float(present.mean()),
                  "std": std if std > 1e-12 else 1.0})
  cats = []
  for column in categorical:
    values = categories(metadata, column, where)
    cats.append({"column": column,
                 "categories": sorted(set(values.tolist()) - {""})})
  return {"numeric": stats, "categorical": cats}


def cardinalities(vocab: Mapping[str, Any]) -> list[int]:
  """Codes per categorical column: its categories plus the missing code."""
  return [len(c["categories"]) + 1 for c in vocab["categorical"]]


def encode(vocab: Mapping[str, Any], metadata: Mapping[str, np.ndarray],
           where: str) -> dict[str, np.ndarray]:
  """Batch columns: standardised numbers float32 [N, F] (missing: 0) and
  category codes int32 [N, K]; a kind with no column is left out."""
  out = {}
  if vocab["numeric"]:
    cols = []
    for stat in vocab["numeric"]:
      values = numbers(metadata, stat["column"], where)
      z = (values - stat["mean"]) / stat["std"]
      cols.append(np.where(np.isnan(z), 0.0, z))
    out[columns.TABULAR_NUMERIC] = np.stack(cols, 1).astype(np.float32)
  if vocab["categorical"]:
    cols = []
    for cat in vocab["categorical"]:
      index = {c: k for k, c in enumerate(cat["categories"], start=1)}
      values = categories(metadata, cat["column"], where)
      cols.append(np.array([index.get(v, MISSING) for v in values.tolist()],
                           np.int32))
    out[columns.TABULAR_CATEGORICAL] = np.stack(cols, 1)
  return out
