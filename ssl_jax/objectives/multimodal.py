"""Multimodal contrastive pretraining: an image agrees with what else is
known about it.

- `clip_tabular`: the image against its row's metadata columns (numbers and
  categories, e.g. age and sex) encoded by a small MLP. ContIG (Taleb et
  al., CVPR 2022, "ContIG: Self-supervised Multimodal Contrastive Learning
  for Medical Imaging with Genetics") contrasted fundus images with each
  patient's genetic and tabular data this way.
- `clip_text`: the image against its free-text report, encoded by a small
  transformer over a word vocabulary fitted on the training reports. ConVIRT
  (Zhang et al., MLHC 2022, "Contrastive Learning of Medical Visual
  Representations from Paired Images and Text") introduced this for chest
  X-rays; CLIP (Radford et al., ICML 2021) scaled it and added the learned
  temperature and zero-shot classification from class prompts (stage 2's
  `zero_shot` protocol, ssl_jax/evaluation/zero_shot.py).

Both share one loss, `symmetric_infonce`: within the global batch each image
must pick its own row among the paired embeddings and each row its own
image; `image_weight` weighs the two directions (0.5: CLIP; ConVIRT used
0.75). The temperature is learned as a log-scale parameter clipped to
[0, log(max_logit_scale)] (CLIP), or fixed (`learn_temperature=False`).

Data: the paired columns come from the source's metadata (a csv: source:
age, sex, or any column in data.options.numeric_columns / text_columns),
coded with vocabularies fitted on the train split only
(data_pipelines/vocab.py, written to <workdir>/vocab.json). Rows are
positives only with their own image, so rows with identical metadata are
false negatives of each other, as in ContIG.

Rank: registered for 2D images. Views, encoder and loss are rank-agnostic,
but no source gives volumes with tabular or report columns (csv: reads
NIfTI volumes as 2D slices), so 3D is neither declared nor tested.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import columns, views
from ssl_jax.models.heads import MLPHead
from ssl_jax.models.text import TextTransformer
from ssl_jax.objectives import base
from ssl_jax.objectives.contrastive import l2_normalize

Array = jax.Array


# ------------------------------------------------------------- pure loss --

def symmetric_infonce(image: Array, paired: Array, logit_scale: Array,
                      image_weight: float = 0.5
                      ) -> tuple[Array, dict[str, Array]]:
  """CLIP's symmetric InfoNCE over a batch of N (image, paired) rows.

  logits = logit_scale * cos(image_i, paired_j); cross-entropy of the
  diagonal along rows (image -> paired) and columns (paired -> image),
  weighted image_weight : 1 - image_weight.

  Example:
    >>> z = jnp.eye(4)
    >>> loss, m = symmetric_infonce(z, z, jnp.asarray(10.0))
    >>> float(m["image_to_paired_acc"])
    1.0
  """
  a = l2_normalize(image.astype(jnp.float32))
  b = l2_normalize(paired.astype(jnp.float32))
  logits = logit_scale * (a @ b.T)
  target = jnp.arange(a.shape[0])
  image_loss = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  paired_loss = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  loss = image_weight * image_loss + (1.0 - image_weight) * paired_loss
  return loss, {
      "image_loss": image_loss, "paired_loss": paired_loss,
      "image_to_paired_acc": jnp.mean(jnp.argmax(logits, 1) == target),
      "paired_to_image_acc": jnp.mean(jnp.argmax(logits, 0) == target),
      "logit_scale": logit_scale}


# ----------------------------------------------------------------- model --

class LogitScale(nnx.Module):
  """exp(log scale), the log scale learned and clipped to [0, log(max)]
  (CLIP: init 1 / 0.07, max 100), or the fixed 1 / temperature."""

  def __init__(self, temperature: float, learn: bool, max_scale: float):
    if temperature <= 0:
      raise ValueError(f"config.objective.temperature={temperature}; "
                       "expected > 0")
    if 1.0 / temperature > max_scale:
      raise ValueError(f"config.objective.temperature={temperature} starts "
                       f"the logit scale at {1 / temperature:.4g}, above "
                       f"config.objective.max_logit_scale={max_scale}")
    self.fixed = 1.0 / temperature
    self.max_log = math.log(max_scale)
    self.log_scale = (nnx.Param(jnp.asarray(math.log(self.fixed), jnp.float32))
                      if learn else None)

  def __call__(self) -> Array:
    if self.log_scale is None:
      return jnp.asarray(self.fixed, jnp.float32)
    return jnp.exp(jnp.clip(self.log_scale[...], 0.0, self.max_log))


class TabularTower(nnx.Module):
  """Standardised numbers and per-column category embeddings, concatenated,
  then (Linear -> ReLU) x layers: ContIG's tabular MLP."""

  def __init__(self, num_numeric: int, cardinalities: list[int], *,
               embed_dim: int, hidden_dim: int, layers: int, rngs: nnx.Rngs):
    if layers < 1:
      raise ValueError(f"config.objective.tabular_layers={layers}; "
                       "expected >= 1")
    self.embeds = nnx.List([nnx.Embed(n, embed_dim, rngs=rngs)
                            for n in cardinalities])
    dims = [num_numeric + embed_dim * len(cardinalities)] + [hidden_dim] * layers
    self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs)
                            for i, o in zip(dims[:-1], dims[1:])])
    self.feature_dim = hidden_dim

  def __call__(self, numeric: Array | None, categorical: Array | None, *,
               train: bool = False) -> Array:
    del train
    parts = [] if numeric is None else [numeric.astype(jnp.float32)]
    parts += [embed(categorical[:, k]) for k, embed in enumerate(self.embeds)]
    x = jnp.concatenate(parts, -1)
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return x


