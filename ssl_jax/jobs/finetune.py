"""Stage 2: classifiers on a pretrained encoder vs the same net from scratch.

Protocols (registered by name, chosen by `finetune.protocols`):
- `linear`: logistic regression on frozen, globally pooled features;
- `knn`: weighted cosine kNN on the same frozen features;
- `finetune`: end-to-end training of encoder + linear head;
- `scratch`: the same architecture, steps and optimizer from random init.
Each runs at every label fraction (stratified, nested, redrawn per seed).
Model selection (weight decay / best step) uses val AUROC; test is scored
once, with the selected model. Every finished cell is written to
results.json at once (atomically) and skipped on rerun, so a killed job
loses at most the cell in progress.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import fractions, input_pipeline
from ssl_jax import augment, objectives, parallel
from ssl_jax.evaluation import inference, metrics, probes
from ssl_jax.jobs import common, report
from ssl_jax.registry import Registry
from ssl_jax.train import checkpoint, loop, optim, step as step_lib
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Stage2:
  """Everything the protocols share within one fine-tune job."""
  config: ml_collections.ConfigDict      # classifier config (model of the pretrain)
  workdir: str
  mesh: Any
  info: Any
  data: dict[str, tuple[np.ndarray, np.ndarray]]
  encoder_weights: dict[str, Any] | None
  _features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  _trainer: Any = None

  @property
  def task(self) -> str:
    return self.info.task

  def features(self, split: str) -> np.ndarray:
    """Frozen pretrained-encoder features of a split (computed once)."""
    if split not in self._features:
      encoder = objectives.base.build_encoder(self.config, self.info, nnx.Rngs(0))
      load_encoder(encoder, self.encoder_weights)
      graphdef, params, rest = state_lib.split_model(encoder)
      embed = jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(
          augment.eval_view(x), train=False))
      for name in SPLITS:
        self._features[name] = inference.batched_apply(
            embed, self.data[name][0], batch_size=self.config.finetune.eval_batch_size,
            mesh=self.mesh, args=(params, rest))
    return self._features[split]


def load_encoder(encoder: nnx.Module, weights: dict[str, Any] | None) -> None:
  """Copies pretrained encoder params/statistics into `encoder` in place."""
  if weights is None:
    raise ValueError("this protocol needs a pretrained encoder; set "
                     "config.finetune.pretrained to a pretraining workdir")
  params = nnx.state(encoder, nnx.Param)
  nnx.replace_by_pure_dict(params, weights["params"])
  updates = [params]
  if weights.get("rest"):
    rest = nnx.state(encoder, nnx.Not(nnx.Param))
    nnx.replace_by_pure_dict(rest, weights["rest"])
    updates.append(rest)
  nnx.update(encoder, *updates)


def read_pretrained(pretrained: str) -> tuple[ml_collections.ConfigDict, dict]:
  """The pretraining config and its checkpoint's encoder subtree."""
  pre_config = common.load_config(pretrained)
  tree = checkpoint.restore_subtree(os.path.join(pretrained, "checkpoints"),
                                    "params", "rest")
  # Host copies: every cell gets fresh device buffers (the step donates them).
  weights = jax.tree.map(np.asarray, {"params": tree["params"]["encoder"],
                                      "rest": tree["rest"].get("encoder", {})})
  weights["step"] = int(tree["step"])
  return pre_config, weights


# ----------------------------------------------------------------- protocols
Protocol = Callable[[Stage2, np.ndarray, int], dict[str, dict[str, float]]]
PROTOCOLS: Registry[Protocol] = Registry("fine-tuning protocol")


def _scores(ctx: Stage2, split: str, probs: np.ndarray) -> dict[str, float]:
  return metrics.classification_metrics(ctx.data[split][1], probs, ctx.task)


