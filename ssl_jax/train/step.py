"""The one train step: a pure function (state, batch) -> (state, metrics).

Built once per job from an objective's loss function and compiled once with
`jax.jit` (state donated). The model is merged from the state inside the
traced function (`nnx.merge(..., copy=True)`), so BatchNorm statistics come
back as new arrays and nothing mutates across traces.

Gradient accumulation (`grad_accum_steps=k > 1`) splits the global batch
into k micro-batches inside the compiled step and runs them with
`jax.lax.scan`; the update uses the mean of their gradients, the logged loss
and metrics are micro-batch means. What that changes, by construction:
- every batch-coupled quantity sees only the micro-batch (B/k examples):
  contrastive negatives (SimCLR has 2B/k - 2 per anchor, not 2B - 2),
  BatchNorm statistics, Barlow Twins' / VICReg's batch moments, SwAV's
  Sinkhorn equipartition, DINO's centre update;
- the model state (BatchNorm running averages) and the objective's `extra`
  (MoCo's queue, DINO's centre, EMA teachers' statistics) thread through the
  micro-batches in order, exactly as k small steps would;
- `update_extra` (EMA teacher updates) runs once per step, after the
  optimizer update, as without accumulation;
- micro-batch i holds examples i, i+k, i+2k, ... of the global batch, so each
  device splits its own shard and no data moves between devices; it draws
  its randomness from `fold_in(step_rng, i)`.
With k = 1 the step is exactly the plain one (no scan).

Sharpness-aware minimisation (`optim.sam_rho` = rho > 0; Foret et al., ICLR
2021) takes the gradient a second time, on the same batch and randomness,
at the weights moved rho along the first gradient's unit direction, and
updates with that one: it seeks weights whose whole neighbourhood has low
loss, the flat minima that generalise from few examples. The first pass
alone gives the logged loss and the objective's metrics, the BatchNorm
statistics and the objective's `extra` (the logged grad_norm is the
applied gradient's); the move touches only the leaves `sam_mask` marks
(frozen ones stay put). Each step costs two gradients.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import runtime
from ssl_jax.objectives.base import LossFn
from ssl_jax.train.state import TrainState

StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]


def _norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def split_micro_batches(batch: dict[str, jax.Array], k: int,
                        sharding: NamedSharding | None = None
                        ) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i, i+k, ... .

  Strided, not contiguous: a device holding a contiguous block of the batch
  holds B/(k n) rows of every micro-batch, so the split is local.
  """
  def one(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} does not split into "
                       f"train.grad_accum_steps={k} micro-batches")
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    if sharding is not None:
      x = jax.lax.with_sharding_constraint(
          x, NamedSharding(sharding.mesh, P(None, *sharding.spec)))
    return x
  return jax.tree.map(one, batch)


def _like(new, old):
  """Cast a scan carry back to its input dtypes (weak types, bf16 leaks)."""
  return jax.tree.map(lambda n, o: jnp.asarray(n, o.dtype), new, old)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    update_extra: Callable[[Any, nnx.State, jax.Array], Any] | None = None,
    grad_accum_steps: int = 1,
    batch_sharding: NamedSharding | None = None,
    sam_rho: float = 0.0,
    sam_mask: Callable[[nnx.State], Any] | None = None,
) -> StepFn:
  """Returns the un-jitted pure step; callers jit it (see `compile_step`).

  `batch_sharding` (the batch's data-axis sharding) keeps micro-batches
  sharded like the batch when `grad_accum_steps > 1`. `sam_rho` > 0: the
  sharpness-aware update (module docstring), moving only the leaves where
  `sam_mask(params)` is True (None: all of them).
  """
  if grad_accum_steps < 1:
    raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
  if sam_rho < 0:
    raise ValueError(f"optim.sam_rho must be >= 0 (0 = off), got {sam_rho}")

  def grads_of(params, rest, extra, batch, rng):
    def objective(params):
      model = nnx.merge(graphdef, params, rest, copy=True)
      loss, metrics, new_extra = loss_fn(model, batch, rng, extra)
      return loss, (metrics, nnx.state(model, nnx.Not(nnx.Param)), new_extra)

    (loss, (metrics, rest, extra)), grads = jax.value_and_grad(
        objective, has_aux=True)(params)
    return loss, metrics, rest, extra, grads

  def accumulated(params, rest, extra, batch, rng):
    micro = split_micro_batches(batch, grad_accum_steps, batch_sharding)

    def body(carry, xs):
      grad_sum, rest, extra = carry
      index, micro_batch = xs
      loss, metrics, new_rest, new_extra, grads = grads_of(
          params, rest, extra, micro_batch, jax.random.fold_in(rng, index))
      carry = (jax.tree.map(jnp.add, grad_sum, grads),
               _like(new_rest, rest), _like(new_extra, extra))
      return carry, (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, rest, extra), (losses, metrics) = jax.lax.scan(
        body, (zeros, rest, extra),
        (jnp.arange(grad_accum_steps), micro))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    return jnp.mean(losses), metrics, rest, extra, grads

  gradient = grads_of if grad_accum_steps == 1 else accumulated

  def sharpness_aware(state: TrainState, grads, batch, rng):
    """The gradient at the weights rho along `grads`' unit direction."""
    moved = grads if sam_mask is None else jax.tree.map(
        lambda g, m: g if m else jnp.zeros_like(g), grads, sam_mask(grads))
    scale = sam_rho / (_norm(moved) + 1e-12)
    params = jax.tree.map(lambda p, g: p + (scale * g).astype(p.dtype),
                          state.params, moved)
    return gradient(params, state.rest, state.extra, batch, rng)[-1]

  def step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, metrics, rest, extra, grads = gradient(
        state.params, state.rest, state.extra, batch, rng)
    if sam_rho > 0:
      grads = sharpness_aware(state, grads, batch, rng)
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


def compile_step(step: StepFn, state_shardings: Any = None, *,
                 graphdef: nnx.GraphDef | None = None) -> StepFn:
  """jit with the state donated: its buffers are reused for the new state.

  With `state_shardings` (a tree like the state, from shape-first init) the
  new state keeps exactly the input's layout, step after step, and metrics
  come back replicated. `graphdef` (the model's) picks XLA:CPU options by
  what the model holds (ssl_jax/runtime.py).
  """
  if state_shardings is None:
    return runtime.jit(step, graphdef, donate_argnums=(0,))
  mesh = jax.tree.leaves(state_shardings)[0].mesh
  return runtime.jit(step, graphdef, donate_argnums=(0,),
                     out_shardings=(state_shardings, NamedSharding(mesh, P())))


def make_from_objective(graphdef, bound, tx, schedule, *,
                        grad_accum_steps: int = 1,
                        batch_sharding: NamedSharding | None = None,
                        sam_rho: float = 0.0,
                        sam_mask: Callable | None = None) -> StepFn:
  """Glue: a bound objective's (objectives.bind) loss and extra-state update."""
  return make_train_step(graphdef, bound.make_loss(), tx,
                         schedule=schedule, update_extra=bound.update_extra,
                         grad_accum_steps=grad_accum_steps,
                         batch_sharding=batch_sharding, sam_rho=sam_rho,
                         sam_mask=sam_mask)
