"""Combined objectives: several pretext tasks trained on ONE shared encoder.

Multi-task self-supervision (Doersch & Zisserman, ICCV 2017, "Multi-task
Self-Supervised Visual Learning"); in medical imaging e.g. DiRA (Haghighi et
al., CVPR 2022), which joins discriminative, restorative and adversarial
learning. The review's point: tasks that teach different things (invariance,
appearance, context) can add up in one representation.

Config: `objective = dict(name='combined', parts=('simclr', 'rotation'),
weights=(1.0, 0.5), simclr=dict(...), rotation=dict(...))`. Each part is a
registered objective, built and run exactly as on its own: bound to its
sub-config's hyperparameters (over its declared defaults) and the run's
context, with the part's own view policy when its sub-config has an
`augment` block.

The model is a `Combined` container: `encoder` (shared) and `parts`, one
part model per name whose `encoder` attribute *is* the shared module. NNX
stores a shared module once, at its first path in sorted order: `encoder`
sorts before `parts`, so params['encoder'] holds it and the fine-tune job
finds the encoder where it finds every other objective's. The loss is the
weighted sum of the parts' losses; each part gets its own rng (split in
order) and its own `extra`, and logs `<part>/loss` and `<part>/<metric>`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from ssl_jax.objectives import base

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Part:
  """One part: its weight and its objective bound to its own hyperparameters
  (and view policy, when its sub-config has an `augment` block)."""
  name: str
  weight: float
  bound: base.Bound
  augment_field: str  # where its view policy comes from, for messages


def parts(hp: base.HParams, ctx: base.RunContext) -> list[Part]:
  """The configured parts, checked: registered, distinct, one weight each."""
  names, weights = tuple(hp.parts), tuple(hp.weights)
  if not names:
    raise ValueError("config.objective.parts is empty")
  if len(weights) != len(names):
    raise ValueError(f"config.objective.weights has {len(weights)} entries "
                     f"for {len(names)} parts {names}")
  if len(set(names)) != len(names):
    raise ValueError(f"config.objective.parts repeats a name: {names}")
  allowed = [n for n in base.OBJECTIVES.names() if n != "combined"]
  out = []
  for name, weight in zip(names, weights):
    if name not in allowed:
      raise ValueError(f"config.objective.parts has unknown part {name!r}; "
                       f"allowed: {', '.join(allowed)}")
    if name not in hp:
      raise ValueError(f"config.objective.{name} is missing: every part in "
                       "config.objective.parts needs its own sub-config")
    sub = dict(hp[name])
    own_augment = sub.pop("augment", None)
    part_ctx = ctx if own_augment is None else dataclasses.replace(
        ctx, policy=base.view_policy(own_augment, ctx.spatial_dims))
    objective = base.OBJECTIVES.get(name)
    out.append(Part(name, float(weight), base.Bound(
        objective, base.resolve_hparams(objective, sub,
                                        field=f"objective.{name}"), part_ctx),
        f"objective.{name}.augment" if own_augment else "augment"))
  return out


class Combined(nnx.Module):
  """The shared encoder and one model per part (sharing that encoder)."""

  def __init__(self, encoder: nnx.Module, part_models: dict[str, nnx.Module]):
    self.encoder = encoder
    self.parts = nnx.Dict(part_models)


def build_combined(hp: base.HParams, ctx: base.RunContext,
                   rngs: nnx.Rngs) -> Combined:
  """Builds every part as usual, then points each at the first's encoder."""
  encoder, models = None, {}
  for part in parts(hp, ctx):
    model = part.bound.build_model(rngs)
    if encoder is None:
      encoder = model.encoder
    else:
      model.encoder = encoder  # its own freshly built encoder is dropped
    models[part.name] = model
  return Combined(encoder, models)


def make_combined_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  losses = [(p.name, p.weight, p.bound.make_loss()) for p in parts(hp, ctx)]

  def loss_fn(model, batch, rng, extra):
    total, metrics, new_extra = 0.0, {}, {}
    keys = jax.random.split(rng, len(losses))
    for key, (name, weight, part_loss) in zip(keys, losses):
      loss, part_metrics, new_extra[name] = part_loss(
          model.parts[name], batch, key, extra[name])
      total = total + weight * loss
      metrics[f"{name}/loss"] = loss
      metrics.update({f"{name}/{k}": v for k, v in part_metrics.items()})
    return total, metrics, new_extra

  return loss_fn


def part_params(params: nnx.State, name: str) -> nnx.State:
  """A part's params shaped like its own model's: its heads + the encoder."""
  raw = params.raw_mapping  # plain nested dicts, as `nnx.state` builds them
  return nnx.State(dict(raw["parts"][name], encoder=raw["encoder"]))


def init_combined_extra(model: nnx.Module, hp: base.HParams,
                        ctx: base.RunContext) -> dict[str, Any]:
  return {p.name: p.bound.init_extra(model.parts[p.name])
          for p in parts(hp, ctx)}


def update_combined_extra(extra: dict[str, Any], params: nnx.State,
                          step: Array, hp: base.HParams,
                          ctx: base.RunContext) -> dict[str, Any]:
  return {p.name: p.bound.update_extra(
              extra[p.name], part_params(params, p.name), step)
          for p in parts(hp, ctx)}


base.register(base.Objective(
    name="combined", category="combined",
    paper="Doersch & Zisserman, ICCV 2017 (arXiv:1708.07860); weighted sum "
          "of registered objectives on one encoder",
    hparams=dict(parts=(), weights=()), nests_objectives=True, parts=parts,
    build_model=build_combined, make_loss=make_combined_loss,
    init_extra=init_combined_extra, update_extra=update_combined_extra))
