"""Stage 2: classifiers on a pretrained encoder vs the same net from scratch.

Protocols (registered by name, chosen by `finetune.protocols`):
- `linear`: logistic regression on frozen, globally pooled features (Adam,
  early stopping on val);
- `logreg`: the same model solved to convergence by full-batch L-BFGS, with
  an L2 sweep chosen on val (`finetune.logreg_*`);
- `knn`: weighted cosine kNN on the same frozen features;
- `early_layer`: the `linear` probe on an earlier stage's pooled features
  (`finetune.early_layer`, e.g. 'stage3'; ViT: 'block6');
- `combine`: the `linear` probe on the concatenated frozen features of
  several encoders (Truong et al. 2021, "How transferable are self-supervised
  features in medical image classification tasks?"); the benchmark job
  supplies the other encoders;
- `finetune`: end-to-end training of encoder + linear head;
- `last_k`: the same, training only the last `finetune.last_k` stages/blocks
  and the head (the rest frozen by an optax mask on parameter paths);
- `scratch`: the `finetune` architecture, steps and optimizer from random init.
Without a pretrained encoder (`encoder_weights=None`, the benchmark's
`none` method) every protocol runs on a seeded random-init encoder, so
`finetune` is then the from-scratch baseline.

A *cell* is (method, protocol, label fraction, seed). `run_cells` runs the
cells a `CellStore` does not hold yet; the store writes each finished cell
as its own JSON file, atomically, so a killed job loses at most the cell in
progress and a rerun skips the finished ones. The finetune job and the
benchmark job (`jobs/benchmark.py`) share this machinery. Label subsets are
stratified, nested across fractions and redrawn per seed. Model selection
(weight decay / L2 / best step) uses val AUROC; test is scored once, with
the selected model, plus a percentile-bootstrap CI of the test AUROC.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from data_pipelines import fractions, input_pipeline
from ssl_jax import files, objectives, parallel, runtime, views
from ssl_jax.evaluation import inference, metrics, probes
from ssl_jax.jobs import common, report
from ssl_jax.jobs import workdir as workdir_lib
from ssl_jax.pytree import path_keys
from ssl_jax.registry import Registry
from ssl_jax.train import checkpoint, init_from, loop, optim, step as step_lib
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
FINAL = "final"  # the layer name of the encoder's pooled output

@dataclasses.dataclass
class Stage2:
  """Everything the protocols share for one encoder (one method and seed).

  `encoder_weights=None` means a random-init encoder drawn with `init_seed`.
  `peers` are further encoders whose frozen features `combine` concatenates.
  `compiled` holds trainers compiled for this architecture; contexts with
  the same model and data share one dict, so a sweep compiles them once.
  `groups` are the train split's patient ids when the source has them:
  label fractions then take whole patients (no patient's images split
  between the labelled subset and the rest).
  """
  config: ml_collections.ConfigDict      # classifier config (model of the pretrain)
  workdir: str
  mesh: Any
  info: Any
  data: dict[str, tuple[np.ndarray, np.ndarray]]
  encoder_weights: dict[str, Any] | None
  init_seed: int = 0
  log_dir: str = ""
  peers: tuple["Stage2", ...] = ()
  compiled: dict = dataclasses.field(default_factory=dict)
  groups: np.ndarray | None = None
  _features: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

  @property
  def task(self) -> str:
    return self.info.task

  def labels(self, split: str) -> np.ndarray:
    return self.data[split][1]

  def subset(self, fraction: float, seed: int) -> np.ndarray:
    """Train indices of a label fraction: stratified, nested, per seed, by
    patient when `groups` is set."""
    return fractions.label_fraction_indices(self.labels("train"), fraction,
                                            seed, groups=self.groups)

  def features(self, split: str, layer: str = FINAL) -> np.ndarray:
    """Frozen encoder features of a split at `layer` (all computed once)."""
    if not self._features:
      encoder = objectives.base.build_encoder(self.config, self.info,
                                              nnx.Rngs(self.init_seed))
      if self.encoder_weights is not None:
        load_encoder(encoder, self.encoder_weights)
      graphdef, params, rest = state_lib.split_model(encoder)

      def embed(p, r, x):
        pooled, inner = nnx.merge(graphdef, p, r)(
            views.eval_view(x), train=False, return_intermediates=True)
        return dict(inner, **{FINAL: pooled})

      embed = runtime.jit(embed, graphdef)
      for name in SPLITS:
        self._features[name] = inference.batched_apply(
            embed, self.data[name][0], mesh=self.mesh,
            batch_size=self.config.finetune.eval_batch_size, args=(params, rest))
    layers = self._features[split]
    if layer not in layers:
      raise ValueError(f"config.finetune.early_layer={layer!r} is not an "
                       f"encoder layer; allowed: {', '.join(sorted(layers))}")
    return layers[layer]


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
@dataclasses.dataclass(frozen=True)
class Predictions:
  """What a protocol hands back: val/test probabilities of the selected
  model, and how it was selected (weight decay, step, ...)."""
  probs: dict[str, np.ndarray]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


Protocol = Callable[[Stage2, np.ndarray, int], Predictions]
PROTOCOLS: Registry[Protocol] = Registry("fine-tuning protocol")


def _linear_on(ctx: Stage2, feats: Callable[[str], np.ndarray],
               train_idx: np.ndarray, seed: int) -> Predictions:
  ft = ctx.config.finetune
  probe = probes.fit_linear_probe(
      feats("train")[train_idx], ctx.labels("train")[train_idx],
      feats("val"), ctx.labels("val"), num_classes=ctx.info.num_classes,
      task=ctx.task, weight_decays=tuple(ft.linear_weight_decays), seed=seed)
  return Predictions({s: probe.predict_proba(feats(s)) for s in EVAL_SPLITS},
                     {"weight_decay": probe.weight_decay, "epoch": probe.epoch})


@PROTOCOLS.register("linear")
def linear_probe(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  return _linear_on(ctx, ctx.features, train_idx, seed)


@PROTOCOLS.register("early_layer")
def early_layer_probe(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  layer = ctx.config.finetune.early_layer
  out = _linear_on(ctx, lambda s: ctx.features(s, layer), train_idx, seed)
  return dataclasses.replace(out, info=dict(out.info, layer=layer))


@PROTOCOLS.register("combine")
def combined_probe(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  if not ctx.peers:
    raise ValueError("protocol 'combine' concatenates the features of several "
                     "encoders: run it from the benchmark job, listing them "
                     "in config.benchmark.combine")
  encoders = (ctx,) + ctx.peers
  return _linear_on(
      ctx, lambda s: np.concatenate([c.features(s) for c in encoders], axis=1),
      train_idx, seed)


@PROTOCOLS.register("logreg")
def logreg_probe(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
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


@PROTOCOLS.register("knn")
def knn_probe(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  del seed  # deterministic
  ft = ctx.config.finetune
  return Predictions({split: probes.knn_predict(
      ctx.features("train")[train_idx], ctx.labels("train")[train_idx],
      ctx.features(split), num_classes=ctx.info.num_classes, k=ft.knn_k,
      temperature=ft.knn_temperature) for split in EVAL_SPLITS})


# Where each backbone keeps its sequence of blocks (attribute of the
# encoder), and which of its params come after the last block.
BLOCKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ResNet": ("stages", ()),
    "VisionTransformer": ("blocks", ("norm",)),
}


def trainable_labels(model: nnx.Module, last_k: int | None) -> Callable:
  """params -> same-shaped tree of 'train' / 'frozen' for optax.multi_transform.

  None trains everything. Otherwise the head, the last `last_k` units of the
  encoder (ResNet stages, ViT blocks) and what follows them (ViT's final
  norm) train; the stem and earlier units stay frozen. BatchNorm statistics
  of frozen stages still follow the fine-tuning data in train mode, as with
  PyTorch's requires_grad=False.
  """
  if last_k is None:
    return lambda params: jax.tree.map(lambda _: "train", params)
  kind = type(model.encoder).__name__
  if kind not in BLOCKS:
    raise ValueError(f"last_k does not know the blocks of {kind}; known: "
                     f"{', '.join(sorted(BLOCKS))}")
  attr, trailing = BLOCKS[kind]
  units = len(getattr(model.encoder, attr))
  if not 0 <= last_k <= units:
    raise ValueError(f"config.finetune.last_k={last_k} must be in [0, {units}] "
                     f"for {kind} ({units} {attr})")
  train_units = set(range(units - last_k, units))

  def label(path, _) -> str:
    keys = path_keys(path)
    if keys[0] != "encoder":
      return "train"  # the head
    if keys[1] == attr and keys[2] in train_units:
      return "train"
    return "train" if keys[1] in trailing and last_k > 0 else "frozen"

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


class ClassifierTrainer:
  """Encoder + linear head trained with the shared step and loop.

  The step and predict functions are compiled once per architecture (and
  set of trainable params) and reused by every cell; cells differ only in
  initial weights, data subset and seed.
  """

  def __init__(self, ctx: Stage2, last_k: int | None = None,
               steps: int | None = None):
    ft = ctx.config.finetune
    self.steps = ft.steps if steps is None else steps
    self.config = _with_class_weights(ctx.config, ctx.labels("train"), ctx.info)
    self.info, self.mesh = ctx.info, ctx.mesh
    self.objective = objectives.get("supervised")
    tx, schedule = optim.make_optimizer(ft.optim, ft.batch_size, self.steps)
    model = self._model(0)
    self.tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                    trainable_labels(model, last_k))
    graphdef, _ = state_lib.create(model, self.tx, {}, jax.random.PRNGKey(0))
    self.step_fn = step_lib.compile_step(step_lib.make_from_objective(
        graphdef, self.objective, self.config, self.tx, schedule),
        graphdef=graphdef)
    multi_label = ctx.info.multi_label
    self.predict = runtime.jit(lambda p, r, x: _to_probs(
        nnx.merge(graphdef, p, r)(views.eval_view(x), train=False), multi_label),
        graphdef)

  def _model(self, seed: int) -> nnx.Module:
    return self.objective.build_model(self.config, self.info, nnx.Rngs(seed))

  def probs(self, ctx: Stage2, params, rest, split: str) -> np.ndarray:
    return inference.batched_apply(
        self.predict, ctx.data[split][0], mesh=self.mesh,
        batch_size=self.config.finetune.eval_batch_size, args=(params, rest))

  def run(self, ctx: Stage2, train_idx: np.ndarray, seed: int, *,
          weights: dict | None, name: str) -> Predictions:
    ft = self.config.finetune
    model = self._model(seed)
    if weights is not None:
      load_encoder(model.encoder, weights)
    _, state = state_lib.create(model, self.tx, {}, jax.random.PRNGKey(seed))
    state = parallel.replicate(state, self.mesh)
    images, labels = ctx.data["train"]
    batches = input_pipeline.make_iterator(
        images[train_idx], labels[train_idx],
        batch_size=parallel.local_batch_size(ft.batch_size), shuffle=True,
        repeat=True, seed=seed, drop_remainder=True)
    best: dict[str, Any] = {"key": (-np.inf, -np.inf)}

    def select_on_val(step: int, state) -> dict[str, float]:
      probs = self.probs(ctx, state.params, state.rest, "val")
      scores = metrics.classification_metrics(ctx.labels("val"), probs, ctx.task)
      scores["loss"] = metrics.log_loss(ctx.labels("val"), probs, ctx.task)
      key = (scores["auroc"], -scores["loss"])  # AUROC, ties by lower loss
      if key > best["key"]:
        best.update(key=key, step=step, auroc=scores["auroc"],
                    loss=scores["loss"],
                    state=jax.device_get((state.params, state.rest)))
      return scores

    writer = MetricWriter(os.path.join(ctx.log_dir or ctx.workdir, name),
                          tensorboard=False)
    loop.run(state, self.step_fn, batches, mesh=self.mesh, num_steps=self.steps,
             global_batch_size=ft.batch_size, writer=writer,
             log_every=min(ft.log_every, self.steps),
             eval_fn=select_on_val,
             eval_every=eval_interval(ft, len(train_idx), self.steps),
             desc=name, progress=self.config.train.progress, nested=True)
    writer.close()
    params, rest = best["state"]
    return Predictions(
        {s: self.probs(ctx, params, rest, s) for s in EVAL_SPLITS},
        {"selected_step": best["step"], "steps": self.steps,
         "selected_epoch": best["step"] * ft.batch_size / len(train_idx),
         "selected_val_auroc": best["auroc"], "selected_val_loss": best["loss"]})


def run_length(ft: ml_collections.ConfigDict, n_train: int) -> int:
  """Stage-2 steps for `n_train` labelled images: `finetune.steps`, or with
  `finetune.epochs` > 0, that many passes over them (at least
  `finetune.min_steps`, so a 1 % subset still trains)."""
  if not ft.get("epochs", 0):
    return ft.steps
  return max(int(np.ceil(ft.epochs * n_train / ft.batch_size)), ft.min_steps)


def eval_interval(ft: ml_collections.ConfigDict, n_train: int,
                  steps: int) -> int:
  """Steps between validation passes: `finetune.eval_every`, or with
  `finetune.epochs` > 0, every `finetune.eval_every_epochs` epochs."""
  if not ft.get("epochs", 0):
    return min(ft.eval_every, steps)
  every = int(round(ft.eval_every_epochs * n_train / ft.batch_size))
  return int(np.clip(every, 1, steps))


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> tuple:
  """n / (C * count_c) per class (sklearn's 'balanced'): every class weighs
  as much in the loss as if the classes were equally frequent."""
  counts = np.bincount(np.asarray(labels).reshape(-1).astype(np.int64),
                       minlength=num_classes).astype(np.float64)
  weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
  return tuple(float(w) for w in weights)


def _with_class_weights(config: ml_collections.ConfigDict, labels: np.ndarray,
                        info) -> ml_collections.ConfigDict:
  """`finetune.class_weights='balanced'` -> the supervised objective's
  per-class loss weights, from the train split's counts (label subsets are
  stratified, so every fraction keeps these proportions)."""
  mode = config.finetune.get("class_weights", "none")
  if mode == "none":
    return config
  if mode != "balanced":
    raise ValueError(f"config.finetune.class_weights={mode!r}; allowed: "
                     "none, balanced")
  if info.multi_label:
    raise ValueError("config.finetune.class_weights='balanced' needs a "
                     "single-label task; this dataset is multi-label")
  config = config.copy_and_resolve_references()
  config.objective.class_weights = balanced_class_weights(labels,
                                                          info.num_classes)
  return config


def _to_probs(logits: jax.Array, multi_label: bool) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)


def _trainer(ctx: Stage2, n_train: int,
             last_k: int | None = None) -> ClassifierTrainer:
  """The compiled trainer for this architecture, trainable set and run
  length (epoch-based runs differ in length by label fraction)."""
  steps = run_length(ctx.config.finetune, n_train)
  key = ("trainer", json.dumps(ctx.config.model.to_dict(), sort_keys=True,
                               default=str), last_k, steps)
  if key not in ctx.compiled:
    ctx.compiled[key] = ClassifierTrainer(ctx, last_k, steps)
  return ctx.compiled[key]


@PROTOCOLS.register("finetune")
def end_to_end(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  return _trainer(ctx, len(train_idx)).run(
      ctx, train_idx, seed, weights=ctx.encoder_weights,
      name=f"finetune_n{len(train_idx)}_s{seed}")


@PROTOCOLS.register("last_k")
def last_k_blocks(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  k = ctx.config.finetune.last_k
  out = _trainer(ctx, len(train_idx), k).run(
      ctx, train_idx, seed, weights=ctx.encoder_weights,
      name=f"last{k}_n{len(train_idx)}_s{seed}")
  return dataclasses.replace(out, info=dict(out.info, last_k=k))


@PROTOCOLS.register("scratch")
def from_scratch(ctx: Stage2, train_idx: np.ndarray, seed: int) -> Predictions:
  return _trainer(ctx, len(train_idx)).run(
      ctx, train_idx, seed, weights=None,
      name=f"scratch_n{len(train_idx)}_s{seed}")


# --------------------------------------------------------------------- cells
@dataclasses.dataclass(frozen=True)
class Cell:
  """One unit of work and of storage: (method, protocol, fraction, seed)."""
  method: str
  protocol: str
  fraction: float
  seed: int

  @property
  def key(self) -> str:
    return f"{self.method}|{self.protocol}|{self.fraction:g}|{self.seed}"

  @property
  def filename(self) -> str:
    return os.path.join(self.method,
                        f"{self.protocol}_f{self.fraction:g}_s{self.seed}.json")


class CellStore:
  """One JSON file per finished cell under `directory`/<method>/.

  Written by write-then-rename (`files.write_json_atomic`): a file is
  there whole or not at all, so a SIGKILL mid-write leaves no half cell and
  a rerun recomputes only what has no file. Files are never rewritten.
  """

  def __init__(self, directory: str):
    self.directory = directory

  def path(self, cell: Cell) -> str:
    return os.path.join(self.directory, cell.filename)

  def get(self, cell: Cell) -> dict | None:
    return files.read_json(self.path(cell))

  def put(self, cell: Cell, result: dict) -> None:
    files.write_json_atomic(self.path(cell), result)

  def results(self, cells: Iterable[Cell]) -> dict[str, dict]:
    """Finished cells among `cells`, by key, in the given order."""
    out = {}
    for cell in cells:
      result = self.get(cell)
      if result is not None:
        out[cell.key] = result
    return out


def score(ctx: Stage2, preds: Predictions, seed: int) -> dict[str, dict]:
  """Val and test metrics (AUROC first), per-class/label test AUROC for
  non-binary tasks, and a percentile-bootstrap CI of the test AUROC."""
  ft = ctx.config.finetune
  out = {s: metrics.classification_metrics(ctx.labels(s), preds.probs[s], ctx.task)
         for s in EVAL_SPLITS}
  y, p = ctx.labels("test"), preds.probs["test"]
  if ctx.task != metrics.BINARY:
    out["test"]["auroc_per_class"] = [
        float(v) for v in metrics.auroc_per_class(y, p, ctx.task)]
  if ft.bootstrap_samples > 0:
    out["test"]["auroc_ci"] = list(metrics.bootstrap_ci(
        y, p, ctx.task, metrics.auroc, num_samples=ft.bootstrap_samples,
        seed=seed, alpha=1.0 - ft.ci_level))
  return out


def run_cell(ctx: Stage2, cell: Cell) -> dict[str, Any]:
  train_idx = ctx.subset(cell.fraction, cell.seed)
  began = time.perf_counter()
  preds = PROTOCOLS.get(cell.protocol)(ctx, train_idx, cell.seed)
  return dict(score(ctx, preds, cell.seed), **preds.info,
              method=cell.method, protocol=cell.protocol,
              fraction=cell.fraction, seed=cell.seed,
              n_train=int(len(train_idx)),
              seconds=time.perf_counter() - began)


def _summary_line(cell: Cell, result: dict) -> str:
  test = result["test"]
  ci = test.get("auroc_ci")
  ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
  return (f"  {cell.method:>12s} {cell.protocol:11s} labels={cell.fraction:>5.0%} "
          f"seed={cell.seed} n={result['n_train']:5d}  test AUROC "
          f"{test['auroc']:.3f}{ci_text} ACC {test['accuracy']:.3f} "
          f"balanced {test['balanced_accuracy']:.3f} "
          f"({result['seconds']:.0f} s)")


def run_cells(context_for: Callable[[Cell], Stage2], cells: Sequence[Cell],
              store: CellStore, *, progress: bool = True) -> dict[str, dict]:
  """Runs every cell `store` lacks, in order, storing each as it finishes.

  `context_for(cell)` gives the cell's Stage2 (the benchmark builds, and
  pretrains, lazily there). Shows cells done / total with an ETA (from
  the cells run in this process) and prints one line per finished cell.
  Returns all finished cells by key, in `cells` order. Each cell is looked
  up again just before it runs, so processes sharing a workdir (e.g. one
  per seed) skip what another has finished.
  """
  todo = [c for c in cells if store.get(c) is None]
  bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell",
             desc="cells", smoothing=0.0, dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0)
  for cell in todo:
    if store.get(cell) is not None:  # another process sharing the workdir
      bar.update(1)
      continue
    bar.set_postfix_str(cell.key, refresh=True)
    result = run_cell(context_for(cell), cell)
    store.put(cell, result)
    bar.update(1)
    tqdm.write(_summary_line(cell, result))
  bar.close()
  return store.results(cells)


# ----------------------------------------------------------------------- job
def stage2_config(config: ml_collections.ConfigDict,
                  pre_config: ml_collections.ConfigDict | None,
                  info) -> ml_collections.ConfigDict:
  """The classifier's config: the pretrained encoder's architecture, the
  supervised objective and the fine-tuning augmentation policy (protocol
  fields come from `config.finetune`, declared in configs/base.py)."""
  c = config.copy_and_resolve_references()
  if pre_config is not None:
    c.model = pre_config.model
    c.data.size = pre_config.data.size
  c.objective = ml_collections.ConfigDict(
      {"name": "supervised", "multi_label": bool(info.multi_label)})
  c.augment = config.finetune.augment
  return c


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  common.validate(config)
  if jax.process_index() == 0:
    workdir_lib.check_writable(workdir)
  ft = config.finetune
  needs_encoder = any(p != "scratch" for p in ft.protocols)
  pre_config, weights = (read_pretrained(ft.pretrained)
                         if ft.pretrained else (None, None))
  # Transfer without SSL (e.g. ImageNet weights): config.init_from.
  init_path = "" if ft.pretrained else config.get("init_from", {}).get("path", "")
  if init_path:
    weights, init_report = init_from.encoder_weights(config,
                                                     common.data_info(config))
    files.write_json_atomic(os.path.join(workdir, "init_from_report.json"),
                             init_report)
  if needs_encoder and weights is None:
    raise ValueError(f"config.finetune.protocols={tuple(ft.protocols)} need a "
                     "pretrained encoder: set config.finetune.pretrained "
                     "(or config.init_from.path)")
  info = common.data_info(config)
  common.check_classes(config, info.task)
  cfg = stage2_config(config, pre_config, info)
  if pre_config is not None and pre_config.model.to_dict() != config.model.to_dict():
    print(f"finetune: the encoder is built as in {ft.pretrained}/config.json "
          f"(model {pre_config.model.to_dict()}), not as config.model "
          f"({config.model.to_dict()}); results.json records both", flush=True)
  mesh = parallel.make_mesh(config.mesh.num_devices)
  parallel.check_divisible(ft.batch_size, mesh, "finetune.batch_size")
  data = {split: common.load_split(cfg, split) for split in SPLITS}
  common.save_config(cfg, workdir)
  ctx = Stage2(config=cfg, workdir=workdir, mesh=mesh, info=info, data=data,
               encoder_weights=weights, init_seed=config.seed,
               log_dir=os.path.join(workdir, "logs"),
               groups=common.patient_groups(config))
  if jax.process_index() == 0:
    common.write_data_report(config, workdir)

  method = (pre_config.objective.name if pre_config
            else "init_from" if init_path else "none")
  cells = [Cell(method, protocol, fraction, seed) for seed in ft.seeds
           for fraction in ft.fractions for protocol in ft.protocols]
  finished = run_cells(lambda cell: ctx, cells,
                       CellStore(os.path.join(workdir, "cells")),
                       progress=config.train.progress)
  results = {
      "dataset": config.data.name, "image_size": cfg.data.size,
      "task": info.task, "model": cfg.model.to_dict(),
      "config_model": config.model.to_dict(),
      "pretrained": ft.pretrained or None, "init_from": init_path or None,
      "pretrain_objective": pre_config.objective.name if pre_config else None,
      "finetune_augment": cfg.augment.policy, "cells": finished}
  files.write_json_atomic(os.path.join(workdir, "results.json"), results)
  table = report.markdown_table(results)
  files.write_text_atomic(os.path.join(workdir, "results.md"), table)
  return results