@PROTOCOLS.register("linear")
def linear_probe(ctx: Stage2, train_idx: np.ndarray, seed: int):
  ft = ctx.config.finetune
  probe = probes.fit_linear_probe(
      ctx.features("train")[train_idx], ctx.data["train"][1][train_idx],
      ctx.features("val"), ctx.data["val"][1], num_classes=ctx.info.num_classes,
      task=ctx.task, weight_decays=tuple(ft.linear_weight_decays), seed=seed)
  return {split: _scores(ctx, split, probe.predict_proba(ctx.features(split)))
          for split in ("val", "test")}


@PROTOCOLS.register("knn")
def knn_probe(ctx: Stage2, train_idx: np.ndarray, seed: int):
  del seed  # deterministic
  ft = ctx.config.finetune
  return {split: _scores(ctx, split, probes.knn_predict(
      ctx.features("train")[train_idx], ctx.data["train"][1][train_idx],
      ctx.features(split), num_classes=ctx.info.num_classes, k=ft.knn_k,
      temperature=ft.knn_temperature)) for split in ("val", "test")}


class ClassifierTrainer:
  """Encoder + linear head trained with the shared step and loop.

  The step and predict functions are compiled once per job and reused by
  every cell (all cells share one architecture); cells differ only in
  initial weights, data subset and seed.
  """

  def __init__(self, ctx: Stage2):
    self.ctx = ctx
    ft = ctx.config.finetune
    self.objective = objectives.get("supervised")
    self.tx, schedule = optim.make_optimizer(ft.optim, ft.batch_size, ft.steps)
    graphdef, _ = state_lib.create(self._model(0), self.tx, {}, jax.random.PRNGKey(0))
    self.graphdef = graphdef
    self.step_fn = step_lib.compile_step(step_lib.make_from_objective(
        graphdef, self.objective, ctx.config, self.tx, schedule))
    multi_label = ctx.info.multi_label
    self.predict = jax.jit(lambda p, r, x: _to_probs(
        nnx.merge(graphdef, p, r)(augment.eval_view(x), train=False), multi_label))

  def _model(self, seed: int) -> nnx.Module:
    return self.objective.build_model(self.ctx.config, self.ctx.info, nnx.Rngs(seed))

  def probs(self, state: state_lib.TrainState, split: str) -> np.ndarray:
    return inference.batched_apply(
        self.predict, self.ctx.data[split][0], mesh=self.ctx.mesh,
        batch_size=self.ctx.config.finetune.eval_batch_size,
        args=(state.params, state.rest))

  def run(self, train_idx: np.ndarray, seed: int, pretrained: bool, cell: str):
    ctx, ft = self.ctx, self.ctx.config.finetune
    model = self._model(seed)
    if pretrained:
      load_encoder(model.encoder, ctx.encoder_weights)
    _, state = state_lib.create(model, self.tx, {}, jax.random.PRNGKey(seed))
    state = parallel.replicate(state, ctx.mesh)
    images, labels = ctx.data["train"]
    batches = input_pipeline.make_iterator(
        images[train_idx], labels[train_idx],
        batch_size=parallel.local_batch_size(ft.batch_size), shuffle=True,
        repeat=True, seed=seed, drop_remainder=True)
    best: dict[str, Any] = {"auroc": -np.inf}

    def select_on_val(step: int, state) -> dict[str, float]:
      scores = _scores(ctx, "val", self.probs(state, "val"))
      if scores["auroc"] > best["auroc"]:
        best.update(auroc=scores["auroc"], step=step,
                    state=jax.device_get((state.params, state.rest)))
      return scores

    writer = MetricWriter(os.path.join(ctx.workdir, "cells", cell), tensorboard=False)
    loop.run(state, self.step_fn, batches, mesh=ctx.mesh, num_steps=ft.steps,
             global_batch_size=ft.batch_size, writer=writer,
             log_every=ft.log_every, eval_fn=select_on_val,
             eval_every=ft.eval_every, desc=cell, progress=ctx.config.train.progress)
    writer.close()
    params, rest = best["state"]
    chosen = state_lib.TrainState(step=None, params=params, rest=rest,
                                  opt_state=None, extra=None, rng=None)
    return {"val": _scores(ctx, "val", self.probs(chosen, "val")),
            "test": _scores(ctx, "test", self.probs(chosen, "test")),
            "selected_step": best["step"]}


