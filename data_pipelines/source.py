"""What every data source promises: a `DatasetInfo` and a `load` function.

Kept apart from any one source so that MedMNIST, image folder + CSV and TFDS
sources describe themselves the same way and the jobs never ask which kind
of source they hold.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Protocol

import numpy as np

SPLITS = ("train", "val", "test")

# Task strings as MedMNIST spells them; evaluation picks metrics by them.
TASKS = (
    "binary-class",
    "multi-class",
    "multi-label, binary-class",
    "ordinal-regression",
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about one dataset at one image size (no data loaded)."""

  name: str
  task: str
  num_classes: int
  num_channels: int
  image_size: int
  multi_label: bool
  license: str
  citation: str
  # Examples per split, when the source knows it without reading the data.
  num_examples: Mapping[str, int] = dataclasses.field(
      default_factory=dict, hash=False)


class Source(Protocol):
  """The contract of an entry in `data_pipelines.SOURCES`."""

  def info(self, size: int = 28) -> DatasetInfo:
    ...

  def load(
      self,
      split: str,
      size: int = 28,
      data_dir: str | os.PathLike | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N,H,W,C], labels int32 [N] or [N, L])."""
    ...
