"""Nothing silent, nothing clobbered (issue 13): each fault a new user hit is
refused or named before it damages anything, with the field and the fix."""
from __future__ import annotations

import importlib
import re

import pytest

from ssl_jax import objectives
from ssl_jax.jobs import benchmark, common, pretrain
from tests.tiny import apply_overrides, tiny_config


def method_config(method: str, **overrides):
  config = importlib.import_module(f"configs.{method}").get_config()
  return apply_overrides(config, overrides)


# --- 2. objective and backbone that don't fit --------------------------------


@pytest.mark.parametrize("method,overrides,message", [
    ("demo", {"objective.name": "mae"},
     r"mae needs a ViT encoder; got config.model.name='resnet18'. Use one of: "
     r"vit_base, vit_small, vit_tiny \("),
    ("mae", {"model.name": "resnet18"},
     r"mae needs a ViT encoder; got config.model.name='resnet18'"),
    ("simmim", {"model.name": "resnet50"}, r"simmim needs a ViT encoder"),
    ("mae_3d", {"model.name": "vit_tiny"},
     r"config.model.name='vit_tiny' does not take the 3D volumes of "
     r"config.data.name='adrenalmnist3d': use a \*_3d backbone"),
    ("simclr_3d", {"model.name": "resnet18"},
     r"config.model.name='resnet18' does not take the 3D volumes"),
    ("mae_3d", {"data.name": "breastmnist"},
     r"config.model.name='vit_tiny_3d' does not take the 2D images"),
    ("simclr_3d", {"objective": {"name": "rotation"}},
     r"'rotation' trains on 2D images, but config.data.name='adrenalmnist3d' "
     r"has 3D volumes"),
    ("mae", {"objective.name": "simclr"},
     r"config.objective.decoder_depth is not a hyperparameter of 'simclr'; it "
     r"declares: .*temperature.*start from configs/simclr.py"),
])
def test_objective_backbone_misfit_is_refused_before_anything(
    tmp_path, method, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    pretrain.train_and_evaluate(method_config(method, **overrides), str(workdir))
  assert not workdir.exists()  # refused before the workdir was made


def test_another_methods_block_is_refused_naming_the_field(tmp_path):
  """SimCLR's block under BYOL's name: `temperature` is not BYOL's."""
  config = tiny_config(**{"objective.name": "byol"})
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"config.objective.temperature is not "
                     r"a hyperparameter of 'byol'.*start from configs/byol.py"):
    pretrain.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_every_objective_fits_its_own_config():
  for name in objectives.names():
    spec = importlib.util.find_spec(f"configs.{name}")
    if spec is None:
      continue
    common.check_encoder(method_config(name))


def test_benchmark_refuses_a_vit_method_on_the_resnet_budget():
  from tests.test_benchmark import tiny_benchmark_config  # noqa: PLC0415
  config = tiny_benchmark_config(**{"benchmark.methods": ("none", "mae")})
  with pytest.raises(ValueError, match=r"benchmark.methods has 'mae': mae "
                     r"needs a ViT encoder"):
    benchmark.validate(config)


# --- 4. a rerun with other settings is refused; config.json after restore ---


def tiny_pretrain(**overrides):
  config = tiny_config(**{"job": "pretrain", "model.stage_sizes": (1, 1, 1, 1),
                          "online_probe": False, "train.steps": 2,
                          "train.checkpoint_every": 1, "train.log_every": 1,
                          **overrides})
  return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, medmnist_dir):
  """A finished 2-step tiny pretraining run (ResNet-18 at width 1/16)."""
  workdir = tmp_path_factory.mktemp("pre") / "run"
  config = tiny_pretrain(**{"data.data_dir": str(medmnist_dir)})
  pretrain.train_and_evaluate(config, str(workdir))
  return workdir, config


