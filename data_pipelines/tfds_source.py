"""`tfds:<name>`: any TensorFlow Datasets builder with an image and a class.

`<name>` is what `tfds.builder` takes ('patch_camelyon',
'diabetic_retinopathy_detection/btgraham-300:3.0.0'). Options:
  image_key ('image'), label_key ('label': a ClassLabel feature),
  channels (default: the image feature's; 1 <-> 3 converted as in
  medical_io), window (for 16-bit images, as in medical_io),
  splits: {'train': ..., 'val': ..., 'test': ...} TFDS split strings;
  default: the builder's train / validation / test when it has them; with
  only train + test, val = the last split_percent[1] % of train; with only
  train, train/val/test = consecutive split_percent (70/10/20) slices of
  train ('train[:70%]', 'train[70%:80%]', 'train[80%:]'). TFDS slices are
  deterministic (a builder's example order is fixed when it is prepared),
  so the carved splits are the same on every run and machine.
  data_dir (TFDS data dir; default: the job's data_dir, else TFDS's own),
  download (True: download_and_prepare if missing).

Images are resized to `size` x `size` (squashed, PIL BILINEAR, as every other
source) on the host and kept in memory as uint8, like MedMNIST.

tensorflow_datasets (hence TensorFlow, the only user of it in ssl_jax) is
imported on first use only, and TF is shown the CPU alone, so it never
grabs accelerator memory that JAX needs.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from data_pipelines import medical_io, source
from data_pipelines.source import SPLITS, DatasetInfo


def _tfds():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # TF already initialized its devices, or has none of this kind.
  return tfds


@dataclasses.dataclass(frozen=True)
class TFDSOptions:
  image_key: str = "image"
  label_key: str = "label"
  channels: int | None = None
  window: tuple[float, float] | None = None
  splits: Mapping[str, str] | None = None
  split_percent: tuple[int, int, int] = (70, 10, 20)
  data_dir: str | None = None
  download: bool = True

  @classmethod
  def from_mapping(cls, options: Mapping[str, Any] | None) -> "TFDSOptions":
    options = source.known_options(cls, options, "tfds")
    if options.get("splits") is not None:
      options["splits"] = dict(options["splits"])
      if sorted(options["splits"]) != sorted(SPLITS):
        raise ValueError(f"tfds source: options.splits must map exactly "
                         f"{', '.join(SPLITS)} to TFDS split strings, got "
                         f"{options['splits']}")
    if options.get("split_percent") is not None:
      percent = tuple(int(p) for p in options["split_percent"])
      if len(percent) != 3 or sum(percent) != 100 or min(percent) < 0:
        raise ValueError(f"tfds source: options.split_percent must be 3 "
                         f"ints >= 0 summing to 100, got {percent}")
      options["split_percent"] = percent
    if options.get("window") is not None:
      options["window"] = tuple(float(v) for v in options["window"])
    if options.get("channels") not in (None, 1, 3):
      raise ValueError(f"tfds source: options.channels="
                       f"{options['channels']!r}; allowed: 1, 3")
    return cls(**options)


def split_strings(available: set[str] | list[str],
                  opts: TFDSOptions) -> dict[str, str]:
  """Our split name -> TFDS split string (see the module doc)."""
  if opts.splits is not None:
    return dict(opts.splits)
  available = set(available)
  train, val, _ = opts.split_percent
  val_name = next((s for s in ("validation", "val", "valid")
                   if s in available), None)
  if val_name and "test" in available:
    return {"train": "train", "val": val_name, "test": "test"}
  if "test" in available:
    cut = 100 - round(100 * val / (train + val))
    return {"train": f"train[:{cut}%]", "val": f"train[{cut}%:]",
            "test": "test"}
  return {"train": f"train[:{train}%]",
          "val": f"train[{train}%:{train + val}%]",
          "test": f"train[{train + val}%:]"}


class TFDSSource:
  """`tfds:<name>` (see the module doc)."""

  def __init__(self, spec: str, options: Mapping[str, Any] | None = None):
    if not spec:
      raise ValueError("tfds source: expected 'tfds:<builder name>'")
    self.name = f"tfds:{spec}"
    self.builder_name = spec
    self.opts = TFDSOptions.from_mapping(options)
    self._builders: dict[str | None, Any] = {}
    self._loaded: dict[tuple[str, int, str | None], tuple] = {}

  def builder(self, data_dir: str | os.PathLike | None = None):
    data_dir = self.opts.data_dir or (os.fspath(data_dir) if data_dir
                                      else None)
    if data_dir not in self._builders:
      self._builders[data_dir] = _tfds().builder(self.builder_name,
                                                 data_dir=data_dir)
    return self._builders[data_dir]

  def _features(self, builder) -> tuple[Any, Any]:
    features = builder.info.features
    for key in (self.opts.image_key, self.opts.label_key):
      if key not in features:
        raise ValueError(f"{self.name}: no feature {key!r}; features are "
                         f"{sorted(features.keys())} (set options.image_key "
                         f"/ options.label_key)")
    label = features[self.opts.label_key]
    if not hasattr(label, "num_classes"):
      raise ValueError(f"{self.name}: feature {self.opts.label_key!r} is a "
                       f"{type(label).__name__}, not a ClassLabel")
    return features[self.opts.image_key], label

  def channels(self, builder) -> int:
    if self.opts.channels is not None:
      return self.opts.channels
    shape = self._features(builder)[0].shape
    return 3 if shape and shape[-1] == 3 else 1

  def info(self, size: int = 28) -> DatasetInfo:
    builder = self.builder()
    _, label = self._features(builder)
    redistribution = getattr(builder.info, "redistribution_info", None)
    license_ = getattr(redistribution, "license", "") or (
        "see the TFDS catalog page of " + self.builder_name)
    return DatasetInfo(
        name=self.name,
        task="binary-class" if label.num_classes == 2 else "multi-class",
        num_classes=int(label.num_classes),
        num_channels=self.channels(builder), image_size=size,
        multi_label=False, license=license_,
        citation=builder.info.citation or "")

  def load(self, split: str, size: int = 28,
           data_dir: str | os.PathLike | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    key = (split, size, os.fspath(data_dir) if data_dir else None)
    if key not in self._loaded:
      self._loaded[key] = self._read(split, size, data_dir)
    return self._loaded[key]

  def _read(self, split: str, size: int, data_dir) -> tuple:
    tfds = _tfds()
    builder = self.builder(data_dir)
    self._features(builder)
    if self.opts.download:
      builder.download_and_prepare()
    tfds_split = split_strings(list(builder.info.splits.keys()),
                               self.opts)[split]
    opts = medical_io.ReadOptions(size=size, channels=self.channels(builder),
                                  window=self.opts.window)
    images, labels = [], []
    ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
    for ex in tfds.as_numpy(ds):
      images.append(_to_uint8(ex[self.opts.image_key], opts))
      labels.append(int(ex[self.opts.label_key]))
    if not images:
      raise ValueError(f"{self.name}: split {tfds_split!r} (our {split!r}) "
                       "is empty")
    return np.stack(images), np.asarray(labels, np.int32)


def _to_uint8(image: np.ndarray, opts: medical_io.ReadOptions) -> np.ndarray:
  """A TFDS image [H, W, C] (uint8 or uint16) -> uint8 [size, size, C']."""
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.dtype == np.uint8:
    return medical_io.uint8_image(image, opts)
  if image.ndim == 2 and image.dtype == np.uint16:
    return medical_io.raw_slices(image[None].astype(np.float32), opts)[0]
  raise ValueError(f"TFDS image of dtype {image.dtype} and shape "
                   f"{list(image.shape)}; expected uint8, or 16-bit grayscale")
