"""The objective contract every pretext task and fine-tuning loss follows.

An objective is data plus pure builders, looked up by name. It declares its
hyperparameters with their defaults (`hparams`) next to its loss; a config's
`objective` block only overrides them, and a field the objective does not
declare is refused, naming it. The builders see those hyperparameters (`hp`,
a ConfigDict) and a small `RunContext` (run length, global batch,
seed, input rank, the view policy, the data and the backbone to build), never
the whole config:

- `build_model(hp, ctx, rngs) -> nnx.Module` makes the trainable model.
  It always has an `encoder` attribute (`ctx.encoder(rngs)`): fine-tuning
  reads only that subtree.
- `make_loss(hp, ctx) -> loss_fn` returns
  `loss_fn(model, batch, rng, extra) -> (loss, metrics, extra)`, a pure
  function of arrays traced inside the one jitted train step. `batch` is the
  uint8 batch from data_pipelines; views are made inside, on device, through
  `ssl_jax.views`, which serves images and volumes alike.
- `init_extra(model, hp, ctx)` / `update_extra(extra, params, step, hp, ctx)`
  hold objective-owned state (EMA teachers, queues) as explicit pytrees in the
  train state; objectives without such state keep the defaults.
- `visible(hp)`: masking objectives report, per field, the smallest fraction
  of a view their mask can leave visible (checked against the policy's
  `min_visible` before anything is built).
- `vocabulary(hp)`: objectives that read metadata through a vocabulary
  fitted on the train split (tabular codes, report tokens) declare it by
  kind (data_pipelines/vocab.py); the job fits it, adds its batch columns
  (ssl_jax/columns.py), writes `<workdir>/vocab.json` and hands it to the
  builders as `ctx.vocab`.

`bind(config, info)` resolves all of it for one run. An objective outside
the package registers itself on import: `objective.module=my_pkg.my_loss`
imports that module before the name is looked up. No method-specific
branches live in the training loop: a new method is one `Objective`
registered with `register`, one config file and the contract test.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Protocol

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


HParams = ml_collections.ConfigDict
Visible = list[tuple[str, Any, float]]  # (hparam, its value, visible fraction)


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What an objective may know of the run besides its hyperparameters."""
  total_steps: int
  global_batch: int
  seed: int
  spatial_dims: int  # 2: images [B, H, W, C]; 3: volumes [B, D, H, W, C]
  policy: Any        # the view policy for this rank (views.apply takes it)
  info: DataInfo
  model: Mapping[str, Any]  # config.model: the backbone `encoder` builds
  # Vocabularies fitted on the train split (`Objective.vocabulary`), by
  # kind; {} when the objective declares none or before data is read.
  vocab: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def encoder(self, rngs: nnx.Rngs) -> nnx.Module:
    """The backbone named by `model['name']`; other fields are its kwargs."""
    from ssl_jax import models  # local: keeps registries importable standalone
    kwargs = {k: v for k, v in self.model.items() if k != "name"}
    return models.get(self.model["name"])(
        in_channels=self.info.num_channels, image_size=self.info.image_size,
        rngs=rngs, **kwargs)


def _no_extra(model: nnx.Module, hp: HParams, ctx: RunContext) -> dict:
  del model, hp, ctx
  return {}


def _keep_extra(extra: Any, params: Any, step: Array, hp: HParams,
                ctx: RunContext) -> Any:
  del params, step, hp, ctx
  return extra


def _nothing_masked(hp: HParams) -> Visible:
  del hp
  return []


def _reads_nothing_more(hp: HParams) -> tuple[str, ...]:
  del hp
  return ()


def _no_parts(hp: HParams, ctx: RunContext) -> list:
  del hp, ctx
  return []


