"""The one training loop shared by pretraining, fine-tuning and baselines.

It feeds device batches to the compiled step, logs, checkpoints, evaluates
and guards against divergence and preemption; it knows nothing about methods.

- Host work overlaps device work: batches are prefetched to the devices
  (`prefetch` of them in flight), metrics come to the host only every
  `log_every` steps (and before a checkpoint).
- Divergence: the step's `loss` and `grad_norm` (the global norm of the
  gradients, so NaN/inf anywhere in the grads shows up in it) are checked
  every `check_every` steps, one step late: step t's two scalars are read
  after step t+1 has been dispatched, so the check never idles the device.
  A checkpoint is only ever written after its own step's metrics were
  checked, so the last checkpoint is always a good one.
- Preemption: on SIGTERM (see `preemption.py`) the loop checkpoints the
  step it is at and raises `Preempted`.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ssl_jax import parallel
from ssl_jax.train import preemption
from ssl_jax.train.checkpoint import Checkpointer
from ssl_jax.train.metrics_writer import MetricWriter
from ssl_jax.train.preemption import Preempted  # noqa: F401  (re-exported)
from ssl_jax.train.state import TrainState
from ssl_jax.train.step import StepFn

EvalFn = Callable[[int, TrainState], dict[str, float]]
# Checked every `check_every` steps; everything is checked at log steps.
GUARDED = ("loss", "grad_norm")


class TrainingDiverged(RuntimeError):
  """Raised when the loss (or another logged metric) stops being finite."""


def _diverged(what: str, step: int, bad: dict,
              checkpointer: Checkpointer | None) -> TrainingDiverged:
  last = checkpointer.latest_step() if checkpointer else None
  where = (f"step {last} in {checkpointer.directory}" if last is not None
           else "none")
  return TrainingDiverged(
      f"{what} at step {step}: {bad}. Last good checkpoint: "
      f"{where}. Lower the learning rate, add optim.grad_clip_norm, or "
      "check the data.")


def _check_finite(metrics: dict[str, float], step: int,
                  checkpointer: Checkpointer | None) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise _diverged("non-finite metrics", step, bad, checkpointer)


class DivergenceGuard:
  """Finite but exploding: `loss` above `loss_factor` x max(|first checked
  loss|, 1), or `grad_norm` above `max_grad_norm` (0 = that check off)."""

  def __init__(self, loss_factor: float = 0.0, max_grad_norm: float = 0.0):
    self.loss_factor, self.max_grad_norm = loss_factor, max_grad_norm
    self.early: float | None = None

  def __call__(self, metrics: dict[str, float], step: int,
               checkpointer: Checkpointer | None) -> None:
    _check_finite(metrics, step, checkpointer)
    loss, grad_norm = metrics.get("loss"), metrics.get("grad_norm")
    if loss is not None and self.early is None:
      self.early = loss
    if loss is not None and self.loss_factor > 0 and (
        abs(loss) > self.loss_factor * max(abs(self.early), 1.0)):
      raise _diverged(
          f"diverging loss (above train.divergence.loss_factor="
          f"{self.loss_factor:g} x its early value {self.early:.4g})",
          step, {"loss": loss}, checkpointer)
    if grad_norm is not None and 0 < self.max_grad_norm < grad_norm:
      raise _diverged(
          f"diverging gradients (grad_norm above "
          f"train.divergence.max_grad_norm={self.max_grad_norm:g})",
          step, {"grad_norm": grad_norm}, checkpointer)


def _to_host(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def bar_postfix(host: dict[str, float]) -> dict[str, str]:
  """The bar's numbers. With an online probe `loss` is the pretext loss
  plus the probe's, so they are shown apart."""
  if "ssl_loss" in host and "probe_loss" in host:
    shown = {"ssl_loss": f"{host['ssl_loss']:.4f}",
             "probe_loss": f"{host['probe_loss']:.4f}"}
  else:
    shown = {"loss": f"{host['loss']:.4f}"}
  return dict(shown, img_s=f"{host.get('images_per_sec', 0):.0f}")


def batch_rows(batch: dict[str, jax.Array]) -> int:
  """Examples in a (global) batch: the leading dim its arrays share."""
  return int(jax.tree.leaves(batch)[0].shape[0])


def run(
    state: TrainState,
    step_fn: StepFn,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    mesh: Mesh,
    num_steps: int,
    writer: MetricWriter,
    log_every: int,
    checkpointer: Checkpointer | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int = 0,
    desc: str = "train",
    progress: bool = True,
    prefetch: int = 2,
    check_every: int = 1,
    guard: DivergenceGuard | None = None,
    nested: bool = False,
) -> TrainState:
  """Runs `step_fn` from `state.step` up to `num_steps`; returns the state.

  Raises `TrainingDiverged` on non-finite metrics (or, with a `guard`, an
  exploding loss or grad norm) and `Preempted` (after saving) on SIGTERM
  when there is a checkpointer. `nested`: the bar sits under another (the
  fine-tuning cells); it is off when stderr is not a terminal, where tqdm's
  cursor-up codes (ESC[A) would litter the log.
  """
  check = guard or DivergenceGuard()
  start = int(jax.device_get(state.step))
  bar = tqdm(total=num_steps, initial=start, desc=desc, dynamic_ncols=True,
             disable=(not progress or jax.process_index() != 0
                      or (nested and not sys.stderr.isatty())), leave=False)
  stream = parallel.prefetch_to_device(batches, prefetch, mesh)
  pending = None  # (step, its guarded metrics), checked after the next dispatch
  # Images since `timer`, counted per batch: stage 2's epochs end on a
  # short batch (finetune.last_batch='keep'), so steps x batch would not do.
  timer, images = time.perf_counter(), 0
  with preemption.Watcher(enabled=checkpointer is not None) as watcher:
    for step in range(start, num_steps):
      batch = next(stream)
      state, metrics = step_fn(state, batch)
      images += batch_rows(batch)
      done = step + 1
      if pending is not None:
        check(_to_host(pending[1]), pending[0], checkpointer)
        pending = None
      if step == start:  # the first step compiles: time throughput after it
        jax.block_until_ready(metrics)
        timer, images = time.perf_counter(), 0
      preempted = watcher.should_stop(done)
      save = checkpointer is not None and (
          checkpointer.should_save(done) or preempted)
      evaluate = eval_fn is not None and eval_every > 0 and (
          done % eval_every == 0 or done == num_steps)
      if save or evaluate or done % log_every == 0 or done == num_steps:
        host = _to_host(metrics)
        check(host, done, checkpointer)
        now = time.perf_counter()
        if images:
          host["images_per_sec"] = images / (now - timer)
        timer, images = now, 0
        writer.write(done, host, prefix="train/")
        bar.set_postfix(bar_postfix(host))
      elif check_every > 0 and done % check_every == 0:
        pending = (done, {k: metrics[k] for k in GUARDED if k in metrics})
      if save:
        checkpointer.save(done, state)
      if preempted:
        checkpointer.wait()
        bar.close()
        raise Preempted(done, checkpointer.directory)
      if evaluate:
        writer.write(done, eval_fn(done, state), prefix="val/")
        timer = time.perf_counter()  # evaluation time is not training throughput
      bar.update(1)
    bar.close()
    if checkpointer is not None:  # a SIGTERM now lets this save finish
      checkpointer.save(num_steps, state)
      checkpointer.wait()
  return state
