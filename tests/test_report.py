"""The results table: seeds pooled into mean ± sd, runs merged safely; the
benchmark report: paired deltas vs scratch, a deterministic CSV, plots."""
import pathlib

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
  assert "at the 0.5 threshold (MedMNIST's)" in table  # results without the field
  assert "| 10% | 55 | SSL + linear probe (frozen) | 0.800 ± 0.100 | 0.500 ± 0.000 |" in table


def test_merge_refuses_overlapping_seeds_and_different_datasets():
  with pytest.raises(ValueError, match="distinct seeds"):
    report.merge([_run(0, 0.7), _run(0, 0.8)])
  other = _run(1, 0.8)
  other["dataset"] = "retinamnist"
  with pytest.raises(ValueError, match="different dataset"):
    report.merge([_run(0, 0.7), other])


# ------------------------------------------------------------------ benchmark
def _cells(aurocs):
  """Benchmark cells: {(method, protocol, seed): test AUROC} at 10% labels."""
  cells = {}
  for (method, protocol, seed), auroc in aurocs.items():
    cells[f"{method}|{protocol}|0.1|{seed}"] = {
        "method": method, "protocol": protocol, "fraction": 0.1, "seed": seed,
        "n_train": 55, "seconds": 1.0, "val": {"auroc": 0.5},
        "test": {"auroc": auroc, "accuracy": 0.7, "f1": 0.6,
                 "sensitivity": 0.8, "specificity": 0.5,
                 "auroc_ci": [auroc - 0.05, auroc + 0.05]}}
  return cells


META = {"dataset": "breastmnist", "image_size": 28, "task": "binary-class",
        "methods": {"none": {"category": "none"},
                    "simclr": {"category": "contrastive"}},
        "protocols": ["finetune", "linear"], "seeds": [0, 1],
        "budget": {"model": {"name": "resnet18"},
                   "train": {"steps": 4, "batch_size": 16}},
        "finetune_steps": 4, "finetune_batch_size": 8,
        "bootstrap_samples": 50, "ci_level": 0.95}


def test_relative_difference_vs_scratch_is_paired_by_seed():
  cells = _cells({("simclr", "finetune", 1): 0.72, ("none", "finetune", 0): 0.5,
                  ("simclr", "finetune", 0): 0.6, ("none", "finetune", 1): 0.6,
                  ("none", "linear", 0): 0.55, ("none", "linear", 1): 0.55})
  rows = report.benchmark_rows(cells, META)
  assert [(r["method"], r["protocol"], r["seed"]) for r in rows] == [
      ("none", "finetune", 0), ("none", "finetune", 1), ("none", "linear", 0),
      ("none", "linear", 1), ("simclr", "finetune", 0), ("simclr", "finetune", 1)]
  summary = {(s["method"], s["protocol"]): s for s in report.summarise_benchmark(rows)}
  assert summary[("none", "finetune")]["delta"] is None  # the baseline itself
  mean, sd = summary[("simclr", "finetune")]["delta"]
  assert mean == pytest.approx(20.0) and sd == pytest.approx(0.0)  # +20 % both seeds
  assert summary[("simclr", "finetune")]["auroc"][0] == pytest.approx(0.66)
  assert summary[("simclr", "finetune")]["ci"] == pytest.approx((0.61, 0.71))


def test_csv_is_a_pure_function_of_the_cells():
  cells = _cells({("none", "finetune", 0): 0.5, ("simclr", "linear", 1): 0.7})
  first = report.to_csv(report.benchmark_rows(cells, META))
  cells["simclr|linear|0.1|1"]["seconds"] = 99.0  # timings stay out
  shuffled = dict(reversed(list(cells.items())))
  assert report.to_csv(report.benchmark_rows(shuffled, META)) == first
  # Cells stored before balanced accuracy existed leave its column empty.
  assert first.splitlines()[1] == (
      "none,none,,finetune,0.1,0,55,0.5,0.45,0.55,0.7,,0.6,0.8,0.5,0.5,")


def test_benchmark_report_writes_markdown_csv_and_plots(tmp_path):
  cells = _cells({(m, p, s): 0.5 + 0.1 * (m == "simclr") + 0.02 * s
                  for m in ("none", "simclr") for p in ("finetune", "linear")
                  for s in (0, 1)})
  # The last invocation ran seed 1 only: the report names the cells' seeds.
  paths = report.write_benchmark_report(str(tmp_path), cells,
                                        dict(META, seeds=[1]))
  text = (tmp_path / "report.md").read_text()
  assert "Seeds 0, 1 (label subsets" in text
  assert "| Δ vs scratch | ACC | balanced ACC | macro F1 |" in text
  assert "| 10% | 55 | simclr | contrastive | finetune (end-to-end) | 0.610 ± 0.014 |" in text
  assert "| +19.6 ± 0.5 % |" in text  # mean, sd of 0.6/0.5 - 1, 0.62/0.52 - 1
  assert "**ResNet-18 (28) — published** | supervised | end-to-end | 0.901 |" in text
  assert "**ResNet-50 (28) — published**" in text
  for name in ("relative_to_scratch", "strategies", "protocols", "label_efficiency"):
    assert pathlib.Path(paths[name]).stat().st_size > 10_000


def test_stage2_length_names_epochs_when_the_run_counts_them():
  assert report.stage2_length({"finetune_steps": 100}) == "100 steps"
  assert report.stage2_length({"finetune_steps": 100,
                               "finetune_epochs": 100}) == "100 epochs"