def _no_vocabulary(hp: HParams) -> dict:
  del hp
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """One registered method: its review category, its hyperparameters with
  their defaults, and its builders (see the module docstring)."""
  name: str
  category: str  # innate | generative | contrastive | self_prediction | combined | supervised
  paper: str
  build_model: Callable[[HParams, RunContext, nnx.Rngs], nnx.Module]
  make_loss: Callable[[HParams, RunContext], LossFn]
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init_extra: Callable[[nnx.Module, HParams, RunContext], Any] = _no_extra
  update_extra: Callable[..., Any] = _keep_extra
  visible: Callable[[HParams], Visible] = _nothing_masked
  # Reads `batch['pair_image']` (a partner image, data_pipelines/pairs.py)
  # for its second view; `pairs.mode` other than 'views' needs this.
  uses_pairs: bool = False
  # Batch columns it reads besides image / label / pair_image, e.g. a
  # longitudinal task's ('days', 'pair_days'): checked against the data
  # before anything compiles.
  reads: Callable[[HParams], tuple[str, ...]] = _reads_nothing_more
  # The backbone it needs, checked against config.model.name before anything
  # is built (jobs/common.check_encoder): 'any' or 'vit' (patch tokens: MAE,
  # SimMIM; images or volumes alike).
  encoder: str = "any"
  # Its gradient over a batch is the mean of its gradients over any split of
  # it when the views are fixed and the encoder has no batch statistics: no
  # in-batch negatives, batch moments or random draws (train.grad_accum_steps
  # then changes nothing; the contract test checks it).
  accumulates_exactly: bool = False
  # A game, not a minimisation (GANs): the loss sums the players' losses and
  # need not fall as they train.
  minimax: bool = False
  # Input ranks it trains on: 2 (images), 3 (volumes, through `views` and
  # the encoder's declared spatial_dims).
  ranks: tuple[int, ...] = (2,)
  # Besides `hparams`, fields named after registered objectives hold their
  # sub-configs (the combined objective's parts), bound by `parts(hp, ctx)`.
  nests_objectives: bool = False
  parts: Callable[[HParams, RunContext], list] = _no_parts
  # Vocabularies to fit on the train split's metadata, by kind, e.g.
  # {'text': {'column': 'report', 'size': 2000, 'max_length': 64}}
  # (data_pipelines/vocab.py); builders read them fitted as ctx.vocab.
  vocabulary: Callable[[HParams], dict] = _no_vocabulary
  # Its model embeds images (`embed_image`) and report tokens (`embed_text`)
  # in one space: stage 2's zero_shot protocol can classify from prompts.
  embeds_text: bool = False


ENCODER_NEEDS = ("any", "vit")


def backbone_kind(name: str) -> set[str]:
  """What a backbone name says it is: {'vit'} for ViTs, plus '3d' for
  `*_3d` volume backbones (models/__init__.py's naming)."""
  return ({"vit"} if name.startswith("vit") else set()) | (
      {"3d"} if name.endswith("_3d") else set())


def fits(need: str, backbone: str) -> bool:
  """Whether backbone `backbone` gives what an objective's `encoder` needs:
  'any', or 'vit' (patch tokens, images or volumes)."""
  return need == "any" or need in backbone_kind(backbone)


OBJECTIVES: Registry[Objective] = Registry("objective")
RESERVED = ("name", "module")  # objective fields that are not hyperparameters


def register(objective: Objective) -> Objective:
  if objective.encoder not in ENCODER_NEEDS:
    raise ValueError(f"objective {objective.name!r}: encoder="
                     f"{objective.encoder!r}; allowed: {', '.join(ENCODER_NEEDS)}")
  OBJECTIVES.add(objective.name, objective)
  return objective


def import_module(module: str) -> None:
  """Imports `module` (config.objective.module) so the objectives it
  defines register themselves; '' imports nothing."""
  if not module:
    return
  try:
    importlib.import_module(module)
  except ImportError as e:
    raise ValueError(f"config.objective.module={module!r} cannot be "
                     f"imported: {e}") from None


def lookup(objective_config: Mapping[str, Any]) -> Objective:
  """The objective `name` names, after importing `module` when set."""
  import_module(objective_config.get("module", "") or "")
  return OBJECTIVES.get(objective_config["name"])


class UndeclaredHParam(ValueError):
  """A config sets a field its objective does not declare."""


def resolve_hparams(objective: Objective, overrides: Mapping[str, Any], *,
                    field: str = "objective") -> HParams:
  """The objective's declared defaults updated by `overrides` (the config's
  block); an undeclared field is refused, naming it and the declared ones."""
  hp = dict(objective.hparams)
  for key, value in overrides.items():
    if key in RESERVED:
      continue
    nested = objective.nests_objectives and key in OBJECTIVES
    if key not in hp and not nested:
      raise UndeclaredHParam(
          f"config.{field}.{key} is not a hyperparameter of "
          f"{objective.name!r}; it declares: "
          f"{', '.join(sorted(objective.hparams)) or 'none'}")
    hp[key] = value.to_dict() if hasattr(value, "to_dict") else value
  return ml_collections.ConfigDict(hp, type_safe=False)


