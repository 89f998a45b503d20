"""The one training loop shared by pretraining, fine-tuning and baselines.

It feeds host batches to the compiled step, logs, checkpoints, evaluates and
guards against divergence; it knows nothing about methods. Metrics are pulled
to the host only every `log_every` steps (and before a checkpoint), so the
accelerator is not stalled every step; a checkpoint is only ever written
after its state's loss was checked to be finite.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ssl_jax import parallel
from ssl_jax.train.checkpoint import Checkpointer
from ssl_jax.train.metrics_writer import MetricWriter
from ssl_jax.train.state import TrainState
from ssl_jax.train.step import StepFn

EvalFn = Callable[[int, TrainState], dict[str, float]]


class TrainingDiverged(RuntimeError):
  """Raised when the loss (or another logged metric) stops being finite."""


def _check_finite(metrics: dict[str, float], step: int,
                  checkpointer: Checkpointer | None) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    last = checkpointer.latest_step() if checkpointer else None
    raise TrainingDiverged(
        f"non-finite metrics at step {step}: {bad}. Last good checkpoint: "
        f"{'step ' + str(last) if last is not None else 'none'}. "
        "Lower the learning rate, add optim.grad_clip_norm, or check the data.")


def run(
    state: TrainState,
    step_fn: StepFn,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    mesh: Mesh,
    num_steps: int,
    global_batch_size: int,
    writer: MetricWriter,
    log_every: int,
    checkpointer: Checkpointer | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    desc: str = "train",
    progress: bool = True,
) -> TrainState:
  """Runs `step_fn` from `state.step` up to `num_steps`; returns the state."""
  start = int(jax.device_get(state.step))
  bar = tqdm(total=num_steps, initial=start, desc=desc, dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0, leave=False)
  timer_step, timer = start, time.perf_counter()
  for step in range(start, num_steps):
    state, metrics = step_fn(state, parallel.shard_batch(next(batches), mesh))
    done = step + 1
    if step == start:  # the first step compiles: time throughput after it
      jax.block_until_ready(metrics)
      timer_step, timer = done, time.perf_counter()
    save = checkpointer is not None and checkpointer.should_save(done)
    evaluate = eval_fn is not None and eval_every > 0 and (
        done % eval_every == 0 or done == num_steps)
    if save or evaluate or done % log_every == 0 or done == num_steps:
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(host, done, checkpointer)
      now = time.perf_counter()
      if done > timer_step:
        host["images_per_sec"] = (done - timer_step) * global_batch_size / (now - timer)
      timer_step, timer = done, now
      writer.write(done, host, prefix="train/")
      bar.set_postfix(loss=f"{host['loss']:.4f}",
                      img_s=f"{host.get('images_per_sec', 0):.0f}")
    if save:
      checkpointer.save(done, state)
    if evaluate:
      writer.write(done, eval_fn(done, state), prefix="val/")
      timer = time.perf_counter()  # evaluation time is not training throughput
    bar.update(1)
  bar.close()
  if checkpointer is not None:
    checkpointer.save(num_steps, state)
    checkpointer.wait()
  return state