class _ImagePairNet(nnx.Module):
  """The image side shared by both objectives: `encoder` (what stage 2
  reads) and a projector into the joint space, plus the logit scale."""

  def __init__(self, encoder: nnx.Module, hp: base.HParams, rngs: nnx.Rngs):
    self.encoder = encoder
    self.image_projector = _projector(encoder.feature_dim, hp, rngs)
    self.logit_scale = LogitScale(hp.temperature, hp.learn_temperature,
                                  hp.max_logit_scale)

  def embed_image(self, x: Array, *, train: bool) -> Array:
    return self.image_projector(self.encoder(x, train=train), train=train)


def _projector(in_dim: int, hp: base.HParams, rngs: nnx.Rngs) -> MLPHead:
  """ConVIRT's projection: (Linear -> ReLU) x (proj_layers - 1) -> Linear."""
  return MLPHead(in_dim, hp.proj_hidden_dim, hp.proj_dim,
                 num_layers=hp.proj_layers, use_bn=False, rngs=rngs)


class ImageTabularNet(_ImagePairNet):
  def __init__(self, encoder, hp, vocab: Mapping[str, Any], rngs: nnx.Rngs):
    super().__init__(encoder, hp, rngs)
    cards = [len(c["categories"]) + 1 for c in vocab["categorical"]]
    self.tabular = TabularTower(
        len(vocab["numeric"]), cards, embed_dim=hp.category_embed_dim,
        hidden_dim=hp.tabular_hidden_dim, layers=hp.tabular_layers, rngs=rngs)
    self.tabular_projector = _projector(self.tabular.feature_dim, hp, rngs)
    # The derived batch columns the tower reads (a kind without a column
    # has none).
    self.paired_columns = (
        ((columns.TABULAR_NUMERIC,) if vocab["numeric"] else ())
        + ((columns.TABULAR_CATEGORICAL,) if vocab["categorical"] else ()))

  def embed_paired(self, batch: Mapping[str, Array], *, train: bool) -> Array:
    features = self.tabular(batch.get(columns.TABULAR_NUMERIC),
                            batch.get(columns.TABULAR_CATEGORICAL), train=train)
    return self.tabular_projector(features, train=train)


class ImageTextNet(_ImagePairNet):
  def __init__(self, encoder, hp, vocab: Mapping[str, Any], rngs: nnx.Rngs):
    super().__init__(encoder, hp, rngs)
    self.text = TextTransformer(
        vocab_size=len(vocab["tokens"]), max_length=int(vocab["max_length"]),
        width=hp.text_width, depth=hp.text_depth, num_heads=hp.text_heads,
        mlp_dim=hp.text_mlp_dim, pool=hp.text_pool, rngs=rngs)
    self.text_projector = _projector(hp.text_width, hp, rngs)
    self.paired_columns = (columns.TEXT_TOKENS,)

  def embed_text(self, tokens: Array, *, train: bool) -> Array:
    return self.text_projector(self.text(tokens, train=train), train=train)

  def embed_paired(self, batch: Mapping[str, Array], *, train: bool) -> Array:
    return self.embed_text(batch[columns.TEXT_TOKENS], train=train)


