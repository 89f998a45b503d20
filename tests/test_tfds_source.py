"""TFDS by name, on `tfds.testing.mock_data` (offline: uses the builder's
metadata shipped with tensorflow_datasets; 'malaria' works, variable-size
RGB images and a 2-class ClassLabel)."""
from __future__ import annotations

import numpy as np
import pytest

import data_pipelines
from data_pipelines import tfds_source

OPTS = tfds_source.TFDSOptions()


@pytest.mark.parametrize("available,expected", [
    (["train", "validation", "test"],
     {"train": "train", "val": "validation", "test": "test"}),
    (["train", "test"],
     {"train": "train[:88%]", "val": "train[88%:]", "test": "test"}),
    (["train"], {"train": "train[:70%]", "val": "train[70%:80%]",
                 "test": "train[80%:]"}),
    ([], {"train": "train[:70%]", "val": "train[70%:80%]",
          "test": "train[80%:]"}),
])
def test_split_strings(available, expected):
  assert tfds_source.split_strings(available, OPTS) == expected


def test_explicit_splits_and_bad_options():
  opts = tfds_source.TFDSOptions.from_mapping(
      {"splits": {"train": "train[:50%]", "val": "train[50%:60%]",
                  "test": "test"}})
  assert tfds_source.split_strings(["train", "test"], opts)["val"] == (
      "train[50%:60%]")
  with pytest.raises(ValueError, match="options.splits must map exactly"):
    tfds_source.TFDSOptions.from_mapping({"splits": {"train": "train"}})
  with pytest.raises(ValueError, match="unknown option.*imgae_key"):
    tfds_source.TFDSOptions.from_mapping({"imgae_key": "x"})


@pytest.fixture(scope="module")
def tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    yield tfds


def test_mocked_malaria_loads_resized_uint8(tfds, monkeypatch):
  src = data_pipelines.get("tfds:malaria", {"download": False})
  info = src.info(16)
  assert (info.num_classes, info.num_channels, info.task) == (
      2, 3, "binary-class")
  requested = []
  builder = src.builder()
  as_dataset = builder.as_dataset
  monkeypatch.setattr(builder, "as_dataset", lambda split, **kw: (
      requested.append(split), as_dataset(split=split, **kw))[1])
  images, labels = src.load("val", size=16)
  assert requested == ["train[70%:80%]"]  # malaria has only 'train'
  assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and set(labels.tolist()) <= {0, 1}
  assert images.std() > 0  # real pixels, not a constant fill


def test_mocked_channels_and_bad_keys(tfds):
  gray, _ = data_pipelines.load("tfds:malaria", "train", size=8,
                                options={"channels": 1, "download": False})
  assert gray.shape == (6, 8, 8, 1)
  with pytest.raises(ValueError, match="no feature 'img'; features are"):
    data_pipelines.info("tfds:malaria", options={"image_key": "img"})
