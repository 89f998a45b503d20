"""Data sources for ssl_jax, looked up by name, plus host-side input pipelines.

Contract of a source (what `get(name)` returns; see `source.Source`):
  source.info(size=28) -> DatasetInfo      facts only, no data read
  source.load(split, size=28, data_dir=None)
      -> (images uint8 [N, H, W, C], labels int32 [N] or [N, L] multi-label)
  split is one of 'train', 'val', 'test'.

  optional: source.metadata(split, size=28, data_dir=None)
      -> {column: array aligned with load()'s rows} (patient_id, ...)
  optional: source.report(size=28, data_dir=None) -> dict (data report)

Names: a registered name (the MedMNIST sets), or `<kind>:<spec>` built by the
factory in `KINDS` from the spec and `options` (config.data.options):
  csv:/path/labels.csv   images listed in a CSV (folder.py; DICOM, NIfTI)
  tfds:patch_camelyon    a TensorFlow Datasets builder (tfds_source.py)
  pool:a+b+c             union of sources' train images, unlabelled (pool.py)
Built sources are cached per (name, options), so a CSV is parsed and its
images decoded once per process. A new kind is one `KINDS.add(kind, factory)`.

Modules: `medmnist` (npz download + md5 + load), `fractions` (nested
stratified label fractions, optionally by patient), `splits` (patient-level
splits), `medical_io` (PNG/TIFF/DICOM/NIfTI -> uint8), `input_pipeline`
(tf.data batching). Only
`input_pipeline` imports TensorFlow, and it hides accelerators from TF when
imported; importing this package, `medmnist` or `fractions` never loads TF.
`make_iterator` and `num_batches` are re-exported lazily for that reason.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping

import numpy as np

from data_pipelines import medmnist, source
from data_pipelines.source import SPLITS, DatasetInfo, Source
from ssl_jax.registry import Registry

SOURCES: Registry[Source] = Registry("dataset")
for _name in medmnist.NAMES_2D + medmnist.NAMES_3D:
  SOURCES.add(_name, medmnist.MedMNISTSource(_name))


# kind -> factory(spec, options) -> Source; modules imported on first use.
KINDS: Registry[Callable[[str, Mapping[str, Any]], Source]] = Registry(
    "dataset kind")


def _csv(spec: str, options: Mapping[str, Any]) -> Source:
  from data_pipelines import folder  # pylint: disable=g-import-not-at-top
  return folder.CSVSource(spec, options)


def _tfds(spec: str, options: Mapping[str, Any]) -> Source:
  from data_pipelines import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TFDSSource(spec, options)


def _pool(spec: str, options: Mapping[str, Any]) -> Source:
  from data_pipelines import pool  # pylint: disable=g-import-not-at-top
  return pool.PoolSource(spec, options, get)


KINDS.add("csv", _csv)
KINDS.add("tfds", _tfds)
KINDS.add("pool", _pool)

_built: dict[tuple[str, Any], Source] = {}


def _plain(options: Mapping[str, Any] | None) -> dict[str, Any]:
  """A ConfigDict / FrozenConfigDict / Mapping as a plain dict."""
  if options is None:
    return {}
  if hasattr(options, "to_dict"):
    return options.to_dict()
  return dict(options)


def _freeze(value: Any) -> Any:
  """Hashable form of nested options (the source cache key)."""
  if isinstance(value, Mapping) or hasattr(value, "to_dict"):
    return tuple(sorted((k, _freeze(v)) for k, v in _plain(value).items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  if isinstance(value, np.ndarray):
    return tuple(value.tolist())
  return value


def option_types() -> dict[str, type]:
  """Every option field of every built-in `kind:` source with its type: the
  declared fields of `config.data.options` (configs/base.py), so a dotted
  override such as `--config.data.options.on_bad_row=skip` works. Fields
  left None keep the source's default; fields of another kind than the
  dataset's are refused by that source, naming them."""
  from data_pipelines import folder, pool, tfds_source  # pylint: disable=g-import-not-at-top
  out: dict[str, type] = {}
  for kind_types in (source.option_types(folder.CSVOptions),
                     source.option_types(tfds_source.TFDSOptions),
                     pool.OPTION_TYPES):
    for field, type_ in kind_types.items():
      if out.setdefault(field, type_) is not type_:
        raise TypeError(f"option {field!r} has two types: {out[field]}, "
                        f"{type_}")
  return out


