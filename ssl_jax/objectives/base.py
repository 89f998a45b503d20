"""The objective contract every pretext task and fine-tuning loss follows.

An objective is data plus two pure builders, looked up by config name:

- `build_model(config, info, rngs) -> nnx.Module` makes the trainable model.
  It always has an `encoder` attribute: fine-tuning reads only that subtree.
- `make_loss(config) -> loss_fn` closes over the config's numbers and returns
  `loss_fn(model, batch, rng, extra) -> (loss, metrics, extra)`, a pure
  function of arrays traced inside the one jitted train step. `batch` is the
  uint8 batch from data_pipelines; augmentation happens inside, on device.
- `init_extra(model, config)` / `update_extra(extra, params, step, config)`
  hold objective-owned state (EMA teachers, queues) as explicit pytrees in the
  train state; objectives without such state keep the defaults.

No method-specific branches live in the training loop: a new method is one
`Objective` registered here, one config file and one test.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
from flax import nnx
import ml_collections

from ssl_jax.registry import Registry

Array = jax.Array
Metrics = dict[str, Array]
LossFn = Callable[[nnx.Module, dict[str, Array], Array, Any],
                  tuple[Array, Metrics, Any]]


class DataInfo(Protocol):
  """What a builder needs to know about the data (see data_pipelines)."""
  num_channels: int
  image_size: int
  num_classes: int
  multi_label: bool


def _no_extra(model: nnx.Module, config: ml_collections.ConfigDict) -> dict:
  del model, config
  return {}


def _keep_extra(extra: Any, params: Any, step: Array,
                config: ml_collections.ConfigDict) -> Any:
  del params, step, config
  return extra


@dataclasses.dataclass(frozen=True)
class Objective:
  """One registered method: its review category and its two builders."""
  name: str
  category: str  # innate | generative | contrastive | self_prediction | combined | supervised
  paper: str
  build_model: Callable[[ml_collections.ConfigDict, DataInfo, nnx.Rngs], nnx.Module]
  make_loss: Callable[[ml_collections.ConfigDict], LossFn]
  init_extra: Callable[[nnx.Module, ml_collections.ConfigDict], Any] = _no_extra
  update_extra: Callable[..., Any] = _keep_extra
  # Reads `batch['pair_image']` (a partner image, data_pipelines/pairs.py)
  # for its second view; `pairs.mode` other than 'views' needs this.
  uses_pairs: bool = False
  # The backbone it needs, checked against config.model.name before anything
  # is built (jobs/common.check_encoder): 'any', 'vit' (patch tokens: MAE,
  # SimMIM), '3d' (volumes) or 'vit_3d'.
  encoder: str = "any"


ENCODER_NEEDS = ("any", "vit", "3d", "vit_3d")


def backbone_kind(name: str) -> set[str]:
  """What a backbone name says it is: {'vit'} for ViTs, plus '3d' for
  `*_3d` volume backbones (models/__init__.py's naming)."""
  return ({"vit"} if name.startswith("vit") else set()) | (
      {"3d"} if name.endswith("_3d") else set())


def fits(need: str, backbone: str) -> bool:
  """Whether backbone `backbone` gives what an objective's `encoder` needs:
  'vit' a 2D ViT, 'vit_3d' a 3D ViT, '3d' any 3D backbone."""
  kind = backbone_kind(backbone)
  if need == "3d":
    return "3d" in kind
  return need == "any" or set(need.split("_")) == kind


OBJECTIVES: Registry[Objective] = Registry("objective")


def register(objective: Objective) -> Objective:
  if objective.encoder not in ENCODER_NEEDS:
    raise ValueError(f"objective {objective.name!r}: encoder="
                     f"{objective.encoder!r}; allowed: {', '.join(ENCODER_NEEDS)}")
  OBJECTIVES.add(objective.name, objective)
  return objective


def build_encoder(config: ml_collections.ConfigDict, info: DataInfo,
                  rngs: nnx.Rngs) -> nnx.Module:
  """The backbone named by `config.model.name`; other model fields override."""
  from ssl_jax import models  # local: keeps registries importable standalone
  overrides = {k: v for k, v in config.model.items() if k != "name"}
  return models.get(config.model.name)(
      in_channels=info.num_channels, image_size=info.image_size, rngs=rngs,
      **overrides)


def augment_policy(config: ml_collections.ConfigDict):
  """The view policy named by `config.augment.policy` with set overrides."""
  from ssl_jax import augment
  overrides = {k: v for k, v in config.augment.get("overrides", {}).items()
               if v is not None}
  return augment.get(config.augment.policy, **overrides)
