"""Preemption: SIGTERM means "save now and leave", not "die".

Cluster schedulers (Kubernetes, SLURM, spot/preemptible VMs) send SIGTERM
and wait a grace period before SIGKILL. The loop asks `should_stop(step)`
after every step; when it says yes, the loop checkpoints that step and
raises `Preempted`, and run.py exits with `EXIT_PREEMPTED`. Rerunning the
same command resumes bit-identically from that checkpoint.

- One process: a Python SIGTERM handler sets a flag (installed only while
  the loop runs, in the main thread; the previous handler is restored).
- Many processes: hosts must agree on the step they save at, or the
  collective Orbax save deadlocks. JAX's preemption sync service (started
  by `jax.distributed.initialize`) catches SIGTERM on any host and picks
  the next step all hosts reach; `reached_preemption_sync_point` must be
  called by every host at every step, which the loop does.
"""
from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry".
# Not 0 (a pipeline must not treat the job as finished), not 143 (that is
# "killed by SIGTERM without saving").
EXIT_PREEMPTED = getattr(os, "EX_TEMPFAIL", 75)


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint at `step`."""

  def __init__(self, step: int, directory: str | None):
    self.step = step
    self.directory = directory
    where = (f"checkpoint saved at step {step} in {directory}" if directory
             else f"no checkpointer: progress after the last save is lost")
    super().__init__(f"preempted (SIGTERM) at step {step}; {where}. Rerun the "
                     "same command to resume from it.")


class Watcher:
  """Context manager: `should_stop(step)` once SIGTERM has arrived."""

  def __init__(self, enabled: bool = True):
    self._enabled = enabled
    self._requested = False
    self._previous = None
    self._multi = jax.process_count() > 1

  def _handler(self, signum, frame) -> None:
    del signum, frame
    self._requested = True

  def __enter__(self) -> "Watcher":
    if (self._enabled and not self._multi
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self, step: int) -> bool:
    if not self._enabled:
      return False
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested
