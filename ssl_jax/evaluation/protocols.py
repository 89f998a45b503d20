"""Stage-2 protocols: how a pretrained encoder is turned into a classifier.

Registered by name, chosen by `finetune.protocols`:
- `linear`: logistic regression on frozen, globally pooled features (Adam,
  early stopping on val);
- `knn`: weighted cosine kNN on the same frozen features;
- `finetune`: end-to-end training of encoder + linear head;
- `scratch`: the `finetune` architecture, steps and optimizer from random init;
- `distill`: `finetune` (or `fixmatch`: `finetune.distill_teacher`), then
  a student from the same encoder trained on every train image against
  that teacher's probabilities (SimCLRv2's self-distillation on the
  unlabelled rest; distill.py);
  `scratch_distill`: the same from random init, its control;
- `fixmatch`: `finetune` on every train image, the unlabelled ones against
  the model's own confident predictions on a stronger view (Sohn et al.
  2020; `finetune.fixmatch_*`); `scratch_fixmatch`: its control;
- `logreg`: the `linear` model solved to convergence by full-batch L-BFGS,
  with an L2 sweep chosen on val (`finetune.logreg_*`);
- `early_layer`: the `linear` probe on an earlier stage's pooled features
  (`finetune.early_layer`, e.g. 'stage3'; ViT: 'block6');
- `last_k`: `finetune` training only the last `finetune.last_k` stages/blocks
  and the head (the rest frozen by an optax mask on parameter paths);
- `combine`: the `linear` probe on the concatenated frozen features of
  several encoders (Truong et al. 2021, "How transferable are self-supervised
  features in medical image classification tasks?"); the benchmark job
  supplies the other encoders;
- `zero_shot`: no training; class prompts embedded by the pretrained text
  tower against the images (CLIP), for image-text pretraining only
  (evaluation/zero_shot.py).
A protocol may declare a `check(ctx)`: the finetune job calls it before any
cell runs, so a protocol that cannot apply is refused first, by name.
Without a pretrained encoder (`encoder_weights=None`, the benchmark's
`none` method) every protocol runs on a seeded random-init encoder, so
`finetune` is then the from-scratch baseline. Model selection (weight decay,
L2, best step) uses val AUROC; test is scored once, with the selected model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ssl_jax.evaluation import classifier, distill, probes, zero_shot
from ssl_jax.evaluation.encoder_context import (EVAL_SPLITS, EncoderContext,
                                                Predictions)
from ssl_jax.objectives import supervised
from ssl_jax.registry import Registry

ProtocolFn = Callable[[EncoderContext, np.ndarray, int], Predictions]

# What a protocol trains, in the order plots show them: plot (c) contrasts
# end-to-end fine-tuning with frozen features.
END_TO_END, PARTIAL, FROZEN = "end-to-end", "partial fine-tune", "frozen"
KINDS = (END_TO_END, PARTIAL, FROZEN)


def _applies_always(ctx: EncoderContext) -> None:
  del ctx


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A registered protocol: its function, what it trains (one of KINDS),
  the label tables give it, `check(ctx)`, raising before any cell runs
  when it cannot apply, and whether it reads a pretrained encoder (the
  from-scratch controls do not). Called like the function."""
  fn: ProtocolFn
  kind: str
  label: str
  check: Callable[[EncoderContext], None] = _applies_always
  needs_encoder: bool = True

  def __call__(self, ctx: EncoderContext, train_idx: np.ndarray,
               seed: int) -> Predictions:
    return self.fn(ctx, train_idx, seed)


PROTOCOLS: Registry[Protocol] = Registry("fine-tuning protocol")