def _snapshot(workdir):
  return {p.relative_to(workdir): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_rerun_with_another_width_is_refused_naming_the_field(pretrained):
  workdir, config = pretrained
  before = _snapshot(workdir)
  other = config.copy_and_resolve_references()
  other.model.width_multiplier = 0.125
  with pytest.raises(ValueError, match=r"holds a pretraining run with other "
                     r"settings \(model.width_multiplier: 0.0625 in "
                     r"config.json, 0.125 now\).*fresh --workdir"):
    pretrain.train_and_evaluate(other, str(workdir))
  assert _snapshot(workdir) == before  # nothing written, nothing lost


def test_rerun_may_change_display_and_length(pretrained):
  workdir, config = pretrained
  same = config.copy_and_resolve_references()
  same.train.log_every = 5
  same.train.progress = True
  same.finetune.steps = 7
  pretrain.check_same_setup(same, str(workdir))  # no error


def test_checkpoint_of_another_shape_is_named_and_config_kept(pretrained, tmp_path):
  """Without config.json to compare (older runs), the restore itself fails
  clearly, and config.json is not written for a run that never resumed."""
  import shutil  # noqa: PLC0415
  workdir, config = pretrained
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  (copy / "config.json").unlink()
  other = config.copy_and_resolve_references()
  other.model.width_multiplier = 0.125
  with pytest.raises(ValueError, match=r"checkpoints step 2 does not fit this "
                     r"config .*fresh --workdir") as error:
    pretrain.train_and_evaluate(other, str(copy))
  assert not (copy / "config.json").exists()
  # Found before reading: the message names a parameter and both shapes.
  assert re.search(r"other shapes than this state \(\d+\): params/encoder/\S+: "
                   r"float32\[[0-9, ]+\] in the checkpoint, float32\[[0-9, ]+\] "
                   r"expected", str(error.value)), error.value


def test_checkpoint_mismatches_name_missing_extra_and_reshaped_arrays():
  """Orbax saves tuples and namedtuples as lists and dicts: the same paths."""
  import collections  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from ssl_jax.train import checkpoint  # noqa: PLC0415
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)  # noqa: E731
  count = jax.ShapeDtypeStruct((), np.int32)
  adam = collections.namedtuple("Adam", "count mu")
  saved = {"params": {"a": f32(2), "b": f32(3)},
           "opt_state": [{"count": count, "mu": {"a": f32(2)}}]}
  wanted = {"params": {"a": f32(4), "c": f32(1)},
            "opt_state": (adam(count, {"a": f32(2)}),)}
  assert checkpoint.tree_mismatches(saved, wanted) == [
      "params/a: float32[2] in the checkpoint, float32[4] expected",
      "params/b: in the checkpoint only", "params/c: not in the checkpoint"]
  assert checkpoint.tree_mismatches(saved, saved) == []


# --- 5. one process per workdir; no metrics row twice ------------------------

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from ssl_jax.jobs import workdir
lock = workdir.Lock({path!r}, "holder test")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold(path):
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  from tests.tiny import __file__ as tiny_file  # noqa: PLC0415
  import pathlib  # noqa: PLC0415
  root = str(pathlib.Path(tiny_file).resolve().parents[1])
  proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=root, path=str(path))],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_second_process_is_refused_naming_the_holder(tmp_path):
  import socket  # noqa: PLC0415
  from ssl_jax.jobs import workdir  # noqa: PLC0415
  proc = _hold(tmp_path)
  try:
    with pytest.raises(workdir.WorkdirBusy, match=(
        rf"workdir {tmp_path} is in use by pid {proc.pid} on host "
        rf"{socket.gethostname()} \(holder test, since .*\).*another --workdir")):
      workdir.Lock(tmp_path).acquire()
    assert workdir.is_busy(tmp_path)
  finally:
    proc.kill()
    proc.wait()


