"""Supervised cross-entropy: fine-tuning, the from-scratch baseline, and
supervised pretraining all train through this one objective, so "SSL" and
"supervised" encoders go through the same loop and the same evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
import optax

from ssl_jax import views
from ssl_jax.models.heads import Classifier
from ssl_jax.objectives import base
from ssl_jax.objectives.contrastive import nt_xent

Array = jax.Array


def classification_loss(logits: Array, labels: Array, multi_label: bool,
                        weights: Array | None = None,
                        class_weights: Array | None = None
                        ) -> tuple[Array, Array]:
  """Softmax cross-entropy (or sigmoid BCE per label); returns (loss, acc).

  `weights` [B] (1 = labelled) averages over the labelled examples only.
  `class_weights` [C] weighs each example by its class and normalises by the
  summed weights, as PyTorch's CrossEntropyLoss(weight=...); accuracy stays
  unweighted.
  """
  logits = logits.astype(jnp.float32)
  if multi_label:
    per_example = optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
    correct = jnp.mean((logits > 0) == (labels > 0), axis=-1)
  else:
    labels = labels.reshape(-1)
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.maximum(labels, 0))
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if class_weights is not None:
      by_class = jnp.asarray(class_weights, jnp.float32)[jnp.maximum(labels, 0)]
      mask = jnp.ones_like(by_class) if weights is None else weights
      loss = (per_example * by_class * mask).sum() / jnp.maximum(
          (by_class * mask).sum(), 1e-12)
      return loss, (correct * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  if weights is None:
    return per_example.mean(), correct.mean()
  total = jnp.maximum(weights.sum(), 1.0)
  return (per_example * weights).sum() / total, (correct * weights).sum() / total


def is_multi_label(labels: Array) -> bool:
  """Multi-hot [B, L>1] labels; single-label ones are [B] or [B, 1]."""
  return labels.ndim == 2 and labels.shape[-1] > 1


def build_classifier(hp: base.HParams, ctx: base.RunContext,
                     rngs: nnx.Rngs) -> Classifier:
  return Classifier(ctx.encoder(rngs), ctx.info.num_classes,
                    rngs=rngs, head_init=hp.head_init)


def single_label_class_weights(hp: base.HParams):
  """`hp.class_weights`, refused when the objective is set multi-label
  (class weights weigh one class per example)."""
  if hp.class_weights is not None and hp.multi_label:
    raise ValueError("config.objective.class_weights needs a single-label "
                     "task; objective.multi_label is True")
  return hp.class_weights


def target_regularizers(hp, field: str = "objective") -> tuple[float, float]:
  """(`mixup_alpha`, `label_smoothing`) of `hp` (an objective's hparams, or
  the `finetune` block that sets them: `field` names it), refused out of
  range: alpha >= 0, smoothing in [0, 1); 0 = off, also when absent."""
  alpha = float(hp.get("mixup_alpha", 0.0))
  smoothing = float(hp.get("label_smoothing", 0.0))
  if alpha < 0.0:
    raise ValueError(f"config.{field}.mixup_alpha={alpha}: expected >= 0 "
                     "(0 = off; Zhang et al. use 0.1-0.4, MAE 0.8)")
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"config.{field}.label_smoothing={smoothing}: expected "
                     "a share in [0, 1) (0 = off; MAE and DeiT use 0.1)")
  return alpha, smoothing


def label_targets(labels: Array, num_classes: int, multi_label: bool) -> Array:
  """[B, C] float targets: multi-hot labels as they are, class indices
  one-hot."""
  if multi_label:
    return labels.astype(jnp.float32)
  return jax.nn.one_hot(labels.reshape(-1), num_classes, dtype=jnp.float32)


def smoothed(targets: Array, smoothing: float, multi_label: bool) -> Array:
  """Label smoothing (Szegedy et al., CVPR 2016): (1 - e) * targets + e / K,
  K the classes (softmax) or 2 per label (sigmoid: toward 0.5)."""
  outcomes = 2 if multi_label else targets.shape[-1]
  return targets * (1.0 - smoothing) + smoothing / outcomes


def partners_within(rng: Array, rows: Array) -> Array:
  """[B] partner indices: a random permutation of the rows where `rows`
  [B] is 1, every other row its own partner."""
  n = rows.shape[0]
  index = jnp.arange(n)
  inside = rows > 0
  shuffled = jnp.argsort(jnp.where(inside, jax.random.uniform(rng, (n,)),
                                   2.0 + index))
  in_order = jnp.argsort(jnp.where(inside, index, n + index))
  return index.at[in_order].set(shuffled)


def mixed(rng: Array, images: Array, targets: Array, alpha: float,
          rows: Array | None = None) -> tuple[Array, Array]:
  """mixup (Zhang et al., ICLR 2018): one lam ~ Beta(alpha, alpha) per
  batch; each image blended with a partner from a permutation of the
  batch, lam * own + (1 - lam) * partner, its targets by the same lam.
  With `rows` [B] (1 = mixed), only those rows mix, among themselves;
  the others stay exactly as they were."""
  k_lam, k_perm = jax.random.split(rng)
  lam = jax.random.beta(k_lam, alpha, alpha)
  if rows is None:
    partner = jax.random.permutation(k_perm, images.shape[0])
    blend = lambda a: lam * a + (1.0 - lam) * a[partner]
  else:
    partner = partners_within(k_perm, rows)
    def blend(a):
      keep = (rows > 0).reshape((-1,) + (1,) * (a.ndim - 1))
      return jnp.where(keep, lam * a + (1.0 - lam) * a[partner], a)
  return blend(images), blend(targets)


def regularized_targets(rng: Array, images: Array, targets: Array,
                        alpha: float, smoothing: float, multi_label: bool
                        ) -> tuple[Array, Array]:
  """The views and [B, C] targets a stage-2 step trains on with label
  smoothing and mixup of `target_regularizers`' values (MAE's
  fine-tuning recipe uses both); unchanged when both are 0."""
  if smoothing:
    targets = smoothed(targets, smoothing, multi_label)
  if alpha:
    images, targets = mixed(rng, images, targets, alpha)
  return images, targets


def agreement(logits: Array, targets: Array, multi_label: bool) -> Array:
  """Share of predictions matching the targets' larger side (per label for
  multi-label): the train accuracy of soft or mixed targets."""
  if multi_label:
    return ((logits > 0) == (targets > 0.5)).mean(-1).astype(
        jnp.float32).mean()
  return (jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(
      jnp.float32).mean()


DROP_STREAM = 2  # the loss rng's fold for stochastic depth (1: mixup's)


def drop_keys(model: nnx.Module, rng: Array) -> dict:
  """The training call's stochastic-depth key: an encoder with it
  (`finetune.drop_path`) draws its dropped branches from `rng`'s own
  stream, so the views and mixup stay as they are; any other model is
  called as it always was (no key)."""
  if not getattr(getattr(model, "encoder", None), "drop_path_rate", 0.0):
    return {}
  return {"drop_key": jax.random.fold_in(rng, DROP_STREAM)}


def trained_logits(model: nnx.Module, x: Array, rng: Array) -> Array:
  """The classifier's logits in training."""
  return model(x, train=True, **drop_keys(model, rng))


