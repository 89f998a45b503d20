"""Longitudinal pretext task: how far apart in time are two scans of one patient?

Rivail et al., MICCAI workshop 2019 ("Modeling Disease Progression in
Retinal OCTs with Longitudinal Self-Supervised Learning"): a siamese encoder
sees two images of the same patient and predicts the time between them; a
representation that can tell disease progression from acquisition noise
helps to classify and to prognose. Here the head predicts both the order
(is the partner later?) and the interval, |dt| in `interval_scale` units
(default years).

Data: a CSV source with `patient_id` and `days` or `study_date`
(data_pipelines/folder.py), pretrained with `pairs.mode='patient'`, so each
row's partner is another image of its patient and the batch carries
`pair_image` and the partner's `pair_days` / `pair_study_date`. Pairs taken
on the same day carry no order and only train the interval (to 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
import optax

from ssl_jax import views
from ssl_jax.models.heads import MLPHead
from ssl_jax.objectives import base

Array = jax.Array
TIME_COLUMNS = ("days", "study_date")


class PairTimeNet(nnx.Module):
  """Shared encoder; a head on [f1, f2, f2 - f1] -> (order logit, interval)."""

  def __init__(self, encoder: nnx.Module, hidden: int, layers: int, *,
               rngs: nnx.Rngs):
    self.encoder = encoder
    self.head = MLPHead(3 * encoder.feature_dim, hidden, 2,
                        num_layers=layers, rngs=rngs)

  def __call__(self, first: Array, second: Array, *, train: bool) -> Array:
    both = self.encoder(jnp.concatenate([first, second]), train=train)
    f1, f2 = jnp.split(both, 2)
    return self.head(jnp.concatenate([f1, f2, f2 - f1], -1), train=train)


def build_pair_time_net(hp: base.HParams, ctx: base.RunContext,
                        rngs: nnx.Rngs) -> PairTimeNet:
  return PairTimeNet(ctx.encoder(rngs), hp.head_hidden_dim, hp.head_layers,
                     rngs=rngs)


def pair_time_loss(out: Array, dt: Array, order_weight: float,
                   interval_weight: float) -> tuple[Array, dict[str, Array]]:
  """out [B, 2] (order logit, predicted |dt|), dt [B] (partner minus row).

  Order: logistic loss on dt > 0 over the pairs with dt != 0. Interval:
  squared error to |dt|. Returns (loss, metrics)."""
  out = out.astype(jnp.float32)
  logit, interval = out[:, 0], out[:, 1]
  ordered = (dt != 0).astype(jnp.float32)
  later = (dt > 0).astype(jnp.float32)
  n_ordered = jnp.maximum(ordered.sum(), 1.0)
  order_loss = jnp.sum(optax.sigmoid_binary_cross_entropy(logit, later)
                       * ordered) / n_ordered
  interval_loss = jnp.mean((interval - jnp.abs(dt)) ** 2)
  correct = ((logit > 0) == (dt > 0)).astype(jnp.float32)
  metrics = {"order_loss": order_loss, "interval_loss": interval_loss,
             "order_acc": jnp.sum(correct * ordered) / n_ordered,
             "interval_mae": jnp.mean(jnp.abs(interval - jnp.abs(dt))),
             "ordered_fraction": jnp.mean(ordered)}
  return order_weight * order_loss + interval_weight * interval_loss, metrics


def make_longitudinal_loss(hp: base.HParams,
                           ctx: base.RunContext) -> base.LossFn:
  if hp.time_column not in TIME_COLUMNS:
    raise ValueError(f"config.objective.time_column={hp.time_column!r}; "
                     f"allowed: {', '.join(TIME_COLUMNS)}")
  policy, column = ctx.policy, hp.time_column

  def loss_fn(model, batch, rng, extra):
    if f"pair_{column}" not in batch:
      raise ValueError(
          f"longitudinal needs the batch columns {column!r} and "
          f"'pair_{column}': a CSV source with patient_id and {column} "
          f"(data_pipelines/folder.py) and pairs.mode='patient'; the batch "
          f"has {sorted(batch)}")
    k1, k2 = jax.random.split(rng)
    first = views.train_view(policy, k1, batch["image"])
    second = views.train_view(policy, k2, batch["pair_image"])
    dt = (batch[f"pair_{column}"] - batch[column]).astype(jnp.float32)
    out = model(first, second, train=True)
    loss, metrics = pair_time_loss(out, dt / hp.interval_scale,
                                   hp.order_weight, hp.interval_weight)
    return loss, metrics, extra

  return loss_fn


base.register(base.Objective(
    name="longitudinal", category="innate", uses_pairs=True, ranks=(2, 3),
    paper="Rivail et al., MICCAI OMIA 2019 (arXiv:1910.09420), time between "
          "two scans of one patient",
    hparams=dict(time_column="days", interval_scale=365.0, order_weight=1.0,
                 interval_weight=1.0, head_hidden_dim=256, head_layers=2),
    reads=lambda hp: (hp.time_column, f"pair_{hp.time_column}"),
    build_model=build_pair_time_net, make_loss=make_longitudinal_loss))
