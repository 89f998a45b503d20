"""Throughput features: gradient accumulation, bf16 compute, prefetch."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import subprocess_xla_flags
from flax import nnx

from ssl_jax import parallel
from ssl_jax.train import state as state_lib, step as step_lib
from tests.tiny import compiled_on_fixed_batch


class Counted(nnx.Module):
  """A linear model that counts its forward passes in its (non-param) state,
  like BatchNorm's running statistics: shows `rest` threading."""

  def __init__(self):
    self.linear = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    self.calls.value += 1
    return self.linear(x)[:, 0]


def _toy_loss(model, batch, rng, extra):
  """MSE (a per-example mean: micro-batch means average to the batch mean);
  `extra` records the order of the micro-batches it saw."""
  del rng
  loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
  extra = {"order": extra["order"] * 100 + batch["id"][0]}
  return loss, {"mse": loss}, extra


def _toy_step(k: int):
  model = Counted()
  tx = optax.sgd(0.1)
  graphdef, state = state_lib.create(model, tx, {"order": jnp.zeros((), jnp.int32)},
                                     jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_train_step(graphdef, _toy_loss, tx,
                                          grad_accum_steps=k))
  return state, step


def test_grad_accumulation_averages_micro_batch_grads_in_order():
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
           "id": jnp.arange(1, 9, dtype=jnp.int32)}
  one, step1 = _toy_step(1)
  four, step4 = _toy_step(4)
  one, m1 = step1(one, batch)
  four, m4 = step4(four, batch)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-6)
  # Micro-batch i holds rows i, i+4: first ids 1, 2, 3, 4, seen in order.
  assert int(four.extra["order"]) == 1020304
  assert int(four.rest["calls"].value) == 4 and int(one.rest["calls"].value) == 1


def test_micro_batches_are_strided_so_each_device_splits_its_own_rows():
  x = jnp.arange(16)
  micro = step_lib.split_micro_batches({"x": x}, 2)["x"]
  np.testing.assert_array_equal(micro, [np.arange(0, 16, 2), np.arange(1, 16, 2)])
  with pytest.raises(ValueError, match="grad_accum_steps=3"):
    step_lib.split_micro_batches({"x": x}, 3)


def test_prefetch_keeps_the_order_and_reads_ahead_only_its_size():
  read = []

  def source():
    for i in itertools.count():
      read.append(i)
      yield {"image": np.full((2, 1), i, np.float32)}

  stream = parallel.prefetch_to_device(source(), 2, parallel.make_mesh(1))
  got = [int(next(stream)["image"][0, 0]) for _ in range(5)]
  assert got == [0, 1, 2, 3, 4]
  # 5 consumed + 1 on its way; the next request first reads one more, then
  # returns a batch whose transfer began while the previous step ran.
  assert len(read) == 6
  assert isinstance(next(stream)["image"], jax.Array)
  finite = list(parallel.prefetch_to_device(
      ({"image": np.zeros((1, 1))} for _ in range(3)), 2, parallel.make_mesh(1)))
  assert len(finite) == 3


def _vit_config(**overrides):
  from tests.tiny import tiny_config  # noqa: PLC0415
  c = tiny_config(**overrides)
  c.model = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                 num_heads=2, mlp_dim=64)
  c.augment.policy = "none"
  return c


def _losses(config, num_steps: int):
  """The real pretraining init and step (compiled for speed) on a fixed batch."""
  _, state, step_fn, batch = compiled_on_fixed_batch(config)
  losses = []
  for _ in range(num_steps):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
    assert all(v.dtype == jnp.float32 for v in metrics.values()), metrics
  return losses, state


