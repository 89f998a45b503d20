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
  # 2 for images [N, H, W, C]; 3 for volumes [N, D, H, W, C] of side
  # `image_size`, so jobs pick 3D views and backbones by this, not by name.
  spatial_dims: int = 2
  # The classes' names in label order where the source has them (a CSV's
  # class names or label columns); () otherwise. Zero-shot prompts use them.
  class_names: tuple[str, ...] = ()


class Source(Protocol):
  """The contract of an entry in `data_pipelines.SOURCES` (or of what a
  `data_pipelines.KINDS` factory builds).

  Optional methods, looked up with hasattr (`data_pipelines.metadata` and
  `data_pipelines.report` fall back when absent):
    metadata(split, size=28, data_dir=None) -> dict[str, np.ndarray]
      one array per metadata column (patient_id, study_id, series_id, view,
      laterality, age, sex, slice_index, ...), aligned with load()'s rows,
      so patient-level pairs, splits and label fractions can use them.
    report(size=28, data_dir=None) -> dict
      the data report: rows read and skipped (with reasons), patients and
      images per split.
  """

  def info(self, size: int = 28) -> DatasetInfo:
    ...

  def load(
      self,
      split: str,
      size: int = 28,
      data_dir: str | os.PathLike | None = None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N,H,W,C] or, for volumes, [N,D,H,W,C];
    labels int32 [N] or [N, L])."""
    ...


def option_flag(option: str, value: str) -> str:
  """How a user sets a source option: the command-line form that works
  (config files: `c.data.options.<option> = ...`)."""
  return f"--config.data.options.{option}={value}"


_ANNOTATION_TYPES = (("tuple", tuple), ("Mapping", dict), ("dict", dict),
                     ("bool", bool), ("int", int), ("float", float),
                     ("str", str))


def option_types(options_type: type) -> dict[str, type]:
  """{field: type} of an options dataclass, as ml_collections placeholders
  need them (the declared config fields of a `kind:` source)."""
  out = {}
  for field in dataclasses.fields(options_type):
    annotation = str(field.type)
    out[field.name] = next(t for word, t in _ANNOTATION_TYPES
                           if annotation.startswith(word))
  return out


def known_options(options_type: type, options: Mapping | None,
                  kind: str) -> dict:
  """`options` as a dict, after checking every key is a field of the
  dataclass `options_type` (the fields of a `kind:` source)."""
  options = dict(options or {})
  allowed = [f.name for f in dataclasses.fields(options_type)]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"{kind} source: unknown option(s) {', '.join(unknown)}; "
                     f"allowed: {', '.join(allowed)}")
  return options
