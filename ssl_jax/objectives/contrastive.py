"""Contrastive objectives: pull two views of one image together, push others apart.

SimCLR (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning
of Visual Representations"): two augmented views, an MLP projector, and the
NT-Xent loss over the *global* batch. Under `jax.jit` with a data-sharded
batch the similarity matrix spans all devices by construction, so negatives
come from the whole global batch without hand-written all-gathers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
import ml_collections

from ssl_jax import augment
from ssl_jax.models.heads import MLPHead
from ssl_jax.objectives import base

Array = jax.Array


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


def nt_xent(z1: Array, z2: Array, temperature: float) -> tuple[Array, Array]:
  """NT-Xent: each of the 2N views has one positive and 2N-2 negatives.

  Returns (loss, top-1 accuracy of finding the positive among 2N-1 others).
  """
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2], axis=0).astype(jnp.float32))
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_prob, positive[:, None], axis=-1))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positive)
  return loss, accuracy


class EncoderProjector(nnx.Module):
  """Encoder + MLP projector; the projector is dropped after pretraining."""

  def __init__(self, encoder: nnx.Module, projector: nnx.Module):
    self.encoder = encoder
    self.projector = projector

  def __call__(self, x: Array, *, train: bool) -> Array:
    return self.projector(self.encoder(x, train=train), train=train)


def build_encoder_projector(config: ml_collections.ConfigDict,
                            info: base.DataInfo,
                            rngs: nnx.Rngs) -> EncoderProjector:
  encoder = base.build_encoder(config, info, rngs)
  obj = config.objective
  projector = MLPHead(encoder.feature_dim, obj.proj_hidden_dim, obj.proj_dim,
                      num_layers=obj.proj_layers, rngs=rngs)
  return EncoderProjector(encoder, projector)


def make_simclr_loss(config: ml_collections.ConfigDict) -> base.LossFn:
  policy = base.augment_policy(config)
  temperature = config.objective.temperature

  def loss_fn(model, batch, rng, extra):
    v1, v2 = augment.two_views(policy, rng, batch["image"])
    # One forward over both views: BatchNorm sees the full 2N global batch.
    z = model(augment.standardize(jnp.concatenate([v1, v2])), train=True)
    z1, z2 = jnp.split(z, 2)
    loss, accuracy = nt_xent(z1, z2, temperature)
    return loss, {"contrastive_acc": accuracy}, extra

  return loss_fn


base.register(base.Objective(
    name="simclr", category="contrastive",
    paper="Chen et al., ICML 2020 (arXiv:2002.05709)",
    build_model=build_encoder_projector, make_loss=make_simclr_loss))
