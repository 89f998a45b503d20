"""Self-supervised pretraining: any registered objective, one loop.

Outputs in the workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/ (resumed automatically), pretrain_summary.json.
"""
from __future__ import annotations

import os
import time

import jax
import ml_collections
from flax import nnx

from data_pipelines import input_pipeline
from ssl_jax import objectives, parallel
from ssl_jax.jobs import common
from ssl_jax.objectives.online_probe import with_online_probe
from ssl_jax.train import checkpoint, loop, optim, step as step_lib
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter


def build(config: ml_collections.ConfigDict, info, mesh):
  """(graphdef, replicated initial state, jitted step) for the config."""
  objective = objectives.get(config.objective.name)
  if config.get("online_probe", True):
    objective = with_online_probe(objective)
  model = objective.build_model(config, info, nnx.Rngs(config.seed))
  tx, schedule = optim.make_optimizer(config.optim, config.train.batch_size,
                                      config.train.steps)
  graphdef, state = state_lib.create(
      model, tx, objective.init_extra(model, config),
      jax.random.PRNGKey(config.seed + 1))
  step_fn = step_lib.make_from_objective(graphdef, objective, config, tx, schedule)
  return graphdef, parallel.replicate(state, mesh), step_lib.compile_step(step_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  common.validate(config)
  mesh = parallel.make_mesh(config.mesh.num_devices)
  parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size")
  info = common.data_info(config)
  images, labels = common.load_split(config, "train")
  common.save_config(config, workdir)

  _, state, step_fn = build(config, info, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.train.checkpoint_every)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    print(f"resumed from {workdir}/checkpoints step {int(state.step)}")
  start = int(jax.device_get(state.step))

  batches = input_pipeline.make_iterator(
      images, labels, batch_size=parallel.local_batch_size(config.train.batch_size),
      shuffle=True, repeat=True, seed=config.seed, drop_remainder=True,
      skip_batches=start)
  writer = MetricWriter(workdir, resume_step=start)
  began = time.perf_counter()
  state = loop.run(
      state, step_fn, batches, mesh=mesh, num_steps=config.train.steps,
      global_batch_size=config.train.batch_size, writer=writer,
      log_every=config.train.log_every, checkpointer=ckpt,
      desc=f"pretrain {config.objective.name}", progress=config.train.progress)
  ckpt.close()
  writer.close()
  summary = {"objective": config.objective.name, "model": config.model.name,
             "dataset": config.data.name, "steps": config.train.steps,
             "resumed_from_step": start,
             "seconds": time.perf_counter() - began,
             "final": common.last_metrics(workdir)}
  common.write_json_atomic(os.path.join(workdir, "pretrain_summary.json"), summary)
  return summary
