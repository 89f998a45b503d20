"""Where training metrics go: `metrics.jsonl` (always) and TensorBoard.

TensorBoard event files are written with tensorboardX when it is installed
(it is in requirements.txt; accelerator images without it still train).
Only process 0 writes, so many hosts produce one log.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax

from ssl_jax import files


class MetricWriter:

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               resume_step: int | None = None):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self._enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None:
      _drop_rows_after(path, resume_step)
    self._jsonl = open(path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    if not self._enabled:
      return
    row = {"step": int(step)} | {prefix + k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_rows(workdir: str | os.PathLike) -> list[dict]:
  """Every complete row of the workdir's metrics.jsonl, in order ([] when
  there is none yet): what a job reports is read back from the file, so a
  resumed run reports what every run before it logged."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [row for line in f if line.strip()
            and (row := _parse(line)) is not None]


def _drop_rows_after(path: str, step: int) -> None:
  """A resumed run repeats the steps after its checkpoint: forget their old
  rows, so the log reads like one uninterrupted run. A row logged twice for
  one step (two processes once wrote to this workdir, before it was locked)
  is kept once, the last one: no step ever appears twice."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  parsed = [(line, row) for line in rows if (row := _parse(line)) is not None
            and row.get("step", 0) <= step]
  last = {_key(row): i for i, (_, row) in enumerate(parsed)}
  kept = [line for i, (line, row) in enumerate(parsed) if last[_key(row)] == i]
  if len(kept) != len(rows):
    with files.atomic_open(path) as f:
      f.writelines(kept)


def _key(row: dict) -> tuple:
  """One row per step and kind (train/ and val/ rows share a step)."""
  return (row.get("step", 0),
          tuple(sorted({k.split("/")[0] for k in row if k != "step"})))


def _parse(line: str) -> dict | None:
  """A row, or None for a line torn by a kill in the middle of a write."""
  try:
    return json.loads(line) if line.endswith("\n") else None
  except json.JSONDecodeError:
    return None