def make_supervised_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Cross-entropy on the labels; with label smoothing or mixup
  (`regularized_targets`) on the soft targets they make, class weights
  weighing each row by its targets' expected weight."""
  policy = ctx.policy
  configured = hp.multi_label
  class_weights = single_label_class_weights(hp)
  alpha, smoothing = target_regularizers(hp)
  num_classes = ctx.info.num_classes if alpha or smoothing else None

  def loss_fn(model, batch, rng, extra):
    x = views.train_view(policy, rng, batch["image"])
    labels = batch["label"]
    multi_label = is_multi_label(labels) if configured is None else configured
    weights = None if multi_label else class_weights
    if not (alpha or smoothing):
      loss, accuracy = classification_loss(trained_logits(model, x, rng),
                                           labels, multi_label,
                                           class_weights=weights)
      return loss, {"train_acc": accuracy}, extra
    x, targets = regularized_targets(
        jax.random.fold_in(rng, 1), x,
        label_targets(labels, num_classes, multi_label), alpha, smoothing,
        multi_label)
    logits = trained_logits(model, x, rng)
    loss = soft_target_loss(logits, targets, multi_label, class_weights=weights)
    return loss, {"train_acc": agreement(logits, targets, multi_label)}, extra

  return loss_fn


def soft_target_loss(logits: Array, targets: Array, multi_label: bool,
                     temperature: float = 1.0,
                     class_weights: Array | None = None,
                     weights: Array | None = None) -> Array:
  """Cross-entropy against class probabilities `targets` [B, C] (a
  teacher's, already tempered), the student's logits divided by
  `temperature` (Hinton et al. 2015; SimCLRv2's distillation). Sigmoid BCE
  per label for multi-label targets. `class_weights` [C] weigh an example
  by its expected class weight, sum_c target_c * w_c, normalised as
  `classification_loss` does; `weights` [B] (1 = counted) average over
  those rows only (single-label)."""
  logits = logits.astype(jnp.float32) / temperature
  targets = targets.astype(jnp.float32)
  if multi_label:
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
  per_example = optax.softmax_cross_entropy(logits, targets)
  if class_weights is None and weights is None:
    return per_example.mean()
  weight = (jnp.ones_like(per_example) if class_weights is None else
            targets @ jnp.asarray(class_weights, jnp.float32))
  if weights is not None:
    weight = weight * weights
  return (per_example * weight).sum() / jnp.maximum(weight.sum(), 1e-12)