def test_bf16_compute_keeps_params_and_losses_float32(medmnist_dir, monkeypatch):
  """bf16 backbone on SimCLR (BatchNorm projector) with the online probe:
  params, optimizer state and every metric stay float32; the first loss is
  close to float32's."""
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  from ssl_jax.jobs import pretrain  # noqa: PLC0415
  config = _vit_config(**{"train.compute_dtype": "bfloat16"})
  assert pretrain.model_config(config).model.dtype == jnp.bfloat16
  assert "dtype" not in pretrain.model_config(_vit_config()).model
  losses16, state16 = _losses(config, 2)
  losses32, _ = _losses(_vit_config(), 2)
  assert all(np.isfinite(losses16))
  np.testing.assert_allclose(losses16[0], losses32[0], rtol=3e-2)
  assert losses16[0] != losses32[0]  # bf16 really ran
  dtypes = {x.dtype for x in jax.tree.leaves((state16.params, state16.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.float32)}


def test_grad_accumulation_runs_a_real_objective(medmnist_dir, monkeypatch):
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  losses, state = _losses(
      _vit_config(**{"train.grad_accum_steps": 2, "train.compute_dtype": "bfloat16"}), 3)
  assert all(np.isfinite(losses)) and losses[0] != losses[-1]
  assert int(state.step) == 3


TINY_MAE = """
from configs import mae
def get_config():
  c = mae.get_config()
  c.model = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                 num_heads=2, mlp_dim=64)
  c.objective.decoder_dim, c.objective.decoder_depth = 32, 1
  c.objective.decoder_heads = 2
  return c
"""


# Any `import` of TensorFlow or the file readers (Pillow, pydicom, nibabel)
# fails, as on an accelerator image that holds JAX alone (sys.modules is
# left alone: einops probes it for frameworks already imported).
JAX_ONLY_IMAGE = """
import importlib.abc, runpy, sys
class JaxOnlyImage(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ("tensorflow", "PIL", "pydicom", "nibabel"):
      raise ImportError(f"no {name} on this image")
sys.meta_path.insert(0, JaxOnlyImage())
"""


def test_bench_prints_a_row_without_tensorflow(tmp_path):
  """bench/throughput.py on a tiny MAE ViT, with `import tensorflow` (and
  Pillow, pydicom, nibabel) made to fail: the accelerator image has no TF."""
  import os  # noqa: PLC0415
  import pathlib  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  root = pathlib.Path(__file__).resolve().parents[1]
  config = tmp_path / "tiny_mae.py"
  config.write_text(TINY_MAE)
  code = JAX_ONLY_IMAGE + (
      "sys.path.insert(0, '.'); sys.argv = ['throughput.py'] + sys.argv[1:]\n"
      "runpy.run_path('bench/throughput.py', run_name='__main__')\n")
  flags = [f"--config={config}", "--steps=2", "--warmup=1",
           "--config.train.batch_size=16"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=subprocess_xla_flags())
  out = subprocess.run([sys.executable, "-c", code, *flags], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  row = [l for l in out.stdout.splitlines() if l.startswith("| tiny_mae.py")]
  assert len(row) == 1, out.stdout
  cells = [c.strip() for c in row[0].strip("|").split("|")]
  assert cells[1:6] == ["vit_tiny", "mae", "28", "16", "float32"]
  img_s, gflop = float(cells[10]), float(cells[11])
  assert img_s > 0 and gflop > 0
  # The CPU-only count that stands in where a backend's analysis is missing
  # (GPU) is the same program's count.
  count = subprocess.run([sys.executable, "-c", code, *flags, "--flops_only"],
                         cwd=root, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
  assert count.returncode == 0, count.stderr[-3000:]
  per_step = [l for l in count.stdout.splitlines() if l.startswith("flops_per_step=")]
  assert len(per_step) == 1, count.stdout
  assert abs(float(per_step[0].split("=")[1]) / 16 / 1e9 - gflop) < 1e-3


def test_bench_synthetic_batch_follows_the_data_rank():
  """A 3D set's synthetic batch is volumes [b, D, H, W, C], so the bench
  builds the step a 3D config trains (it fed 2D images before)."""
  import pathlib  # noqa: PLC0415
  import sys  # noqa: PLC0415
  import data_pipelines  # noqa: PLC0415
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
  import throughput  # noqa: PLC0415
  volumes = throughput.synthetic_batch(data_pipelines.info("adrenalmnist3d"), 2)
  images = throughput.synthetic_batch(data_pipelines.info("breastmnist"), 2)
  assert volumes["image"].shape == (2, 28, 28, 28, 1)
  assert images["image"].shape == (2, 28, 28, 1)
