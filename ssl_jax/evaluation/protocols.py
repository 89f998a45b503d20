"""Stage-2 protocols: how a pretrained encoder is turned into a classifier.

Registered by name, chosen by `finetune.protocols`:
- `linear`: logistic regression on frozen, globally pooled features (Adam,
  early stopping on val);
- `knn`: weighted cosine kNN on the same frozen features;
- `finetune`: end-to-end training of encoder + linear head;
- `scratch`: the `finetune` architecture, steps and optimizer from random init;
- `logreg`: the `linear` model solved to convergence by full-batch L-BFGS,
  with an L2 sweep chosen on val (`finetune.logreg_*`);
- `early_layer`: the `linear` probe on an earlier stage's pooled features
  (`finetune.early_layer`, e.g. 'stage3'; ViT: 'block6');
- `last_k`: `finetune` training only the last `finetune.last_k` stages/blocks
  and the head (the rest frozen by an optax mask on parameter paths);
- `combine`: the `linear` probe on the concatenated frozen features of
  several encoders (Truong et al. 2021, "How transferable are self-supervised
  features in medical image classification tasks?"); the benchmark job
  supplies the other encoders.
Without a pretrained encoder (`encoder_weights=None`, the benchmark's
`none` method) every protocol runs on a seeded random-init encoder, so
`finetune` is then the from-scratch baseline. Model selection (weight decay,
L2, best step) uses val AUROC; test is scored once, with the selected model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ssl_jax.evaluation import classifier, probes
from ssl_jax.evaluation.encoder_context import (EVAL_SPLITS, EncoderContext,
                                                Predictions)
from ssl_jax.registry import Registry

Protocol = Callable[[EncoderContext, np.ndarray, int], Predictions]
PROTOCOLS: Registry[Protocol] = Registry("fine-tuning protocol")


def _linear_on(ctx: EncoderContext, feats: Callable[[str], np.ndarray],
               train_idx: np.ndarray, seed: int) -> Predictions:
  ft = ctx.config.finetune
  probe = probes.fit_linear_probe(
      feats("train")[train_idx], ctx.labels("train")[train_idx],
      feats("val"), ctx.labels("val"), num_classes=ctx.info.num_classes,
      task=ctx.task, weight_decays=tuple(ft.linear_weight_decays), seed=seed)
  return Predictions({s: probe.predict_proba(feats(s)) for s in EVAL_SPLITS},
                     {"weight_decay": probe.weight_decay, "epoch": probe.epoch})


@PROTOCOLS.register("linear")
def linear_probe(ctx: EncoderContext, train_idx: np.ndarray,
                 seed: int) -> Predictions:
  return _linear_on(ctx, ctx.features, train_idx, seed)


@PROTOCOLS.register("knn")
def knn_probe(ctx: EncoderContext, train_idx: np.ndarray,
              seed: int) -> Predictions:
  del seed  # deterministic
  ft = ctx.config.finetune
  return Predictions({split: probes.knn_predict(
      ctx.features("train")[train_idx], ctx.labels("train")[train_idx],
      ctx.features(split), num_classes=ctx.info.num_classes, k=ft.knn_k,
      temperature=ft.knn_temperature) for split in EVAL_SPLITS})


@PROTOCOLS.register("finetune")
def end_to_end(ctx: EncoderContext, train_idx: np.ndarray,
               seed: int) -> Predictions:
  return classifier.trainer_for(ctx, len(train_idx)).run(
      ctx, train_idx, seed, weights=ctx.encoder_weights,
      name=f"finetune_n{len(train_idx)}_s{seed}")


@PROTOCOLS.register("scratch")
def from_scratch(ctx: EncoderContext, train_idx: np.ndarray,
                 seed: int) -> Predictions:
  return classifier.trainer_for(ctx, len(train_idx)).run(
      ctx, train_idx, seed, weights=None,
      name=f"scratch_n{len(train_idx)}_s{seed}")


@PROTOCOLS.register("logreg")
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


@PROTOCOLS.register("early_layer")
def early_layer_probe(ctx: EncoderContext, train_idx: np.ndarray,
                      seed: int) -> Predictions:
  layer = ctx.config.finetune.early_layer
  out = _linear_on(ctx, lambda s: ctx.features(s, layer), train_idx, seed)
  return dataclasses.replace(out, info=dict(out.info, layer=layer))


@PROTOCOLS.register("last_k")
def last_k_blocks(ctx: EncoderContext, train_idx: np.ndarray,
                  seed: int) -> Predictions:
  k = ctx.config.finetune.last_k
  out = classifier.trainer_for(ctx, len(train_idx), k).run(
      ctx, train_idx, seed, weights=ctx.encoder_weights,
      name=f"last{k}_n{len(train_idx)}_s{seed}")
  return dataclasses.replace(out, info=dict(out.info, last_k=k))


@PROTOCOLS.register("combine")
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