# A function-matching student's slot in `extra`: one {'params', 'rest'}
# per teacher network (`teacher_slot`), set by stage 2 before training.
TEACHERS = "teachers"


def teacher_slot(params, rest) -> dict:
  """A network's weights as a teacher slot: plain dicts of its params and
  of the rest (BatchNorm statistics), without a training-only projector
  (a FixMatch teacher's contrastive one: the student predicts without)."""
  predicting = lambda tree: {k: v for k, v in nnx.to_pure_dict(tree).items()
                             if k != "projector"}
  return {"params": predicting(params), "rest": predicting(rest)}


def init_teachers_extra(model: nnx.Module, hp: base.HParams,
                        ctx: base.RunContext) -> dict:
  """`hp.teachers` empty slots (zeros) shaped like `model`, which stage 2
  fills with the teachers' weights before the first step; none for fixed
  targets."""
  del ctx
  _, params, rest = nnx.split(model, nnx.Param, ...)
  empty = lambda a: jnp.zeros(a.shape, a.dtype)
  count = hp.get("teachers", 0)
  return {TEACHERS: tuple(jax.tree.map(empty, teacher_slot(params, rest))
                          for _ in range(count))} if count else {}


def teachers_on(model: nnx.Module, teachers: tuple, x: Array,
                temperature: float, multi_label: bool) -> Array:
  """[B, C] the teacher networks' tempered class probabilities on `x`,
  averaged: each is `model`'s graph with a slot's weights, in eval mode
  (BatchNorm running statistics), outside the gradient."""
  graphdef = nnx.graphdef(model)
  probs = []
  for slot in teachers:
    logits = nnx.merge(graphdef, slot["params"], slot["rest"], copy=True)(
        x, train=False).astype(jnp.float32) / temperature
    probs.append(jax.nn.sigmoid(logits) if multi_label
                 else jax.nn.softmax(logits))
  return jax.lax.stop_gradient(jnp.mean(jnp.stack(probs), axis=0))


def matched_targets(model: nnx.Module, batch: dict, x: Array, rng: Array,
                    hp: base.HParams, extra: dict) -> tuple[Array, Array]:
  """Function matching (Beyer et al., CVPR 2022, "Knowledge distillation:
  A good teacher is patient and consistent"): the teachers label the very
  view the student trains on, mixup included, so no two steps repeat a
  target. Labelled rows (batch['labelled'] 1) keep their labels: a mixed
  view's targets are its labelled share's labels (mixed by the same lam)
  plus the teachers' probabilities for the rest. Returns (views,
  targets)."""
  alpha, smoothing = target_regularizers(hp)
  labelled = batch["labelled"].astype(jnp.float32)[:, None]
  known = jnp.concatenate([batch["target"] * labelled, labelled], axis=-1)
  if alpha:
    x, known = mixed(jax.random.fold_in(rng, 1), x, known, alpha)
  teacher = teachers_on(model, extra[TEACHERS], x, hp.temperature,
                        bool(hp.multi_label))
  targets = known[:, :-1] + (1.0 - known[:, -1:]) * teacher
  if smoothing:
    targets = smoothed(targets, smoothing, bool(hp.multi_label))
  return x, targets


