"""Encoder weights in, one way: flat arrays placed into every encoder copy.

Weights travel as `Flat` host arrays keyed by the encoder's own paths
('stem_conv/kernel', 'stages/0/0/bn1/mean'), params and statistics merged
(their names never collide: BatchNorm's scale/bias vs mean/var). Two
sources make them: `read` (an ssl_jax pretraining workdir: the encoder
subtree of its latest checkpoint, via the one raw Orbax read,
`checkpoint.read_latest`) and `init_from` (any file, renamed and matched to
these keys). One function puts them in, `place`: every leaf under
('params' | 'rest', 'encoder', ...) -- the online encoder and each EMA
teacher copy -- is rebuilt from its key's array, in the leaf's dtype and
sharding, shard by shard, so a state born sharded on the mesh stays so
(multi-host too). `into_state` and `into_module` adapt a train state and a
live encoder to it.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from ssl_jax.models import neck as neck_lib
from ssl_jax.pytree import flatten, path_keys
from ssl_jax.train import checkpoint
from ssl_jax.train.state import TrainState

Flat = dict[str, np.ndarray]
COLLECTIONS = ("params", "rest")  # where a model's encoder leaves live
ENCODER = "encoder"
PROJECTOR = "projector"  # an EncoderProjector's MLP (objectives/contrastive.py)


def merged(params: Mapping[str, Any], rest: Mapping[str, Any]) -> Flat:
  """Host flat weights from an encoder's nested params and rest."""
  params, rest = flatten(params), flatten(rest)
  both = sorted(set(params) & set(rest))
  if both:
    raise ValueError(f"encoder weights: {both[:5]} are both a param and a "
                     "statistic")
  return {k: np.asarray(v) for k, v in {**params, **rest}.items()}


def read(workdir: str | os.PathLike, neck_layers: int = 0
         ) -> tuple[Flat, int]:
  """(the encoder of an ssl_jax workdir's latest checkpoint, its step).
  Host copies: every cell gets fresh device buffers (steps donate them).
  `neck_layers` = k adds the first k layers of its MLP projector as the
  encoder's neck (models/neck.py)."""
  tree = checkpoint.restore_subtree(os.path.join(workdir, "checkpoints"),
                                    *COLLECTIONS)
  weights = merged(tree["params"][ENCODER], tree["rest"].get(ENCODER, {}))
  if neck_layers:
    weights.update(projector_neck(tree, neck_layers, workdir))
  return weights, int(tree["step"])


def projector_neck(tree: Mapping[str, Any], layers: int,
                   workdir: str | os.PathLike) -> Flat:
  """The first `layers` Linear/BN pairs of a checkpoint's MLP projector
  (`params/projector/layers`, models/heads.py MLPHead), keyed as the
  encoder's neck ('neck/layers/0/kernel', ...)."""
  params = tree["params"].get(PROJECTOR, {})
  if "layers" not in params:
    raise ValueError(
        f"{workdir}: its model has no MLP projector (params/{PROJECTOR}/"
        f"layers), so it has no projector layers to keep; the methods "
        "with one are SimCLR, MoCo, Barlow Twins, VICReg, BYOL, SimSiam")
  available = len(params["layers"]) - 1  # the last is the projection
  if not 1 <= layers <= available:
    raise ValueError(
        f"{workdir}: its projector has {available} hidden layer(s) to keep; "
        f"asked for {layers}")
  flat = merged(params, tree["rest"].get(PROJECTOR, {}))
  return {f"{neck_lib.NAME}/{key}": value for key, value in flat.items()
          if int(key.split("/")[1]) < layers}  # layers/i/..., norms/i/...


def of_module(encoder: nnx.Module) -> Flat:
  """A live encoder's arrays as host flat weights."""
  return merged(nnx.to_pure_dict(nnx.state(encoder, nnx.Param)),
                nnx.to_pure_dict(nnx.state(encoder, nnx.Not(nnx.Param))))


def encoder_key(parts: list[str]) -> str | None:
  """'a/b/c' for a leaf under any (..., 'params'|'rest', 'encoder', a, b, c):
  the online encoder and every teacher copy of it (BYOL, MoCo, DINO and
  the combined objective's parts keep teachers as such pure dicts)."""
  for i in range(1, len(parts) - 1):
    if parts[i] == ENCODER and parts[i - 1] in COLLECTIONS:
      return "/".join(parts[i + 1:])
  return None


