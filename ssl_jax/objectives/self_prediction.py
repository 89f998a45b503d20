"""Self-prediction objectives: hide part of the image, predict it back.

MAE (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision
Learners"): a ViT encodes only the visible patches; a light decoder predicts
the pixels of the masked ones; the loss is the per-patch normalised pixel
error on masked patches only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
import ml_collections

from ssl_jax import augment
from ssl_jax.models.heads import MAEDecoder
from ssl_jax.models.vit import patchify
from ssl_jax.objectives import base

Array = jax.Array


def random_masking(rng: Array, batch: int, num_patches: int,
                   mask_ratio: float) -> tuple[Array, Array, Array]:
  """Per-example random patch subset, as in MAE.

  Returns (ids_keep [B,K], mask [B,N] with 1 = masked, ids_restore [B,N]).
  K = round(N * (1 - mask_ratio)), at least one visible patch.
  """
  num_keep = max(1, int(round(num_patches * (1.0 - mask_ratio))))
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :num_keep]
  mask = (ids_restore >= num_keep).astype(jnp.float32)
  return ids_keep, mask, ids_restore


def mae_loss(pred: Array, target: Array, mask: Array,
             norm_pix: bool = True) -> Array:
  """Mean squared error on masked patches; targets normalised per patch."""
  target = target.astype(jnp.float32)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class MaskedAutoencoder(nnx.Module):
  """ViT encoder over visible patches + transformer decoder over all."""

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, x: Array, ids_keep: Array, ids_restore: Array, *,
               train: bool) -> Array:
    tokens = self.encoder.embed_patches(x)
    visible = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)
    latent = self.encoder.encode_tokens(visible, train=train)
    return self.decoder(latent, ids_restore, train=train)


def build_mae(config: ml_collections.ConfigDict, info: base.DataInfo,
              rngs: nnx.Rngs) -> MaskedAutoencoder:
  encoder = base.build_encoder(config, info, rngs)
  if not hasattr(encoder, "embed_patches"):
    raise ValueError(
        f"config.model.name={config.model.name!r}: MAE needs a ViT backbone "
        "(vit_tiny, vit_small, vit_base)")
  obj = config.objective
  patch_dim = encoder.patch_size ** 2 * info.num_channels
  decoder = MAEDecoder(
      num_patches=encoder.num_patches, encoder_dim=encoder.hidden_dim,
      decoder_dim=obj.decoder_dim, depth=obj.decoder_depth,
      num_heads=obj.decoder_heads, patch_dim=patch_dim, rngs=rngs)
  return MaskedAutoencoder(encoder, decoder)


def make_mae_loss(config: ml_collections.ConfigDict) -> base.LossFn:
  policy = base.augment_policy(config)
  mask_ratio = config.objective.mask_ratio
  norm_pix = config.objective.norm_pix_loss

  def loss_fn(model, batch, rng, extra):
    view_rng, mask_rng = jax.random.split(rng)
    x = augment.standardize(augment.apply(policy, view_rng, batch["image"]))
    ids_keep, mask, ids_restore = random_masking(
        mask_rng, x.shape[0], model.encoder.num_patches, mask_ratio)
    pred = model(x, ids_keep, ids_restore, train=True)
    target = patchify(x, model.encoder.patch_size)
    loss = mae_loss(pred, target, mask, norm_pix)
    return loss, {"mask_fraction": jnp.mean(mask)}, extra

  return loss_fn


base.register(base.Objective(
    name="mae", category="self_prediction",
    paper="He et al., CVPR 2022 (arXiv:2111.06377)",
    build_model=build_mae, make_loss=make_mae_loss))
