"""Data sources for ssl_jax, looked up by name, plus host-side input pipelines.

Contract of a source (what `get(name)` returns; see `source.Source`):
  source.info(size=28) -> DatasetInfo      facts only, no data read
  source.load(split, size=28, data_dir=None)
      -> (images uint8 [N, H, W, C], labels int32 [N] or [N, L] multi-label)
  split is one of 'train', 'val', 'test'.

A new source kind (image folder + CSV, TFDS by name) is an object with those
two methods, added with `SOURCES.add(name, source)`; nothing else changes.

Modules: `medmnist` (npz download + md5 + load), `fractions` (nested
stratified label fractions), `input_pipeline` (tf.data batching). Only
`input_pipeline` imports TensorFlow, and it hides accelerators from TF when
imported; importing this package, `medmnist` or `fractions` never loads TF.
`make_iterator` and `num_batches` are re-exported lazily for that reason.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from data_pipelines import medmnist
from data_pipelines.source import SPLITS, DatasetInfo, Source
from ssl_jax.registry import Registry

SOURCES: Registry[Source] = Registry("dataset")
for _name in medmnist.NAMES_2D:
  SOURCES.add(_name, medmnist.MedMNISTSource(_name))


def get(name: str) -> Source:
  """The source registered as `name` (KeyError lists the allowed names)."""
  return SOURCES.get(name)


def names() -> list[str]:
  return SOURCES.names()


def info(name: str, size: int = 28) -> DatasetInfo:
  return get(name).info(size)


def load(
    name: str,
    split: str,
    *,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  return get(name).load(split, size=size, data_dir=data_dir)


def __getattr__(attr: str) -> Any:
  # Lazy: `data_pipelines.make_iterator` imports TensorFlow on first use only.
  if attr in ("make_iterator", "num_batches"):
    return getattr(importlib.import_module(f"{__name__}.input_pipeline"), attr)
  raise AttributeError(f"module 'data_pipelines' has no attribute {attr!r}")
