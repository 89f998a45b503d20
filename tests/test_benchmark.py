"""The benchmark job on real BreastMNIST with a tiny ResNet: a sweep of
2 methods (incl. none) x 2 protocols x 2 fractions x 1 seed, its report,
and a sweep SIGKILLed after its first cell that resumes to the same CSV."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import matplotlib.image
import pytest

from configs import benchmark as benchmark_config
from ssl_jax import files
from ssl_jax.evaluation import cells as cells_lib
from ssl_jax.jobs import benchmark, report
from tests.tiny import apply_overrides

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    "benchmark.methods": ("none", "rotation"),
    "benchmark.combine": (),
    "benchmark.budget.model.width_multiplier": 0.0625,
    "benchmark.budget.model.stage_sizes": (1, 1, 1, 1),
    "benchmark.budget.train.steps": 4,
    "benchmark.budget.train.batch_size": 16,
    "benchmark.budget.train.checkpoint_every": 2,
    "benchmark.budget.optim.warmup_steps": 1,
    "benchmark.progress": False,
    "finetune.protocols": ("linear", "finetune"),
    "finetune.fractions": (0.1, 1.0),
    "finetune.seeds": (0,),
    "finetune.epochs": 0,  # 4 fixed steps, not the config's 40 epochs
    "finetune.steps": 4,
    "finetune.optim.warmup_steps": 1,
    "finetune.batch_size": 8,
    "finetune.eval_every": 2,
    "finetune.log_every": 2,
    "finetune.eval_batch_size": 64,
    "finetune.bootstrap_samples": 50,
}


def _flag(value) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def tiny_benchmark_config(**overrides):
  return apply_overrides(benchmark_config.get_config("dataset=breastmnist"),
                         dict(TINY, **overrides))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, medmnist_dir):
  workdir = tmp_path_factory.mktemp("bench")
  config = tiny_benchmark_config(**{"data.data_dir": str(medmnist_dir)})
  return workdir, benchmark.train_and_evaluate(config, str(workdir))


def test_sweep_writes_one_file_per_cell_and_pretrains_once(sweep):
  workdir, out = sweep
  files = sorted(p.relative_to(workdir / "cells").as_posix()
                 for p in (workdir / "cells").rglob("*.json"))
  assert files == sorted(f"{m}/{p}_f{f}_s0.json" for m in ("none", "rotation")
                         for p in ("linear", "finetune") for f in ("0.1", "1"))
  assert len(out["cells"]) == 8
  assert not (workdir / "pretrain" / "none").exists()  # none pretrains nothing
  assert (workdir / "pretrain" / "rotation" / "seed0" / "pretrain_summary.json").exists()
  for cell in out["cells"].values():
    low, high = cell["test"]["auroc_ci"]
    assert 0.0 <= low <= cell["test"]["auroc"] <= high <= 1.0
    assert {"sensitivity", "specificity", "f1"} <= set(cell["test"])
  n_train = {c["fraction"]: c["n_train"] for c in out["cells"].values()}
  assert n_train == {0.1: 55, 1.0: 546}


def test_report_has_table_csv_and_four_plots(sweep):
  workdir, _ = sweep
  report = (workdir / "report.md").read_text()
  assert "| labels | n train | method | strategy | protocol | test AUROC |" in report
  assert "ResNet-18 (28) — published** | supervised | end-to-end | 0.901 |" in report
  assert "innate relationship" in report and "Δ vs scratch" in report
  lines = (workdir / "results.csv").read_text().splitlines()
  assert lines[0].startswith(
      "method,category,augment_policy,protocol,fraction,seed,n_train,test_auroc,")
  assert len(lines) == 1 + 8
  assert lines[1].startswith("none,none,,linear,0.1,0,55,")
  assert any(line.startswith("rotation,innate,medical_safe,linear,") for line in lines)
  # The pretraining table names the policy and a measured throughput.
  row = next(line for line in report.splitlines() if line.startswith("| rotation |"))
  cols = [c.strip() for c in row.strip("|").split("|")]
  assert cols[2] == "medical_safe" and float(cols[3]) > 0 and cols[5] == "1"
  for name in ("relative_to_scratch", "strategies", "protocols", "label_efficiency"):
    assert f"![{name}]({name}.png)" in report
    path = workdir / f"{name}.png"
    assert path.stat().st_size > 15_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # drawn on, not a blank canvas


def test_the_report_names_every_methods_own_stage_2_recipe():
  assert report.own_recipes({}) == report.own_recipes(
      {"finetune_by_method": {}}) == []
  lines = report.own_recipes({"finetune_by_method": {
      "mae": {"layer_decay": 0.75, "head_fit": "linear_probe"}}})
  assert lines[0] == ("Stage 2 differs by method (every other one shares the "
                      "one above): mae: `finetune.layer_decay=0.75`, "
                      "`finetune.head_fit='linear_probe'`.")


def test_report_can_be_rebuilt_from_the_cell_files(sweep):
  workdir, _ = sweep
  csv = (workdir / "results.csv").read_text()
  (workdir / "results.csv").unlink()
  report.rewrite_benchmark_report(str(workdir))  # python -m ssl_jax.jobs.report DIR
  assert (workdir / "results.csv").read_text() == csv


def test_killed_sweep_resumes_with_identical_cells(sweep, tmp_path, medmnist_dir):
  """SIGKILL once the first cell file exists; the rerun keeps that file as
  it was, computes the rest and ends with the uninterrupted run's CSV."""
  full_dir, _ = sweep
  workdir = tmp_path / "killed"
  flags = [f"--config.{k}={_flag(v)}" for k, v in TINY.items()]
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu")
  log = tmp_path / "killed.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--config=configs/benchmark.py:dataset=breastmnist",
         f"--workdir={workdir}"] + flags, cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 600
    while not list((workdir / "cells").rglob("*.json")):
      assert proc.poll() is None, log.read_text()[-4000:]
      assert time.monotonic() < deadline, "no cell finished in 600 s"
      time.sleep(0.2)
    children = _children(proc.pid)  # the cell workers, among others
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  _assert_exit_within(children, seconds=15)
  before = {p: p.read_bytes() for p in (workdir / "cells").rglob("*.json")}
  assert 1 <= len(before) < 8

  config = tiny_benchmark_config(**{"data.data_dir": str(medmnist_dir)})
  benchmark.train_and_evaluate(config, str(workdir))
  for path, content in before.items():
    assert path.read_bytes() == content  # finished cells are never redone
  assert len(list((workdir / "cells").rglob("*.json"))) == 8
  assert (workdir / "results.csv").read_text() == (full_dir / "results.csv").read_text()