def test_pretraining_on_a_held_workdir_touches_nothing(tmp_path, medmnist_dir):
  from ssl_jax.jobs import workdir  # noqa: PLC0415
  proc = _hold(tmp_path)
  try:
    with pytest.raises(workdir.WorkdirBusy, match=f"pid {proc.pid}"):
      pretrain.train_and_evaluate(
          tiny_pretrain(**{"data.data_dir": str(medmnist_dir)}), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
  finally:
    proc.kill()
    proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
  from ssl_jax.jobs import workdir  # noqa: PLC0415
  proc = _hold(tmp_path)
  proc.kill()
  proc.wait()
  assert workdir.read_holder(tmp_path)["pid"] == proc.pid  # left behind
  assert not workdir.is_busy(tmp_path)
  with workdir.Lock(tmp_path, "second") as lock:
    assert lock.took_over["pid"] == proc.pid
    assert workdir.read_holder(tmp_path)["job"] == "second"
    with workdir.Lock(tmp_path):  # re-entrant in one process
      pass
    assert (tmp_path / ".lock").exists()
  assert not (tmp_path / ".lock").exists()
  assert f"took over the stale lock of {tmp_path} from pid {proc.pid}" in (
      capsys.readouterr().out)


def test_resume_keeps_each_step_once_even_after_two_writers(tmp_path):
  import json  # noqa: PLC0415
  from ssl_jax.train.metrics_writer import MetricWriter  # noqa: PLC0415
  rows = []
  for step in range(1, 5):  # two processes once interleaved their rows
    rows += [{"step": step, "train/loss": 1.0 / step},
             {"step": step, "train/loss": 2.0 / step}]
  rows.append({"step": 2, "val/auroc": 0.5})
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  MetricWriter(tmp_path, tensorboard=False, resume_step=3).close()
  got = [json.loads(line) for line in
         (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert got == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.0},
                 {"step": 3, "train/loss": 2.0 / 3}, {"step": 2, "val/auroc": 0.5}]


# --- 10. a workdir that cannot be written is named up front -------------------


def test_unwritable_workdir_is_named_before_anything(tmp_path):
  from ssl_jax.jobs import workdir  # noqa: PLC0415
  (tmp_path / "afile").write_text("x")
  with pytest.raises(PermissionError, match=rf"workdir {tmp_path}/afile/run is "
                     r"not writable .*choose a --workdir you can write to"):
    workdir.check_writable(tmp_path / "afile" / "run")
  workdir.check_writable(tmp_path / "new" / "run")
  assert not (tmp_path / "new").exists()  # probing creates nothing


def test_read_only_workdir_fails_in_pretraining_with_its_name(medmnist_dir):
  try:
    open("/sys/ssl_jax_probe", "w").close()
    pytest.skip("/sys is writable here: no unwritable directory to try")
  except OSError:
    pass
  with pytest.raises(PermissionError, match=r"workdir /sys/ssl_jax_run is not "
                     r"writable \((Permission denied|Read-only)"):
    pretrain.train_and_evaluate(
        tiny_pretrain(**{"data.data_dir": str(medmnist_dir)}), "/sys/ssl_jax_run")


# --- 3. optimizer numbers that train wrongly without failing ------------------


@pytest.mark.parametrize("field,value,message", [
    ("optim.lr", -1.0, r"config.optim.lr=-1.0; expected > 0 .*ascends"),
    ("optim.lr", 0.0, r"config.optim.lr=0.0; expected > 0"),
    ("optim.weight_decay", -1e-4, r"config.optim.weight_decay=-0.0001; expected >= 0"),
    ("optim.warmup_steps", 5, r"config.optim.warmup_steps=5; expected <= "
     r"config.train.steps=4 .*--config.optim.warmup_steps=4 or less"),
    ("optim.final_lr_fraction", 1.5, r"final_lr_fraction=1.5; expected in \[0, 1\]"),
    ("optim.grad_clip_norm", -1.0, r"grad_clip_norm=-1.0; expected >= 0"),
    ("finetune.optim.warmup_steps", 9, r"config.finetune.optim.warmup_steps=9; "
     r"expected <= config.finetune.steps=4"),
    ("finetune.optim.lr", -1e-3, r"config.finetune.optim.lr=-0.001"),
    ("finetune.layer_decay", 0.0, r"config.finetune.layer_decay=0.0: "
     r"expected a factor in \(0, 1\]"),
    ("finetune.layer_decay", 1.5, r"config.finetune.layer_decay=1.5"),
    ("finetune.weight_average", 1.0, r"config.finetune.weight_average=1.0: "
     r"expected a decay in \[0, 1\)"),
])
def test_optimizer_fields_are_checked(field, value, message):
  with pytest.raises(ValueError, match=message):
    common.validate(tiny_config(**{field: value}))


def test_test_time_flips_need_a_policy_that_flips():
  common.validate(tiny_config(**{"finetune.test_time_flips": True}))
  with pytest.raises(ValueError, match=r"finetune.augment.policy='none' "
                     r"\(with its overrides\) flips no axis"):
    common.validate(tiny_config(**{"finetune.test_time_flips": True,
                                   "finetune.augment.policy": "none"}))


@pytest.mark.parametrize("method,field,value", [
    ("mae", "optim.b2", 1.0), ("mae", "optim.b1", -0.1),
    ("simclr", "optim.momentum", 1.2)])
def test_betas_and_momentum_in_range(method, field, value):
  config = method_config(method, **{"train.steps": 200})
  with config.unlocked():
    config.optim[field.split(".")[1]] = value
  with pytest.raises(ValueError, match=rf"config.{field}={value}; expected in "
                     r"\[0, 1\)"):
    common.validate(config)


def test_negative_lr_on_the_command_line_exits_before_training(tmp_path):
  """The issue's reproduction: run.py --config.optim.lr=-1 used to exit 0."""
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "run.py", "--config=configs/demo.py",
       f"--workdir={tmp_path / 'run'}", "--config.optim.lr=-1"],
      cwd=root, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode != 0
  assert "config.optim.lr=-1.0; expected > 0" in out.stderr
  assert not (tmp_path / "run").exists()


