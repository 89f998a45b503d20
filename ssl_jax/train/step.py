"""The one train step: a pure function (state, batch) -> (state, metrics).

Built once per job from an objective's loss function and compiled once with
`jax.jit` (state donated). The model is merged from the state inside the
traced function (`nnx.merge(..., copy=True)`), so BatchNorm statistics come
back as new arrays and nothing mutates across traces.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
import optax

from ssl_jax.objectives.base import LossFn
from ssl_jax.train.state import TrainState

StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]


def _norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    update_extra: Callable[[Any, nnx.State, jax.Array], Any] | None = None,
) -> StepFn:
  """Returns the un-jitted pure step; callers jit it (see `compile_step`)."""

  def step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      model = nnx.merge(graphdef, params, state.rest, copy=True)
      loss, metrics, extra = loss_fn(model, batch, rng, state.extra)
      return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)), extra)

    (loss, (metrics, rest, extra)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if update_extra is not None:
      extra = update_extra(extra, params, state.step)
    metrics = dict(metrics, loss=loss, grad_norm=_norm(grads),
                   param_norm=_norm(params), update_norm=_norm(updates))
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, rest=rest,
                              opt_state=opt_state, extra=extra)
    return new_state, metrics

  return step


def compile_step(step: StepFn) -> StepFn:
  """jit with the state donated: its buffers are reused for the new state."""
  return jax.jit(step, donate_argnums=(0,))


def make_from_objective(graphdef, objective, config, tx, schedule) -> StepFn:
  """Glue: the registered objective's loss and its extra-state update."""
  def update_extra(extra, params, step):
    return objective.update_extra(extra, params, step, config)
  return make_train_step(graphdef, objective.make_loss(config), tx,
                         schedule=schedule, update_extra=update_extra)
