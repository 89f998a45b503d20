"""Frozen-feature quality while pretraining: the curve that shows when an SSL
method has plateaued (issue #14).

The online probe (objectives/online_probe.py) trains beside the encoder on
augmented views: it says "not collapsed", not "how good the frozen features
are". The monitor scores the encoder as stage 2 will: every
`train.monitor_every` steps the loop hands it the train state; it takes the
ONLINE encoder's arrays (`encoder_weights.encoder_leaves`, on the devices,
no checkpoint round trip), computes frozen features of a fixed labelled
train subset and of the val split with the eval view, fits each protocol of
`train.monitor_protocols` on the train features and scores val, AUROC first.
The encoder graph is built once (shapes only) and its forward compiled
once: every call feeds arrays of the same shapes and shardings. It runs in
float32 whatever `train.compute_dtype`, as stage 2 reads the encoder.

Protocols, by name, `fn(Frozen, Settings) -> val probabilities`:
- `knn`: weighted cosine kNN (`finetune.knn_k`, `finetune.knn_temperature`);
- `linear`: L-BFGS logistic regression on standardised features with one
  fixed L2 (`train.monitor_linear_l2`): nothing is selected on val, so the
  curve is not an optimistic max over a sweep.

Many hosts: every process computes the same features (batches split over
the mesh, outputs gathered to all) and fits the same probes; only process 0
writes (MetricWriter).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import fractions
from ssl_jax import parallel, runtime, views
from ssl_jax.evaluation import inference, metrics, probes
from ssl_jax.objectives.base import build_encoder
from ssl_jax.pytree import path_keys
from ssl_jax.registry import Registry
from ssl_jax.train import encoder_weights
from ssl_jax.train import state as state_lib

Split = tuple[np.ndarray, np.ndarray]  # (uint8 images, labels)
VAL_PREFIX = "val/"  # the loop writes the monitor's numbers under it


@dataclasses.dataclass(frozen=True)
class Settings:
  """The numbers the protocols read, taken from the config once."""
  knn_k: int
  knn_temperature: float
  linear_l2: float
  logreg_max_iters: int
  logreg_tol: float
  logreg_memory: int


def settings(config: ml_collections.ConfigDict) -> Settings:
  ft = config.finetune
  return Settings(knn_k=ft.knn_k, knn_temperature=ft.knn_temperature,
                  linear_l2=config.train.monitor_linear_l2,
                  logreg_max_iters=ft.logreg_max_iters,
                  logreg_tol=ft.logreg_tol, logreg_memory=ft.logreg_memory)


@dataclasses.dataclass(frozen=True)
class Frozen:
  """One call's frozen features and the labels the protocols fit and score."""
  train: np.ndarray          # [N, D] features of the train subset
  train_labels: np.ndarray   # [N] or [N, L]
  val: np.ndarray            # [M, D]
  val_labels: np.ndarray
  num_classes: int
  task: str


ProtocolFn = Callable[[Frozen, Settings], np.ndarray]
PROTOCOLS: Registry[ProtocolFn] = Registry("monitor protocol")


@PROTOCOLS.register("knn")
def knn(frozen: Frozen, s: Settings) -> np.ndarray:
  return probes.knn_predict(frozen.train, frozen.train_labels, frozen.val,
                            num_classes=frozen.num_classes, k=s.knn_k,
                            temperature=s.knn_temperature)


@PROTOCOLS.register("linear")
def linear(frozen: Frozen, s: Settings) -> np.ndarray:
  """One L2 only: the val labels fit_logreg is given select nothing."""
  probe = probes.fit_logreg(
      frozen.train, frozen.train_labels, frozen.val, frozen.val_labels,
      num_classes=frozen.num_classes, task=frozen.task, l2s=(s.linear_l2,),
      max_iters=s.logreg_max_iters, tol=s.logreg_tol,
      memory_size=s.logreg_memory)
  return probe.predict_proba(frozen.val)