def test_sweep_waits_for_a_pretraining_another_process_holds(tmp_path, monkeypatch):
  """Sweeps share a workdir (one process per seed): a (method, seed) another
  process is pretraining is waited for, then read, not pretrained twice."""
  import json  # noqa: PLC0415
  from tests.test_benchmark import tiny_benchmark_config  # noqa: PLC0415
  pre_dir = tmp_path / "pretrain" / "rotation" / "seed0"
  proc = _hold(pre_dir)
  config = tiny_benchmark_config()
  contexts = benchmark.Contexts.__new__(benchmark.Contexts)
  contexts.config, contexts.workdir = config, str(tmp_path)
  ran = []
  monkeypatch.setattr(pretrain, "train_and_evaluate",
                      lambda cfg, d: ran.append(d))
  import threading  # noqa: PLC0415

  def finish():  # the other process writes its summary and exits
    (pre_dir / "pretrain_summary.json").write_text(json.dumps({"steps": 4}))
    proc.kill()
    proc.wait()

  timer = threading.Timer(1.0, finish)
  timer.start()
  assert contexts.pretrained_dir("rotation", 0) == str(pre_dir)
  timer.join()
  assert ran == []  # finished by the other process: not pretrained again


# --- 8. a single-class CSV is named at load -----------------------------------


def _csv(tmp_path, labels):
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  lines = ["path,label,split"]
  for i, (label, split) in enumerate(labels):
    Image.fromarray(np.full((8, 8), 10 * i % 256, np.uint8)).save(tmp_path / f"{i}.png")
    lines.append(f"{i}.png,{label},{split}")
  path = tmp_path / "labels.csv"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_single_class_csv_is_refused_before_pretraining(tmp_path):
  from ssl_jax.jobs import pipeline  # noqa: PLC0415
  path = _csv(tmp_path, [("benign", s) for s in ("train",) * 4 + ("val", "test")])
  config = tiny_config(**{"data.name": f"csv:{path}", "data.size": 8})
  with pytest.raises(ValueError, match=rf"data 'csv:{path}', split 'train': 4 "
                     r"rows with 1 class\(es\) \[0\].*>= 2 classes"):
    pipeline.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_split_with_one_class_is_named(tmp_path):
  path = _csv(tmp_path, [("a", "train"), ("b", "train"), ("a", "val"),
                         ("b", "val"), ("a", "test"), ("a", "test")])
  config = tiny_config(**{"data.name": f"csv:{path}", "data.size": 8})
  with pytest.raises(ValueError, match=r"split 'test': 2 rows with 1 class"):
    common.check_classes(config, "binary-class")


# --- 9. fine-tuning from a workdir of another width says so -------------------


