"""The frozen-feature monitor during pretraining (issue #14): a tiny ResNet-18
(width 1/16, one block per stage) pretrains on real BreastMNIST with
`train.monitor_every=2`; the curve lands in metrics.jsonl, the summary and
monitor.png, and it is the online encoder's, not a fresh init's."""
from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax import parallel, views
from ssl_jax.evaluation import metrics, monitor, probes
from ssl_jax.jobs import common, pretrain
from ssl_jax.objectives import base
from ssl_jax.train import encoder_weights
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import read_rows
from tests.tiny import FAST_COMPILE, tiny_config

STEPS, EVERY = 4, 2
BUILD_PARTS = pretrain.build_parts  # compiles the step only if it runs


def monitored_config(**overrides):
  return tiny_config(**{
      "job": "pretrain", "model.stage_sizes": (1, 1, 1, 1),
      "online_probe": False, "train.steps": STEPS,
      "train.checkpoint_every": STEPS, "train.log_every": STEPS,
      "train.monitor_every": EVERY,
      "train.monitor_protocols": ("knn", "linear"), **overrides})


def fast_parts(build_parts):
  """pretrain.build_parts with init and step compiled without XLA's -O
  passes (compile time is all that counts for 4 tiny steps)."""
  def build(config, info, mesh, vocab=None):
    built = build_parts(config, info, mesh, vocab)
    b = config.train.batch_size
    batch = {"image": jax.ShapeDtypeStruct(
                 (b, config.data.size, config.data.size, 1), jnp.uint8,
                 sharding=parallel.batch_sharded(mesh)),
             "label": jax.ShapeDtypeStruct(
                 (b,), jnp.int32, sharding=parallel.batch_sharded(mesh))}
    return dataclasses.replace(
        built, init=built.init.lower().compile(FAST_COMPILE),
        step_fn=built.step_fn.lower(built.abstract, batch).compile(
            FAST_COMPILE))
  return build


@pytest.fixture(scope="module")
def run(tmp_path_factory, medmnist_dir):
  workdir = tmp_path_factory.mktemp("monitor") / "run"
  config = monitored_config(**{"data.data_dir": str(medmnist_dir)})
  seen = {}
  make = pretrain.make_monitor

  def keep(*args):  # the job's monitor, to count its compiles afterwards
    seen["monitor"] = make(*args)
    return seen["monitor"]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pretrain, "make_monitor", keep)
    patch.setattr(pretrain, "build_parts",
                  fast_parts(pretrain.build_parts))
    summary = pretrain.train_and_evaluate(config, str(workdir))
    yield workdir, config, summary, seen["monitor"]


def _val_rows(workdir):
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "val/knn_auroc" in r]