def split_kind(name: str) -> tuple[str, str] | None:
  """('csv', '/path.csv') for 'csv:/path.csv'; None for a registered name."""
  kind, sep, spec = name.partition(":")
  return (kind, spec) if sep else None


def get(name: str, options: Mapping[str, Any] | None = None) -> Source:
  """The source called `name` (see the module doc), built once per options.

  KeyError lists the registered names and kinds when `name` is unknown.
  """
  options = _plain(options)
  prefixed = split_kind(name)
  if prefixed is None:
    if name not in SOURCES:
      raise KeyError(f"unknown dataset {name!r}; allowed: "
                     f"{', '.join(SOURCES.names())}, or <kind>:<spec> with "
                     f"kind one of {', '.join(KINDS.names())}")
    if options:
      raise ValueError(f"dataset {name!r} takes no options, got "
                       f"{sorted(options)}; options are for "
                       f"{', '.join(k + ':' for k in KINDS.names())} datasets")
    return SOURCES.get(name)
  key = (name, _freeze(options))
  if key not in _built:
    kind, spec = prefixed
    _built[key] = KINDS.get(kind)(spec, options)
  return _built[key]


def names() -> list[str]:
  """Registered dataset names (prefixed kinds are in `KINDS`)."""
  return SOURCES.names()


def info(name: str, size: int = 28,
         options: Mapping[str, Any] | None = None) -> DatasetInfo:
  return get(name, options).info(size)


def load(
    name: str,
    split: str,
    *,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  return get(name, options).load(split, size=size, data_dir=data_dir)


def metadata(
    name: str,
    split: str,
    *,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
  """Per-row metadata columns aligned with `load`; {} if the source has none."""
  source = get(name, options)
  if not hasattr(source, "metadata"):
    return {}
  return source.metadata(split, size=size, data_dir=data_dir)


def report(
    name: str,
    *,
    size: int = 28,
    data_dir: str | os.PathLike | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The source's data report (rows read/skipped, patients and images per
  split); for sources without one, the example counts per split."""
  source = get(name, options)
  if hasattr(source, "report"):
    return source.report(size=size, data_dir=data_dir)
  info = source.info(size)
  splits = {}
  for s in SPLITS:
    labels = np.asarray(source.load(s, size=size, data_dir=data_dir)[1])
    entry: dict[str, Any] = {"images": int(len(labels))}
    if info.num_classes:  # as the CSV source: rows per class (multi-label: 1s)
      labels = labels.reshape(len(labels), -1)
      counts = (labels.sum(0) if info.multi_label else
                np.bincount(labels[:, 0], minlength=info.num_classes))
      entry["label_counts"] = {str(k): int(c) for k, c in enumerate(counts)}
    splits[s] = entry
  return {"source": name, "classes": [str(k) for k in range(info.num_classes)],
          "splits": splits}


def write_data_report(path: str | os.PathLike,
                      report_: Mapping[str, Any]) -> None:
  """Writes a data report as JSON, atomically (see folder.write_data_report)."""
  from data_pipelines import folder  # pylint: disable=g-import-not-at-top
  folder.write_data_report(path, report_)


def __getattr__(attr: str) -> Any:
  # Lazy: `data_pipelines.make_iterator` imports TensorFlow on first use only.
  if attr in ("make_iterator", "num_batches"):
    return getattr(importlib.import_module(f"{__name__}.input_pipeline"), attr)
  raise AttributeError(f"module 'data_pipelines' has no attribute {attr!r}")