def test_finetune_from_another_width_says_so_and_records_both(
    pretrained, tmp_path, capsys):
  from ssl_jax.jobs import finetune  # noqa: PLC0415
  workdir, config = pretrained
  ft = config.copy_and_resolve_references()
  ft.job = "finetune"
  ft.model.width_multiplier = 0.125  # not what was pretrained
  ft.finetune.pretrained = str(workdir)
  ft.finetune.protocols = ("linear",)
  ft.finetune.fractions = (1.0,)
  results = finetune.train_and_evaluate(ft, str(tmp_path / "ft"))
  assert "not as config.model" in capsys.readouterr().out
  assert results["model"]["width_multiplier"] == 0.0625
  assert results["config_model"]["width_multiplier"] == 0.125


def test_a_model_read_back_from_config_json_is_the_same_model(tmp_path):
  """config.json stores tuples as lists: the job compares the forms saved,
  so fine-tuning a workdir's own model is not reported as another."""
  config = tiny_config()
  config.model.stage_sizes = (1, 1)
  common.save_config(config, str(tmp_path))
  read_back = common.load_config(str(tmp_path))
  assert read_back.model.to_dict() != config.model.to_dict()  # list vs tuple
  assert common.as_saved(read_back.model) == common.as_saved(config.model)
  read_back.model.stage_sizes = [1, 2]
  assert common.as_saved(read_back.model) != common.as_saved(config.model)


# --- 13. nothing to evaluate; prefixes; skipped rows on the console -----------


def test_empty_fractions_are_refused():
  with pytest.raises(ValueError, match=r"config.finetune.fractions is empty"):
    common.validate(tiny_config(**{"finetune.fractions": ()}))
  with pytest.raises(ValueError, match=r"config.finetune.seeds is empty"):
    common.validate(tiny_config(**{"finetune.seeds": ()}))


def test_unknown_dataset_lists_the_prefixes():
  with pytest.raises(ValueError, match=r"config.data.name='breastmnst' is "
                     r"unknown; allowed: .*breastmnist.*csv:<file.csv>.*"
                     r"tfds:<name>.*pool:<a>\+<b>"):
    common.validate(tiny_config(**{"data.name": "breastmnst"}))