def register(name: str, *, kind: str, label: str,
             check: Callable[[EncoderContext], None] = _applies_always,
             needs_encoder: bool = True
             ) -> Callable[[ProtocolFn], ProtocolFn]:
  """Decorator: `fn` becomes protocol `name`. Its kind and label are said
  here, once; reports and plots read them from the registry. Tables list
  protocols in registration order."""
  if kind not in KINDS:
    raise ValueError(f"protocol {name!r} has kind {kind!r}; allowed: "
                     f"{', '.join(KINDS)}")

  def add(fn: ProtocolFn) -> ProtocolFn:
    PROTOCOLS.add(name, Protocol(fn, kind, label, check, needs_encoder))
    return fn
  return add


def labels() -> dict[str, str]:
  """name -> table label, in registration order (the order of tables)."""
  return {name: p.label for name, p in PROTOCOLS.items()}


def kinds() -> dict[str, str]:
  """name -> what it trains, ordered by KINDS, then registration (the
  order of plots)."""
  entries = sorted(PROTOCOLS.items(), key=lambda e: KINDS.index(e[1].kind))
  return {name: p.kind for name, p in entries}


def _linear_on(ctx: EncoderContext, feats: Callable[[str], np.ndarray],
               train_idx: np.ndarray, seed: int) -> Predictions:
  probe = ctx.fit_linear_probe(feats("train")[train_idx], train_idx,
                               feats("val"), seed)
  return Predictions({s: probe.predict_proba(feats(s)) for s in EVAL_SPLITS},
                     {"weight_decay": probe.weight_decay, "epoch": probe.epoch})


@register("linear", kind=FROZEN,
          label="SSL + linear probe (frozen)")
def linear_probe(ctx: EncoderContext, train_idx: np.ndarray,
                 seed: int) -> Predictions:
  return _linear_on(ctx, ctx.features, train_idx, seed)


@register("knn", kind=FROZEN,
          label="SSL + kNN (frozen)")
def knn_probe(ctx: EncoderContext, train_idx: np.ndarray,
              seed: int) -> Predictions:
  del seed  # deterministic
  ft = ctx.config.finetune
  return Predictions({split: probes.knn_predict(
      ctx.features("train")[train_idx], ctx.labels("train")[train_idx],
      ctx.features(split), num_classes=ctx.info.num_classes, k=ft.knn_k,
      temperature=ft.knn_temperature) for split in EVAL_SPLITS})


def _fine_tuned(ctx: EncoderContext, train_idx: np.ndarray, seed: int, *,
                weights, name: str,
                score: tuple[str, ...] = EVAL_SPLITS) -> Predictions:
  """Encoder + linear head trained end to end on the labelled subset."""
  return classifier.trainer_for(
      ctx, len(train_idx), pretrained=weights is not None).run(
      ctx, train_idx, seed, weights=weights, name=name, score=score)


@register("finetune", kind=END_TO_END,
          label="SSL + end-to-end fine-tune")
def end_to_end(ctx: EncoderContext, train_idx: np.ndarray,
               seed: int) -> Predictions:
  return _fine_tuned(ctx, train_idx, seed, weights=ctx.encoder_weights,
                     name=f"finetune_n{len(train_idx)}_s{seed}")


@register("scratch", kind=END_TO_END, needs_encoder=False,
          label="from scratch (same net, same budget)")
def from_scratch(ctx: EncoderContext, train_idx: np.ndarray,
                 seed: int) -> Predictions:
  return _fine_tuned(ctx, train_idx, seed, weights=None,
                     name=f"scratch_n{len(train_idx)}_s{seed}")


