"""The train state: one explicit pytree, nothing hidden in objects.

The model's structure (an `nnx.GraphDef`) is static and lives outside; the
arrays live here: trainable params, the rest of the model state (BatchNorm
statistics), optimizer state, objective-owned state (`extra`: EMA teachers,
queues) and the base rng. The step index is folded into the rng inside the
step, so a resumed run draws exactly the random numbers of an uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from flax import nnx
import optax
from jax.sharding import Mesh

from ssl_jax import parallel


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


def shape_first(
    build: Callable[..., tuple[nnx.GraphDef, TrainState]],
    mesh: Mesh,
    rules: Sequence[parallel.Rule] = (),
    *,
    args: tuple = (),
) -> tuple[nnx.GraphDef, TrainState, Any, Callable[..., TrainState]]:
  """Shape-first init (big_vision): eval_shape -> shardings -> jitted init.

  `build(*args)` constructs the model and state (random init included). It
  is traced twice and never run eagerly: `jax.eval_shape` gives the abstract
  state (no memory, no compute), `parallel.tree_shardings` turns it into one
  NamedSharding per leaf from the mesh rules (replicated by default), and
  `init(*args)` is `build` jitted with those `out_shardings`, so every array
  is born on its devices in its final layout, never gathered on one device
  first. `args` (e.g. a seed) are traced: one compile serves every value.
  A resumed run restores straight into the abstract state and never runs
  `init` at all.

  Returns (graphdef, abstract state with shardings, state shardings, init).
  """
  graphdefs = []

  def arrays(*values) -> TrainState:
    graphdef, state = build(*values)
    graphdefs.append(graphdef)
    return state

  shapes = jax.eval_shape(arrays, *args)
  shardings = parallel.tree_shardings(shapes, mesh, rules)
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes, shardings)
  init = jax.jit(arrays, out_shardings=shardings)
  return graphdefs[0], abstract, shardings, init
