"""Tools over stored cells, on synthetic predictions: ensembles
(jobs/ensemble.py) score the average as a cell, DeLong comparisons
(jobs/compare.py) test matched cells, and sources that cannot be combined
are refused by name (jobs/stored_cells.py)."""
import json

import numpy as np
import pytest

from ssl_jax import files
from ssl_jax.evaluation import cells, metrics
from ssl_jax.jobs import compare, ensemble, stored_cells
from tests.test_benchmark import tiny_benchmark_config


def _member(root, name, labels, test_probs, method="simclr", seed=0,
            protocol="finetune", task=metrics.BINARY):
  """A finetune-like workdir holding one finished cell."""
  workdir = root / name
  files.write_text_atomic(str(workdir / "config.json"),
                          tiny_benchmark_config().to_json_best_effort())
  store = cells.CellStore(str(workdir / "cells"))
  cell = cells.Cell(method, protocol, 0.1, seed)
  store.put(cell, {"protocol": protocol, "fraction": 0.1, "seed": seed,
                   "test": {"auroc": metrics.auroc(labels["test"], test_probs,
                                                   task)}},
            {"task": np.asarray(task),
             "val_probs": test_probs, "val_labels": labels["val"],
             "test_probs": test_probs, "test_labels": labels["test"]})
  return str(workdir)


def _noisy(y, rng):
  p1 = np.clip(0.5 * y + rng.normal(0.25, 0.35, len(y)), 0.0, 1.0)
  return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def test_the_average_of_independent_members_ranks_better(tmp_path):
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.3).astype(np.int64)
  labels = {"val": y, "test": y}
  specs = [_member(tmp_path, f"m{i}", labels, _noisy(y, rng)) for i in range(3)]
  members = [stored_cells.source(s) for s in specs]
  out = ensemble.ensemble(members)["finetune|0.1|0"]
  singles = out["member_test_auroc"]
  assert out["test"]["auroc"] > max(singles)  # independent errors average out
  stored = [m.store.predictions(cells.Cell("simclr", "finetune", 0.1, 0))
            for m in members]
  mean = np.mean([s["test_probs"] for s in stored], axis=0)
  assert out["test"]["auroc"] == pytest.approx(metrics.auroc(y, mean, metrics.BINARY))
  low, high = out["test"]["auroc_ci"]
  assert low <= out["test"]["auroc"] <= high
  assert "| finetune | 10% | 1 |" in ensemble.markdown({"k": out}, members)


def test_members_scored_on_other_images_are_refused(tmp_path):
  rng = np.random.default_rng(1)
  y = (rng.random(50) < 0.5).astype(np.int64)
  a = _member(tmp_path, "a", {"val": y, "test": y}, _noisy(y, rng))
  b = _member(tmp_path, "b", {"val": y, "test": 1 - y}, _noisy(y, rng))
  with pytest.raises(ValueError, match="test labels differ"):
    ensemble.ensemble([stored_cells.source(a), stored_cells.source(b)])


def test_cells_without_a_partner_or_predictions_are_left_out(tmp_path):
  rng = np.random.default_rng(2)
  y = (rng.random(40) < 0.5).astype(np.int64)
  a = _member(tmp_path, "a", {"val": y, "test": y}, _noisy(y, rng), seed=0)
  b = _member(tmp_path, "b", {"val": y, "test": y}, _noisy(y, rng), seed=1)
  assert ensemble.ensemble([stored_cells.source(a), stored_cells.source(b)]) == {}
  store = cells.CellStore(str(tmp_path / "b" / "cells"))
  store.put(cells.Cell("simclr", "finetune", 0.1, 0),  # JSON, no .npz
            {"protocol": "finetune", "fraction": 0.1, "seed": 0})
  assert store.predictions(cells.Cell("simclr", "finetune", 0.1, 0)) is None
  assert ensemble.ensemble([stored_cells.source(a), stored_cells.source(b)]) == {}


def test_member_specs_name_what_is_wrong(tmp_path):
  with pytest.raises(ValueError, match="no cells/ or finetune/cells/"):
    stored_cells.source(str(tmp_path))
  rng = np.random.default_rng(3)
  y = (rng.random(20) < 0.5).astype(np.int64)
  path = _member(tmp_path, "bench", {"val": y, "test": y}, _noisy(y, rng))
  _member(tmp_path, "bench", {"val": y, "test": y}, _noisy(y, rng), method="vicreg")
  with pytest.raises(ValueError, match="name one as .*:METHOD"):
    stored_cells.source(path)
  assert stored_cells.source(f"{path}:vicreg").method == "vicreg"
  with pytest.raises(ValueError, match="no cells of method 'byol'"):
    stored_cells.source(f"{path}:byol")