def _fixmatch(ctx: EncoderContext, train_idx: np.ndarray, seed: int, *,
              weights, name: str,
              score: tuple[str, ...] = EVAL_SPLITS) -> Predictions:
  """`finetune` on every train image at once: the labelled subset against
  its labels, the rest against the model's own confident predictions on a
  stronger view (objective 'fixmatch'); no other label is read."""
  ft = ctx.config.finetune
  labels = ctx.labels("train")
  alignment = ft.get("fixmatch_alignment", "none")
  contrastive_weight, contrastive_temperature = fixmatch_contrastive(ft)
  trainer = classifier.trainer_for(ctx, len(labels), objective=dict(
      name="fixmatch", threshold=float(ft.fixmatch_threshold),
      threshold_rule=ft.get("fixmatch_threshold_rule", "fixed"),
      threshold_momentum=float(ft.get("fixmatch_threshold_momentum", 0.999)),
      unlabelled_weight=float(ft.fixmatch_weight),
      strong_policy=ft.fixmatch_strong_policy,
      # The supervised targets' regularizers are for the other protocols
      # (and a FixMatch teacher's distilled students): never FixMatch's.
      mixup_alpha=0.0, label_smoothing=0.0,
      labelled_mixup_alpha=fixmatch_mixup_alpha(ft),
      contrastive_weight=contrastive_weight,
      contrastive_temperature=contrastive_temperature,
      alignment=alignment,
      alignment_momentum=float(ft.get("fixmatch_alignment_momentum", 0.99)),
      # Only the labelled rows' proportions, and only where read (a trainer
      # compiles per distinct objective).
      class_prior=classifier.class_proportions(labels[train_idx],
                                              ctx.info.num_classes)
      if alignment == "class_prior" else None),
      pretrained=weights is not None)
  feed = classifier.semi_supervised_feed(
      labels, train_idx, classifier.fixmatch_labelled_share(ft))
  out = trainer.run(ctx, train_idx, seed, weights=weights, name=name,
                    feed=feed, score=score)
  return dataclasses.replace(out, info=dict(
      out.info, rows_trained=len(labels),
      labelled_share=float(feed.extra["labelled"].mean())))


def fixmatch_mixup_alpha(ft) -> float:
  """`finetune.fixmatch_mixup_alpha` (absent: 0 = off): mixup among
  FixMatch's labelled rows, wherever FixMatch runs; refused below 0."""
  alpha = float(ft.get("fixmatch_mixup_alpha", 0.0))
  if alpha < 0.0:
    raise ValueError(f"config.finetune.fixmatch_mixup_alpha={alpha}: "
                     "expected >= 0 (0 = off)")
  return alpha


def fixmatch_contrastive(ft) -> tuple[float, float]:
  """(`finetune.fixmatch_contrastive_weight`, `..._temperature`), absent:
  (0 = off, 0.1): FixMatch's joint NT-Xent term, checked as the objective
  checks it (`supervised.checked_contrastive`)."""
  return supervised.checked_contrastive(
      ft.get("fixmatch_contrastive_weight", 0.0),
      ft.get("fixmatch_contrastive_temperature", 0.1),
      fixmatch_mixup_alpha(ft), prefix="config.finetune.",
      fields=("fixmatch_contrastive_weight",
              "fixmatch_contrastive_temperature", "fixmatch_mixup_alpha"))


def _fixmatch_applies(ctx: EncoderContext) -> None:
  """Before any FixMatch run (a cell's, or a distillation teacher's): a
  single-label task, a labelled share in range, a known threshold rule and
  alignment."""
  if ctx.info.multi_label:
    raise ValueError("FixMatch (protocols 'fixmatch', 'scratch_fixmatch', "
                     "or finetune.distill_teacher='fixmatch') needs a "
                     f"single-label task; {ctx.config.data.name} is "
                     "multi-label")
  ft = ctx.config.finetune
  classifier.fixmatch_labelled_share(ft)  # refuses a share out of range
  fixmatch_mixup_alpha(ft)  # refuses a negative alpha
  fixmatch_contrastive(ft)  # refuses a negative weight or bad mix
  for field, default, names in (
      ("fixmatch_threshold_rule", "fixed", supervised.THRESHOLD_RULES),
      ("fixmatch_alignment", "none", supervised.ALIGNMENT_TARGETS)):
    name = ft.get(field, default)
    if name not in names:
      raise ValueError(f"config.finetune.{field} must be one of "
                       f"{sorted(names)}, got {name!r}")


