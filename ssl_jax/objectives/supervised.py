"""Supervised cross-entropy: fine-tuning, the from-scratch baseline, and
supervised pretraining all train through this one objective, so "SSL" and
"supervised" encoders go through the same loop and the same evaluation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
import ml_collections
import optax

from ssl_jax import augment
from ssl_jax.models.heads import Classifier
from ssl_jax.objectives import base

Array = jax.Array


def classification_loss(logits: Array, labels: Array,
                        multi_label: bool) -> tuple[Array, Array]:
  """Softmax cross-entropy (or sigmoid BCE per label); returns (loss, acc)."""
  logits = logits.astype(jnp.float32)
  if multi_label:
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean((logits > 0) == (labels > 0))
  else:
    labels = labels.reshape(-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy


def build_classifier(config: ml_collections.ConfigDict, info: base.DataInfo,
                     rngs: nnx.Rngs) -> Classifier:
  return Classifier(base.build_encoder(config, info, rngs), info.num_classes,
                    rngs=rngs)


def make_supervised_loss(config: ml_collections.ConfigDict) -> base.LossFn:
  policy = base.augment_policy(config)
  multi_label = config.objective.get("multi_label", False)

  def loss_fn(model, batch, rng, extra):
    x = augment.standardize(augment.apply(policy, rng, batch["image"]))
    loss, accuracy = classification_loss(
        model(x, train=True), batch["label"], multi_label)
    return loss, {"train_acc": accuracy}, extra

  return loss_fn


base.register(base.Objective(
    name="supervised", category="supervised",
    paper="cross-entropy on labels (the review's from-scratch / supervised baseline)",
    build_model=build_classifier, make_loss=make_supervised_loss))
