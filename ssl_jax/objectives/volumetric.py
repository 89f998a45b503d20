"""SimCLR and MAE on volumes [B, D, H, W, C] (MedMNIST 3D, CT/MRI crops).

The 2D methods with only the parts that see geometry swapped: views come
from `views` (which sends 5-D batches to `augment3d`), the backbone is a 3D
one (`resnet18_3d`, `vit_tiny_3d`), MAE's targets are cubic patches and its
decoder uses 3D sin-cos positions. The losses themselves are imported, not
copied: NT-Xent (Chen et al., ICML 2020) and MAE's random masking,
autoencoder and per-patch normalised loss (He et al., CVPR 2022); the 3D
form follows the 3D contrastive and masked-image-modelling work on CT/MRI
(Taleb et al., NeurIPS 2020, "3D Self-Supervised Methods for Medical
Imaging"; Chen et al., WACV 2023, "Masked Image Modeling Advances 3D
Medical Image Analysis").

Views: the config's 2D policy (`augment.policy` + overrides) is lifted by
`augment3d.from_2d`; `augment.volume` (optional) sets `Policy3D` fields on
top, e.g. `dict(flip_probs=(0.5, 0.0, 0.5))`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from ssl_jax import augment, augment3d, views
from ssl_jax.models.heads import MAEDecoder
from ssl_jax.models.vit import patchify3d
from ssl_jax.objectives import base
from ssl_jax.objectives.contrastive import build_encoder_projector, nt_xent
from ssl_jax.objectives.self_prediction import (VISIBLE_FRACTIONS,
                                                MaskedAutoencoder, mae_loss,
                                                random_masking)

Array = jax.Array

BACKBONES_3D = ("resnet18_3d", "vit_tiny_3d")


def volume_policy(config: ml_collections.ConfigDict) -> augment3d.Policy3D:
  """The config's 2D view policy lifted to volumes, plus `augment.volume`."""
  volume = dict(config.augment.get("volume", None) or {})
  return augment3d.from_2d(base.augment_policy(config), **volume)


def check_volume_data(config: ml_collections.ConfigDict,
                      info: base.DataInfo) -> None:
  """Fails before any model is built, naming the field, unless data is 3D."""
  data_dims = getattr(info, "spatial_dims", 2)
  if data_dims != 3:
    raise ValueError(
        f"config.objective.name={config.objective.name!r} trains on volumes, "
        f"but config.data.name={config.data.name!r} has {data_dims}D images; "
        "use a 3D set (e.g. adrenalmnist3d) or the 2D objective")


def check_volume_encoder(config: ml_collections.ConfigDict,
                         encoder: nnx.Module) -> None:
  """Fails at build time, naming the field, unless the backbone is 3D."""
  if getattr(encoder, "spatial_dims", 2) != 3:
    raise ValueError(
        f"config.model.name={config.model.name!r} is a 2D backbone; "
        f"{config.objective.name!r} needs a 3D one: {', '.join(BACKBONES_3D)}")


# ------------------------------------------------------------ SimCLR 3D --

def build_simclr_3d(config: ml_collections.ConfigDict, info: base.DataInfo,
                    rngs: nnx.Rngs) -> nnx.Module:
  """3D encoder + the SimCLR MLP projector (contrastive.py's builder)."""
  check_volume_data(config, info)
  model = build_encoder_projector(config, info, rngs)
  check_volume_encoder(config, model.encoder)
  return model


def make_simclr_3d_loss(config: ml_collections.ConfigDict) -> base.LossFn:
  policy = volume_policy(config)
  temperature = config.objective.temperature
  # Side of the cubic views (None: the data's). Smaller views than the data
  # are random resized crops resampled down: the conv cost falls with the
  # voxel count, and the encoder (global pooling) still evaluates full
  # volumes.
  view_size = config.objective.get("view_size", None)

  def loss_fn(model, batch, rng, extra):
    v1, v2 = views.two_views(policy, rng, batch["image"], out_size=view_size)
    # One forward over both views: BatchNorm sees the full 2N batch.
    x = augment.standardize(jnp.concatenate([v1, v2]))
    z1, z2 = jnp.split(model(x, train=True), 2)
    loss, accuracy = nt_xent(z1, z2, temperature)
    return loss, {"contrastive_acc": accuracy}, extra

  return loss_fn


base.register(base.Objective(
    name="simclr_3d", category="contrastive", encoder="3d",
    paper="Chen et al., ICML 2020 (arXiv:2002.05709), on volumes as in "
          "Taleb et al., NeurIPS 2020 (arXiv:2006.03829)",
    build_model=build_simclr_3d, make_loss=make_simclr_3d_loss))


# --------------------------------------------------------------- MAE 3D --

def build_mae_3d(config: ml_collections.ConfigDict, info: base.DataInfo,
                 rngs: nnx.Rngs) -> MaskedAutoencoder:
  """3D ViT encoder over visible cubic patches + MAE decoder (3D positions)."""
  check_volume_data(config, info)
  encoder = base.build_encoder(config, info, rngs)
  check_volume_encoder(config, encoder)
  if not hasattr(encoder, "embed_patches"):
    raise ValueError(f"config.model.name={config.model.name!r}: mae_3d needs "
                     "a ViT backbone (vit_tiny_3d)")
  obj = config.objective
  decoder = MAEDecoder(
      num_patches=encoder.num_patches, encoder_dim=encoder.hidden_dim,
      decoder_dim=obj.decoder_dim, depth=obj.decoder_depth,
      num_heads=obj.decoder_heads,
      patch_dim=encoder.patch_size**3 * info.num_channels, rngs=rngs,
      spatial_dims=3)
  return MaskedAutoencoder(encoder, decoder)


def make_mae_3d_loss(config: ml_collections.ConfigDict) -> base.LossFn:
  policy = volume_policy(config)
  mask_ratio = config.objective.mask_ratio
  norm_pix = config.objective.norm_pix_loss

  def loss_fn(model, batch, rng, extra):
    view_rng, mask_rng = jax.random.split(rng)
    x = augment.standardize(views.apply(policy, view_rng, batch["image"]))
    ids_keep, mask, ids_restore = random_masking(
        mask_rng, x.shape[0], model.encoder.num_patches, mask_ratio,
        policy.min_visible)
    pred = model(x, ids_keep, ids_restore, train=True)
    loss = mae_loss(pred, patchify3d(x, model.encoder.patch_size), mask,
                    norm_pix)
    return loss, {"mask_fraction": jnp.mean(mask)}, extra

  return loss_fn


# jobs' config check (self_prediction.check_min_visible): same mask field.
VISIBLE_FRACTIONS["mae_3d"] = VISIBLE_FRACTIONS["mae"]

base.register(base.Objective(
    name="mae_3d", category="self_prediction", encoder="vit_3d",
    paper="He et al., CVPR 2022 (arXiv:2111.06377), on volumes as in "
          "Chen et al., WACV 2023 (arXiv:2204.11716)",
    build_model=build_mae_3d, make_loss=make_mae_3d_loss))