def test_skipped_rows_are_counted_on_the_console(tmp_path, capsys):
  path = _csv(tmp_path, [("a", "train"), ("b", "train"), ("a", "val"),
                         ("b", "test")])
  with open(path, "a") as f:
    f.write("gone.png,a,train\nalso_gone.png,b,val\n")
  config = tiny_config(**{"data.name": f"csv:{path}", "data.size": 8,
                          "data.options.on_bad_row": "skip"})
  common.write_data_report(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert (f"data: skipped 2 CSV row(s) (missing_file 2); rows and reasons in "
          f"{tmp_path}/run/data_report.json") in out


# --- 12. a loss that explodes but stays finite stops like NaN -----------------


def _run_toy(tmp_path, losses, guard, grad_norms=None, log_every=100):
  import itertools  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from ssl_jax import parallel  # noqa: PLC0415
  from ssl_jax.train import loop  # noqa: PLC0415
  from ssl_jax.train.metrics_writer import MetricWriter  # noqa: PLC0415
  from tests.test_loop_and_optim import _toy_state  # noqa: PLC0415
  table = jnp.asarray(losses, jnp.float32)
  norms = jnp.asarray(grad_norms or [1.0] * len(losses), jnp.float32)

  def step_fn(state, batch):
    return state.replace(step=state.step + 1), {
        "loss": table[state.step], "grad_norm": norms[state.step]}

  batches = itertools.repeat({"image": np.zeros((2, 1), np.float32)})
  return loop.run(_toy_state(), step_fn, batches, mesh=parallel.make_mesh(1),
                  num_steps=len(losses),
                  writer=MetricWriter(tmp_path, tensorboard=False),
                  log_every=log_every, progress=False, guard=guard)


def test_exploding_finite_loss_stops_with_the_nan_guards_message(tmp_path):
  from ssl_jax.train import loop  # noqa: PLC0415
  losses = [2.0, 1.5, 3e3, 1e18, 1e18, 1.0]
  with pytest.raises(loop.TrainingDiverged, match=(
      r"diverging loss \(above train.divergence.loss_factor=10000 x its early "
      r"value 2\) at step 4: \{'loss': 9.99.*e\+17\}. Last good checkpoint: none. "
      r"Lower the learning rate")):
    _run_toy(tmp_path, losses, loop.DivergenceGuard(loss_factor=1e4))
  _run_toy(tmp_path, losses[:3], loop.DivergenceGuard(loss_factor=1e4))  # 3e3 < 2e4


def test_grad_norm_limit(tmp_path):
  from ssl_jax.train import loop  # noqa: PLC0415
  with pytest.raises(loop.TrainingDiverged, match=r"grad_norm above "
                     r"train.divergence.max_grad_norm=100\) at step 2"):
    _run_toy(tmp_path, [1.0] * 4, loop.DivergenceGuard(max_grad_norm=100.0),
             grad_norms=[1.0, 500.0, 1.0, 1.0])


def test_pretraining_is_guarded_by_default():
  config = tiny_config()
  assert config.train.divergence.loss_factor == 1e4


# --- 11. a full disk names the workdir, the space and the last good step -----


def test_full_disk_names_directory_space_and_last_good_checkpoint(tmp_path,
                                                                  monkeypatch):
  import errno  # noqa: PLC0415
  from ssl_jax.train import checkpoint  # noqa: PLC0415
  from tests.test_scale_preemption import _toy_state  # noqa: PLC0415
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", every_steps=1)
  state = _toy_state()
  ckpt.save(1, state)
  ckpt.wait()

  def full(*args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Error writing to file: No space "
                     "left on device")  # what TensorStore says via Orbax

  monkeypatch.setattr(ckpt._manager, "save", full)
  with pytest.raises(OSError, match=(
      rf"no space left to save step 2 in {tmp_path}/checkpoints: a checkpoint "
      r"needs about [0-9.]+ MiB, [0-9.]+ MiB are free. Last good checkpoint: "
      r"step 1 \(intact")) as e:
    ckpt.save(2, state)
  assert e.value.errno == errno.ENOSPC
  monkeypatch.undo()
  assert ckpt.latest_step() == 1
  ckpt.close()


# --- 6. channels: the option or most files; conversions counted ---------------


def _mixed_csv(tmp_path, kinds):
  """One 6x6 PNG per kind ('rgb' or 'gray'), labels alternating a/b, all in
  train; returns the CSV path and the arrays written."""
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  rng = np.random.default_rng(0)
  lines, arrays = ["path,label,split"], []
  for i, kind in enumerate(kinds):
    shape = (6, 6, 3) if kind == "rgb" else (6, 6)
    arrays.append(rng.integers(0, 256, shape, dtype=np.uint8))
    Image.fromarray(arrays[-1]).save(tmp_path / f"{i}.png")
    lines.append(f"{i}.png,{'ab'[i % 2]},train")
  path = tmp_path / "labels.csv"
  path.write_text("\n".join(lines) + "\n")
  return str(path), arrays


def test_a_colour_first_row_does_not_make_a_gray_set_colour(tmp_path, capsys):
  import numpy as np  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415
  from data_pipelines import folder  # noqa: PLC0415
  path, arrays = _mixed_csv(tmp_path, ["rgb", "gray", "gray", "gray"])
  src = folder.CSVSource(path)
  assert src.info(6).num_channels == 1  # most files are gray
  images, _ = src.load("train", size=6)
  assert images.shape == (4, 6, 6, 1)
  np.testing.assert_array_equal(  # the colour file, converted explicitly
      images[0, ..., 0], np.asarray(Image.fromarray(arrays[0]).convert("L")))
  np.testing.assert_array_equal(images[1, ..., 0], arrays[1])
  report = src.report(6)
  assert report["converted"] == {"RGB -> grayscale (luminance)": 1}
  assert report["converted_rows"] == {"RGB -> grayscale (luminance)": [2]}
  assert report["files_by_channels"] == {"grayscale": 3, "colour": 1}
  assert report["channels_from"] == "most files (a tie: 3)"
  config = tiny_config(**{"data.name": f"csv:{path}", "data.size": 6})
  common.write_data_report(config, str(tmp_path / "run"))
  assert ("data: converted 1 image(s) RGB -> grayscale (luminance) (CSV "
          "row(s) 2; 1 channel(s) from most files (a tie: 3); counted in "
          f"{tmp_path}/run/data_report.json)") in capsys.readouterr().out


def test_channels_option_wins_and_gray_to_rgb_is_counted(tmp_path, capsys):
  import numpy as np  # noqa: PLC0415
  from data_pipelines import folder  # noqa: PLC0415
  path, arrays = _mixed_csv(tmp_path, ["gray", "rgb", "gray"])
  src = folder.CSVSource(path, {"channels": 3})
  images, _ = src.load("train", size=6)
  np.testing.assert_array_equal(images[0], np.repeat(arrays[0][..., None], 3, -1))
  np.testing.assert_array_equal(images[1], arrays[1])
  report = src.report(6)
  assert report["channels"] == 3
  assert report["channels_from"] == "options.channels"
  assert report["converted"] == {"grayscale -> RGB (replicated)": 2}
  assert report["converted_rows"] == {"grayscale -> RGB (replicated)": [2, 4]}
  # Nothing to convert: nothing said.
  (tmp_path / "gray").mkdir()
  same, _ = _mixed_csv(tmp_path / "gray", ["gray", "gray"])
  assert folder.CSVSource(same).report(6)["converted"] == {}
  assert common.report_lines(folder.CSVSource(same).report(6), "r.json") == []


# --- 7. label typos: a class table at load, near-duplicates and rare classes --


def test_label_typos_are_warned_and_classes_tabled(tmp_path, capsys):
  from data_pipelines import folder  # noqa: PLC0415
  labels = ([("Benign", "train")] * 120 + [("malignant", "train")] * 60
            + [("benign?", "train")] + [("Benign", "val"), ("malignant", "val"),
                                        ("Benign", "test"), ("malignant", "test")])
  path = _csv(tmp_path, labels)
  report = folder.CSVSource(path).report(8)
  assert report["classes"] == ["Benign", "benign?", "malignant"]
  assert report["class_rows"] == {"Benign": 122, "benign?": 1, "malignant": 62}
  warnings = "\n".join(report["warnings"])
  assert ("classes 'Benign' (122 rows), 'benign?' (1 rows) differ only in "
          "case or punctuation: a typo?") in warnings
  assert "class 'benign?' has 1 of 185 rows: a typo?" in warnings
  assert "--config.data.options.classes=<a>,<b>" in warnings
  assert len(report["warnings"]) == 2  # 'malignant' is neither
  config = tiny_config(**{"data.name": f"csv:{path}", "data.size": 8})
  common.write_data_report(config, str(tmp_path / "run"))
  out = capsys.readouterr().out.splitlines()
  start = out.index(f"data: 3 classes in csv:{path} (from the label column); "
                    "labels per split:")
  assert out[start + 1].split() == ["data:", "class", "rows", "train", "val",
                                    "test"]
  assert out[start + 2].split() == ["data:", "Benign", "122", "120", "1", "1"]
  assert out[start + 3].split() == ["data:", "benign?", "1", "1", "0", "0"]
  assert out[start + 4].split() == ["data:", "malignant", "62", "60", "1", "1"]
  assert sum(line.startswith("data: warning: ") for line in out) == 2


def test_given_classes_or_balanced_labels_warn_nothing(tmp_path):
  from data_pipelines import folder  # noqa: PLC0415
  labels = [("a", "train"), ("b", "train"), ("a", "val"), ("b", "test")]
  assert folder.CSVSource(_csv(tmp_path, labels)).report(8)["warnings"] == []
  given = folder.CSVSource(_csv(tmp_path, labels),
                           {"classes": ("a", "b", "c")}).report(8)
  assert given["warnings"] == [] and given["classes_from"] == "options.classes"
  assert given["class_rows"] == {"a": 2, "b": 2, "c": 0}
