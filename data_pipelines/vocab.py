"""Vocabularies an objective asks for, fitted on the train split and kept
with the workdir.

An objective declares what it needs (`Objective.vocabulary(hp)`), by kind:
  {"tabular": {"numeric": ["age"], "categorical": ["sex"]}}
  {"text": {"column": "report", "size": 2000, "max_length": 64,
            "min_count": 1}}
`fit` builds each kind from the train split's metadata only, `encode` turns
any split's metadata into the batch columns named in ssl_jax/columns.py.
The pretrain job writes the fitted vocabularies to `<workdir>/vocab.json`
(atomically) and hands them to the builders (`ctx.vocab`: sizes of
embedding tables); a resumed run and stage 2 (zero-shot prompts) read that
file back, so they code and tokenise exactly as the pretraining did.
Pure numpy: no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import numpy as np

from data_pipelines import tabular, text
from ssl_jax import columns, files
from ssl_jax.registry import Registry

FILENAME = "vocab.json"
Metadata = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Kind:
  """One kind of vocabulary: fit(spec, train metadata, where) -> JSON-able
  vocabulary; encode(vocabulary, metadata, where) -> batch columns."""
  fit: Callable[[Mapping[str, Any], Metadata, str], dict[str, Any]]
  encode: Callable[[Mapping[str, Any], Metadata, str], dict[str, np.ndarray]]


def _fit_tabular(spec, metadata, where):
  return tabular.fit(metadata, numeric=tuple(spec["numeric"]),
                     categorical=tuple(spec["categorical"]), where=where)


def _reports(metadata: Metadata, column: str, where: str) -> list[str]:
  if column not in metadata:
    raise ValueError(
        f"{where}: no text column {column!r} for config.objective."
        f"text_column; the data has {sorted(metadata) or 'no metadata'} (a "
        "csv: source carries it when data.options.text_columns lists it)")
  values = np.asarray(metadata[column])
  if values.dtype.kind not in "US":
    raise ValueError(f"{where}: column {column!r} holds {values.dtype} "
                     "values, not text; list it in data.options.text_columns")
  return values.tolist()


def _fit_text(spec, metadata, where):
  column = spec["column"]
  return text.fit(_reports(metadata, column, where), column=column,
                  size=int(spec["size"]), max_length=int(spec["max_length"]),
                  min_count=int(spec.get("min_count", 1)))


def _encode_text(vocab, metadata, where):
  return {columns.TEXT_TOKENS: text.encode(
      vocab, _reports(metadata, vocab["column"], where))}


VOCABULARIES: Registry[Kind] = Registry("vocabulary kind")
VOCABULARIES.add("tabular", Kind(_fit_tabular, tabular.encode))
VOCABULARIES.add("text", Kind(_fit_text, _encode_text))


def fit(specs: Mapping[str, Mapping[str, Any]], metadata: Metadata,
        where: str) -> dict[str, dict[str, Any]]:
  """Each declared vocabulary, fitted on `metadata` (the train split's)."""
  return {kind: VOCABULARIES.get(kind).fit(spec, metadata, where)
          for kind, spec in specs.items()}


def encode(vocabs: Mapping[str, Mapping[str, Any]], metadata: Metadata,
           where: str) -> dict[str, np.ndarray]:
  """The batch columns of every vocabulary, one row per metadata row."""
  out: dict[str, np.ndarray] = {}
  for kind, vocab in vocabs.items():
    out.update(VOCABULARIES.get(kind).encode(vocab, metadata, where))
  return out


def path(workdir: str | os.PathLike) -> str:
  return os.path.join(workdir, FILENAME)


def write(workdir: str | os.PathLike,
          vocabs: Mapping[str, Mapping[str, Any]]) -> None:
  files.write_json_atomic(path(workdir), dict(vocabs))


def read(workdir: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
  """The workdir's vocabularies, or None when it has none."""
  return files.read_json(path(workdir))