def _to_probs(logits: jax.Array, multi_label: bool) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)


def _trainer(ctx: Stage2) -> ClassifierTrainer:
  if ctx._trainer is None:  # pylint: disable=protected-access
    ctx._trainer = ClassifierTrainer(ctx)  # pylint: disable=protected-access
  return ctx._trainer  # pylint: disable=protected-access


@PROTOCOLS.register("finetune")
def end_to_end(ctx: Stage2, train_idx: np.ndarray, seed: int):
  return _trainer(ctx).run(train_idx, seed, pretrained=True,
                           cell=f"finetune_{len(train_idx)}_s{seed}")


@PROTOCOLS.register("scratch")
def from_scratch(ctx: Stage2, train_idx: np.ndarray, seed: int):
  return _trainer(ctx).run(train_idx, seed, pretrained=False,
                           cell=f"scratch_{len(train_idx)}_s{seed}")


# ----------------------------------------------------------------------- job
def stage2_config(config: ml_collections.ConfigDict,
                  pre_config: ml_collections.ConfigDict | None,
                  info) -> ml_collections.ConfigDict:
  """The classifier's config: the pretrained encoder's architecture, the
  supervised objective, and the fine-tuning augmentation policy."""
  c = config.copy_and_resolve_references()
  if pre_config is not None:
    c.model = pre_config.model
    c.data.size = pre_config.data.size
  c.objective = ml_collections.ConfigDict(
      {"name": "supervised", "multi_label": bool(info.multi_label)})
  c.augment = config.finetune.augment
  return c


def cell_key(protocol: str, fraction: float, seed: int) -> str:
  return f"{protocol}|{fraction:g}|{seed}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  common.validate(config)
  ft = config.finetune
  needs_encoder = any(p != "scratch" for p in ft.protocols)
  pre_config, weights = (read_pretrained(ft.pretrained)
                         if ft.pretrained else (None, None))
  if needs_encoder and weights is None:
    raise ValueError(f"config.finetune.protocols={tuple(ft.protocols)} need a "
                     "pretrained encoder: set config.finetune.pretrained")
  info = common.data_info(config)
  cfg = stage2_config(config, pre_config, info)
  mesh = parallel.make_mesh(config.mesh.num_devices)
  parallel.check_divisible(ft.batch_size, mesh, "finetune.batch_size")
  data = {split: common.load_split(cfg, split) for split in SPLITS}
  common.save_config(cfg, workdir)
  ctx = Stage2(config=cfg, workdir=workdir, mesh=mesh, info=info, data=data,
               encoder_weights=weights)

  results_path = os.path.join(workdir, "results.json")
  results = common.read_json(results_path) or {
      "dataset": config.data.name, "image_size": cfg.data.size,
      "task": info.task, "model": dict(cfg.model),
      "pretrained": ft.pretrained or None,
      "pretrain_objective": pre_config.objective.name if pre_config else None,
      "finetune_augment": cfg.augment.policy, "cells": {}}
  train_labels = data["train"][1]
  for seed in ft.seeds:
    for fraction in ft.fractions:
      train_idx = fractions.label_fraction_indices(train_labels, fraction, seed)
      for protocol in ft.protocols:
        key = cell_key(protocol, fraction, seed)
        if key in results["cells"]:
          continue
        began = time.perf_counter()
        out = PROTOCOLS.get(protocol)(ctx, train_idx, seed)
        results["cells"][key] = dict(
            out, protocol=protocol, fraction=fraction, seed=seed,
            n_train=int(len(train_idx)), seconds=time.perf_counter() - began)
        common.write_json_atomic(results_path, results)
        print(f"  {protocol:9s} labels={fraction:>5.0%} seed={seed} "
              f"n={len(train_idx):5d}  test AUROC {out['test']['auroc']:.3f} "
              f"ACC {out['test']['accuracy']:.3f}")
  table = report.markdown_table(results)
  common.write_text_atomic(os.path.join(workdir, "results.md"), table)
  return results
