"""Sharding beyond one device: `model`-axis rules, and multi-host.

One module fixture runs all three processes concurrently; the first two
tests read its results. Stage 2 under the same rules runs in its own
process, and frozen features across two processes in two more.

Each case runs tests/scale_worker.py in subprocesses, because the device
count (XLA_FLAGS) and jax.distributed are fixed when JAX starts.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import subprocess_xla_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "scale_worker.py")
TIMEOUT_S = 420


def _env(medmnist_dir, devices: int, **extra) -> dict:
  return dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir), JAX_PLATFORMS="cpu",
              XLA_FLAGS=subprocess_xla_flags(
                  f"--xla_force_host_platform_device_count={devices}"),
              **extra)


def _start(args, env):
  return subprocess.Popen([sys.executable, WORKER, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(procs) -> list[dict]:
  """Each process's JSON line; kills every process if any fails or hangs."""
  try:
    outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(medmnist_dir, tmp_path_factory):
  """One process x 4 devices with mesh (data=2, model=2) and `model`-axis
  rules, and concurrently 2 processes x 2 CPU devices (jax.distributed over
  gloo on 127.0.0.1, mesh data=4, replicated state) on the same global batch."""
  workdir = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  procs = [_start(["steps"], _env(medmnist_dir, 4, SCALE_RULES="1"))]
  for pid in range(2):
    procs.append(_start(["steps", str(workdir)], _env(
        medmnist_dir, 2, SCALE_COORDINATOR=f"127.0.0.1:{port}",
        SCALE_NUM_PROCESSES="2", SCALE_PROCESS_ID=str(pid))))
  single, *multi = _results(procs)
  return single, multi, workdir


def test_rules_shard_vit_params_along_the_model_axis(runs):
  """The MLP kernels (and their SGD momentum traces) are born split along
  `model` and stay split after steps; unmatched leaves are replicated."""
  sharded, multi, _ = runs
  assert sharded["mesh"] == {"data": 2, "model": 2}
  assert sharded["specs"] == {
      f"{prefix}encoder/blocks/0/{name}/kernel": spec
      for prefix in ("params/", "opt_state/1/0/trace/")
      for name, spec in (("fc1", "P(None, 'model')"), ("fc2", "P('model', None)"))}
  assert sharded["born_spec"] == sharded["after_spec"] == "P(None, 'model')"
  assert sharded["born_shard_shape"] == [32, 32]  # of [32, 64]
  replicated = multi[0]
  assert replicated["specs"] == {} and replicated["born_shard_shape"] == [32, 64]


def test_two_processes_match_one_process_on_the_same_global_batch(runs):
  """Same losses and params (global-batch BN and negatives across hosts);
  the Orbax checkpoint written by both processes restores exactly; process
  0 alone writes the metrics log."""
  single, multi, workdir = runs
  assert (single["devices"], single["processes"]) == (4, 1)
  for out in multi:
    assert (out["devices"], out["processes"], out["mesh"]) == (4, 2, {"data": 4, "model": 1})
    np.testing.assert_allclose(out["losses"], single["losses"], rtol=2e-5)
    np.testing.assert_allclose(out["param_sum"], single["param_sum"], rtol=1e-5)
    assert out["restored_equal"] and out["restored_step"] == 3
  assert single["losses"][0] != single["losses"][-1]
  assert (workdir / "checkpoints" / "3").is_dir()
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  assert len(rows) == 1


def test_stage2_state_is_born_sharded_by_the_same_rules(medmnist_dir, tmp_path):
  """Fine-tuning builds its state as pretraining does: with model_axis_size=2
  and the MLP rules the classifier's fc1 kernel is born split along `model`,
  the encoder weights land in it, and predictions (fine-tuned, and of the
  linear probe on frozen features) match a replicated (data=4) mesh on the
  same global batches."""
  out, = _results([_start(["stage2", str(tmp_path)], _env(medmnist_dir, 4))])
  sharded, replicated = out["sharded"], out["replicated"]
  assert sharded["mesh"] == {"data": 2, "model": 2}
  assert sharded["fc1_spec"] == "P(None, 'model')"
  assert sharded["fc1_shard_shape"] == [32, 32]  # of [32, 64]
  assert replicated["mesh"] == {"data": 4, "model": 1}
  assert replicated["fc1_spec"] == "P()"
  assert sharded["loaded"] and replicated["loaded"]
  for key in ("test_probs", "linear_test_probs"):
    np.testing.assert_allclose(sharded[key], replicated[key], atol=1e-5)


def test_frozen_features_come_back_whole_on_every_process(medmnist_dir):
  """Two processes x 2 CPU devices: inference.batched_apply (stage 2's and
  the pretraining monitor's features) has each feed its devices' rows of a
  split both hold, and both get every row back; a kNN on them agrees."""
  port = _free_port()
  outs = _results([_start(["features"], _env(
      medmnist_dir, 2, SCALE_COORDINATOR=f"127.0.0.1:{port}",
      SCALE_NUM_PROCESSES="2", SCALE_PROCESS_ID=str(pid))) for pid in range(2)])
  want = np.arange(40).reshape(10, 4).sum(1)
  for out in outs:
    assert (out["processes"], out["devices"]) == (2, 4)
    np.testing.assert_array_equal(out["sum"], want)
  assert outs[0]["knn"] == outs[1]["knn"]