def _fitted(ctx: base.RunContext, kind: str, name: str) -> Mapping[str, Any]:
  if kind not in ctx.vocab:
    raise ValueError(
        f"{name} sizes its {kind} tower by the vocabulary fitted on the "
        f"train split (ctx.vocab[{kind!r}]); bind the objective with it "
        "(objectives.bind(config, info, vocab); the pretrain job fits it)")
  return ctx.vocab[kind]


def build_image_tabular_net(hp, ctx, rngs) -> ImageTabularNet:
  return ImageTabularNet(ctx.encoder(rngs), hp,
                         _fitted(ctx, "tabular", "clip_tabular"), rngs)


def build_image_text_net(hp, ctx, rngs) -> ImageTextNet:
  return ImageTextNet(ctx.encoder(rngs), hp,
                      _fitted(ctx, "text", "clip_text"), rngs)


# ------------------------------------------------------------------ loss --

def make_pair_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """One augmented view of each image against its row's paired columns."""
  if not 0.0 <= hp.image_weight <= 1.0:
    raise ValueError(f"config.objective.image_weight={hp.image_weight}; "
                     "expected in [0, 1]")
  policy = ctx.policy

  def loss_fn(model, batch, rng, extra):
    missing = [c for c in model.paired_columns if c not in batch]
    if missing:
      raise ValueError(
          f"the batch lacks {missing}: the pretrain job derives them from "
          "the metadata with the objective's vocabularies "
          f"(data_pipelines/vocab.py); the batch has {sorted(batch)}")
    x = views.train_view(policy, rng, batch["image"])
    loss, metrics = symmetric_infonce(
        model.embed_image(x, train=True), model.embed_paired(batch, train=True),
        model.logit_scale(), hp.image_weight)
    return loss, metrics, extra

  return loss_fn


def _names(value) -> tuple[str, ...]:
  """A tuple of column names; 'age,bmi' from the command line is split."""
  if isinstance(value, str):
    value = value.split(",")
  return tuple(v.strip() for v in value if v.strip())


def tabular_vocabulary(hp: base.HParams) -> dict:
  return {"tabular": {"numeric": list(_names(hp.numeric_columns)),
                      "categorical": list(_names(hp.categorical_columns))}}


def text_vocabulary(hp: base.HParams) -> dict:
  return {"text": {"column": hp.text_column, "size": hp.vocab_size,
                   "max_length": hp.max_length,
                   "min_count": hp.min_word_count}}


# Shared by both: the image projector, joint space and temperature.
PAIR_HPARAMS = dict(proj_hidden_dim=512, proj_dim=128, proj_layers=2,
                    temperature=0.07, learn_temperature=True,
                    max_logit_scale=100.0, image_weight=0.5)

base.register(base.Objective(
    name="clip_tabular", category="contrastive",
    paper="ContIG: Taleb et al., CVPR 2022 (images vs a patient's tabular "
          "data); CLIP loss: Radford et al., ICML 2021",
    hparams=dict(PAIR_HPARAMS, numeric_columns=("age",),
                 categorical_columns=("sex",), category_embed_dim=8,
                 tabular_hidden_dim=256, tabular_layers=2),
    reads=lambda hp: _names(hp.numeric_columns) + _names(
        hp.categorical_columns),
    vocabulary=tabular_vocabulary,
    build_model=build_image_tabular_net, make_loss=make_pair_loss))

base.register(base.Objective(
    name="clip_text", category="contrastive", embeds_text=True,
    paper="ConVIRT: Zhang et al., MLHC 2022 (images vs reports); CLIP: "
          "Radford et al., ICML 2021",
    hparams=dict(PAIR_HPARAMS, text_column="report", vocab_size=2000,
                 min_word_count=1, max_length=64, text_width=128,
                 text_depth=2, text_heads=4, text_mlp_dim=512,
                 text_pool="mean"),
    reads=lambda hp: (hp.text_column,),
    vocabulary=text_vocabulary,
    build_model=build_image_text_net, make_loss=make_pair_loss))
