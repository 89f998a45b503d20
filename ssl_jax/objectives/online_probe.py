"""An online linear probe for any objective, so collapse shows up early.

A linear head on stop-gradient encoder features (un-augmented images, eval
mode) is trained alongside the pretext task on the labelled part of each
batch (single-label labels < 0 mean "unlabelled"). It cannot change the
encoder; its accuracy is a cheap running measure of what the features
encode, logged as `probe_acc` next to the pretext loss (`ssl_loss`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ssl_jax import views
from ssl_jax.models.heads import LinearHead
from ssl_jax.objectives.base import Objective
from ssl_jax.objectives.supervised import classification_loss, is_multi_label


def with_online_probe(objective: Objective) -> Objective:
  """The same objective; its model gains `online_probe`, its loss the probe's."""

  def build_model(hp, ctx, rngs):
    model = objective.build_model(hp, ctx, rngs)
    model.online_probe = LinearHead(model.encoder.feature_dim,
                                    ctx.info.num_classes, rngs=rngs)
    return model

  def make_loss(hp, ctx):
    ssl_loss_fn = objective.make_loss(hp, ctx)

    def loss_fn(model, batch, rng, extra):
      ssl_loss, metrics, extra = ssl_loss_fn(model, batch, rng, extra)
      features = jax.lax.stop_gradient(
          model.encoder(views.eval_view(batch["image"]), train=False))
      labels = batch["label"]
      multi_label = is_multi_label(labels)
      labelled = (None if multi_label
                  else (labels.reshape(-1) >= 0).astype(jnp.float32))
      probe_loss, probe_acc = classification_loss(
          model.online_probe(features), labels, multi_label, labelled)
      metrics = dict(metrics, ssl_loss=ssl_loss, probe_loss=probe_loss,
                     probe_acc=probe_acc)
      return ssl_loss + probe_loss, metrics, extra

    return loss_fn

  return dataclasses.replace(objective, build_model=build_model,
                             make_loss=make_loss)