def score(labels: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
  """AUROC first (the curve's number), then accuracy. A class absent from
  val is left out of the mean rather than failing a pretraining run."""
  return {"auroc": metrics.auroc(labels, probs, task,
                                 ignore_absent_classes=True),
          "acc": metrics.accuracy(labels, probs, task)}


def metric_names(protocols: tuple[str, ...]) -> list[str]:
  """What a call returns, in order: <protocol>_auroc, <protocol>_acc."""
  return [f"{p}_{m}" for p in protocols for m in ("auroc", "acc")]


def train_subset(labels: np.ndarray, max_n: int, seed: int) -> np.ndarray:
  """Sorted indices of at most `max_n` train rows, the same for every call
  and rerun: a seeded stratified subset (every class kept), all rows when
  there are no more than `max_n`."""
  n = len(labels)
  if n <= max_n:
    return np.arange(n)
  idx = fractions.label_fraction_indices(labels, max_n / n, seed)
  if len(idx) > max_n:  # per-class rounding may overshoot by a few rows
    idx = np.random.default_rng(seed).permutation(idx)[:max_n]
  return np.sort(idx)


def check_labels(labels: np.ndarray, task: str, split: str) -> None:
  """AUROC on `split` needs labels of at least two classes."""
  if len(labels) == 0:
    raise ValueError(f"config.train.monitor_every is set but the {split} "
                     "split is empty: the monitor scores the val split and "
                     "fits on train; set train.monitor_every=0")
  if task == metrics.MULTI_LABEL:
    return
  present = np.unique(np.asarray(labels).reshape(len(labels), -1)[:, 0])
  if len(present) < 2:
    raise ValueError(f"config.train.monitor_every is set but the {split} "
                     f"split has one class ({present.tolist()}): AUROC needs "
                     "two; set train.monitor_every=0")


def _filled(like: nnx.State, leaves: Mapping[str, jax.Array]) -> nnx.State:
  """`like` (the encoder's params or rest, shapes only) holding the arrays
  of `leaves` by key ('stages/0/0/conv1/kernel')."""
  def take(path, _):
    key = "/".join(str(k) for k in path_keys(path))
    if key not in leaves:
      raise ValueError(f"the train state has no online encoder leaf {key!r} "
                       "(model.encoder): the monitor's encoder is built "
                       "differently from the pretrained one")
    return leaves[key]

  pure = jax.tree_util.tree_map_with_path(take, nnx.to_pure_dict(like))
  out = jax.tree.map(lambda x: x, like)
  nnx.replace_by_pure_dict(out, pure)
  return out


class Monitor:
  """The pretraining loop's `eval_fn`: `monitor(step, state)` ->
  {'knn_auroc': ..., 'knn_acc': ..., ...} for the state's online encoder.

  `train` and `val` are whole splits (every process passes the same);
  `config` is the pretraining config (its model, `train.monitor_*` and the
  stage-2 kNN / logreg fields)."""

  def __init__(self, config: ml_collections.ConfigDict, info: Any, mesh,
               train: Split, val: Split):
    self.protocols = tuple(config.train.monitor_protocols)
    self.settings = settings(config)
    self.num_classes, self.task = info.num_classes, info.task
    self.mesh, self.batch_size = mesh, config.finetune.eval_batch_size
    parallel.check_divisible(self.batch_size, mesh, "finetune.eval_batch_size")
    check_labels(train[1], self.task, "train")
    check_labels(val[1], self.task, "val")
    idx = train_subset(train[1], config.train.monitor_max_train, config.seed)
    self.images = {"train": train[0][idx], "val": val[0]}
    self.labels = {"train": train[1][idx], "val": val[1]}
    encoder = nnx.eval_shape(lambda: build_encoder(config, info, nnx.Rngs(0)))
    graphdef, self._params, self._rest = state_lib.split_model(encoder)

    def embed(params, rest, images):
      return nnx.merge(graphdef, params, rest)(views.eval_view(images),
                                               train=False)

    self.embed = runtime.jit(embed, graphdef)  # compiled at the first call

  def online_encoder(self, state: state_lib.TrainState
                     ) -> tuple[nnx.State, nnx.State]:
    """The online encoder's (params, rest), the state's own device arrays."""
    leaves = encoder_weights.encoder_leaves(
        {"params": nnx.to_pure_dict(state.params),
         "rest": nnx.to_pure_dict(state.rest)})
    return _filled(self._params, leaves), _filled(self._rest, leaves)

  def features(self, params: nnx.State, rest: nnx.State) -> Frozen:
    """Frozen features of the train subset and val of an encoder given as
    (params, rest) on the mesh."""
    feats = {split: inference.batched_apply(
        self.embed, images, mesh=self.mesh, batch_size=self.batch_size,
        args=(params, rest)) for split, images in self.images.items()}
    return Frozen(feats["train"], self.labels["train"], feats["val"],
                  self.labels["val"], self.num_classes, self.task)

  def scores(self, params: nnx.State, rest: nnx.State) -> dict[str, float]:
    """Every protocol's val metrics for one encoder, AUROC first."""
    frozen = self.features(params, rest)
    out = {}
    for name in self.protocols:
      probs = PROTOCOLS.get(name)(frozen, self.settings)
      for metric, value in score(frozen.val_labels, probs, self.task).items():
        out[f"{name}_{metric}"] = value
    return out

  def __call__(self, step: int, state: state_lib.TrainState
               ) -> dict[str, float]:
    del step  # the loop writes it
    return self.scores(*self.online_encoder(state))


def curve(rows: list[dict], *, protocols: tuple[str, ...], batch_size: int,
          num_train: int) -> dict[str, Any]:
  """The monitor's history from metrics.jsonl rows (the file, not memory,
  so a resumed run reads what it and its predecessors logged): one entry
  per monitored step with its epoch (step x batch / train images) and
  metrics, and the best step by the first protocol's AUROC (ties: the
  earliest)."""
  names = metric_names(protocols)
  by_step = {}  # a step logged twice keeps its last row
  for row in rows:
    if any(VAL_PREFIX + n in row for n in names):
      by_step[row["step"]] = (
          {"step": row["step"], "epoch": row["step"] * batch_size / num_train}
          | {n: row[VAL_PREFIX + n] for n in names if VAL_PREFIX + n in row})
  history = [by_step[s] for s in sorted(by_step)]
  primary = f"{protocols[0]}_auroc"
  scored = [h for h in history if primary in h]
  best = (max(scored, key=lambda h: (h[primary], -h["step"])) if scored
          else None)
  return {"protocols": list(protocols), "metric": primary,
          "history": history,
          "best": None if best is None else {
              "step": best["step"], "epoch": best["epoch"],
              primary: best[primary]}}
