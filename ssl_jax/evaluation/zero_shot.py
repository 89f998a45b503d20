"""Zero-shot classification from class prompts (CLIP, Radford et al., ICML
2021): no label is trained on.

Each class gets one prompt (`finetune.class_prompts`, default: the class
names of the data, e.g. a CSV's label values). The prompts are tokenised
with the pretraining workdir's vocabulary (vocab.json) and embedded by its
text tower; every val/test image is embedded by its image tower, and its
class probabilities are the softmax over classes of logit_scale x cosine
(image, prompt), scored like every other protocol. It needs the text tower,
so it applies only to workdirs pretrained with an objective whose model
embeds text (`Objective.embeds_text`: `clip_text`); anything else is refused
by name before any cell runs (`check`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import text
from data_pipelines import vocab as vocab_lib
from ssl_jax import files, objectives, parallel, runtime, views
from ssl_jax.evaluation import inference
from ssl_jax.objectives.contrastive import l2_normalize
from ssl_jax.pytree import flatten, path_keys
from ssl_jax.train import checkpoint
from ssl_jax.train import state as state_lib

PROMPTS_FIELD = "config.finetune.class_prompts"
MULTI_LABEL = "multi-label, binary-class"


def text_objectives() -> list[str]:
  return [n for n in objectives.names() if objectives.get(n).embeds_text]


def pretrained_setup(pretrained: str
                     ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(pretraining config, vocabularies) of a workdir with a text tower;
  otherwise a ValueError naming what is missing."""
  need = (f"protocol 'zero_shot' classifies with the text tower of an "
          f"image-text pretraining ({', '.join(text_objectives())})")
  if not pretrained:
    raise ValueError(f"{need}: set config.finetune.pretrained to such a "
                     "pretraining workdir")
  saved = files.read_json(os.path.join(pretrained, "config.json"))
  if saved is None:
    raise ValueError(f"{need}: {pretrained}/config.json is missing (not a "
                     "finished pretraining workdir)")
  pre_config = ml_collections.ConfigDict(saved)
  name = pre_config.objective.name
  if not objectives.base.lookup(pre_config.objective).embeds_text:
    raise ValueError(f"{need}; {pretrained} was pretrained with {name!r}, "
                     "which has no text tower")
  vocab = vocab_lib.read(pretrained)
  if not vocab or "text" not in vocab:
    raise ValueError(f"{need}: {vocab_lib.path(pretrained)} with its text "
                     "vocabulary is missing")
  return pre_config, vocab


def class_prompts(config: ml_collections.ConfigDict, info) -> list[str]:
  """One prompt per class: finetune.class_prompts, else the class names."""
  given = config.finetune.get("class_prompts", ()) or ()
  given = [given] if isinstance(given, str) else list(given)
  if given:
    if len(given) != info.num_classes:
      raise ValueError(f"{PROMPTS_FIELD} has {len(given)} prompts; the data "
                       f"has {info.num_classes} classes (one prompt each, in "
                       "label order)")
    return given
  names = list(getattr(info, "class_names", ()) or ())
  if len(names) != info.num_classes:
    raise ValueError(f"the data has no class names to prompt with; set "
                     f"{PROMPTS_FIELD} (one prompt per class, in label order)")
  return names


def check(ctx) -> None:
  """Before any cell runs: a text tower to load and prompts to embed."""
  if ctx.task == MULTI_LABEL:
    raise ValueError("protocol 'zero_shot' picks one class per image "
                     "(softmax over prompts); the data is multi-label")
  pretrained_setup(ctx.pretrained)
  class_prompts(ctx.config, ctx.info)


def _restored(template: Mapping, saved: Mapping, where: str) -> Any:
  """`template` (a model's pure dict) with each leaf read from `saved`
  (a checkpoint subtree) by its path; extra saved leaves (the online
  probe) are ignored, a missing one is an error."""
  flat = flatten(saved)

  def pick(path, leaf):
    key = "/".join(str(k) for k in path_keys(path))
    if key not in flat:
      raise ValueError(f"{where} has no {key!r}: the model is built "
                       "differently from the one that was pretrained")
    value = np.asarray(flat[key])
    if value.shape != tuple(leaf.shape):
      raise ValueError(f"{where}: {key!r} has shape {value.shape}, the "
                       f"model's is {tuple(leaf.shape)}")
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(pick, dict(template))


def load_model(pretrained: str, info) -> tuple[nnx.Module, dict[str, Any]]:
  """The whole pretrained model of a workdir's latest checkpoint (every
  tower and head, not only the encoder; the online probe left out), and
  its vocabularies ({} when it has none)."""
  saved = files.read_json(os.path.join(pretrained, "config.json"))
  if saved is None:
    raise FileNotFoundError(f"{pretrained}/config.json is missing: not a "
                            "pretraining workdir")
  pre_config = ml_collections.ConfigDict(saved)
  vocab = vocab_lib.read(pretrained) or {}
  bound = objectives.bind(pre_config, info, vocab)
  # Shapes only: every leaf comes from the checkpoint (an eager init would
  # compile each initializer on its own, tens of seconds on a CPU).
  model = nnx.eval_shape(lambda: bound.build_model(nnx.Rngs(0)))
  directory = os.path.join(pretrained, "checkpoints")
  tree = checkpoint.restore_subtree(directory, "params", "rest")
  params = nnx.state(model, nnx.Param)
  rest = nnx.state(model, nnx.Not(nnx.Param))
  for state, key in ((params, "params"), (rest, "rest")):
    nnx.replace_by_pure_dict(state, _restored(
        nnx.to_pure_dict(state), tree[key], f"{directory} {key}"))
  nnx.update(model, params, rest)
  return model, vocab


def embed_prompts(model: nnx.Module, vocab: Mapping[str, Any],
                  prompts: list[str]) -> np.ndarray:
  """Unit-norm text embeddings [C, D] of the prompts."""
  graphdef, params, rest = state_lib.split_model(model)

  def embed(p, r, tokens):
    m = nnx.merge(graphdef, p, r)
    return l2_normalize(m.embed_text(tokens, train=False))

  tokens = jnp.asarray(text.encode(vocab["text"], prompts))
  return np.asarray(jax.jit(embed)(params, rest, tokens))


def class_probabilities(model: nnx.Module, prompt_embeddings: np.ndarray,
                        images: np.ndarray, *, mesh, batch_size: int
                        ) -> np.ndarray:
  """Softmax over classes of logit_scale x cos(image, prompt): [N, C]."""
  graphdef, params, rest = state_lib.split_model(model)
  params, rest, prompts = parallel.replicate(
      (params, rest, jnp.asarray(prompt_embeddings)), mesh)

  def probs(p, r, e, x):
    m = nnx.merge(graphdef, p, r)
    z = l2_normalize(m.embed_image(views.eval_view(x), train=False))
    return jax.nn.softmax(m.logit_scale() * z @ e.T, axis=-1)

  return inference.batched_apply(
      runtime.jit(probs, graphdef), images, mesh=mesh, batch_size=batch_size,
      args=(params, rest, prompts))
