"""Finished stage-2 cells read back from workdirs, for the tools that
combine or compare them after the fact (jobs/ensemble.py, jobs/compare.py).

A workdir names its cells as `WORKDIR` or `WORKDIR:METHOD`: finetune and
benchmark jobs keep them in <workdir>/cells/<method>/, pretrain_finetune
in <workdir>/finetune/cells/<method>/; METHOD is needed only where several
methods' cells lie side by side, as in a benchmark's.
"""
from __future__ import annotations

import dataclasses
import os

from typing import Sequence

import ml_collections
import numpy as np

from ssl_jax import files
from ssl_jax.evaluation.cells import Cell, CellStore
from ssl_jax.evaluation.encoder_context import EVAL_SPLITS
from ssl_jax.jobs import common


@dataclasses.dataclass(frozen=True)
class Source:
  """One method's cells in one workdir, and the stage-2 config they ran with
  (its `finetune` fields say how cells are scored)."""
  spec: str
  store: CellStore
  method: str
  config: ml_collections.ConfigDict

  def cell(self, protocol: str, fraction: float, seed: int) -> Cell:
    return Cell(self.method, protocol, fraction, seed)

  def finished(self) -> list[Cell]:
    """The cells with a JSON file (finished), in file-name order."""
    directory = os.path.join(self.store.directory, self.method)
    cells = []
    for name in sorted(os.listdir(directory)):
      if name.endswith(".json"):
        result = files.read_json(os.path.join(directory, name))
        cells.append(self.cell(result["protocol"], float(result["fraction"]),
                               int(result["seed"])))
    return cells


def cells_directory(workdir: str) -> str:
  """Where a job keeps its cells: <workdir>/cells (finetune, benchmark) or
  <workdir>/finetune/cells (pretrain_finetune)."""
  for candidate in (os.path.join(workdir, "cells"),
                    os.path.join(workdir, "finetune", "cells")):
    if os.path.isdir(candidate):
      return candidate
  raise ValueError(f"{workdir!r}: no cells/ or finetune/cells/ in it; expected "
                   "the workdir of a finished finetune, pretrain_finetune or "
                   "benchmark job")


def source(spec: str) -> Source:
  """'WORKDIR' or 'WORKDIR:METHOD'."""
  workdir, method = spec, ""
  head, sep, tail = spec.rpartition(":")
  if sep and head and "/" not in tail:
    workdir, method = head, tail
  directory = cells_directory(workdir)
  methods = sorted(name for name in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, name)))
  if method and method not in methods:
    raise ValueError(f"{spec!r}: no cells of method {method!r}; {directory} "
                     f"holds {', '.join(methods)}")
  if not method:
    if len(methods) != 1:
      raise ValueError(f"{spec!r}: {directory} holds the cells of "
                       f"{', '.join(methods) or 'no method'}; name one as "
                       f"{workdir}:METHOD")
    method = methods[0]
  config = common.load_config(os.path.dirname(directory))
  return Source(spec, CellStore(directory), method, config)


def check_same_images(sources: Sequence[Source],
                      stored: Sequence[dict[str, np.ndarray]], what: str,
                      splits: Sequence[str] = EVAL_SPLITS) -> None:
  """Averaging or comparing cells' scores means something only over the
  same images: their stored labels must agree, split by split."""
  for other, arrays in zip(sources[1:], stored[1:]):
    for split in splits:
      if not np.array_equal(arrays[f"{split}_labels"],
                            stored[0][f"{split}_labels"]):
        raise ValueError(f"{what}: {other.spec}'s {split} labels differ from "
                         f"{sources[0].spec}'s, so they scored other "
                         f"{split} images; combine cells of the same data")