def test_the_curve_is_logged_summarised_and_plotted(run):
  workdir, config, summary, _ = run
  rows = _val_rows(workdir)
  assert [r["step"] for r in rows] == [2, 4]
  for row in rows:
    for key in ("val/knn_auroc", "val/knn_acc", "val/linear_auroc",
                "val/linear_acc"):
      assert 0.0 <= row[key] <= 1.0, (key, row)
  saved = json.loads((workdir / "pretrain_summary.json").read_text())
  curve = saved["monitor"]
  assert curve == json.loads(json.dumps(summary["monitor"]))
  assert [h["step"] for h in curve["history"]] == [2, 4]
  n_train = 546  # BreastMNIST train images
  assert curve["history"][1]["epoch"] == pytest.approx(
      4 * config.train.batch_size / n_train)
  assert [h["knn_auroc"] for h in curve["history"]] == [
      r["val/knn_auroc"] for r in rows]
  best = max(curve["history"], key=lambda h: (h["knn_auroc"], -h["step"]))
  assert curve["best"]["step"] == best["step"]
  assert curve["metric"] == "knn_auroc"
  # `final` merges the last step's train/ and val/ rows.
  assert "train/loss" in saved["final"] and "val/knn_auroc" in saved["final"]
  png = (workdir / "monitor.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000
  assert not list(workdir.glob("*.tmp"))  # written beside, then renamed


def _encoder(config, info) -> nnx.Module:
  """A live random-init encoder, its init run as one compiled program
  (built eagerly, each init op compiles on its own: slow on this CPU)."""
  def build():
    return base.build_encoder(config, info, nnx.Rngs(config.seed))

  graphdef = state_lib.split_model(nnx.eval_shape(build))[0]
  init = jax.jit(lambda: state_lib.split_model(build())[1:])
  return nnx.merge(graphdef, *init.lower().compile(FAST_COMPILE)())


def _features(encoder, images):
  """Eval-view pooled features, compiled apart from the monitor's."""
  graphdef, params, rest = state_lib.split_model(encoder)

  def embed(params, rest, x):
    return nnx.merge(graphdef, params, rest)(views.eval_view(x), train=False)

  return np.asarray(jax.jit(embed).lower(params, rest, images).compile(
      FAST_COMPILE)(params, rest, images))


def test_the_monitored_number_is_the_online_encoders(run):
  """Stage 2's loading path on the workdir's final checkpoint (read ->
  into_module -> features -> kNN -> AUROC) gives the monitor's last kNN
  AUROC; a fresh init of the same encoder, scored by the job's monitor,
  does not."""
  workdir, config, _, used = run
  weights, step = encoder_weights.read(str(workdir))
  assert step == STEPS
  info = common.data_info(config)
  encoder = _encoder(config, info)
  encoder_weights.into_module(encoder, weights)
  (x_train, y_train), (x_val, y_val) = (common.load_split(config, s)
                                        for s in ("train", "val"))
  feats = _features(encoder, np.concatenate([x_train, x_val]))
  ft = config.finetune
  probs = probes.knn_predict(
      feats[:len(x_train)], y_train, feats[len(x_train):],
      num_classes=info.num_classes, k=ft.knn_k, temperature=ft.knn_temperature)
  logged = _val_rows(workdir)[-1]["val/knn_auroc"]
  assert metrics.auroc(y_val, probs, info.task) == pytest.approx(logged,
                                                                  abs=1e-6)

  _, params, rest = state_lib.split_model(_encoder(config, info))
  fresh_scores = used.scores(*parallel.replicate((params, rest), used.mesh))
  assert fresh_scores["knn_auroc"] != pytest.approx(logged, abs=1e-6)


def test_the_encoder_forward_compiles_once(run):
  """Two monitored steps (and a fresh encoder on the same mesh) ran one
  compiled forward."""
  *_, used = run
  assert used.embed._cache_size() == 1  # pylint: disable=protected-access


def test_a_resumed_run_catches_up_a_step_preemption_left_unscored(
    run, tmp_path, monkeypatch):
  """A preemption at a monitored step checkpoints and stops before the
  monitor runs: the rerun scores that step first, then goes on."""
  workdir, config, _, _ = run
  monkeypatch.setattr(pretrain, "build_parts", BUILD_PARTS)  # nothing runs
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  log = copy / "metrics.jsonl"
  rows = [json.loads(line) for line in log.read_text().splitlines()]
  log.write_text("".join(json.dumps(r) + "\n" for r in rows
                         if not (r["step"] == STEPS and "val/knn_auroc" in r)))
  assert pretrain.monitor_missed(config, str(copy), STEPS, lead=True)
  assert not pretrain.monitor_missed(config, str(workdir), STEPS, lead=True)
  assert not pretrain.monitor_missed(config, str(copy), 3, lead=True)
  summary = pretrain.train_and_evaluate(config, str(copy))
  assert [r["step"] for r in _val_rows(copy)] == [2, 4]
  assert summary["monitor"]["history"][-1]["knn_auroc"] == pytest.approx(
      rows[-1]["val/knn_auroc"], abs=1e-6)


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


def test_the_log_is_read_back_without_a_torn_last_line(tmp_path):
  """A kill mid-write leaves half a row: the curve reads the whole ones."""
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 2, "val/knn_auroc": 0.5}\n{"step": 4, "val/knn_au')
  assert read_rows(tmp_path) == [{"step": 2, "val/knn_auroc": 0.5}]
  assert common.last_metrics(str(tmp_path)) == {"step": 2,
                                                "val/knn_auroc": 0.5}


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


@pytest.mark.parametrize("name", ["simclr", "vicreg", "barlow_twins", "mae"])
def test_realistic_configs_monitor_and_validate(name):
  import importlib  # noqa: PLC0415
  for dataset in ("breastmnist", "retinamnist"):
    config = importlib.import_module(f"configs.{name}").get_config(dataset)
    assert 0 < config.train.monitor_every < config.train.steps
    common.validate(config)


def test_monitor_off_by_default_validates_with_any_dataset():
  common.validate(monitored_config(**{
      "train.monitor_every": 0,
      "data.name": "pool:breastmnist+pneumoniamnist"}))

