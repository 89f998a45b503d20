"""run.py end to end on real BreastMNIST with a tiny ResNet-18, and the
seams between jobs: config checks, checkpoint -> fine-tune, resumable cells."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from ssl_jax import pytree
from ssl_jax.evaluation import cells, metrics, protocols
from ssl_jax.jobs import common, ensemble, finetune
from ssl_jax.objectives import base
from ssl_jax.train import checkpoint, encoder_weights
from tests.tiny import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--config.model.width_multiplier=0.0625",
    "--config.model.stage_sizes=(1,1,1,1)",  # as tests/tiny.py
    "--config.objective.proj_hidden_dim=32", "--config.objective.proj_dim=16",
    "--config.train.steps=4", "--config.train.batch_size=16",
    "--config.train.checkpoint_every=2", "--config.train.progress=False",
    "--config.optim.warmup_steps=1", "--config.finetune.steps=4",
    "--config.finetune.epochs=0", "--config.finetune.last_batch=carry",
    "--config.finetune.optim.warmup_steps=1",
    "--config.finetune.batch_size=8", "--config.finetune.eval_every=2",
    "--config.finetune.fractions=(0.1,1.0)",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, medmnist_dir):
  workdir = tmp_path_factory.mktemp("demo")
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "run.py", "--config=configs/demo.py",
       f"--workdir={workdir}"] + TINY_FLAGS,
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return workdir, out.stdout


def test_run_py_pretrains_finetunes_and_prints_the_table(demo_run):
  workdir, stdout = demo_run
  results = json.loads((workdir / "finetune" / "results.json").read_text())
  cells = results["cells"].values()
  assert sorted({(c["protocol"], c["fraction"]) for c in cells}) == sorted(
      (p, f) for p in ("linear", "knn", "finetune", "scratch") for f in (0.1, 1.0))
  for cell in cells:
    for split in ("val", "test"):
      assert 0.0 <= cell[split]["auroc"] <= 1.0
      assert 0.0 <= cell[split]["accuracy"] <= 1.0
  assert {c["n_train"] for c in cells} == {55, 546}  # 10% of 546, stratified
  # One file per finished cell (cells.CellStore), each with a test AUROC CI.
  files = sorted(p.name for p in (workdir / "finetune" / "cells" / "simclr").glob("*.json"))
  assert files == sorted(f"{p}_f{f}_s0.json" for p in ("linear", "knn", "finetune", "scratch")
                         for f in ("0.1", "1"))
  for cell in cells:
    low, high = cell["test"]["auroc_ci"]
    assert low <= cell["test"]["auroc"] <= high
  table = (workdir / "results.md").read_text()
  assert ("| labels | n train | protocol | AUROC | ACC | balanced ACC | "
          "macro F1 |") in table
  # ACC is cut where validation predicts its own prevalence (the default,
  # finetune.decision_threshold='val_prior'); each cell records its cut.
  assert "calls as many validation images positive" in table
  assert all(0.0 < cell["test"]["threshold"] < 1.0 for cell in cells)
  assert len({cell["test"]["threshold"] for cell in cells}) > 1
  assert "from scratch" in stdout and "SSL + linear probe" in stdout
  rows = [json.loads(l) for l in (workdir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows][-1] == 4
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  assert (workdir / "pretrain" / "tensorboard").is_dir()
  saved = json.loads((workdir / "pretrain" / "config.json").read_text())
  assert saved["objective"]["name"] == "simclr"


def test_finetune_reads_the_encoder_of_the_pretrain_checkpoint(demo_run):
  workdir, _ = demo_run
  pre_config, weights = finetune.read_pretrained(str(workdir / "pretrain"))
  assert encoder_weights.read(str(workdir / "pretrain"))[1] == 4  # the step
  tree = checkpoint.restore_subtree(workdir / "pretrain" / "checkpoints",
                                    "params", "rest")
  saved = {**pytree.flatten(tree["params"]["encoder"]),
           **pytree.flatten(tree["rest"]["encoder"])}
  assert sorted(weights) == sorted(saved) and any("bn1/mean" in k for k in saved)
  info = common.data_info(pre_config)
  encoder = base.build_encoder(pre_config, info, nnx.Rngs(123))
  fresh = encoder_weights.of_module(encoder)
  encoder_weights.into_module(encoder, weights)
  loaded = encoder_weights.of_module(encoder)
  for key, want in saved.items():  # params and BatchNorm statistics
    np.testing.assert_array_equal(loaded[key], np.asarray(want), err_msg=key)
  assert any(not np.array_equal(fresh[k], np.asarray(v)) for k, v in saved.items())


def test_finetune_keeps_the_projectors_first_layer(demo_run, tmp_path):
  """`finetune.keep_projector_layers=1` (SimCLRv2): the encoder's neck is
  the pretrained projector's first layer, read exactly, in every cell."""
  workdir, _ = demo_run
  pre = str(workdir / "pretrain")
  _, weights = finetune.read_pretrained(pre, 1)
  tree = checkpoint.restore_subtree(workdir / "pretrain" / "checkpoints",
                                    "params", "rest")
  projector = {**pytree.flatten(tree["params"]["projector"]),
               **pytree.flatten(tree["rest"]["projector"])}
  neck = {k[len("neck/"):]: v for k, v in weights.items()
          if k.startswith("neck/")}
  assert sorted(neck) == sorted(k for k in projector if k.split("/")[1] == "0")
  assert any("norms/0/mean" in k for k in neck)
  for key, value in neck.items():
    np.testing.assert_array_equal(value, np.asarray(projector[key]), err_msg=key)
  with pytest.raises(ValueError, match="has 1 hidden layer"):
    finetune.read_pretrained(pre, 2)  # the second is the projection itself
  config = common.load_config(str(workdir / "finetune"))
  config.finetune.pretrained = pre
  config.finetune.protocols = ("knn", "finetune")
  config.finetune.fractions = (0.1,)
  config.finetune.keep_projector_layers = 1
  results = finetune.train_and_evaluate(config, str(tmp_path))
  assert {c["protocol"] for c in results["cells"].values()} == {"knn", "finetune"}
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["neck"] == [32] and saved["model"]["neck_bn"] is True


