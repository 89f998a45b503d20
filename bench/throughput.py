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

FLOPs: `cost_analysis()` of the SPMD-partitioned program counts one
device's work, so the total is that times the device count. XLA counts a
loop body once, so under gradient accumulation (a scan) the count is scaled
by `grad_accum_steps` (the optimizer update outside the loop is then
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
flags.mark_flags_as_required(["config"])

HEADER = ("| config | model | objective | px | batch | dtype | accum | devices "
          "| compile s | step ms | img/s | GFLOP/img | TFLOP/s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def synthetic_batch(info, local_batch: int, seed: int = 0) -> dict:
  """uint8 noise images [b, H, W, C] and random labels of the data's kind."""
  import numpy as np  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  shape = (local_batch, info.image_size, info.image_size, info.num_channels)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  if info.multi_label:
    labels = rng.integers(0, 2, (local_batch, info.num_classes), dtype=np.int32)
  else:
    labels = rng.integers(0, info.num_classes, (local_batch,), dtype=np.int32)
  return {"image": images, "label": labels}


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return float((cost or {}).get("flops", float("nan")))


def measure(config, *, steps: int, warmup: int) -> dict:
  """Compiles the config's step and times `steps` steps after `warmup`."""
  import jax  # noqa: PLC0415
  import data_pipelines  # noqa: PLC0415  (facts only: no files, no TF)
  from ssl_jax import parallel  # noqa: PLC0415
  from ssl_jax.jobs import common, pretrain  # noqa: PLC0415

  common.check_fit(config)
  mesh = parallel.config_mesh(config)
  accum = config.train.grad_accum_steps
  parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size",
                           times=accum)
  info = data_pipelines.info(config.data.name, config.data.size)
  built = pretrain.build_parts(config, info, mesh)
  state = jax.block_until_ready(built.init())
  batch = parallel.shard_batch(synthetic_batch(
      info, parallel.local_batch_size(config.train.batch_size)), mesh)

  began = time.perf_counter()
  compiled = built.step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - began
  flops = flops_of(compiled) * mesh.devices.size * accum

  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  began = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - began) / steps
  batch_size = config.train.batch_size
  return {"model": config.model.name, "objective": config.objective.name,
          "px": config.data.size, "batch": batch_size,
          "dtype": config.train.compute_dtype, "accum": accum,
          "devices": mesh.devices.size, "compile_s": compile_s,
          "step_ms": 1e3 * step_s, "images_per_s": batch_size / step_s,
          "gflop_per_image": flops / batch_size / 1e9,
          "tflop_per_s": flops / step_s / 1e12,
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
  result = measure(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup)
  import jax  # noqa: PLC0415
  if jax.process_index() == 0:
    if FLAGS.header:
      print(HEADER)
    name = os.path.basename(config_flags.get_config_filename(FLAGS["config"]))
    print(row(name, result), flush=True)


if __name__ == "__main__":
  app.run(main)
