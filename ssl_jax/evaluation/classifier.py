"""Encoder + linear head trained end to end (or its last blocks) in stage 2.

The `finetune`, `last_k` and `scratch` protocols all train this classifier
with the shared step and loop; they differ only in the initial encoder and
in which parameters the optimizer may move. `distill` and `fixmatch` train
it on every train image with another objective, whose batch columns a
`Feed` gives. The run lasts `finetune.steps`,
or with `finetune.epochs` > 0 that many passes over the labelled subset;
the step with the best val AUROC (ties: lower val loss) is the one scored,
chosen from the end of the learning-rate warmup on (`finetune.select_from`;
other rules: `finetune.select_by`).
`finetune.last_batch`: 'carry' lets batches run across epoch boundaries
(every step a full batch); 'keep' batches each epoch on its own and ends it
with its short batch, as PyTorch's DataLoader in the published recipes (on
BreastMNIST: 5 steps per epoch, 4 x 128 + 34, where 'carry' takes 4.27).
`finetune.head_fit='linear_probe'` starts the head of a pretrained encoder
as a linear probe fitted on its frozen features (LP-FT, Kumar et al. 2022),
so training begins from a calibrated classifier instead of a zero head.
From-scratch cells keep their head: an untrained encoder's eval-mode
features (BatchNorm statistics at their init) are not what training sees.
`finetune.weight_average` = d > 0 validates and scores an exponential
moving average of the weights and BatchNorm statistics (decay d per step,
from the run's starting weights) instead of the trained ones, as FixMatch
and Mean Teacher evaluate; training itself is unchanged.
`finetune.layer_decay` = d < 1 gives a pretrained encoder's units their
own learning rates, d times the rate of the unit above (the head at the
full rate), so its early layers move least (BEiT, MAE's fine-tuning).
`finetune.test_time_flips` scores (and selects on) class probabilities
averaged over the mirrorings the fine-tuning views train with.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ssl_jax import objectives, parallel, runtime, views
from ssl_jax.evaluation import inference, metrics
from ssl_jax.evaluation.encoder_context import (EVAL_SPLITS, EncoderContext,
                                                Predictions, model_key)
from ssl_jax.objectives import supervised
from ssl_jax.pytree import flatten, path_keys, path_str
from ssl_jax.train import encoder_weights as weights_lib
from ssl_jax.train import loop, optim, step as step_lib
from ssl_jax.train import state as state_lib
from ssl_jax.train.metrics_writer import MetricWriter

def unit_depths(model: nnx.Module, field: str) -> tuple[Callable, int]:
  """(param path -> depth, number of units) for stage 2's optimizer: depth
  0 before the encoder's units (stem, patch embedding), i + 1 for unit i
  (ResNet stage, ViT block), units + 1 after them (ViT's final norm) and
  for the head. `field` names the setting that needs it in the error an
  encoder without declared units gets."""
  kind = type(model.encoder).__name__
  attr = getattr(model.encoder, "block_attr", None)
  if attr is None:
    raise ValueError(f"{field} needs an encoder that declares its blocks "
                     f"(block_attr, after_blocks); {kind} does not")
  trailing = tuple(model.encoder.after_blocks)
  units = len(getattr(model.encoder, attr))

  def depth(path) -> int:
    keys = path_keys(path)
    if keys[0] != "encoder" or keys[1] in trailing:
      return units + 1
    return keys[2] + 1 if keys[1] == attr else 0

  return depth, units


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
  depth, units = unit_depths(model, "last_k")
  if not 0 <= last_k <= units:
    raise ValueError(f"config.finetune.last_k={last_k} must be in [0, {units}] "
                     f"for {type(model.encoder).__name__} ({units} "
                     f"{model.encoder.block_attr})")

  def label(path, _) -> str:
    if path_keys(path)[0] != "encoder":
      return "train"  # the head
    return "train" if last_k > 0 and depth(path) > units - last_k else "frozen"

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def layer_decay_scales(model: nnx.Module,
                       decay: float) -> optax.GradientTransformation:
  """Every update scaled by decay ** (units + 1 - depth) (`unit_depths`):
  the head and what follows the last unit at the full learning rate, each
  unit below at `decay` times the rate of the one above, the stem lowest.
  Layer-wise learning-rate decay (BEiT; MAE fine-tunes with 0.75): the
  pretrained early layers, which hold the most general features, move
  least. Applied after the optimizer, so weight decay scales with it, as
  a per-layer learning rate does."""
  depth, units = unit_depths(model, "config.finetune.layer_decay")
  return optax.multi_transform(
      {d: optax.scale(decay ** (units + 1 - d)) for d in range(units + 2)},
      lambda params: jax.tree_util.tree_map_with_path(
          lambda path, _: depth(path), params))


class ClassifierTrainer:
  """Encoder + linear head trained with the shared step and loop.

  The state is built as pretraining builds it (`state.shape_first`): born on
  the mesh in the layout `mesh.rules` give it (replicated by default, split
  along `model` where a rule says so), then the encoder weights are placed
  into it leaf by leaf (`encoder_weights.into_state`). The step is compiled
  once per architecture, set of trainable params and run length, the init
  and predict programs once per architecture and trainable set (`like`);
  every cell reuses them: cells differ only in initial weights, data
  subset and seed.
  """

  def __init__(self, ctx: EncoderContext, last_k: int | None = None,
               steps: int | None = None,
               like: "ClassifierTrainer | None" = None,
               objective: dict | None = None, layer_decay: float = 1.0):
    """`like`: a trainer of the same architecture and trainable set for
    another run length or objective, whose init, predict and encode
    programs this one reuses: only the step holds the run length (its
    learning-rate schedule) and the loss; the optimizer state it starts
    from is the same zeros. `objective`: fields replacing the supervised
    objective's (a distillation student's: evaluation/distill.py).
    `layer_decay` < 1: layer-wise learning rates (`layer_decay_scales`)."""
    ft = ctx.config.finetune
    self.steps = ft.steps if steps is None else steps
    self.config = with_class_weights(ctx.config, ctx.labels("train"), ctx.info)
    if objective:
      self.config = self.config.copy_and_resolve_references()
      self.config.objective.update(objective)
    self.info, self.mesh = ctx.info, ctx.mesh
    self.bound = objectives.bind(self.config, ctx.info)
    tx, schedule = optim.make_optimizer(ft.optim, ft.batch_size, self.steps)
    self.select_from = selection_start(ft, self.steps)
    self.select_by = _choice(ft, "select_by", SELECT_BY)
    self.average = weight_average_decay(ft)
    self.sam_rho = ft.optim.get("sam_rho", 0.0)
    shape = nnx.eval_shape(lambda: self._model(0))
    labels = trainable_labels(shape, last_k)
    self.tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                    labels)
    self.layer_decay = layer_decay
    if layer_decay < 1.0:
      self.tx = optax.chain(self.tx, layer_decay_scales(shape, layer_decay))
    # What the init program builds beyond the weights, as shapes: the
    # objective's extra state (FixMatch's pseudo-label statistics) and the
    # optimizer's (layer decay adds a transform): a `like` trainer's init
    # serves only a state of the same trees.
    # The model's own tree leads: a FixMatch with a contrastive projector
    # is another network, whose programs no plain classifier's serve.
    self.layout = (jax.tree.structure(nnx.state(shape)), jax.tree.structure(
        jax.eval_shape(lambda: self.bound.init_extra(shape))), layer_decay < 1.0)
    if like is None or like.layout != self.layout:
      graphdef, _, shardings, self._init = state_lib.shape_first(
          self._state, self.mesh, parallel.config_rules(self.config), args=(0,))
    else:
      graphdef, shardings, self._init = like.graphdef, like.shardings, like._init
    self.flip_views = test_time_flips(ft)
    if like is None or like.layout[0] != self.layout[0]:
      self.predict, self.encode = _inference_programs(
          graphdef, ctx.info.multi_label,
          self.bound.ctx.policy if self.flip_views else None)
    else:
      self.predict, self.encode = like.predict, like.encode
    self.graphdef, self.shardings = graphdef, shardings
    step = step_lib.make_from_objective(
        graphdef, self.bound, self.tx, schedule,
        sam_rho=self.sam_rho,
        sam_mask=lambda params: jax.tree.map(lambda l: l == "train",
                                             labels(params)))
    if self.average:
      step = with_weight_average(step, self.average)
    self.step_fn = step_lib.compile_step(step, shardings, graphdef=graphdef)

  def _model(self, seed) -> nnx.Module:
    return self.bound.build_model(nnx.Rngs(jax.random.key(seed)))

  def _state(self, seed) -> tuple[nnx.GraphDef, state_lib.TrainState]:
    """Model and train state drawn from `seed` (traced inside `init`), its
    `extra` the objective's (FixMatch's pseudo-label statistics); with a
    weight average, its slot in `extra` too (set by `start_average`)."""
    model = self._model(seed)
    graphdef, state = state_lib.create(model, self.tx,
                                       self.bound.init_extra(model),
                                       jax.random.PRNGKey(seed))
    return graphdef, start_average(state) if self.average else state

  def init_state(self, seed: int,
                 weights: weights_lib.Flat | None) -> state_lib.TrainState:
    """A cell's initial state on the mesh, with `weights` in its encoder
    (None: the encoder keeps its random init from `seed`)."""
    state = self._init(seed)
    if weights is not None:
      state, _ = weights_lib.into_state(state, weights)
    return state

  def probs(self, ctx: EncoderContext, params, rest, split: str) -> np.ndarray:
    return inference.batched_apply(
        self.predict, ctx.data[split][0], mesh=self.mesh,
        batch_size=self.config.finetune.eval_batch_size, args=(params, rest))

  def fit_head(self, ctx: EncoderContext, state, train_idx: np.ndarray,
               seed: int):
    """The state with its head replaced by a linear probe (the `linear`
    protocol's fit: weight decay and epoch chosen on val) on the frozen
    features of the state's own encoder; and the probe's val score."""
    ft = self.config.finetune

    def features(images):
      return inference.batched_apply(
          self.encode, images, mesh=self.mesh, batch_size=ft.eval_batch_size,
          args=(state.params, state.rest))

    probe = ctx.fit_linear_probe(features(ctx.data["train"][0][train_idx]),
                                 train_idx, features(ctx.data["val"][0]), seed)
    return with_head(state, *probe.on_raw_features()), probe.val_score

  def run(self, ctx: EncoderContext, train_idx: np.ndarray, seed: int, *,
          weights: weights_lib.Flat | None, name: str,
          feed: Feed | None = None, teachers: tuple = (),
          score: tuple[str, ...] = EVAL_SPLITS,
          start: tuple | None = None) -> Predictions:
    """Trains on the labelled train rows `train_idx`, or on what `feed`
    gives (a distillation student's soft targets, FixMatch's labelled and
    unlabelled rows; an LP-FT head still fits on `train_idx` alone);
    `teachers`: the networks (`Predictions.networks`) a function-matching
    student's step runs on its own views; `start`: such a network of this
    model to start from, every weight of it (its head too, so no LP-FT
    head is fitted), instead of `weights` and a fresh head. Returns the
    selected model's probabilities on the `score` splits, and its
    weights."""
    from data_pipelines import input_pipeline  # only where data is read
    ft = self.config.finetune
    seed = training_seed(ft, seed)
    state = self.init_state(seed, weights)
    if start is not None:
      state = with_network(state, start)
    if teachers or supervised.TEACHERS in state.extra:
      state = with_teachers(state, teachers)
    probed = (head_fit(ft) == "linear_probe" and weights is not None
              and start is None)
    if probed:
      state, probe_val_score = self.fit_head(ctx, state, train_idx, seed)
    if self.average:  # from the weights training starts from
      state = start_average(state)
    images, labels = ctx.data["train"]
    if feed is None:
      feed = Feed(train_idx, labels[train_idx])
    rows = feed.rows
    keep = last_batch(ft) == "keep"
    batches = input_pipeline.make_iterator(
        images[rows], feed.labels, extra=feed.extra,
        batch_size=parallel.local_batch_size(ft.batch_size), shuffle=True,
        repeat=True, seed=seed, drop_remainder=not keep, per_epoch=keep,
        batch_multiple=local_data_devices(self.mesh))
    best = best_on_val(self.select_from, self.select_by)

    def select_on_val(step: int, state) -> dict[str, float]:
      weights = evaluated_weights(state)
      probs = self.probs(ctx, *weights, "val")
      scores = metrics.classification_metrics(ctx.labels("val"), probs, ctx.task)
      scores["loss"] = metrics.log_loss(ctx.labels("val"), probs, ctx.task)
      best.offer(step, scores, lambda: jax.device_get(weights))
      return scores

    writer = MetricWriter(os.path.join(ctx.log_dir or ctx.workdir, name),
                          tensorboard=False)
    if probed:  # the probe itself is a candidate: step 0
      writer.write(0, select_on_val(0, state), prefix="val/")
    loop.run(state, self.step_fn, batches, mesh=self.mesh, num_steps=self.steps,
             writer=writer, log_every=min(ft.log_every, self.steps),
             eval_fn=select_on_val,
             eval_every=eval_interval(ft, len(rows), self.steps, self.mesh),
             desc=name, progress=self.config.train.progress, nested=True)
    writer.close()
    best.finish()
    params, rest = best.state
    drop_path = self.config.model.get("drop_path_rate", 0.0)
    return Predictions(
        {s: self.probs(ctx, params, rest, s) for s in score},
        {"selected_step": best.step, "steps": self.steps, "training_seed": seed,
         "selected_epoch": best.step / steps_per_epoch(ft, len(rows),
                                                       self.mesh),
         "selected_val_auroc": best.auroc, "selected_val_loss": best.loss,
         "select_from_step": self.select_from,
         **({"select_by": self.select_by}
            if self.select_by != SELECT_BY[0] else {}),
         **({"layer_decay": self.layer_decay} if self.layer_decay < 1 else {}),
         **({"sam_rho": self.sam_rho} if self.sam_rho else {}),
         **({"drop_path": drop_path} if drop_path else {}),
         **({"test_time_flips": True} if self.flip_views else {}),
         **({"weight_average": self.average} if self.average else {}),
         **({"head_probe_val_score": probe_val_score} if probed else {})},
        networks=(best.state,))


def test_time_flips(ft: ml_collections.ConfigDict) -> bool:
  """`finetune.test_time_flips` (absent: off), refused unless a bool."""
  flips = ft.get("test_time_flips", False)
  if not isinstance(flips, bool):
    raise ValueError(f"config.finetune.test_time_flips={flips!r}: expected "
                     "True or False")
  return flips


def layer_decay(ft: ml_collections.ConfigDict) -> float:
  """`finetune.layer_decay` (absent: 1, every layer at the full rate),
  refused outside (0, 1]."""
  decay = float(ft.get("layer_decay", 1.0))
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"config.finetune.layer_decay={decay}: expected a "
                     "factor in (0, 1] (1 = off; MAE fine-tunes ViT-B "
                     "with 0.75)")
  return decay


AVERAGE = "weight_average"  # its slot in TrainState.extra


def weight_average_decay(ft: ml_collections.ConfigDict) -> float:
  """`finetune.weight_average` (absent: 0, off), refused outside [0, 1)."""
  decay = float(ft.get("weight_average", 0.0))
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"config.finetune.weight_average={decay}: expected a "
                     "decay in [0, 1) (0 = off, e.g. 0.99)")
  return decay


def start_average(state: state_lib.TrainState) -> state_lib.TrainState:
  """The state with its weight average reset to its current weights
  (copies: the step donates the state, so no buffer may appear twice)."""
  weights = jax.tree.map(jnp.copy, (state.params, state.rest))
  return state.replace(extra=dict(state.extra, **{AVERAGE: weights}))


def with_weight_average(step_fn, decay: float):
  """`step_fn`, then avg <- decay * avg + (1 - decay) * new for every float
  weight and statistic; other leaves (rng counters) are taken as they are."""
  def blend(avg, new):
    if not jnp.issubdtype(new.dtype, jnp.floating):
      return new
    return (decay * avg + (1.0 - decay) * new).astype(new.dtype)

  def step(state, batch):
    state, step_metrics = step_fn(state, batch)
    average = jax.tree.map(blend, state.extra[AVERAGE],
                           (state.params, state.rest))
    extra = dict(state.extra, **{AVERAGE: average})
    return state.replace(extra=extra), step_metrics

  return step


def with_teachers(state: state_lib.TrainState,
                  teachers: tuple) -> state_lib.TrainState:
  """The state with a function-matching student's teacher slots
  (`supervised.TEACHERS` in `extra`) holding `teachers`' (params, rest),
  each leaf on its slot's dtype and sharding; refused when the student was
  built for another number of teachers."""
  slots = state.extra.get(supervised.TEACHERS, ())
  if len(slots) != len(teachers):
    raise ValueError(f"{len(teachers)} teacher networks for a student "
                     f"built to match {len(slots)}")
  filled = tuple(
      jax.tree_util.tree_map_with_path(
          lambda path, slot, value: weights_lib.placed(slot, value,
                                                       path_str(path)),
          slot, supervised.teacher_slot(*network))
      for slot, network in zip(slots, teachers))
  return state.replace(extra=dict(state.extra, **{supervised.TEACHERS: filled}))


def evaluated_weights(state: state_lib.TrainState) -> tuple:
  """(params, rest) that validation selects and the test scores: the
  weight average when the run keeps one, else the trained weights."""
  if AVERAGE in state.extra:  # stage 2's extra is a dict: {} or this slot
    return state.extra[AVERAGE]
  return state.params, state.rest


@dataclasses.dataclass(frozen=True)
class Feed:
  """What a run's batches hold: train rows `rows`, their label column and
  extra columns (the objective's `reads`)."""
  rows: np.ndarray
  labels: np.ndarray
  extra: dict[str, np.ndarray] | None = None


def soft_target_feed(rows: np.ndarray, targets: np.ndarray,
                     multi_label: bool,
                     labelled: np.ndarray | None = None) -> Feed:
  """Train rows against class probabilities `targets` (a distillation
  student's): no label of `rows` is read, the label column holds what the
  targets stand for. With `labelled` (train rows whose targets are their
  labels), a 'labelled' column marks them (1) for a function-matching
  student, whose teachers label the others."""
  extra = {"target": targets}
  if labelled is not None:
    extra["labelled"] = np.isin(rows, labelled).astype(np.float32)
  return Feed(rows, hard_labels(targets, multi_label), extra)


def fixmatch_labelled_share(ft: ml_collections.ConfigDict) -> float:
  """`finetune.fixmatch_labelled_share` (absent: 0, the subset's own),
  refused outside [0, 1)."""
  share = float(ft.get("fixmatch_labelled_share", 0.0))
  if not 0.0 <= share < 1.0:
    raise ValueError(f"config.finetune.fixmatch_labelled_share={share}: "
                     "expected a share in [0, 1) (0 = the subset's own; "
                     "FixMatch's mu = 7 is 0.125)")
  return share


def semi_supervised_feed(labels: np.ndarray, train_idx: np.ndarray,
                         labelled_share: float = 0.0) -> Feed:
  """Every train row, labelled where in `train_idx` (column 'labelled' 1)
  and -1 elsewhere: no label outside the subset reaches the step. With
  `labelled_share` above the subset's own share, each labelled row is
  repeated `labelled_repeats` times, so shuffled batches hold that share
  of labelled rows on average (FixMatch draws 1 labelled per mu
  unlabelled: 1 / (1 + mu) = 0.125 at its mu = 7)."""
  labelled = np.zeros(len(labels), np.float32)
  labelled[train_idx] = 1.0
  masked = np.where(labelled.reshape((-1,) + (1,) * (labels.ndim - 1)) > 0,
                    labels, -1).astype(np.int32)
  repeats = labelled_repeats(len(train_idx), len(labels) - len(train_idx),
                             labelled_share)
  rows = np.concatenate([np.arange(len(labels))]
                        + [np.asarray(train_idx)] * (repeats - 1))
  return Feed(rows, masked[rows], {"labelled": labelled[rows]})


def labelled_repeats(n_labelled: int, n_unlabelled: int,
                     share: float) -> int:
  """How often each labelled row appears so that labelled rows make
  `share` (in [0, 1)) of the feed: the nearest whole number, at least
  once (0, or a share below the natural one, keeps every row once)."""
  if n_labelled == 0:
    return 1
  return max(1, round(share * n_unlabelled / ((1.0 - share) * n_labelled)))


def hard_labels(targets: np.ndarray, multi_label: bool) -> np.ndarray:
  """The labels class probabilities stand for (argmax; multi-label: each
  label above 0.5), as the batches' label column."""
  if multi_label:
    return (targets > 0.5).astype(np.int32)
  return np.argmax(targets, axis=-1).astype(np.int32)


def training_seed(ft: ml_collections.ConfigDict, cell_seed: int) -> int:
  """The seed of a run's init, batch order and augmentation: the cell's,
  shifted by `finetune.training_seed_offset`. The label subset keeps the
  cell's seed, so runs that differ only in the offset train on the same
  images (an ensemble of them, or the training seed's share of the spread)."""
  return cell_seed + int(ft.get("training_seed_offset", 0))


# `finetune.select_by`: each rule's key of an evaluation (step, scores),
# larger is better. `last` makes no choice on 78 noisy validation images:
# the run's end is the model.
SELECTION_KEYS: dict[str, Callable[[int, dict], tuple[float, float]]] = {
    "val_auroc": lambda step, s: (s["auroc"], -s["loss"]),  # ties: lower loss
    "val_loss": lambda step, s: (-s["loss"], s["auroc"]),   # ties: higher AUROC
    "last": lambda step, s: (float(step), 0.0),
}
# The best val AUROC of up to hundreds of evaluations on 78 images is partly
# the noise's pick; this rule scores each candidate by the mean over it and
# its neighbouring candidates (one before, one after; ties: their mean loss).
SMOOTHED = "val_auroc_smoothed"
SELECT_BY = tuple(SELECTION_KEYS) + (SMOOTHED,)


class BestOnVal:
  """The validation-selected model among the evaluations from step `start`
  on, and at step 0 (only a fitted LP-FT head is evaluated there), by
  `rule` (`finetune.select_by`, `SELECT_BY`)."""

  def __init__(self, start: int, rule: str = SELECT_BY[0]):
    self.start, self.rule, self.key = start, rule, (-np.inf, -np.inf)
    self.step = self.auroc = self.loss = self.state = None

  def offer(self, step: int, scores: dict[str, float],
            state: Callable[[], Any]) -> bool:
    """Keeps this evaluation if it is a candidate and the best so far;
    `state` is called (a device-to-host copy) only then."""
    return self.is_candidate(step) and self._keep(
        SELECTION_KEYS[self.rule](step, scores), step, scores, state)

  def finish(self) -> None:
    """After the run's last evaluation: a per-evaluation rule has chosen."""

  def is_candidate(self, step: int) -> bool:
    return step >= self.start or step == 0

  def _keep(self, key: tuple[float, float], step: int,
            scores: dict[str, float], state: Callable[[], Any]) -> bool:
    if key <= self.key:
      return False
    self.key, self.step = key, step
    self.auroc, self.loss, self.state = scores["auroc"], scores["loss"], state()
    return True


class SmoothedBestOnVal(BestOnVal):
  """`SMOOTHED`: an evaluation is judged once its successor is known (the
  run's last at `finish`), so the last three candidates' states are held
  on the host. `auroc` and `loss` stay the kept evaluation's own."""

  def __init__(self, start: int):
    super().__init__(start, SMOOTHED)
    self.recent: list[tuple[int, dict[str, float], Any]] = []

  def offer(self, step: int, scores: dict[str, float],
            state: Callable[[], Any]) -> bool:
    """Records this evaluation; True if it made the previous one the best."""
    if not self.is_candidate(step):
      return False
    self.recent = self.recent[-2:] + [(step, scores, state())]
    return len(self.recent) > 1 and self._judge(len(self.recent) - 2)

  def finish(self) -> None:
    if self.recent:
      self._judge(len(self.recent) - 1)

  def _judge(self, i: int) -> bool:
    window = [scores for _, scores, _ in self.recent[max(i - 1, 0):i + 2]]
    key = (float(np.mean([s["auroc"] for s in window])),
           -float(np.mean([s["loss"] for s in window])))
    step, scores, state = self.recent[i]
    return self._keep(key, step, scores, lambda: state)


def best_on_val(start: int, rule: str) -> BestOnVal:
  """The selector of `finetune.select_by`."""
  return SmoothedBestOnVal(start) if rule == SMOOTHED else BestOnVal(start, rule)


def trainer_for(ctx: EncoderContext, n_train: int, last_k: int | None = None,
                objective: dict | None = None,
                pretrained: bool = True,
                epochs: float | None = None) -> ClassifierTrainer:
  """The compiled trainer for this architecture, trainable set, run length
  (epoch-based runs differ in length by label fraction; `epochs` other
  than `finetune.epochs`: a distillation student's), objective fields
  and layer decay (`finetune.layer_decay`, for `pretrained` encoders only:
  a random one has no early features to keep); trainers of other lengths
  or objectives lend it their init and inference programs."""
  ft = ctx.config.finetune
  steps = run_length(ft, n_train, ctx.mesh, epochs)
  decay = layer_decay(ft) if pretrained else 1.0
  family = ("trainer", model_key(ctx.config), last_k)  # its first trainer
  key = family + (steps, json.dumps(objective or {}, sort_keys=True), decay)
  with _BUILDING:  # cells side by side (`cells.run_cells`) build it once
    if key not in ctx.compiled:
      ctx.compiled[key] = ClassifierTrainer(ctx, last_k, steps,
                                            like=ctx.compiled.get(family),
                                            objective=objective,
                                            layer_decay=decay)
      ctx.compiled.setdefault(family, ctx.compiled[key])
  return ctx.compiled[key]


_BUILDING = threading.Lock()


def _inference_programs(graphdef: nnx.GraphDef, multi_label: bool,
                        flip_policy=None):
  """(predict, encode): class probabilities and pooled encoder features of
  images, in eval mode, from (params, rest). With `flip_policy`, the
  probabilities are averaged over the images' mirrorings that policy
  trains with (`views.flipped_views`; test-time augmentation)."""
  def predict(params, rest, images):
    model = nnx.merge(graphdef, params, rest)
    inputs = ([images] if flip_policy is None
              else views.flipped_views(flip_policy, images))
    return jnp.mean(jnp.stack([
        _to_probs(model(views.eval_view(x), train=False), multi_label)
        for x in inputs]), axis=0)

  predict = runtime.jit(predict, graphdef)
  encode = runtime.jit(lambda p, r, x: nnx.merge(graphdef, p, r).encoder(
      views.eval_view(x), train=False), graphdef)
  return predict, encode


def with_network(state: state_lib.TrainState, network: tuple
                 ) -> state_lib.TrainState:
  """The state with every param and statistic replaced by `network`'s
  ((params, rest) of a run of the same model, on host), each on its own
  sharding; the optimizer state is left as initialised. The network is
  read as a teacher slot is (`supervised.teacher_slot`): a FixMatch
  teacher's training-only projector is not part of what it predicts with."""
  def place(path, old, new):
    return weights_lib.placed(old, new, path_str(path))

  slot = supervised.teacher_slot(*network)
  live = []
  for collection, new in zip((state.params, state.rest),
                             (slot["params"], slot["rest"])):
    copy = jax.tree.map(lambda x: x, collection)
    pure = nnx.to_pure_dict(copy)
    differ = sorted(flatten(pure).keys() ^ flatten(new).keys())
    if differ:
      raise ValueError("a network to start from must be of the model it "
                       f"starts; leaves in one only: {differ[:5]}")
    nnx.replace_by_pure_dict(copy, jax.tree_util.tree_map_with_path(
        place, pure, new))
    live.append(copy)
  return state.replace(params=live[0], rest=live[1])


def with_head(state: state_lib.TrainState, kernel: np.ndarray,
              bias: np.ndarray) -> state_lib.TrainState:
  """The state with the classifier head's kernel and bias replaced, each on
  its own sharding."""
  params = jax.tree.map(lambda x: x, state.params)
  pure = nnx.to_pure_dict(params)
  linear = pure["head"]["linear"]
  for key, value in (("kernel", kernel), ("bias", bias)):
    linear[key] = weights_lib.placed(linear[key], value, f"head/linear/{key}")
  nnx.replace_by_pure_dict(params, pure)
  return state.replace(params=params)


def _choice(ft: ml_collections.ConfigDict, field: str,
            allowed: tuple[str, ...]) -> str:
  """`finetune.<field>` (absent: the first allowed value, the default),
  refused with the allowed values when it is none of them."""
  mode = ft.get(field, allowed[0])
  if mode not in allowed:
    raise ValueError(f"config.finetune.{field}={mode!r}; allowed: "
                     f"{', '.join(allowed)}")
  return mode


HEAD_FITS = ("none", "linear_probe")
LAST_BATCH = ("carry", "keep")
CLASS_WEIGHTS = ("none", "balanced")
SELECT_FROM = ("warmup_end", "first_eval")


def head_fit(ft: ml_collections.ConfigDict) -> str:
  return _choice(ft, "head_fit", HEAD_FITS)


def last_batch(ft: ml_collections.ConfigDict) -> str:
  return _choice(ft, "last_batch", LAST_BATCH)


def selection_start(ft: ml_collections.ConfigDict, steps: int) -> int:
  """First step whose model may be selected: with 'warmup_end' the end of
  the learning-rate warmup (as `optim` caps it), so that on tiny label
  subsets, validated every step, a noisy 78-image val AUROC cannot pick
  a model the schedule has barely begun to train (a zero head after 2-8
  steps scored every test image on one side of 0.5); 'first_eval' lets
  every evaluation compete."""
  if _choice(ft, "select_from", SELECT_FROM) == "first_eval":
    return 0
  return optim.warmup_length(ft.optim, steps)


def local_data_devices(mesh) -> int:
  """Devices of this process that one process's batch is split over."""
  if mesh is None:
    return 1
  return max(parallel.data_axis_size(mesh) // jax.process_count(), 1)


def steps_per_epoch(ft: ml_collections.ConfigDict, n_train: int,
                    mesh=None) -> float:
  """Steps in one pass over `n_train` labelled images: n / batch when
  batches carry across epochs; with last_batch='keep', the full batches
  plus the short one (trimmed to a multiple of the devices it splits over;
  every process reads n // processes images an epoch)."""
  if last_batch(ft) == "carry":
    return n_train / ft.batch_size
  from data_pipelines import input_pipeline  # only where data is read
  processes = jax.process_count()
  sizes = input_pipeline.epoch_batch_sizes(
      n_train // processes, ft.batch_size // processes, drop_remainder=False,
      multiple=local_data_devices(mesh))
  return float(max(len(sizes), 1))


def run_length(ft: ml_collections.ConfigDict, n_train: int, mesh=None,
               epochs: float | None = None) -> int:
  """Stage-2 steps for `n_train` labelled images: `finetune.steps`, or with
  `epochs` (default `finetune.epochs`) > 0, that many passes over them (at
  least `finetune.min_steps`, so a 1 % subset still trains)."""
  epochs = ft.get("epochs", 0) if epochs is None else epochs
  if not epochs:
    return ft.steps
  return max(int(np.ceil(epochs * steps_per_epoch(ft, n_train, mesh)
                         - 1e-9)), ft.min_steps)


def eval_interval(ft: ml_collections.ConfigDict, n_train: int,
                  steps: int, mesh=None) -> int:
  """Steps between validation passes: `finetune.eval_every`, or with
  `finetune.epochs` > 0, every `finetune.eval_every_epochs` epochs."""
  if not ft.get("epochs", 0):
    return min(ft.eval_every, steps)
  every = int(round(ft.eval_every_epochs * steps_per_epoch(ft, n_train, mesh)))
  return int(np.clip(every, 1, steps))


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[C] float counts of single-label `labels` ([N] or [N, 1])."""
  return np.bincount(np.asarray(labels).reshape(-1).astype(np.int64),
                     minlength=num_classes).astype(np.float64)


def class_proportions(labels: np.ndarray, num_classes: int) -> tuple:
  """Each class's share of `labels`: FixMatch's alignment target."""
  counts = class_counts(labels, num_classes)
  return tuple(float(c) for c in counts / counts.sum())


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> tuple:
  """n / (C * count_c) per class (sklearn's 'balanced'): every class weighs
  as much in the loss as if the classes were equally frequent."""
  counts = class_counts(labels, num_classes)
  weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
  return tuple(float(w) for w in weights)


def with_class_weights(config: ml_collections.ConfigDict, labels: np.ndarray,
                       info) -> ml_collections.ConfigDict:
  """`finetune.class_weights='balanced'` -> the supervised objective's
  per-class loss weights, from the train split's counts (label subsets are
  stratified, so every fraction keeps these proportions)."""
  if _choice(config.finetune, "class_weights", CLASS_WEIGHTS) == "none":
    return config
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