def view_policy(augment_config: Mapping[str, Any], spatial_dims: int):
  """The view policy named by `augment_config['policy']` with its set
  overrides; for volumes lifted to 3D (`augment3d.from_2d`) with the
  block's optional `volume` fields, e.g. dict(flip_probs=(0.5, 0.0, 0.5))."""
  from ssl_jax import augment, augment3d
  overrides = {k: v for k, v in (augment_config.get("overrides") or {}).items()
               if v is not None}
  policy = augment.get(augment_config["policy"], **overrides)
  if spatial_dims == 3:
    return augment3d.from_2d(policy, **dict(augment_config.get("volume") or {}))
  return policy


def augment_policy(config: ml_collections.ConfigDict):
  """The 2D view policy of `config.augment` (views lifts it for volumes)."""
  return view_policy(config.augment, 2)


def run_context(config: ml_collections.ConfigDict,
                info: DataInfo | None,
                vocab: Mapping[str, Any] | None = None) -> RunContext:
  """The run as an objective sees it: config.train / seed / model / augment
  and the data's rank (None: checking a config before the data is open;
  then only the view policy and numbers are real), and the fitted
  vocabularies when the objective declares some."""
  spatial_dims = getattr(info, "spatial_dims", 2)
  return RunContext(
      total_steps=config.train.steps, global_batch=config.train.batch_size,
      seed=config.seed, spatial_dims=spatial_dims,
      policy=view_policy(config.augment, spatial_dims), info=info,
      model=config.model.to_dict(), vocab=dict(vocab or {}))


@dataclasses.dataclass(frozen=True)
class Bound:
  """An objective with its resolved hyperparameters and run context: what
  the jobs and the train step call."""
  objective: Objective
  hp: HParams
  ctx: RunContext

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return self.objective.build_model(self.hp, self.ctx, rngs)

  def make_loss(self) -> LossFn:
    return self.objective.make_loss(self.hp, self.ctx)

  def init_extra(self, model: nnx.Module) -> Any:
    return self.objective.init_extra(model, self.hp, self.ctx)

  def update_extra(self, extra: Any, params: Any, step: Array) -> Any:
    return self.objective.update_extra(extra, params, step, self.hp, self.ctx)


def bind(config: ml_collections.ConfigDict, info: DataInfo,
         vocab: Mapping[str, Any] | None = None) -> Bound:
  """The configured objective, ready to build and train; refuses data of a
  rank the objective or the backbone does not take, naming the fields.
  `vocab`: the vocabularies fitted for it (`Objective.vocabulary`)."""
  objective = lookup(config.objective)
  ctx = run_context(config, info, vocab)
  check_rank(objective, ctx, config.data.name)
  return Bound(objective, resolve_hparams(objective, config.objective), ctx)


RANK_WORDS = {2: "2D images", 3: "3D volumes"}


def check_rank(objective: Objective, ctx: RunContext, data_name: str) -> None:
  data = RANK_WORDS.get(ctx.spatial_dims, f"{ctx.spatial_dims}D inputs")
  if ctx.spatial_dims not in objective.ranks:
    raise ValueError(
        f"config.objective.name={objective.name!r} trains on "
        f"{' or '.join(RANK_WORDS[r] for r in objective.ranks)}, but "
        f"config.data.name={data_name!r} has {data}")
  backbone = ctx.model["name"]
  if ("3d" in backbone_kind(backbone)) != (ctx.spatial_dims == 3):
    raise ValueError(
        f"config.model.name={backbone!r} does not take the {data} of "
        f"config.data.name={data_name!r}: use a "
        f"{'*_3d' if ctx.spatial_dims == 3 else '2D'} backbone")


def build_encoder(config: ml_collections.ConfigDict, info: DataInfo,
                  rngs: nnx.Rngs) -> nnx.Module:
  """The backbone named by `config.model.name`; other model fields override."""
  return RunContext(0, 0, 0, getattr(info, "spatial_dims", 2), None, info,
                    config.model.to_dict()).encoder(rngs)