def make_distillation_loss(hp: base.HParams,
                           ctx: base.RunContext) -> base.LossFn:
  """The supervised step's loss with batch['target'] (soft) in place of
  labels: stage 2's self-distillation student (evaluation/distill.py);
  with `hp.teachers` > 0 the targets are the teachers' on the student's
  own views (`matched_targets`)."""
  policy, multi_label = ctx.policy, bool(hp.multi_label)
  class_weights = single_label_class_weights(hp)
  alpha, smoothing = target_regularizers(hp)
  matching = bool(hp.get("teachers", 0))  # 0, also when absent: fixed

  def loss_fn(model, batch, rng, extra):
    x = views.train_view(policy, rng, batch["image"])
    targets = batch["target"]
    if matching:
      x, targets = matched_targets(model, batch, x, rng, hp, extra)
    elif alpha or smoothing:
      x, targets = regularized_targets(jax.random.fold_in(rng, 1), x, targets,
                                       alpha, smoothing, multi_label)
    logits = trained_logits(model, x, rng)
    loss = soft_target_loss(logits, targets, multi_label, hp.temperature,
                            class_weights)
    return loss, {"train_agreement": agreement(logits, targets, multi_label)
                  }, extra

  return loss_fn


def consistency_loss(weak_probs: Array, strong_logits: Array,
                     unlabelled: Array, threshold: Array | float,
                     class_weights: Array | None = None
                     ) -> tuple[Array, Array]:
  """FixMatch's unlabelled term: cross-entropy of the strong view's logits
  against the weak view's argmax, kept where the weak view's top
  probability reaches `threshold` (a number, or [C]: the bar of each
  pseudo-label's class), averaged over the unlabelled rows (`unlabelled`
  [B], 1 = unlabelled) so the term grows as confidence spreads.
  `weak_probs` [B, C] are the weak view's class probabilities (aligned,
  when a distribution alignment is on). `class_weights` [C] weigh a row by
  its pseudo-label's class, the normaliser by the same weights. Returns
  (loss, share of unlabelled rows kept); no gradient flows through the
  weak view."""
  probs = jax.lax.stop_gradient(weak_probs).astype(jnp.float32)
  pseudo = jnp.argmax(probs, -1)
  bar = jnp.broadcast_to(jnp.asarray(threshold, jnp.float32),
                         probs.shape[-1:])[pseudo]
  kept = (probs.max(-1) >= bar).astype(jnp.float32) * unlabelled
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      strong_logits.astype(jnp.float32), pseudo)
  by_class = (jnp.ones_like(kept) if class_weights is None else
              jnp.asarray(class_weights, jnp.float32)[pseudo])
  loss = (per_example * by_class * kept).sum() / jnp.maximum(
      (by_class * unlabelled).sum(), 1e-12)
  return loss, kept.sum() / jnp.maximum(unlabelled.sum(), 1.0)


def unlabelled_mean(x: Array, unlabelled: Array) -> Array:
  """The mean of `x` [B, ...] over the unlabelled rows (0 when none)."""
  weights = unlabelled.reshape((-1,) + (1,) * (x.ndim - 1))
  return (x * weights).sum(0) / jnp.maximum(unlabelled.sum(), 1.0)


# Distribution alignment (ReMixMatch, Berthelot et al., ICLR 2020): the weak
# view's probabilities are multiplied by target / (the model's running mean
# prediction on unlabelled rows) and renormalised before they name a
# pseudo-label, so pseudo-labels follow the target's class proportions
# instead of the model's drift (`objective.alignment`, stage 2's
# `finetune.fixmatch_alignment`). Each target: (class_prior, num_classes)
# -> [C], refusing what it cannot use; 'none' leaves the probabilities as
# they are.
def class_prior_target(class_prior, num_classes: int) -> Array:
  """ReMixMatch's: the labelled data's class proportions."""
  if class_prior is None or len(class_prior) != num_classes:
    raise ValueError(f"objective 'fixmatch': alignment='class_prior' needs "
                     f"objective.class_prior, {num_classes} class "
                     f"proportions; got {class_prior!r}")
  return jnp.asarray(class_prior, jnp.float32)