def _fixmatch_cell_applies(ctx: EncoderContext) -> None:
  """A FixMatch cell also refuses the supervised targets' regularizers,
  which it would not apply (a FixMatch teacher's students do)."""
  _fixmatch_applies(ctx)
  if any(supervised.target_regularizers(ctx.config.finetune,
                                        field="finetune")):
    raise ValueError("protocols 'fixmatch' and 'scratch_fixmatch' take no "
                     "finetune.mixup_alpha or label_smoothing: set both to 0 "
                     "and run the other protocols with them in another job "
                     "(finetune.fixmatch_mixup_alpha mixes FixMatch's "
                     "labelled rows)")


# Who labels the unlabelled train images for `distill`'s students
# (`finetune.distill_teacher`): each runs from the protocol's own weights.
DISTILL_TEACHERS = {"finetune": _fine_tuned, "fixmatch": _fixmatch}


def _distill_teacher(ctx: EncoderContext):
  name = ctx.config.finetune.get("distill_teacher", "finetune")
  if name not in DISTILL_TEACHERS:
    raise ValueError(f"config.finetune.distill_teacher must be one of "
                     f"{sorted(DISTILL_TEACHERS)}, got {name!r}")
  return DISTILL_TEACHERS[name]


def _distill_applies(ctx: EncoderContext) -> None:
  ft = ctx.config.finetune
  distill.teacher_count(ft)  # refuses fewer than one
  encoders = 1 + len(ft.get("distill_teacher_pretrained", ()))
  distill.function_matching(ft, encoders)  # refuses an unknown mode or mix
  distill.student_from_teacher(ft, encoders)  # ... or a teacher ensemble
  distill.student_epochs(ft)  # refuses a negative length
  if _distill_teacher(ctx) is _fixmatch:
    _fixmatch_applies(ctx)


def _scratch_distill_applies(ctx: EncoderContext) -> None:
  """A from-scratch control learns from no pretraining, its teachers'
  included."""
  _distill_applies(ctx)
  if ctx.teacher_encoders or ctx.config.finetune.get(
      "distill_teacher_pretrained", ()):
    raise ValueError("protocol 'scratch_distill' is the from-scratch "
                     "control: its teachers train from scratch too, so it "
                     "takes no finetune.distill_teacher_pretrained; run it "
                     "in another job without that field")


@register("distill", kind=END_TO_END, check=_distill_applies,
          label="SSL + fine-tune, self-distilled on unlabelled images")
def self_distilled(ctx: EncoderContext, train_idx: np.ndarray,
                   seed: int) -> Predictions:
  return distill.self_distill(ctx, train_idx, seed,
                              weights=ctx.encoder_weights,
                              teach=_distill_teacher(ctx),
                              teacher_encoders=ctx.teacher_encoders,
                              name=f"distill_n{len(train_idx)}_s{seed}")


@register("scratch_distill", kind=END_TO_END, check=_scratch_distill_applies,
          needs_encoder=False,
          label="from scratch, self-distilled on unlabelled images")
def scratch_self_distilled(ctx: EncoderContext, train_idx: np.ndarray,
                           seed: int) -> Predictions:
  return distill.self_distill(ctx, train_idx, seed, weights=None,
                              teach=_distill_teacher(ctx),
                              name=f"scratch_distill_n{len(train_idx)}_s{seed}")


@register("fixmatch", kind=END_TO_END, check=_fixmatch_cell_applies,
          label="SSL + fine-tune with FixMatch on unlabelled images")
def fixmatch(ctx: EncoderContext, train_idx: np.ndarray,
             seed: int) -> Predictions:
  return _fixmatch(ctx, train_idx, seed, weights=ctx.encoder_weights,
                   name=f"fixmatch_n{len(train_idx)}_s{seed}")