def _children(pid: int) -> list[int]:
  path = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
  return [int(p) for p in path.read_text().split()]


def _assert_exit_within(pids: list[int], seconds: float) -> None:
  """Every process in `pids` has ended (or is a zombie) within `seconds`."""
  def alive(pid):
    try:
      state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    except FileNotFoundError:
      return False
    return state.split()[0] != "Z"
  deadline = time.monotonic() + seconds
  while any(map(alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not [p for p in pids if alive(p)], "cell workers outlived their parent"


def test_sweep_killed_during_pretraining_resumes_through_run_py(
    sweep, tmp_path, medmnist_dir):
  """SIGKILL while rotation is pretraining (after its step-2 checkpoint,
  before its summary); `run.py` again resumes it and ends with the
  uninterrupted run's CSV."""
  full_dir, _ = sweep
  workdir = tmp_path / "killed_pretraining"
  pretrain_dir = workdir / "pretrain" / "rotation" / "seed0"
  command = [sys.executable, "run.py",
             "--config=configs/benchmark.py:dataset=breastmnist",
             f"--workdir={workdir}"] + [
                 f"--config.{k}={_flag(v)}" for k, v in TINY.items()]
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu")
  log = tmp_path / "killed_pretraining.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 600
    while not (pretrain_dir / "checkpoints" / "2").is_dir():
      assert proc.poll() is None, log.read_text()[-4000:]
      assert time.monotonic() < deadline, "rotation never checkpointed in 600 s"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert not (pretrain_dir / "pretrain_summary.json").exists(), (
      "pretraining finished before the kill; the test did not interrupt it")
  assert not list((workdir / "cells" / "rotation").rglob("*.json"))

  rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  assert (workdir / "results.csv").read_text() == (full_dir / "results.csv").read_text()


def test_rerun_with_another_budget_is_refused(sweep):
  workdir, _ = sweep
  config = tiny_benchmark_config(**{"finetune.steps": 5})
  with pytest.raises(ValueError, match="finetune.steps"):
    benchmark.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("overrides,message", [
    ({"benchmark.methods": ("none", "simclrr")}, "no configs/simclrr.py"),
    ({"finetune.protocols": ("linear", "scratch")},
     "protocols has 'scratch': in the benchmark the from-scratch baselines are "
     "method 'none' with the protocols that read an encoder"),
    ({"finetune.protocols": ("combine",), "benchmark.combine": ("none", "simclr")},
     "name >= 2 of config.benchmark.methods"),
    ({"benchmark.method_args": ("supervised:chestmnist",)}, "'method=arg'"),
    ({"finetune.decision_threshold": "youden"},
     "decision_threshold='youden'; allowed: medmnist, val_balanced, val_prior"),
])
def test_config_mistakes_fail_before_anything_trains(overrides, message):
  with pytest.raises(ValueError, match=message):
    benchmark.validate(tiny_benchmark_config(**overrides))


def test_sweep_cells_are_seed_major_with_the_combination_last():
  config = tiny_benchmark_config(**{
      "benchmark.methods": ("none", "simclr", "rotation"),
      "benchmark.combine": ("simclr", "rotation"),
      "finetune.protocols": ("linear", "combine"), "finetune.seeds": (0, 1)})
  keys = [c.key for c in benchmark.sweep_cells(config)]
  assert keys[:7] == ["none|linear|0.1|0", "none|linear|1|0", "simclr|linear|0.1|0",
                      "simclr|linear|1|0", "rotation|linear|0.1|0",
                      "rotation|linear|1|0", "simclr+rotation|combine|0.1|0"]
  assert len(keys) == 2 * (3 * 2 + 2)
  info = benchmark.method_info(config)
  assert info["simclr"]["category"] == "contrastive"
  assert info["rotation"]["category"] == "innate"
  assert info["simclr+rotation"]["category"] == "combined"


def test_every_method_gets_the_same_budget():
  config = tiny_benchmark_config()
  for method in ("simclr", "byol", "supervised"):
    c = benchmark.method_config(config, method, seed=2)
    assert c.model.to_dict() == config.benchmark.budget.model.to_dict()
    assert (c.train.steps, c.train.batch_size, c.optim.warmup_steps) == (4, 16, 1)
    assert c.seed == 2 and c.data.name == "breastmnist"
  assert benchmark.method_config(config, "byol", 0).objective.name == "byol"


def test_config_arg_parsing():
  assert benchmark_config.parse_arg("dataset=retinamnist,budget=accelerator") == {
      "dataset": "retinamnist", "budget": "accelerator", "backbone": "resnet"}
  assert benchmark_config.parse_arg("retinamnist")["dataset"] == "retinamnist"
  with pytest.raises(ValueError, match="allowed: dataset, budget, backbone"):
    benchmark_config.parse_arg("dataset=breastmnist,steps=3")
  with pytest.raises(ValueError, match="allowed: accelerator, cpu"):
    benchmark_config.get_config("budget=tpu")
  c = benchmark_config.get_config("dataset=retinamnist")
  assert c.job == "benchmark" and c.data.name == "retinamnist"
  assert tuple(c.finetune.fractions) == (0.01, 0.1, 1.0)
  assert tuple(c.finetune.seeds) == (0, 1, 2)
  # Stage 2 trains to convergence: epochs, per-epoch validation, balanced loss.
  assert (c.finetune.epochs, c.finetune.last_batch, c.finetune.class_weights,
          c.finetune.decision_threshold) == (40, "keep", "balanced", "val_prior")
  benchmark.validate(c)
  vit = benchmark_config.get_config("dataset=breastmnist,backbone=vit")
  assert vit.benchmark.budget.model.name == "vit_tiny"
  assert "mae" in vit.benchmark.methods and vit.finetune.early_layer == "block3"
  benchmark.validate(vit)


def test_budget_can_set_every_methods_views():
  config = tiny_benchmark_config()
  assert benchmark.method_config(config, "simclr", 0).augment.policy == "medical_safe"
  config.benchmark.budget.augment.policy = "simclr"
  for method in ("simclr", "rotation"):
    assert benchmark.method_config(config, method, 0).augment.policy == "simclr"


def test_fields_newer_than_a_saved_sweep_bind_only_off_their_default(tmp_path):
  config = tiny_benchmark_config()
  saved = benchmark._fingerprint(config)
  del saved["pairs.mode"]  # as if the sweep predates the field
  files.write_json_atomic(str(tmp_path / "benchmark.json"),
                          {"fingerprint": saved})
  benchmark.check_resumable(config, str(tmp_path))  # default value: resumes
  config.finetune.save_predictions = False  # changes no result: resumes
  benchmark.check_resumable(config, str(tmp_path))
  config.pairs.mode = "patient"
  with pytest.raises(ValueError, match="pairs.mode"):
    benchmark.check_resumable(config, str(tmp_path))


def test_a_method_can_bring_its_own_stage_2_recipe():
  config = tiny_benchmark_config(**{"benchmark.finetune_by_method": (
      "rotation.layer_decay=0.75", "rotation.optim.lr=5e-4",
      "rotation.head_fit=linear_probe")})
  assert benchmark.finetune_by_method(config) == {"rotation": {
      "layer_decay": 0.75, "optim.lr": 5e-4,
      "head_fit": "linear_probe"}}
  benchmark.validate(config)
  own = benchmark.with_method_finetune(
      config, benchmark.finetune_by_method(config)["rotation"])
  assert (own.finetune.layer_decay, own.finetune.optim.lr,
          own.finetune.head_fit) == (0.75, 5e-4, "linear_probe")
  # The shared recipe is untouched, for `none` and every other method.
  assert (config.finetune.layer_decay, config.finetune.optim.lr,
          config.finetune.head_fit) == (1.0, 1e-3, "none")


def test_each_stage_2_recipe_gets_its_own_contexts_and_programs(tmp_path):
  config = tiny_benchmark_config(**{
      "benchmark.finetune_by_method": ("none.layer_decay=0.5",),
      "benchmark.methods": ("none", "rotation")})
  contexts = benchmark.Contexts(config, str(tmp_path), mesh=None, data={},
                                info=types.SimpleNamespace(multi_label=False))
  scratch = contexts.get("none", 0)
  assert scratch.config.finetune.layer_decay == 0.5
  assert config.finetune.layer_decay == 1.0
  assert scratch.compiled is contexts.compiled['{"layer_decay": 0.5}']
  assert scratch.compiled is not contexts.compiled.setdefault("{}", {})


@pytest.mark.parametrize("entry,message", [
    ("mae.layer_decay=0.75", r"'mae' is not in config.benchmark.methods"),
    ("rotation.seeds=(0,)", r"finetune.seeds defines the sweep"),
    ("rotation.layer_decy=0.75", r"config.finetune has no field 'layer_decy'"),
    ("rotation.optim.learning_rate=0.1",
     r"config.finetune has no field 'optim.learning_rate'"),
    ("rotation=0.75", r"each entry is 'method.field=value'"),
    ("rotation.layer_decay=1.5", r"layer_decay=1.5: expected a factor"),
])
def test_a_stage_2_recipe_mistake_fails_before_anything_trains(entry, message):
  config = tiny_benchmark_config(**{"benchmark.finetune_by_method": (entry,)})
  with pytest.raises(ValueError, match=message):
    benchmark.validate(config)


def test_a_stage_2_recipe_binds_a_sweep_and_none_keeps_old_sweeps_resumable(
    tmp_path):
  """A sweep saved before the field (its fingerprint without it) resumes
  at configs/benchmark.py's default, and is refused with a recipe."""
  config = tiny_benchmark_config()
  saved = benchmark._fingerprint(config)
  assert saved.pop("benchmark.finetune_by_method") == []
  files.write_json_atomic(str(tmp_path / "benchmark.json"),
                          {"fingerprint": saved})
  benchmark.check_resumable(config, str(tmp_path))
  config.benchmark.finetune_by_method = ("rotation.layer_decay=0.75",)
  with pytest.raises(ValueError, match="benchmark.finetune_by_method"):
    benchmark.check_resumable(config, str(tmp_path))


def test_cells_another_process_finished_meanwhile_are_not_rerun(tmp_path,
                                                                monkeypatch):
  store = cells_lib.CellStore(str(tmp_path))
  cells = [cells_lib.Cell("simclr", "linear", 1.0, seed) for seed in (0, 1)]
  ran = []

  def run_cell(ctx, cell):
    ran.append(cell.key)
    store.put(cells[1], {"seed": 1, "by": "a second process"})  # meanwhile
    return {"seed": cell.seed}, None

  monkeypatch.setattr(cells_lib, "run_cell", run_cell)
  monkeypatch.setattr(cells_lib, "summary_line", lambda cell, result: "")
  ctx = types.SimpleNamespace(config=tiny_benchmark_config(
      **{"finetune.save_predictions": False}))
  out = cells_lib.run_cells(lambda cell: ctx, cells, store, progress=False)
  assert ran == ["simclr|linear|1|0"]
  assert out["simclr|linear|1|1"]["by"] == "a second process"


def test_cells_side_by_side_give_the_cells_of_one_at_a_time(sweep, tmp_path,
                                                            medmnist_dir):
  """The sweep fixture ran two cells at once (auto on CPU), each in a
  worker process on half the cores; one at a time, on all of them, from
  the same pretrained encoders, every cell comes out the same (at this
  width fewer threads sum in the same order; the demo's cells move in
  their last digits, docs/performance.md)."""
  full_dir, out = sweep
  assert cells_lib.side_by_side(tiny_benchmark_config().finetune) == dict(
      at_once=2, in_processes=True)
  cores = cells_lib.cores_here()
  # each ran in a worker process pinned to its half of the cores
  assert {c["cores"] for c in out["cells"].values()} == {max(cores // 2, 1)}
  workdir = tmp_path / "serial"
  shutil.copytree(full_dir / "pretrain", workdir / "pretrain")
  config = tiny_benchmark_config(**{"data.data_dir": str(medmnist_dir),
                                    "finetune.cells_at_once": 1})
  serial = benchmark.train_and_evaluate(config, str(workdir))
  assert (workdir / "results.csv").read_text() == (full_dir / "results.csv").read_text()
  for key, cell in out["cells"].items():
    assert serial["cells"][key]["cores"] == cores
    assert serial["cells"][key]["test"] == cell["test"]
    assert serial["cells"][key].get("selected_step") == cell.get("selected_step")


def _fake_cells(monkeypatch, run):
  monkeypatch.setattr(cells_lib, "run_cell", run)
  monkeypatch.setattr(cells_lib, "summary_line", lambda cell, result: "")
  return types.SimpleNamespace(config=tiny_benchmark_config(
      **{"finetune.save_predictions": False}))


def test_cells_at_once_run_together_and_keep_the_results_of_a_failure(
    tmp_path, monkeypatch):
  """Two cells meet at a barrier (only possible side by side); when one
  fails, the one beside it is still stored before the error is raised."""
  store = cells_lib.CellStore(str(tmp_path))
  cells = [cells_lib.Cell("simclr", "linear", 1.0, seed) for seed in range(3)]
  both = threading.Barrier(2, timeout=20)

  def run_cell(ctx, cell):
    if cell.seed < 2:
      both.wait()
    if cell.seed == 0:
      time.sleep(0.2)  # the failure is seen after seed 1 has finished
      raise RuntimeError("cell 0 failed")
    return {"seed": cell.seed}, None

  ctx = _fake_cells(monkeypatch, run_cell)
  with pytest.raises(RuntimeError, match="cell 0 failed"):
    cells_lib.run_cells(lambda cell: ctx, cells, store, progress=False,
                        at_once=2)
  assert store.get(cells[0]) is None
  assert [store.get(c) for c in cells[1:]] == [{"seed": 1}, {"seed": 2}]
  ran = []

  def rerun(ctx, cell):
    ran.append(cell.seed)
    return {"seed": cell.seed}, None

  _fake_cells(monkeypatch, rerun)
  out = cells_lib.run_cells(lambda cell: ctx, cells, store, progress=False,
                            at_once=2)
  assert ran == [0] and list(out) == [c.key for c in cells]  # in cells' order


def test_a_context_that_fails_does_not_lose_the_cell_running_beside_it(
    tmp_path, monkeypatch):
  """The benchmark builds (pretrains) the next method's context while a
  cell runs; if that fails, the running cell is still stored."""
  store = cells_lib.CellStore(str(tmp_path))
  cells = [cells_lib.Cell(m, "linear", 1.0, 0) for m in ("simclr", "byol")]
  started = threading.Event()

  def run_cell(ctx, cell):
    started.set()
    time.sleep(0.3)
    return {"method": cell.method}, None

  ctx = _fake_cells(monkeypatch, run_cell)

  def context_for(cell):
    if cell.method == "byol":
      assert started.wait(20)
      raise RuntimeError("byol pretraining diverged")
    return ctx

  with pytest.raises(RuntimeError, match="byol pretraining diverged"):
    cells_lib.run_cells(context_for, cells, store, progress=False, at_once=2)
  assert store.get(cells[0]) == {"method": "simclr"}


def test_core_shares_split_the_cores_without_overlap():
  assert cells_lib.core_shares([3, 0, 1, 2], 2) == [[0, 1], [2, 3]]
  assert cells_lib.core_shares(range(5), 2) == [[0, 1], [2, 3, 4]]
  assert cells_lib.core_shares([0, 1], 3) == [[0], [1], [0]]


@pytest.mark.parametrize("value", [-1, 1.5, "2"])
def test_cells_at_once_refuses_what_is_not_a_count(value):
  ft = tiny_benchmark_config().finetune
  ft.cells_at_once = 1
  assert cells_lib.cells_at_once(ft) == 1
  ft = ft.to_dict()
  ft["cells_at_once"] = value
  with pytest.raises(ValueError, match="finetune.cells_at_once"):
    cells_lib.cells_at_once(ft)
