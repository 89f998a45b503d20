"""Throughput of a config's compiled pretraining step on synthetic data.

  python bench/throughput.py --config=configs/demo.py [--config.x=y ...] \
      [--steps=10] [--warmup=2] [--noheader]

Prints one markdown table row: images/s, step time, compile time, FLOPs per
image from XLA's cost analysis of the compiled step, and achieved FLOP/s.
The batch is uint8 noise of the config's size and channels (and random
labels), built on the host: no TensorFlow, no dataset files, so it runs on
accelerator images that have neither. Everything else is the real job's
code path: shape-first init on the mesh, the same jitted, donated step,
`train.compute_dtype`, `train.grad_accum_steps`, `mesh.*`.

FLOPs: `cost_analysis()` of the lowered (not yet compiled) program: the
whole global step as JAX traced it, before SPMD partitioning and before the
backend swaps convolutions and matmuls for library calls. The compiled
program's analysis would undercount on GPU, where cuDNN/cuBLAS custom calls
carry no FLOP count (a ResNet-50 step read 0.9 instead of ~25 GFLOP/image
there); on CPU the two agree within 1 %. Where the lowered analysis is
missing too (GPU, jax issue #22713), the same step is lowered again in a
CPU-only subprocess (`--flops_only`) to count it: the maths is the same.
A step with oneDNN's convolutions (`model.conv_impl='onednn'`, custom calls
that count no FLOPs) is counted with XLA's. XLA counts a loop body once, so
under gradient accumulation (a scan) the count is scaled by
`grad_accum_steps` (the optimizer update outside the loop is then
over-counted, a negligible part of a step).
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_integer("steps", 10, "Timed steps (after warmup).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_bool("header", True, "Print the table header first.")
flags.DEFINE_bool("flops_only", False, "Print the step's FLOPs and exit "
                  "(used on CPU to count for a backend that cannot).")
flags.mark_flags_as_required(["config"])

HEADER = ("| config | model | objective | px | batch | dtype | accum | devices "
          "| compile s | step ms | img/s | GFLOP/img | TFLOP/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def synthetic_batch(info, local_batch: int, seed: int = 0) -> dict:
  """uint8 noise images [b, H, W, C] (volumes [b, D, H, W, C]) and random
  labels of the data's kind."""
  import numpy as np  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  shape = ((local_batch,) + (info.image_size,) * info.spatial_dims
           + (info.num_channels,))
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  if info.multi_label:
    labels = rng.integers(0, 2, (local_batch, info.num_classes), dtype=np.int32)
  else:
    labels = rng.integers(0, info.num_classes, (local_batch,), dtype=np.int32)
  return {"image": images, "label": labels}


def flops_of(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float((cost or {}).get("flops", float("nan")))


def flops_on_cpu(num_devices: int) -> float:
  """FLOPs of this command's step, lowered in a CPU-only subprocess with as
  many (virtual) devices, for backends whose analysis returns nothing."""
  import subprocess  # noqa: PLC0415
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      f"--xla_force_host_platform_device_count={num_devices}"))
  out = subprocess.run([sys.executable, os.path.abspath(__file__),
                        *sys.argv[1:], "--flops_only"], env=env,
                       capture_output=True, text=True, check=False)
  counts = [l for l in out.stdout.splitlines() if l.startswith("flops_per_step=")]
  if out.returncode or not counts:
    print(f"FLOP count on CPU failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return float("nan")
  return float(counts[-1].split("=")[1])


def step_flops(config, lowered) -> float:
  """FLOPs of a lowered step; one whose convs are oneDNN custom calls
  (zero FLOPs to the cost analysis) is lowered again with XLA's convs."""
  from ssl_jax.models import onednn  # noqa: PLC0415
  if onednn.PREFIX not in lowered.as_text():
    return flops_of(lowered)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.conv_impl = "cpu"
  step_fn, state, batch, _ = build(config, abstract=True)
  return flops_of(step_fn.lower(state, batch))


def build(config, abstract: bool = False):
  """The job's step, initialised state (only its shapes if `abstract`: enough
  to lower the step) and a synthetic batch on the mesh."""
  import jax  # noqa: PLC0415
  import data_pipelines  # noqa: PLC0415  (facts only: no files, no TF)
  from ssl_jax import parallel  # noqa: PLC0415
  from ssl_jax.jobs import common, pretrain  # noqa: PLC0415

  common.check_fit(config)
  mesh = parallel.config_mesh(config)
  parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size",
                           times=config.train.grad_accum_steps)
  info = data_pipelines.info(config.data.name, config.data.size)
  built = pretrain.build_parts(config, info, mesh)
  state = (jax.eval_shape(built.init) if abstract
           else jax.block_until_ready(built.init()))
  batch = parallel.shard_batch(synthetic_batch(
      info, parallel.local_batch_size(config.train.batch_size)), mesh)
  return built.step_fn, state, batch, mesh


def run_steps(compiled, state, batch, steps: int):
  """`steps` steps of the compiled step on one batch: (state, metrics,
  seconds per step, waited for)."""
  import jax  # noqa: PLC0415
  metrics = None
  began = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return state, metrics, (time.perf_counter() - began) / max(steps, 1)


def measure(config, *, steps: int, warmup: int) -> dict:
  """Compiles the config's step and times `steps` steps after `warmup`."""
  import jax  # noqa: PLC0415
  import math  # noqa: PLC0415
  step_fn, state, batch, mesh = build(config)
  accum = config.train.grad_accum_steps

  began = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - began
  flops = step_flops(config, lowered)
  if math.isnan(flops) and jax.default_backend() != "cpu":
    flops = flops_on_cpu(mesh.devices.size)
  flops *= accum

  state, metrics, _ = run_steps(compiled, state, batch, warmup)
  cpu_began = time.process_time()
  state, metrics, step_s = run_steps(compiled, state, batch, steps)
  busy = (time.process_time() - cpu_began) / (step_s * max(steps, 1))
  batch_size = config.train.batch_size
  return {"model": config.model.name, "objective": config.objective.name,
          "px": config.data.size, "batch": batch_size,
          "dtype": config.train.compute_dtype, "accum": accum,
          "devices": mesh.devices.size, "compile_s": compile_s,
          "step_ms": 1e3 * step_s, "images_per_s": batch_size / step_s,
          "gflop_per_image": flops / batch_size / 1e9,
          "tflop_per_s": flops / step_s / 1e12, "cores_busy": busy,
          "loss": float(metrics["loss"])}


def row(name: str, r: dict) -> str:
  return (f"| {name} | {r['model']} | {r['objective']} | {r['px']} | "
          f"{r['batch']} | {r['dtype']} | {r['accum']} | {r['devices']} | "
          f"{r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['images_per_s']:.1f} | "
          f"{r['gflop_per_image']:.3f} | {r['tflop_per_s']:.4f} |")


def main(argv):
  del argv
  from ssl_jax import parallel  # noqa: PLC0415
  parallel.initialize_distributed(FLAGS.config.get("distributed"))
  if FLAGS.flops_only:
    step_fn, state, batch, _ = build(FLAGS.config)
    flops = step_flops(FLAGS.config, step_fn.lower(state, batch))
    print(f"flops_per_step={flops}", flush=True)
    return
  result = measure(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup)
  import jax  # noqa: PLC0415
  if jax.process_index() == 0:
    if FLAGS.header:
      print(HEADER)
    name = os.path.basename(config_flags.get_config_filename(FLAGS["config"]))
    print(row(name, result), flush=True)


if __name__ == "__main__":
  app.run(main)
