"""The results table: seeds pooled into mean ± sd, runs merged safely."""
import pytest

from ssl_jax.jobs import report


def _run(seed, auroc):
  cell = {"protocol": "linear", "fraction": 0.1, "seed": seed, "n_train": 55,
          "test": {"auroc": auroc, "accuracy": 0.5, "f1": 0.4}}
  return {"dataset": "breastmnist", "image_size": 28, "task": "binary-class",
          "pretrain_objective": "simclr", "cells": {f"linear|0.1|{seed}": cell}}


def test_merged_seeds_give_mean_and_sample_sd():
  table = report.markdown_table(report.merge([_run(0, 0.7), _run(1, 0.8), _run(2, 0.9)]))
  assert "mean ± sd over 3 seeds" in table
  assert "| 10% | 55 | SSL + linear probe (frozen) | 0.800 ± 0.100 | 0.500 ± 0.000 |" in table


def test_merge_refuses_overlapping_seeds_and_different_datasets():
  with pytest.raises(ValueError, match="distinct seeds"):
    report.merge([_run(0, 0.7), _run(0, 0.8)])
  other = _run(1, 0.8)
  other["dataset"] = "retinamnist"
  with pytest.raises(ValueError, match="different dataset"):
    report.merge([_run(0, 0.7), other])
