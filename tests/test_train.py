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

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_step_script(num_devices: int, env_base: dict) -> dict:
  env = dict(env_base, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "step_equality_script.py")],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_device_and_four_devices_agree(medmnist_dir):
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir))
  one = _run_step_script(1, env)
  four = _run_step_script(4, env)
  assert (one["devices"], four["devices"]) == (1, 4)
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=2e-5)
  np.testing.assert_allclose(four["param_sum"], one["param_sum"], rtol=1e-5)
  assert one["losses"][0] != one["losses"][-1]  # the steps did something


def _complete_steps(ckpt_dir: pathlib.Path) -> list[int]:
  """Finished checkpoints only: Orbax writes `N.orbax-checkpoint-tmp*` first."""
  if not ckpt_dir.exists():
    return []
  return [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]


def _pretrain_cmd(workdir, steps):
  return [sys.executable, str(ROOT / "run.py"), "--config=configs/demo.py",
          f"--workdir={workdir}", "--config.job=pretrain",
          "--config.model.width_multiplier=0.0625",
          "--config.objective.proj_hidden_dim=32", "--config.objective.proj_dim=16",
          "--config.train.batch_size=16", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every=2", "--config.train.log_every=1",
          "--config.train.progress=False", "--config.optim.warmup_steps=1"]


def test_killed_pretraining_resumes_from_its_last_checkpoint(tmp_path, medmnist_dir):
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu")
  workdir = tmp_path / "pre"
  proc = subprocess.Popen(_pretrain_cmd(workdir, 400), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = _complete_steps(ckpt_dir)
    if steps and max(steps) >= 4:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = max(_complete_steps(ckpt_dir))
  assert 4 <= saved < 400

  # Rerun with a shorter total: it must pick up at the saved step.
  total = saved + 3
  out = subprocess.run(_pretrain_cmd(workdir, total), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"step {saved}" in out.stdout
  summary = json.loads((workdir / "pretrain_summary.json").read_text())
  assert summary["resumed_from_step"] == saved
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  resumed_steps = [r["step"] for r in rows if r["step"] > saved]
  assert resumed_steps == list(range(saved + 1, total + 1))
  assert (ckpt_dir / str(total)).exists()