@register("scratch_fixmatch", kind=END_TO_END, check=_fixmatch_cell_applies,
          needs_encoder=False,
          label="from scratch, FixMatch on unlabelled images")
def scratch_fixmatch(ctx: EncoderContext, train_idx: np.ndarray,
                     seed: int) -> Predictions:
  return _fixmatch(ctx, train_idx, seed, weights=None,
                   name=f"scratch_fixmatch_n{len(train_idx)}_s{seed}")


@register("logreg", kind=FROZEN,
          label="SSL + logistic regression, L-BFGS (frozen)")
def logreg_probe(ctx: EncoderContext, train_idx: np.ndarray,
                 seed: int) -> Predictions:
  del seed  # deterministic: full batch from zero
  ft = ctx.config.finetune
  probe = probes.fit_logreg(
      ctx.features("train")[train_idx], ctx.labels("train")[train_idx],
      ctx.features("val"), ctx.labels("val"), num_classes=ctx.info.num_classes,
      task=ctx.task, l2s=tuple(ft.logreg_l2s), max_iters=ft.logreg_max_iters,
      tol=ft.logreg_tol, memory_size=ft.logreg_memory)
  return Predictions(
      {s: probe.predict_proba(ctx.features(s)) for s in EVAL_SPLITS},
      {"l2": probe.weight_decay, "iterations": probe.epoch,
       "converged": probe.converged})


@register("early_layer", kind=FROZEN,
          label="SSL + linear probe on an earlier layer (frozen)")
def early_layer_probe(ctx: EncoderContext, train_idx: np.ndarray,
                      seed: int) -> Predictions:
  layer = ctx.config.finetune.early_layer
  out = _linear_on(ctx, lambda s: ctx.features(s, layer), train_idx, seed)
  return dataclasses.replace(out, info=dict(out.info, layer=layer))


@register("last_k", kind=PARTIAL,
          label="SSL + fine-tune of the last k blocks")
def last_k_blocks(ctx: EncoderContext, train_idx: np.ndarray,
                  seed: int) -> Predictions:
  k = ctx.config.finetune.last_k
  out = classifier.trainer_for(ctx, len(train_idx), k).run(
      ctx, train_idx, seed, weights=ctx.encoder_weights,
      name=f"last{k}_n{len(train_idx)}_s{seed}")
  return dataclasses.replace(out, info=dict(out.info, last_k=k))


@register("combine", kind=FROZEN,
          label="combined SSL features + linear probe (frozen)")
def combined_probe(ctx: EncoderContext, train_idx: np.ndarray,
                   seed: int) -> Predictions:
  if not ctx.peers:
    raise ValueError("protocol 'combine' concatenates the features of several "
                     "encoders: run it from the benchmark job, listing them "
                     "in config.benchmark.combine")
  encoders = (ctx,) + ctx.peers
  return _linear_on(
      ctx, lambda s: np.concatenate([c.features(s) for c in encoders], axis=1),
      train_idx, seed)


@register("zero_shot", kind=FROZEN, check=zero_shot.check,
          label="zero-shot from class prompts (no labels)")
def zero_shot_prompts(ctx: EncoderContext, train_idx: np.ndarray,
                      seed: int) -> Predictions:
  """Trains nothing: the label subset and seed change nothing."""
  del train_idx, seed
  zero_shot.check(ctx)  # the benchmark job runs no protocol checks first
  model, vocab = zero_shot.load_model(ctx.pretrained, ctx.info)
  prompts = zero_shot.class_prompts(ctx.config, ctx.info)
  embedded = zero_shot.embed_prompts(model, vocab, prompts)
  return Predictions(
      {s: zero_shot.class_probabilities(
          model, embedded, ctx.data[s][0], mesh=ctx.mesh,
          batch_size=ctx.config.finetune.eval_batch_size) for s in EVAL_SPLITS},
      {"prompts": prompts, "labels_used": 0})