def uniform_target(class_prior, num_classes: int) -> Array:
  """Every class equally often (for a model trained to balance classes)."""
  del class_prior
  return jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)


ALIGNMENT_TARGETS = {"none": None, "class_prior": class_prior_target,
                     "uniform": uniform_target}


def alignment_target(hp: base.HParams, num_classes: int) -> Array | None:
  """[C] target proportions of `hp.alignment`, or None when off; refuses
  an unknown name."""
  if hp.alignment not in ALIGNMENT_TARGETS:
    raise ValueError(f"objective 'fixmatch': alignment must be one of "
                     f"{sorted(ALIGNMENT_TARGETS)}, got {hp.alignment!r}")
  target = ALIGNMENT_TARGETS[hp.alignment]
  return None if target is None else target(hp.class_prior, num_classes)


def alignment_stats(num_classes: int) -> dict:
  """No batch seen: a zero moving sum and zero weight (bias-corrected, so
  the first batch's mean is the estimate, whatever the momentum)."""
  return {"mean": jnp.zeros((num_classes,), jnp.float32),
          "weight": jnp.zeros((), jnp.float32)}


def update_alignment(stats: dict, probs: Array, unlabelled: Array,
                     momentum: float) -> dict:
  """The moving average of the unlabelled rows' mean prediction (Adam's
  bias correction: the estimate is mean / weight); a batch without
  unlabelled rows leaves it as it was."""
  keep = jnp.where(unlabelled.sum() > 0, momentum, 1.0)
  return {"mean": keep * stats["mean"]
                  + (1.0 - keep) * unlabelled_mean(probs, unlabelled),
          "weight": keep * stats["weight"] + (1.0 - keep)}


def aligned(probs: Array, stats: dict, target: Array) -> Array:
  """probs * target / the model's running mean prediction, renormalised
  per row (ReMixMatch's distribution alignment)."""
  model_mean = stats["mean"] / jnp.maximum(stats["weight"], 1e-12)
  scaled = probs * target / jnp.maximum(model_mean, 1e-6)
  return scaled / scaled.sum(-1, keepdims=True)


# How FixMatch's pseudo-labelling bar is set, by name
# (`objective.threshold_rule`, stage 2's `finetune.fixmatch_threshold_rule`).
# Each rule: init(num_classes) -> running statistics (kept in the train
# state's `extra`); update(stats, weak probs [B, C], unlabelled [B],
# momentum) -> stats after this batch; bars(stats, threshold, num_classes)
# -> [C].
@dataclasses.dataclass(frozen=True)
class ThresholdRule:
  init: Callable[[int], dict]
  update: Callable[[dict, Array, Array, float], dict]
  bars: Callable[[dict, float, int], Array]


def fixed_bars(stats: dict, threshold: float, num_classes: int) -> Array:
  """FixMatch: one fixed confidence bar for every class."""
  del stats
  return jnp.full((num_classes,), threshold, jnp.float32)


def self_adaptive_stats(num_classes: int) -> dict:
  """FreeMatch's statistics before any batch: the uniform prediction."""
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return {"confidence": jnp.asarray(1.0 / num_classes, jnp.float32),
          "class_probs": uniform}


def update_self_adaptive(stats: dict, probs: Array, unlabelled: Array,
                         momentum: float) -> dict:
  """Moving averages over the unlabelled rows of the weak view's top
  probability and of its class probabilities (a batch without unlabelled
  rows leaves them as they were)."""
  keep = jnp.where(unlabelled.sum() > 0, momentum, 1.0)
  return {"confidence": keep * stats["confidence"]
                        + (1.0 - keep) * unlabelled_mean(probs.max(-1),
                                                         unlabelled),
          "class_probs": keep * stats["class_probs"]
                         + (1.0 - keep) * unlabelled_mean(probs, unlabelled)}


