"""What every stage-2 protocol is handed, and what it hands back.

A protocol is `fn(ctx, train_idx, seed) -> Predictions`: `ctx` is the
`EncoderContext` of one encoder (one method and seed), `train_idx` the
labelled subset of the train split, `seed` the cell's seed. The context
computes the encoder's frozen features once and keeps the trainers
compiled for its architecture, so the protocols of a sweep share them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import fractions
from ssl_jax import objectives, parallel, runtime, views
from ssl_jax.evaluation import inference, probes
from ssl_jax.train import encoder_weights as weights_lib
from ssl_jax.train import state as state_lib

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
FINAL = "final"  # the layer name of the encoder's pooled output


@dataclasses.dataclass
class EncoderContext:
  """Everything the protocols share for one encoder (one method and seed).

  `encoder_weights` are flat host arrays (`train/encoder_weights.py`);
  None means a random-init encoder drawn with `init_seed`.
  `peers` are further encoders whose frozen features `combine` concatenates.
  `teacher_encoders` are further pretrained encoders of this architecture
  (`finetune.distill_teacher_pretrained`), each of which trains a `distill`
  teacher beside this encoder's own.
  `compiled` holds the programs compiled for this architecture (trainers,
  the feature extractor); contexts with the same model and data share one
  dict, so a sweep compiles them once.
  `groups` are the train split's patient ids when the source has them:
  label fractions then take whole patients (no patient's images split
  between the labelled subset and the rest).
  `pretrained` is the pretraining workdir the weights came from ('' for
  none): protocols that need more of it than the encoder (zero_shot's text
  tower) read it there.
  """
  config: ml_collections.ConfigDict      # classifier config (model of the pretrain)
  workdir: str
  mesh: Any
  info: Any
  data: dict[str, tuple[np.ndarray, np.ndarray]]
  encoder_weights: weights_lib.Flat | None
  init_seed: int = 0
  log_dir: str = ""
  peers: tuple["EncoderContext", ...] = ()
  teacher_encoders: tuple[weights_lib.Flat, ...] = ()
  compiled: dict = dataclasses.field(default_factory=dict)
  groups: np.ndarray | None = None
  pretrained: str = ""
  _features: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
  # Shared with the copies `dataclasses.replace` makes, as `_features` is.
  _features_lock: threading.Lock = dataclasses.field(
      default_factory=threading.Lock, repr=False, compare=False)

  def __getstate__(self) -> dict:
    """What a copy in another process (a stage-2 cell worker, `cells.py`)
    gets: everything but the device mesh, the compiled programs and the
    lock, which are this process's. The mesh travels as its shape, and
    `compiled` as a token, so copies of contexts that share one dict here
    share one there too."""
    state = dict(self.__dict__)
    state["mesh"] = (int(self.mesh.devices.size),
                     int(self.mesh.shape.get(parallel.MODEL_AXIS, 1)))
    state["compiled"] = (os.getpid(), id(self.compiled))
    del state["_features_lock"]
    return state

  def __setstate__(self, state: dict) -> None:
    state = dict(state, mesh=parallel.make_mesh(*state["mesh"]),
                 compiled=_COMPILED_HERE.setdefault(state["compiled"], {}),
                 _features_lock=threading.Lock())
    self.__dict__.update(state)

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

  def fit_linear_probe(self, train_feats: np.ndarray, train_idx: np.ndarray,
                       val_feats: np.ndarray, seed: int) -> probes.LinearProbe:
    """The `linear` protocol's probe (weight decay and epoch chosen on val)
    on the labelled subset's features `train_feats` (rows of `train_idx`)."""
    return probes.fit_linear_probe(
        train_feats, self.labels("train")[train_idx], val_feats,
        self.labels("val"), num_classes=self.info.num_classes, task=self.task,
        weight_decays=tuple(self.config.finetune.linear_weight_decays),
        seed=seed)

  def features(self, split: str, layer: str = FINAL) -> np.ndarray:
    """Frozen encoder features of a split at `layer` (all computed once,
    also when cells run side by side)."""
    with self._features_lock:
      self._compute_features()
    layers = self._features[split]
    if layer not in layers:
      raise ValueError(f"config.finetune.early_layer={layer!r} is not an "
                       f"encoder layer; allowed: {', '.join(sorted(layers))}")
    return layers[layer]

  def _compute_features(self) -> None:
    """Every split's features at every layer, unless computed already."""
    if self._features:
      return
    encoder = weights_lib.built_with(
        lambda: objectives.base.build_encoder(self.config, self.info,
                                              nnx.Rngs(self.init_seed)),
        self.encoder_weights)
    graphdef, params, rest = state_lib.split_model(encoder)
    params, rest = parallel.replicate((params, rest), self.mesh)
    embed = self._embed(graphdef)
    self._features.update({name: inference.batched_apply(
        embed, self.data[name][0], mesh=self.mesh,
        batch_size=self.config.finetune.eval_batch_size, args=(params, rest))
        for name in SPLITS})

  def _embed(self, graphdef):
    """The compiled feature extractor of this architecture, shared through
    `compiled` by the contexts of a sweep (one per method and seed), so it
    compiles once, not twice per context."""
    key = ("embed", model_key(self.config))
    if key not in self.compiled:
      def embed(p, r, x):
        pooled, inner = nnx.merge(graphdef, p, r)(
            views.eval_view(x), train=False, return_intermediates=True)
        return dict(inner, **{FINAL: pooled})

      self.compiled[key] = runtime.jit(embed, graphdef)
    return self.compiled[key]


# The `compiled` dicts of contexts unpickled in this process, by the dict
# they had where they were pickled (`EncoderContext.__setstate__`).
_COMPILED_HERE: dict[tuple[int, int], dict] = {}


def model_key(config: ml_collections.ConfigDict) -> str:
  """The architecture of `config.model`, as a key of compiled programs."""
  return json.dumps(config.model.to_dict(), sort_keys=True, default=str)


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What a protocol hands back: val/test probabilities of the selected
  model, and how it was selected (weight decay, step, ...). `networks`:
  the selected (params, rest) on host of each network a trained run's
  probabilities average (one, or an ensemble's members), for a teacher
  that labels its student's own views (distillation's function
  matching); empty for probes, and in a cell's result."""
  probs: dict[str, np.ndarray]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  networks: tuple = ()

