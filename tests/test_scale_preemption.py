"""Preemption and divergence guards of the loop, on a toy state (fast).

The end-to-end version (run.py killed with SIGKILL, stopped with SIGTERM,
resumed bit-identically) is in tests/test_train.py.
"""
import itertools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
import pytest

from ssl_jax import parallel
from ssl_jax.train import checkpoint, loop, preemption, state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter


def _toy_state():
  """A real (tiny) NNX split, as checkpoints store params by module path."""
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  return state_lib.create(model, optax.sgd(0.1), {}, jax.random.PRNGKey(0))[1]


def _kernel(state) -> np.ndarray:
  return np.asarray(nnx.to_pure_dict(state.params)["kernel"])


def _batches():
  return itertools.repeat({"image": np.zeros((2, 1), np.float32)})


def _run(tmp_path, step_fn, *, every=2, log_every=1, num_steps=10):
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", every_steps=every)
  try:
    return loop.run(_toy_state(), step_fn, _batches(), mesh=parallel.make_mesh(1),
                    num_steps=num_steps,
                    writer=MetricWriter(tmp_path, tensorboard=False),
                    log_every=log_every, checkpointer=ckpt, progress=False), ckpt
  finally:
    ckpt.close()


def test_sigterm_saves_the_current_step_and_raises_preempted(tmp_path):
  def step_fn(state, batch):
    if int(state.step) == 4:  # SIGTERM arrives while step 5 runs
      os.kill(os.getpid(), signal.SIGTERM)
    new = state.replace(step=state.step + 1,
                        params=jax.tree.map(lambda p: p + 1.0, state.params))
    return new, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(0.5)}

  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Preempted, match="at step 5") as info:
    _run(tmp_path, step_fn, every=4)
  assert info.value.step == 5
  assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
  steps = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir()
                 if p.name.isdigit())
  assert steps == [4, 5]  # the periodic save and the preemption save
  restored = checkpoint.Checkpointer(tmp_path / "ckpt", every_steps=4)
  state = restored.restore(_toy_state())
  restored.close()
  assert int(state.step) == 5
  np.testing.assert_array_equal(_kernel(state), _kernel(_toy_state()) + 5.0)
  assert preemption.EXIT_PREEMPTED == 75


def test_nan_grads_stop_the_run_at_their_step_between_log_steps(tmp_path):
  """grad_norm is checked every step (one step late), not only at logs."""
  def step_fn(state, batch):
    grad_norm = jnp.where(state.step == 6, jnp.nan, 0.5)  # step 7's grads
    return (state.replace(step=state.step + 1),
            {"loss": jnp.float32(1.0), "grad_norm": grad_norm})

  with pytest.raises(loop.TrainingDiverged) as info:
    _run(tmp_path, step_fn, every=4, log_every=100)
  message = str(info.value)
  assert "step 7: {'grad_norm': nan}" in message
  assert "Last good checkpoint: step 4 in" in message


def test_a_leftover_orbax_tmp_directory_is_ignored_on_restore(tmp_path):
  """SIGKILL during a save leaves `N.orbax-checkpoint-tmp-*`: never loaded."""
  ckpt = checkpoint.Checkpointer(tmp_path, every_steps=2)
  state = _toy_state().replace(step=jnp.asarray(2, jnp.int32))
  ckpt.save(2, state)
  ckpt.close()
  # A half-written later step, as a killed save leaves it (a copy of a real
  # step with a part missing, under Orbax's temporary name).
  tmp = tmp_path / "4.orbax-checkpoint-tmp-1234567890"
  shutil.copytree(tmp_path / "2", tmp)
  for path in sorted(tmp.rglob("*"), reverse=True):
    if path.is_file() and "metadata" in path.name:
      path.unlink()
  fresh = checkpoint.Checkpointer(tmp_path, every_steps=2)
  assert fresh.latest_step() == 2
  restored = fresh.restore(_toy_state())
  assert int(restored.step) == 2
  fresh.save(4, restored.replace(step=jnp.asarray(4, jnp.int32)))  # no clash
  fresh.close()
  assert checkpoint.Checkpointer(tmp_path, every_steps=2).latest_step() == 4