def encoder_leaves(tree: Mapping[str, Any]) -> dict[str, Any]:
  """The online encoder's leaves of {'params', 'rest', ...} by key (what a
  weight file must match; teachers are copies of the same keys)."""
  out = {}
  for name in COLLECTIONS:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree[name])[0]:
      key = encoder_key([name] + [str(k) for k in path_keys(path)])
      if key is not None:
        out[key] = leaf
  return out


def placed(old: jax.Array, new: np.ndarray, key: str) -> jax.Array:
  """`new` with `old`'s dtype and sharding, built shard by shard (an
  abstract `old`, a ShapeDtypeStruct: a host array)."""
  new = np.asarray(new, dtype=old.dtype)
  if new.shape != tuple(old.shape):
    raise ValueError(f"weight {key!r} has shape {new.shape}; the model's is "
                     f"{tuple(old.shape)}")
  if isinstance(old, jax.ShapeDtypeStruct):
    return new
  return jax.make_array_from_callback(old.shape, old.sharding,
                                      lambda index: new[index])


def place(tree: Mapping[str, Any], weights: Flat
          ) -> tuple[dict[str, Any], dict[str, int]]:
  """`tree` ({'params', 'rest'[, 'extra']}, pure dicts) with every encoder
  copy's leaves replaced by `weights`; leaves without a key keep their
  values. Returns (tree, leaves replaced per copy, e.g. 'params/encoder').
  A weight that fits no leaf is an error: nothing is loaded silently."""
  applied: dict[str, int] = {}
  unused = set(weights)

  def swap(path, leaf):
    parts = [str(k) for k in path_keys(path)]
    key = encoder_key(parts)
    if key is None or key not in weights:
      return leaf
    unused.discard(key)
    where = "/".join(parts[:parts.index(ENCODER) + 1])
    applied[where] = applied.get(where, 0) + 1
    return placed(leaf, weights[key], key)

  tree = jax.tree_util.tree_map_with_path(swap, dict(tree))
  if unused:
    raise ValueError(f"{len(unused)} encoder weights fit no leaf of the "
                     f"model, e.g. {sorted(unused)[:5]}: the encoder is "
                     "built differently from the one that made them")
  return tree, applied


def into_state(state: TrainState, weights: Flat
               ) -> tuple[TrainState, dict[str, int]]:
  """The train state with its encoder and EMA teacher copies loaded, every
  array on its own sharding; the optimizer state is left as initialised
  (it does not depend on param values)."""
  tree = {"params": nnx.to_pure_dict(state.params),
          "rest": nnx.to_pure_dict(state.rest), "extra": state.extra}
  tree, applied = place(tree, weights)
  params = jax.tree.map(lambda x: x, state.params)
  rest = jax.tree.map(lambda x: x, state.rest)
  nnx.replace_by_pure_dict(params, tree["params"])
  nnx.replace_by_pure_dict(rest, tree["rest"])
  return state.replace(params=params, rest=rest, extra=tree["extra"]), applied


def into_module(encoder: nnx.Module, weights: Flat) -> None:
  """Loads `weights` into a live encoder, in place: the encoder is read as
  the `encoder` of a model, so the same `place` does it."""
  params = nnx.state(encoder, nnx.Param)
  rest = nnx.state(encoder, nnx.Not(nnx.Param))
  tree = {"params": {ENCODER: nnx.to_pure_dict(params)},
          "rest": {ENCODER: nnx.to_pure_dict(rest)}}
  tree, _ = place(tree, weights)
  nnx.replace_by_pure_dict(params, tree["params"][ENCODER])
  nnx.replace_by_pure_dict(rest, tree["rest"][ENCODER])
  nnx.update(encoder, params, rest)


def built_with(build: Callable[[], nnx.Module], weights: Flat | None
               ) -> nnx.Module:
  """The encoder `build()` makes, holding `weights` (None: its random
  init). Weights that fill every leaf go into an abstract encoder
  (`nnx.eval_shape`): its random init, run op by op outside jit, would
  compile each initializer shape on its own (~4 s for a ResNet-18 on CPU)
  for values the weights overwrite."""
  if weights is None:
    return build()
  encoder = nnx.eval_shape(build)
  into_module(encoder, weights)
  if any(isinstance(leaf, jax.ShapeDtypeStruct)
         for leaf in jax.tree.leaves(nnx.state(encoder))):
    encoder = build()  # leaves the weights do not hold keep their init
    into_module(encoder, weights)
  return encoder