def test_rerun_skips_finished_cells(demo_run, monkeypatch):
  workdir, _ = demo_run
  before = (workdir / "finetune" / "results.json").read_text()
  config = common.load_config(str(workdir / "finetune"))
  config.finetune.pretrained = str(workdir / "pretrain")
  config.finetune.protocols = ("linear", "knn", "finetune", "scratch")

  def must_not_run(*args, **kwargs):
    raise AssertionError("a finished cell was recomputed")

  for name in ("linear", "knn", "finetune", "scratch"):
    registered = protocols.PROTOCOLS.get(name)
    monkeypatch.setitem(protocols.PROTOCOLS._entries, name,
                        dataclasses.replace(registered, fn=must_not_run))
  finetune.train_and_evaluate(config, str(workdir / "finetune"))
  assert (workdir / "finetune" / "results.json").read_text() == before


def test_cells_store_predictions_that_ensembles_average(demo_run, tmp_path,
                                                        capsys):
  """Each cell's .npz scores to its JSON's AUROC; a scratch run that differs
  only in `training_seed_offset` trains on the same images from another
  init, and the ensemble scores the mean of the two runs' probabilities."""
  workdir, _ = demo_run
  store = cells.CellStore(str(workdir / "finetune" / "cells"))
  for path in sorted((workdir / "finetune" / "cells" / "simclr").glob("*.json")):
    result = json.loads(path.read_text())
    cell = cells.Cell("simclr", result["protocol"], result["fraction"],
                      result["seed"])
    stored = store.predictions(cell)
    assert str(stored["task"]) == metrics.BINARY
    assert metrics.auroc(stored["test_labels"], stored["test_probs"],
                         metrics.BINARY) == pytest.approx(result["test"]["auroc"])
  config = common.load_config(str(workdir / "finetune"))
  config.finetune.pretrained = str(workdir / "pretrain")
  config.finetune.protocols, config.finetune.fractions = ("scratch",), (0.1,)
  config.finetune.training_seed_offset = 1
  other = tmp_path / "scratch_offset1"
  finetune.train_and_evaluate(config, str(other))
  cell = cells.Cell("simclr", "scratch", 0.1, 0)
  mine, theirs = store.get(cell), cells.CellStore(str(other / "cells")).get(cell)
  assert (mine["training_seed"], theirs["training_seed"]) == (0, 1)
  assert mine["n_train"] == theirs["n_train"] == 55
  a = store.predictions(cell)
  b = cells.CellStore(str(other / "cells")).predictions(cell)
  assert not np.allclose(a["test_probs"], b["test_probs"])
  out = tmp_path / "ens"
  assert ensemble.main([str(workdir), str(other), "--protocols=scratch",
                        f"--workdir={out}"]) == 0
  assert "| scratch | 10% | 1 |" in capsys.readouterr().out
  averaged = cells.CellStore(str(out / "cells"))
  cell_out = averaged.get(cells.Cell("ensemble", "scratch", 0.1, 0))
  mean = (a["test_probs"] + b["test_probs"]) / 2
  assert cell_out["test"]["auroc"] == pytest.approx(
      metrics.auroc(a["test_labels"], mean, metrics.BINARY))
  assert cell_out["member_test_auroc"] == [mine["test"]["auroc"],
                                           theirs["test"]["auroc"]]
  np.testing.assert_allclose(averaged.predictions(cells.Cell(
      "ensemble", "scratch", 0.1, 0))["test_probs"], mean, rtol=1e-6)
  with pytest.raises(ValueError, match="use a fresh --workdir"):
    ensemble.main([str(other), str(workdir), f"--workdir={out}"])


@pytest.mark.parametrize("field,value,allowed", [
    ("data.name", "breastmnst", "breastmnist"),
    ("model.name", "resnet19", "resnet18"),
    ("objective.name", "simclrr", "simclr"),
    ("augment.policy", "xray", "medical_safe"),
    ("finetune.protocols", ("linear", "svm"), "knn"),
])
def test_unknown_names_fail_before_anything_compiles(field, value, allowed):
  config = tiny_config(**{field: value})
  with pytest.raises(ValueError, match=f"config.{field}.*allowed:.*{allowed}"):
    common.validate(config)


def test_pretrain_without_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_config(**{"job": "finetune", "finetune.pretrained": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    finetune.train_and_evaluate(config, str(tmp_path / "ft"))