def test_compare_runs_delong_on_matched_cells(tmp_path, capsys):
  rng = np.random.default_rng(4)
  y = (rng.random(200) < 0.3).astype(np.int64)
  labels = {"val": y, "test": y}
  strong = np.clip(0.8 * y + rng.normal(0.1, 0.2, 200), 0, 1)
  weak = _noisy(y, rng)[:, 1]
  ssl = _member(tmp_path, "w", labels, strong)
  _member(tmp_path, "w", labels, weak, protocol="scratch")
  _member(tmp_path, "w", labels, weak, protocol="scratch", seed=1)  # no partner
  rows = compare.compare(stored_cells.source(ssl), "finetune",
                         stored_cells.source(ssl), "scratch")
  assert [(r["fraction"], r["seed"]) for r in rows] == [(0.1, 0)]
  want = metrics.delong_paired(y, strong, weak)
  assert rows[0]["difference"] == pytest.approx(want["difference"])
  assert rows[0]["difference"] > 0.1
  assert rows[0]["p_value"] < 0.05
  assert compare.main([ssl]) == 0
  assert "| 10% | 1 |" in capsys.readouterr().out
  other = _member(tmp_path, "other", {"val": y, "test": 1 - y}, weak,
                  protocol="scratch")
  with pytest.raises(ValueError, match="other test images"):
    compare.compare(stored_cells.source(ssl), "finetune",
                    stored_cells.source(other), "scratch")


def test_compare_tests_multi_class_cells_on_their_macro_auroc(tmp_path):
  rng = np.random.default_rng(6)
  y = rng.integers(0, 4, 240)
  labels = {"val": y, "test": y}
  logits = rng.normal(size=(240, 4))
  strong, weak = (np.exp(logits + gain * np.eye(4)[y]) for gain in (2.0, 0.3))
  strong, weak = (p / p.sum(1, keepdims=True) for p in (strong, weak))
  task = metrics.MULTI_CLASS
  ssl = _member(tmp_path, "w", labels, strong, task=task)
  _member(tmp_path, "w", labels, weak, protocol="scratch", task=task)
  [row] = compare.compare(stored_cells.source(ssl), "finetune",
                          stored_cells.source(ssl), "scratch")
  want = metrics.delong_paired(y, strong, weak, task=task)
  assert row["se"] == pytest.approx(want["se"])
  assert row["auroc_a"] == pytest.approx(metrics.auroc(y, strong, task))
  assert row["difference"] > 0.1 and row["p_value"] < 0.05
  # Multi-label cells (the one-hot labels read as four labels): the mean
  # AUROC over labels, tested on the images' influences.
  hot = np.eye(4)[y]
  multi_label = _member(tmp_path, "ml", {"val": hot, "test": hot}, strong,
                        task=metrics.MULTI_LABEL)
  _member(tmp_path, "ml", {"val": hot, "test": hot}, weak,
          protocol="scratch", task=metrics.MULTI_LABEL)
  [row] = compare.compare(stored_cells.source(multi_label), "finetune",
                          stored_cells.source(multi_label), "scratch")
  want = metrics.delong_paired(hot, strong, weak, task=metrics.MULTI_LABEL)
  assert row["se"] == pytest.approx(want["se"])
  assert row["difference"] > 0.1 and row["p_value"] < 0.05
  hot[:, 3] = np.arange(len(y)) == 0  # label 3: one positive test image
  rare = _member(tmp_path, "rare", {"val": hot, "test": hot}, strong,
                 task=metrics.MULTI_LABEL)
  with pytest.raises(ValueError, match=r"rare finetune vs .*rare finetune, "
                                       r"fraction 0.1, seed 0: DeLong"):
    compare.compare(stored_cells.source(rare), "finetune",
                    stored_cells.source(rare), "finetune")


def test_a_stored_ensemble_is_a_source_for_compare(tmp_path):
  """--workdir stores the averaged cells; compare reads them like any."""
  rng = np.random.default_rng(5)
  y = (rng.random(120) < 0.4).astype(np.int64)
  labels = {"val": y, "test": y}
  specs = [_member(tmp_path, f"m{i}", labels, _noisy(y, rng)) for i in range(2)]
  single = _member(tmp_path, "single", labels, _noisy(y, rng))
  out = tmp_path / "ens"
  assert ensemble.main(specs + [f"--workdir={out}"]) == 0
  assert ensemble.main(specs + [f"--workdir={out}"]) == 0  # rerun: same members
  averaged = stored_cells.source(str(out))
  assert averaged.method == "ensemble"
  rows = compare.compare(averaged, "finetune", stored_cells.source(single),
                         "finetune")
  assert len(rows) == 1 and rows[0]["auroc_a"] == pytest.approx(
      ensemble.ensemble([stored_cells.source(s) for s in specs])
      ["finetune|0.1|0"]["test"]["auroc"])
