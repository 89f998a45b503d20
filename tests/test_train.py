"""The train step, loop and checkpoints: sharding equality, kill + resume."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import subprocess_xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Compile time is all that counts for a few tiny steps on this CPU.
FAST_COMPILE = subprocess_xla_flags()


EQUALITY_METHODS = ("simclr", "moco_v2", "byol", "dino")


def _run_step_script(num_devices: int, env_base: dict) -> dict:
  env = dict(env_base, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      subprocess_xla_flags(f"--xla_force_host_platform_device_count={num_devices}")))
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "step_equality_script.py"),
                        *EQUALITY_METHODS],
                       env=env, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_device_and_four_devices_agree(medmnist_dir):
  """Global-batch semantics: the same global batch on 1 or 4 devices gives
  the same losses, parameters, BatchNorm statistics and objective state
  (SimCLR negatives, MoCo queue and EMA key encoder, BYOL target, DINO
  teacher and centre)."""
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir))
  one = _run_step_script(1, env)
  four = _run_step_script(4, env)
  assert (one["devices"], four["devices"]) == (1, 4)
  for method in EQUALITY_METHODS:
    a, b = one["methods"][method], four["methods"][method]
    # Step 0 must agree to float precision: a per-device batch (local
    # negatives, local BatchNorm statistics) would already differ by >1e-2.
    # Later steps add the reassociation noise of cross-device gradient sums,
    # which tiny, normalised networks amplify (BYOL: ~1e-4 after 3 steps).
    np.testing.assert_allclose(b["losses"][0], a["losses"][0], rtol=2e-5, err_msg=method)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-3, err_msg=method)
    for key in ("params", "batch_stats", "extra"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, err_msg=f"{method} {key}")
    assert a["losses"][0] != a["losses"][-1], method  # the steps did something


def _complete_steps(ckpt_dir: pathlib.Path) -> list[int]:
  """Finished checkpoints only: Orbax writes `N.orbax-checkpoint-tmp*` first."""
  if not ckpt_dir.exists():
    return []
  return [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]


TOTAL_STEPS = 40
# Stages of one block (1,1,1,1): the real ResNet-18 code path, half the compile.
RUN_CONFIG = f"""
from tests.tiny import tiny_config
def get_config():
  c = tiny_config(**{{"model.stage_sizes": (1, 1, 1, 1)}})
  c.job = "pretrain"
  c.train.steps = {TOTAL_STEPS}
  c.train.checkpoint_every = 5
  c.train.log_every = 1
  return c
"""


def _pretrain_cmd(config_path, workdir):
  return [sys.executable, str(ROOT / "run.py"), f"--config={config_path}",
          f"--workdir={workdir}"]


def _stop_after_new_checkpoint(proc, ckpt_dir, after: int) -> int:
  """Waits for a complete checkpoint > `after`, then freezes the process
  (SIGSTOP, so it cannot finish meanwhile); returns the latest step."""
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if max(_complete_steps(ckpt_dir), default=-1) > after:
      proc.send_signal(signal.SIGSTOP)
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  latest = max(_complete_steps(ckpt_dir))
  assert after < latest < TOTAL_STEPS
  return latest


def _final(workdir) -> dict:
  from ssl_jax.train import checkpoint  # noqa: PLC0415
  keys = ("params", "rest", "opt_state", "extra", "rng")
  return checkpoint.restore_subtree(workdir / "checkpoints", *keys)


def _rows(workdir) -> list[dict]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in rows:
    r.pop("train/images_per_sec", None)  # wall clock, the one thing that differs
  return rows


def test_sigkill_and_sigterm_then_resume_is_bit_identical(tmp_path, medmnist_dir):
  """SIGKILL loses only the steps since the last checkpoint; SIGTERM saves
  the current step and exits 75; the resumed run ends bit-identical (params,
  BN statistics, optimizer state, rng, every logged loss) to one that was
  never interrupted."""
  config_path = tmp_path / "tiny_resnet.py"
  config_path.write_text(RUN_CONFIG)
  cache = tmp_path / "xla_cache"  # later runs reuse the compiled programs
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu",
             XLA_FLAGS=FAST_COMPILE, JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  def run(workdir):
    return subprocess.run(_pretrain_cmd(config_path, workdir), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)

  def start(workdir):
    return subprocess.Popen(_pretrain_cmd(config_path, workdir), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  straight = tmp_path / "straight"
  out = run(straight)
  assert out.returncode == 0, out.stderr[-3000:]

  workdir = tmp_path / "interrupted"
  ckpt_dir = workdir / "checkpoints"
  procs = []
  try:
    # 1. SIGKILL at an arbitrary moment after a checkpoint.
    procs.append(proc := start(workdir))
    killed_at = _stop_after_new_checkpoint(proc, ckpt_dir, after=0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    saved = max(_complete_steps(ckpt_dir))
    assert saved >= killed_at

    # 2. Resume, then SIGTERM mid-run: checkpoint at the current step, exit 75.
    procs.append(proc := start(workdir))
    _stop_after_new_checkpoint(proc, ckpt_dir, after=saved)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    stdout, _ = proc.communicate(timeout=300)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert f"resumed from {workdir}/checkpoints step {saved}" in stdout
  assert proc.returncode == 75, stdout[-3000:]
  preempted = max(_complete_steps(ckpt_dir))
  assert f"preempted (SIGTERM) at step {preempted}" in stdout
  assert saved < preempted < TOTAL_STEPS

  # 3. Resume to the end.
  out = run(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"step {preempted}" in out.stdout
  summary = json.loads((workdir / "pretrain_summary.json").read_text())
  assert summary["resumed_from_step"] == preempted

  assert _rows(workdir) == _rows(straight)
  assert [r["step"] for r in _rows(workdir)] == list(range(1, TOTAL_STEPS + 1))
  want, got = _final(straight), _final(workdir)
  assert got["step"] == want["step"] == TOTAL_STEPS
  for a, b in zip(jax_leaves(want), jax_leaves(got), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
  import jax  # noqa: PLC0415
  return jax.tree.leaves({k: v for k, v in tree.items() if k != "step"})