def self_adaptive_bars(stats: dict, threshold: float,
                       num_classes: int) -> Array:
  """FreeMatch's bars: the model's mean confidence on unlabelled rows,
  scaled per class by that class's mean probability over the largest
  one's, so classes the model rarely predicts (a minority class) get a
  lower bar. Rises from 1/C as the model grows confident; `threshold`
  is not used."""
  del threshold, num_classes
  class_probs = stats["class_probs"]
  return stats["confidence"] * class_probs / class_probs.max()


THRESHOLD_RULES = {
    "fixed": ThresholdRule(
        init=lambda num_classes: {},
        update=lambda stats, probs, unlabelled, momentum: stats,
        bars=fixed_bars),
    "self_adaptive": ThresholdRule(
        init=self_adaptive_stats, update=update_self_adaptive,
        bars=self_adaptive_bars),
}


def threshold_rule(name: str) -> ThresholdRule:
  if name not in THRESHOLD_RULES:
    raise ValueError(f"objective 'fixmatch': threshold_rule must be one of "
                     f"{sorted(THRESHOLD_RULES)}, got {name!r}")
  return THRESHOLD_RULES[name]


def init_fixmatch_extra(model: nnx.Module, hp: base.HParams,
                        ctx: base.RunContext) -> dict:
  """The threshold rule's statistics and, with an alignment on, the running
  mean prediction it divides by."""
  del model
  num_classes = ctx.info.num_classes
  extra = {"pseudo_label_stats": threshold_rule(hp.threshold_rule).init(
      num_classes)}
  if alignment_target(hp, num_classes) is not None:
    extra["alignment_stats"] = alignment_stats(num_classes)
  return extra


def checked_contrastive(weight: float, temperature: float,
                        mixup_alpha: float, *, prefix: str,
                        fields: tuple[str, str, str]) -> tuple[float, float]:
  """(weight, temperature) of FixMatch's contrastive term (weight 0 = off),
  refused below 0, at a temperature <= 0, and beside mixup of the labelled
  rows (a mixed weak view has no single positive). `prefix` and `fields`
  (weight, temperature, mixup) name them as the caller's config does."""
  weight_field, temperature_field, mixup_field = fields
  weight, temperature = float(weight), float(temperature)
  if weight < 0.0:
    raise ValueError(f"{prefix}{weight_field}={weight}: expected >= 0 "
                     "(0 = off)")
  if weight and not temperature > 0.0:
    raise ValueError(f"{prefix}{temperature_field}={temperature}: "
                     "expected > 0")
  if weight and float(mixup_alpha):
    raise ValueError(f"{prefix}{weight_field} and {mixup_field} exclude each "
                     "other (a mixed weak view is no positive of its strong "
                     "view); set one to 0")
  return weight, temperature


def contrastive_weight(hp) -> float:
  """The 'fixmatch' objective's `contrastive_weight`, checked."""
  return checked_contrastive(
      hp.contrastive_weight, hp.contrastive_temperature,
      hp.labelled_mixup_alpha, prefix="objective 'fixmatch': ",
      fields=("contrastive_weight", "contrastive_temperature",
              "labelled_mixup_alpha"))[0]


def build_fixmatch_classifier(hp: base.HParams, ctx: base.RunContext,
                              rngs: nnx.Rngs) -> Classifier:
  """The classifier, with a projector to `contrastive_dim` beside the head
  when the contrastive term is on; it starts fresh, the pretraining's
  projector is not read."""
  return Classifier(ctx.encoder(rngs), ctx.info.num_classes, rngs=rngs,
                    head_init=hp.head_init,
                    projector_dim=(int(hp.contrastive_dim)
                                   if contrastive_weight(hp) else None))


def labelled_mixup_alpha(hp) -> float:
  """FixMatch's `labelled_mixup_alpha` (0 = off), refused below 0."""
  alpha = float(hp.labelled_mixup_alpha)
  if alpha < 0.0:
    raise ValueError(f"objective 'fixmatch': labelled_mixup_alpha={alpha}: "
                     "expected >= 0 (0 = off)")
  return alpha


