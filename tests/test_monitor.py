"""The frozen-feature monitor of pretraining (issue #14): its pieces and
its config checks."""
from __future__ import annotations

import numpy as np
import pytest

from ssl_jax.evaluation import monitor
from ssl_jax.jobs import common
from tests.tiny import tiny_config

EVERY = 2


def monitored_config(**overrides):
  return tiny_config(**{
      "job": "pretrain", "model.stage_sizes": (1, 1, 1, 1),
      "online_probe": False, "train.monitor_every": EVERY,
      "train.monitor_protocols": ("knn", "linear"), **overrides})


def test_train_subset_is_stratified_seeded_and_at_most_max():
  labels = np.repeat([0, 1, 2], [900, 90, 10])
  idx = monitor.train_subset(labels, 100, seed=0)
  assert len(idx) <= 100 and np.all(np.diff(idx) > 0)
  assert set(labels[idx]) == {0, 1, 2}
  assert np.array_equal(idx, monitor.train_subset(labels, 100, seed=0))
  assert not np.array_equal(idx, monitor.train_subset(labels, 100, seed=1))
  assert np.array_equal(monitor.train_subset(labels, 5000, seed=0),
                        np.arange(1000))


def test_curve_reads_val_rows_sorted_with_the_best_step():
  rows = [{"step": 2, "train/loss": 1.0},
          {"step": 4, "val/knn_auroc": 0.7, "val/knn_acc": 0.6},
          {"step": 2, "val/knn_auroc": 0.7, "val/knn_acc": 0.5},
          {"step": 6, "val/knn_auroc": 0.6, "val/knn_acc": 0.6}]
  curve = monitor.curve(rows, protocols=("knn",), batch_size=10, num_train=20)
  assert [(h["step"], h["epoch"]) for h in curve["history"]] == [
      (2, 1.0), (4, 2.0), (6, 3.0)]
  assert curve["best"] == {"step": 2, "epoch": 1.0, "knn_auroc": 0.7}


@pytest.mark.parametrize("overrides,message", [
    ({"train.monitor_every": -1},
     r"config.train.monitor_every must be >= 0 \(0 = off\), got -1"),
    ({"train.monitor_protocols": ("knn", "svm")},
     r"config.train.monitor_protocols='svm' is unknown; allowed: knn, linear"),
    ({"train.monitor_protocols": ()},
     r"config.train.monitor_protocols is empty but train.monitor_every=2"),
    ({"train.monitor_max_train": 0},
     r"config.train.monitor_max_train must be >= 1, got 0"),
    ({"data.name": "pool:breastmnist+pneumoniamnist"},
     r"config.train.monitor_every=2 needs labels, but "
     r"config.data.name='pool:breastmnist\+pneumoniamnist' has none"),
])
def test_config_errors_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    common.validate(monitored_config(**overrides))


def test_monitor_off_by_default_validates_with_any_dataset():
  common.validate(monitored_config(**{
      "train.monitor_every": 0, "data.name": "pool:breastmnist+pneumoniamnist"}))

