"""The train state: one explicit pytree, nothing hidden in objects.

The model's structure (an `nnx.GraphDef`) is static and lives outside; the
arrays live here: trainable params, the rest of the model state (BatchNorm
statistics), optimizer state, objective-owned state (`extra`: EMA teachers,
queues) and the base rng. The step index is folded into the rng inside the
step, so a resumed run draws exactly the random numbers of an uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  rest: nnx.State
  opt_state: optax.OptState
  extra: Any
  rng: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable params, everything else) — the functional NNX split."""
  return nnx.split(model, nnx.Param, ...)


def create(model: nnx.Module, tx: optax.GradientTransformation, extra: Any,
           rng: jax.Array) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, rest = split_model(model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                     opt_state=tx.init(params), extra=extra, rng=rng)
  return graphdef, state


def merge(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  """A live model from the state (copy=True: safe inside traced code)."""
  return nnx.merge(graphdef, state.params, state.rest, copy=True)