def make_fixmatch_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Labelled rows (batch['labelled'] = 1) against their labels on the weak
  view; unlabelled rows (their label column is -1, never read) against the
  weak view's confident predictions on a strong view, confident by the
  bars of `hp.threshold_rule`, after `hp.alignment`'s distribution
  alignment. With `hp.labelled_mixup_alpha` the labelled rows' weak views
  are mixed among themselves (`mixed`), the unlabelled ones untouched.
  With `hp.contrastive_weight` every row's weak and strong views are also
  each other's positive under NT-Xent through the projector (S4L's joint
  objective, Zhai et al. 2019), so stage 2 keeps the pretext task while
  it fits the labels. Both views go through the model as one batch, so
  BatchNorm sees both."""
  if hp.multi_label:
    raise ValueError("objective 'fixmatch' needs a single-label task; "
                     "objective.multi_label is True")
  if any(target_regularizers(hp)):
    raise ValueError("objective 'fixmatch' takes no mixup_alpha or "
                     "label_smoothing (its unlabelled rows have no label to "
                     "mix or smooth); labelled_mixup_alpha mixes its "
                     "labelled rows")
  labelled_alpha = labelled_mixup_alpha(hp)
  contrastive = contrastive_weight(hp)
  weak = ctx.policy
  strong = base.view_policy({"policy": hp.strong_policy}, ctx.spatial_dims)
  class_weights = hp.class_weights
  num_classes = ctx.info.num_classes
  rule = threshold_rule(hp.threshold_rule)
  target = alignment_target(hp, num_classes)

  def labelled_loss(weak_logits, labels, targets, labelled):
    """(loss, accuracy) on the labelled rows: against their labels, or
    with mixup against the mixed `targets`."""
    if targets is None:
      return classification_loss(weak_logits, labels, False,
                                 weights=labelled, class_weights=class_weights)
    loss = soft_target_loss(weak_logits, targets, False,
                            class_weights=class_weights, weights=labelled)
    hits = jnp.argmax(weak_logits, -1) == jnp.argmax(targets, -1)
    return loss, (hits * labelled).sum() / jnp.maximum(labelled.sum(), 1.0)

  def loss_fn(model, batch, rng, extra):
    k_weak, k_strong = jax.random.split(rng)
    images, labels = batch["image"], batch["label"]
    labelled = batch["labelled"].astype(jnp.float32)
    unlabelled = 1.0 - labelled
    weak_x, targets = views.train_view(weak, k_weak, images), None
    if labelled_alpha:
      weak_x, targets = mixed(
          jax.random.fold_in(rng, 1), weak_x,
          label_targets(jnp.maximum(labels, 0), num_classes, False),
          labelled_alpha, rows=labelled)
    x = jnp.concatenate([weak_x, views.train_view(strong, k_strong, images)])
    if contrastive:
      logits, z = model.logits_and_projection(x, train=True,
                                              **drop_keys(model, rng))
      contrast, contrast_acc = nt_xent(*jnp.split(z, 2),
                                       hp.contrastive_temperature)
    else:
      logits = trained_logits(model, x, rng)
    weak_logits, strong_logits = jnp.split(logits, 2)
    supervised, accuracy = labelled_loss(weak_logits, labels, targets,
                                         labelled)
    weak_probs = jax.nn.softmax(
        jax.lax.stop_gradient(weak_logits).astype(jnp.float32))
    extra = dict(extra)
    if target is not None:
      extra["alignment_stats"] = update_alignment(
          extra["alignment_stats"], weak_probs, unlabelled,
          hp.alignment_momentum)
      weak_probs = aligned(weak_probs, extra["alignment_stats"], target)
    extra["pseudo_label_stats"] = rule.update(
        extra["pseudo_label_stats"], weak_probs, unlabelled,
        hp.threshold_momentum)
    bars = rule.bars(extra["pseudo_label_stats"], hp.threshold,
                     weak_probs.shape[-1])
    unsupervised, kept = consistency_loss(weak_probs, strong_logits,
                                          unlabelled, bars, class_weights)
    loss = supervised + hp.unlabelled_weight * unsupervised
    logs = {"train_acc": accuracy, "unlabelled_loss": unsupervised,
            "pseudo_label_rate": kept, "pseudo_label_bar": bars.mean()}
    if contrastive:
      loss = loss + contrastive * contrast
      logs.update(contrastive_loss=contrast, contrastive_acc=contrast_acc)
    return loss, logs, extra

  return loss_fn


base.register(base.Objective(
    name="supervised", category="supervised",
    paper="cross-entropy on labels (the review's from-scratch / supervised baseline)",
    # multi_label None: from the labels' shape; class_weights [C] or None;
    # head_init: zeros | torch_default (models/heads.py HEAD_INITS);
    # mixup_alpha, label_smoothing: 0 = off (`regularized_targets`; mixup
    # draws in-batch partners, so with it on grad accumulation is inexact).
    hparams=dict(multi_label=None, class_weights=None, head_init="zeros",
                 mixup_alpha=0.0, label_smoothing=0.0),
    ranks=(2, 3),
    accumulates_exactly=True,
    build_model=build_classifier, make_loss=make_supervised_loss))

base.register(base.Objective(
    name="distillation", category="supervised",
    paper="Hinton et al. 2015, \"Distilling the Knowledge in a Neural "
          "Network\"; Chen et al., NeurIPS 2020, \"Big Self-Supervised "
          "Models are Strong Semi-Supervised Learners\" (SimCLRv2)",
    # targets: batch['target'] [B, C], class probabilities; temperature
    # divides the student's logits (the teacher's are tempered by the
    # caller); class_weights, head_init, mixup_alpha and label_smoothing
    # (applied to the targets) as for 'supervised'. teachers = k > 0:
    # function matching, k teacher networks in `extra` label each view
    # (`matched_targets`; batch['labelled'] marks the rows whose targets
    # are labels).
    hparams=dict(multi_label=False, class_weights=None, head_init="zeros",
                 mixup_alpha=0.0, label_smoothing=0.0, temperature=1.0,
                 teachers=0),
    reads=lambda hp: (("target", "labelled") if hp.get("teachers", 0)
                      else ("target",)),
    init_extra=init_teachers_extra,
    ranks=(2, 3),
    accumulates_exactly=True,
    build_model=build_classifier, make_loss=make_distillation_loss))

base.register(base.Objective(
    name="fixmatch", category="supervised",
    paper="Sohn et al., NeurIPS 2020, \"FixMatch: Simplifying Semi-Supervised "
          "Learning with Consistency and Confidence\"",
    # batch['labelled'] [B] (1 = labelled); threshold on the weak view's
    # top probability (the 'fixed' rule's bar); threshold_rule: a name in
    # THRESHOLD_RULES ('self_adaptive': FreeMatch, Wang et al., ICLR 2023,
    # its bars moving averages with threshold_momentum per step);
    # unlabelled_weight: FixMatch's lambda_u; strong_policy: the augment
    # preset of the strong view (the weak one is the run's); alignment: a
    # name in ALIGNMENT_TARGETS (ReMixMatch's distribution alignment, its
    # running mean with alignment_momentum per step; 'class_prior' reads
    # class_prior, [C] proportions). Single-label only; class_weights and
    # head_init as for 'supervised'; mixup_alpha and label_smoothing must
    # stay 0; labelled_mixup_alpha: mixup among the labelled rows (0 = off);
    # contrastive_weight: NT-Xent between the two views at
    # contrastive_temperature, through a fresh projector to contrastive_dim
    # (0 = off: no projector).
    hparams=dict(multi_label=False, class_weights=None, head_init="zeros",
                 mixup_alpha=0.0, label_smoothing=0.0,
                 labelled_mixup_alpha=0.0, contrastive_weight=0.0,
                 contrastive_temperature=0.1, contrastive_dim=128,
                 threshold=0.95, threshold_rule="fixed",
                 threshold_momentum=0.999, unlabelled_weight=1.0,
                 strong_policy="simclr", alignment="none",
                 alignment_momentum=0.99, class_prior=None),
    reads=lambda hp: ("labelled",),
    ranks=(2, 3),
    build_model=build_fixmatch_classifier, make_loss=make_fixmatch_loss,
    init_extra=init_fixmatch_extra))
