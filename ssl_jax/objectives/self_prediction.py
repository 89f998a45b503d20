"""Self-prediction objectives: hide part of the image, predict it back.

MAE (He et al., CVPR 2022, "Masked Autoencoders Are Scalable Vision
Learners"): a ViT encodes only the visible patches; a light decoder predicts
the pixels of the masked ones; the loss is the per-patch normalised pixel
error on masked patches only.

SimMIM (Xie et al., CVPR 2022): the encoder sees every token, masked ones
replaced by a learned mask token; a linear decoder; L1 on masked pixels.

Restoration, Models Genesis (Zhou et al. 2019/2021): pure-JAX corruptions
(local pixel shuffling, non-linear intensity, in-/out-painting) and a ResNet
+ U-Net decoder trained to restore the original (MSE).

Every mask leaves at least the augment policy's `min_visible` of the view
visible (augment.Policy): sampling enforces it, `check_min_visible` rejects
configs that cannot meet it before anything compiles.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax import augment, views
from ssl_jax.models.heads import MAEDecoder
from ssl_jax.models.resnet import ResNet
from ssl_jax.models.unet import (UNetDecoder, resnet_feature_maps,
                                 resnet_map_channels)
from ssl_jax.models.vit import PATCHIFY, TokenLinear
from ssl_jax.objectives import base

Array = jax.Array


def min_count(n: int, fraction: float) -> int:
  """ceil(n * fraction), robust to float noise (0.3 * 10 = 3.0000000000000004)."""
  return math.ceil(round(n * fraction, 9))


def random_masking(rng: Array, batch: int, num_patches: int,
                   mask_ratio: float, min_visible: float = 0.0
                   ) -> tuple[Array, Array, Array]:
  """Per-example random patch subset, as in MAE.

  Returns (ids_keep [B,K], mask [B,N] with 1 = masked, ids_restore [B,N]).
  K = round(N * (1 - mask_ratio)), at least one visible patch and at least
  ceil(N * min_visible) (the visibility floor: 49 patches at 0.25 keep 13).
  """
  num_keep = min(num_patches, max(
      1, int(round(num_patches * (1.0 - mask_ratio))),
      min_count(num_patches, min_visible)))
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :num_keep]
  mask = (ids_restore >= num_keep).astype(jnp.float32)
  return ids_keep, mask, ids_restore


def masked_view(policy, rng: Array, images: Array, num_patches: int,
                mask_ratio: float) -> tuple[Array, tuple[Array, Array, Array]]:
  """One standardised augmented view and its random patch mask (MAE, SimMIM);
  the mask keeps `policy.min_visible` of the patches visible."""
  view_rng, mask_rng = jax.random.split(rng)
  x = views.train_view(policy, view_rng, images)
  return x, random_masking(mask_rng, x.shape[0], num_patches, mask_ratio,
                           policy.min_visible)


# ------------------------------------------------------- visibility floor --
# Each masking objective reports (Objective.visible), per hyperparameter,
# the smallest fraction of a view its mask can leave visible; sampling caps
# random unions (in-painting boxes), so only what one mask unit fixes is
# checked (jobs/common.py, against the view policy's min_visible).


def _mask_ratio_visible(obj: base.HParams) -> base.Visible:
  return [("mask_ratio", obj.mask_ratio, 1.0 - obj.mask_ratio)]


def _painting_visible(obj: base.HParams) -> base.Visible:
  """One in-painting box at its largest hides inpaint_size[1]**2; the kept
  out-painting box at its largest shows outpaint_size[1]**2."""
  checks = []
  if obj.paint_prob > 0 and obj.inpaint_prob > 0:
    checks.append(("inpaint_size", tuple(obj.inpaint_size),
                   1.0 - obj.inpaint_size[1] ** 2))
  if obj.paint_prob > 0 and obj.inpaint_prob < 1:
    checks.append(("outpaint_size", tuple(obj.outpaint_size),
                   obj.outpaint_size[1] ** 2))
  return checks


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


def build_mae(hp: base.HParams, ctx: base.RunContext,
              rngs: nnx.Rngs) -> MaskedAutoencoder:
  """ViT encoder over the visible patches + MAE decoder; images or volumes
  (cubic patches and 3D sin-cos positions, as the encoder declares)."""
  encoder = ctx.encoder(rngs)
  _check_patch_encoder(encoder, ctx, "MAE")
  patch_dim = encoder.patch_size ** encoder.spatial_dims * ctx.info.num_channels
  decoder = MAEDecoder(
      num_patches=encoder.num_patches, encoder_dim=encoder.hidden_dim,
      decoder_dim=hp.decoder_dim, depth=hp.decoder_depth,
      num_heads=hp.decoder_heads, patch_dim=patch_dim, rngs=rngs,
      spatial_dims=encoder.spatial_dims)
  return MaskedAutoencoder(encoder, decoder)


def _check_patch_encoder(encoder: nnx.Module, ctx: base.RunContext,
                         method: str) -> None:
  """Masked patch prediction needs an encoder that declares patches."""
  if getattr(encoder, "patch_size", None) is None:
    raise ValueError(
        f"config.model.name={ctx.model['name']!r}: {method} needs a ViT "
        "backbone (vit_tiny, vit_small, vit_base; vit_tiny_3d for volumes)")


def patchify(x: Array, patch_size: int) -> Array:
  """Images or volumes -> [B, N, patch voxels * C], by the input's rank."""
  return PATCHIFY[x.ndim - 2](x, patch_size)


def make_mae_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  mask_ratio = hp.mask_ratio
  norm_pix = hp.norm_pix_loss

  def loss_fn(model, batch, rng, extra):
    x, (ids_keep, mask, ids_restore) = masked_view(
        policy, rng, batch["image"], model.encoder.num_patches, mask_ratio)
    pred = model(x, ids_keep, ids_restore, train=True)
    target = patchify(x, model.encoder.patch_size)
    loss = mae_loss(pred, target, mask, norm_pix)
    return loss, {"mask_fraction": jnp.mean(mask)}, extra

  return loss_fn


base.register(base.Objective(
    name="mae", category="self_prediction", encoder="vit", ranks=(2, 3),
    paper="He et al., CVPR 2022 (arXiv:2111.06377)",
    hparams=dict(mask_ratio=0.75, norm_pix_loss=True, decoder_dim=128,
                 decoder_depth=2, decoder_heads=4),
    visible=_mask_ratio_visible,
    build_model=build_mae, make_loss=make_mae_loss))


# ----------------------------------------------------------------- SimMIM --
# SimMIM (Xie et al., CVPR 2022, "SimMIM: A Simple Framework for Masked Image
# Modeling"): unlike MAE the encoder sees all N tokens, the masked ones
# replaced by one learned mask token; a single linear layer predicts each
# patch's raw pixels; the loss is L1 on the masked patches only.


class SimMIM(nnx.Module):
  """ViT over every token (masked ones = mask token) + a linear decoder."""

  def __init__(self, encoder: nnx.Module, patch_dim: int, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.mask_token = nnx.Param(nnx.initializers.normal(0.02)(
        rngs.params(), (1, 1, encoder.hidden_dim)))
    self.decoder = TokenLinear(encoder.hidden_dim, patch_dim, rngs=rngs)

  def __call__(self, x: Array, mask: Array, *, train: bool) -> Array:
    """x [B, H, W, C], mask [B, N] (1 = masked) -> pixels [B, N, patch_dim].

    `embed_patches` adds the fixed position embedding, so a masked token
    becomes mask_token + pos: exactly SimMIM's "replace the patch embedding,
    then add positions".
    """
    enc = self.encoder
    tokens = enc.embed_patches(x)
    pos = enc.position_embedding()
    masked = (self.mask_token[...] + pos).astype(tokens.dtype)
    tokens = jnp.where(mask[..., None] > 0, masked, tokens)
    latent = enc.encode_tokens(tokens, train=train)[:, 1:]  # drop cls
    return self.decoder(latent.astype(jnp.float32))


def simmim_loss(pred: Array, target: Array, mask: Array) -> Array:
  """L1 over the pixels (and channels) of masked patches; visible ignored."""
  per_patch = jnp.mean(jnp.abs(pred.astype(jnp.float32)
                               - target.astype(jnp.float32)), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def build_simmim(hp: base.HParams, ctx: base.RunContext,
                 rngs: nnx.Rngs) -> SimMIM:
  encoder = ctx.encoder(rngs)
  _check_patch_encoder(encoder, ctx, "SimMIM")
  return SimMIM(encoder, encoder.patch_size ** encoder.spatial_dims
                * ctx.info.num_channels, rngs=rngs)


def make_simmim_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  mask_ratio = hp.mask_ratio

  def loss_fn(model, batch, rng, extra):
    x, (_, mask, _) = masked_view(
        policy, rng, batch["image"], model.encoder.num_patches, mask_ratio)
    pred = model(x, mask, train=True)
    loss = simmim_loss(pred, patchify(x, model.encoder.patch_size), mask)
    return loss, {"mask_fraction": jnp.mean(mask)}, extra

  return loss_fn


base.register(base.Objective(
    name="simmim", category="self_prediction", encoder="vit", ranks=(2, 3),
    paper="Xie et al., CVPR 2022 (arXiv:2111.09886)",
    hparams=dict(mask_ratio=0.6), visible=_mask_ratio_visible,
    build_model=build_simmim, make_loss=make_simmim_loss))


# ------------------------------------------------ Models Genesis restoration --
# Models Genesis (Zhou et al., MICCAI 2019; MedIA 2021, "Models Genesis"):
# corrupt an image with a chain of transforms and train an encoder-decoder to
# restore the original. Each transform teaches something the review names:
# non-linear intensity (appearance), local pixel shuffling (texture),
# out-painting (global geometry) and in-painting (local continuity). Here they
# run on device as pure functions of explicit random parameters on one
# float [H, W, C] image in [0, 1]; `random_*` wrappers draw those parameters,
# and `models_genesis` chains them in the reference order (shuffle,
# non-linear, then in- or out-painting) with the configured probabilities.


def bezier_curve(p1: Array, p2: Array, num_samples: int
                 ) -> tuple[Array, Array]:
  """Cubic Bézier from (0, 0) to (1, 1) with control points p1, p2 [2].

  Returns (xs, ys) at `num_samples` evenly spaced t in [0, 1].
  """
  t = jnp.linspace(0.0, 1.0, num_samples)[:, None]
  points = (3 * (1 - t)**2 * t * p1 + 3 * (1 - t) * t**2 * p2
            + t**3 * jnp.ones(2))
  return points[:, 0], points[:, 1]


def nonlinear_intensity(image: Array, p1: Array, p2: Array, invert: Array, *,
                        num_samples: int) -> Array:
  """Maps [0, 1] intensities through a monotone Bézier curve.

  As Models Genesis, xs and ys are sorted separately, so the curve is
  monotone for any control points and maps 0 -> 0, 1 -> 1 (or, `invert`,
  decreasing: 0 -> 1, 1 -> 0). Control points on the diagonal give identity.
  """
  xs, ys = bezier_curve(p1, p2, num_samples)
  xs, ys = jnp.sort(xs), jnp.sort(ys)
  ys = jnp.where(invert, ys[::-1], ys)
  return jnp.interp(image, xs, ys)


def random_nonlinear(image: Array, rng: Array, *, prob: float,
                     invert_prob: float, num_samples: int) -> Array:
  """Control points ~ U[0, 1]^2; applied with `prob`, inverted with
  `invert_prob` (0.5 in Models Genesis)."""
  u = jax.random.uniform(rng, (6,))
  out = nonlinear_intensity(image, u[0:2], u[2:4], u[4] < invert_prob,
                            num_samples=num_samples)
  return jnp.where(u[5] < prob, out, image)


def shuffle_windows(image: Array, corners: Array, sizes: Array, keys: Array,
                    *, max_window: int) -> Array:
  """Local pixel shuffling: K windows rewritten with permuted pixels.

  Window k has top-left `corners[k]` and (height, width) `sizes[k]` (each at
  most `max_window`, inside the image); `keys[k]` [max_window**2] are
  uniform draws over its row-major max-window grid: the window's pixels are
  read from the *original* image in ascending-key order and written in
  row-major order. Later windows overwrite earlier ones where they overlap,
  as in the reference implementation. Whole pixels move (all channels).
  """
  h, w, c = image.shape
  m = max_window
  # Padding lets a max_window slice start anywhere a real window fits.
  original = jnp.pad(image, ((0, m), (0, m), (0, 0)))
  rows, cols = jnp.divmod(jnp.arange(m * m), m)
  ranks = jnp.arange(m * m, dtype=jnp.float32)

  def one_window(k, out):
    inside = (rows < sizes[k, 0]) & (cols < sizes[k, 1])
    # Sorted, inside positions come first in both orders and outside ones
    # follow in the same (row-major) order, so they map to themselves.
    targets = jnp.argsort(jnp.where(inside, ranks, m * m + ranks))
    sources = jnp.argsort(jnp.where(inside, keys[k], 2.0 + ranks))
    source = jnp.zeros(m * m, jnp.int32).at[targets].set(sources)
    start = (corners[k, 0], corners[k, 1], 0)
    window = jax.lax.dynamic_slice(original, start, (m, m, c)).reshape(m * m, c)
    current = jax.lax.dynamic_slice(out, start, (m, m, c)).reshape(m * m, c)
    new = jnp.where(inside[:, None], window[source], current)
    return jax.lax.dynamic_update_slice(out, new.reshape(m, m, c), start)

  out = jax.lax.fori_loop(0, corners.shape[0], one_window, original)
  return out[:h, :w]


def random_local_shuffle(image: Array, rng: Array, *, prob: float,
                         num_blocks: int, max_window: int) -> Array:
  """`num_blocks` windows of side ~ U{1..max_window} at uniform positions.

  One uniform draw feeds every choice (few random calls compile fast).
  """
  h, w, _ = image.shape
  m = max_window
  u = jax.random.uniform(rng, (num_blocks + 1, 4 + m * m))
  sizes = 1 + jnp.minimum(jnp.floor(u[:-1, :2] * m), m - 1).astype(jnp.int32)
  room = jnp.array([h, w]) - sizes + 1
  corners = jnp.floor(u[:-1, 2:4] * room).astype(jnp.int32)
  out = shuffle_windows(image, corners, sizes, u[:-1, 4:], max_window=m)
  return jnp.where(u[-1, 0] < prob, out, image)


def box_mask(height: int, width: int, boxes: Array, active: Array) -> Array:
  """Union [H, W] of the active boxes; boxes [K, 4] = (top, left, h, w)."""
  r = jnp.arange(height)[None, :, None]
  c = jnp.arange(width)[None, None, :]
  top, left, bh, bw = (boxes[:, i, None, None] for i in range(4))
  inside = (r >= top) & (r < top + bh) & (c >= left) & (c < left + bw)
  return jnp.any(inside & active[:, None, None], axis=0)


def capped_box_mask(height: int, width: int, boxes: Array, active: Array,
                    max_pixels: int) -> Array:
  """Union [H, W] of the active boxes taken in order, each skipped if it
  would make the union cover more than `max_pixels` (the visibility floor
  of in-painting: later boxes give way, the first is kept when it fits)."""
  union = jnp.zeros((height, width), bool)
  for k in range(boxes.shape[0]):
    grown = union | box_mask(height, width, boxes[k:k + 1], active[k:k + 1])
    union = jnp.where(jnp.sum(grown) <= max_pixels, grown, union)
  return union


def random_boxes(u: Array, height: int, width: int,
                 size: tuple[float, float], min_area: float = 0.0) -> Array:
  """Boxes [K, 4] from uniforms u [K, 4]: sides ~ U{size fractions of the
  image, rounded}, positions uniform among those inside the image. With
  `min_area`, each side is at least ceil(sqrt(min_area) * side), so every
  box covers >= min_area of the image (the out-painting floor)."""
  dims = jnp.array([height, width])
  lo = jnp.maximum(1, jnp.round(size[0] * dims))
  if min_area > 0:
    lo = jnp.maximum(lo, jnp.ceil(jnp.round(math.sqrt(min_area) * dims, 6)))
  hi = jnp.maximum(lo, jnp.round(size[1] * dims))
  sides = jnp.minimum(lo + jnp.floor(u[:, :2] * (hi - lo + 1)), hi)
  corners = jnp.floor(u[:, 2:] * (dims - sides + 1))
  return jnp.concatenate([corners, sides], axis=1).astype(jnp.int32)


def inpaint(image: Array, mask: Array, noise: Array) -> Array:
  """In-painting input: the boxes of `mask` [H, W] replaced by noise."""
  return jnp.where(mask[..., None], noise, image)


def outpaint(image: Array, mask: Array, noise: Array) -> Array:
  """Out-painting input: only the boxes of `mask` kept, the rest noise."""
  return jnp.where(mask[..., None], image, noise)


def random_paint(image: Array, rng: Array, *, prob: float, inpaint_prob: float,
                 box_prob: float, inpaint_boxes: int,
                 inpaint_size: tuple[float, float], outpaint_boxes: int,
                 outpaint_size: tuple[float, float],
                 min_visible: float = 0.0) -> Array:
  """With `prob`, in-painting (given painting, with `inpaint_prob`) or else
  out-painting, noise ~ U[0, 1]. As the reference's `while random() < 0.95`
  loops, box k is drawn only if boxes 0..k-1 were (`box_prob` each); the
  first out-painting box is always kept, so some of the image survives.

  `min_visible` > 0: in-painting boxes that would hide more than
  1 - min_visible of the image are dropped, and the first out-painting box
  is grown to cover >= min_visible (same draws otherwise; 0 = reference).
  """
  h, w, _ = image.shape
  k_draw, k_noise = jax.random.split(rng)
  n_in, n_out = inpaint_boxes, outpaint_boxes
  u = jax.random.uniform(k_draw, (n_in + n_out + 1, 5))
  in_active = jnp.cumprod(u[:n_in, 4] < box_prob).astype(bool)
  out_active = jnp.cumprod(jnp.concatenate(
      [jnp.ones(1, bool), u[n_in + 1:n_in + n_out, 4] < box_prob])).astype(bool)
  noise = jax.random.uniform(k_noise, image.shape)
  in_boxes = random_boxes(u[:n_in, :4], h, w, inpaint_size)
  out_boxes = random_boxes(u[n_in:n_in + n_out, :4], h, w, outpaint_size)
  if min_visible > 0:
    max_hidden = math.floor(round((1.0 - min_visible) * h * w, 6))
    in_mask = capped_box_mask(h, w, in_boxes, in_active, max_hidden)
    out_boxes = out_boxes.at[0].set(random_boxes(
        u[n_in:n_in + 1, :4], h, w, outpaint_size, min_area=min_visible)[0])
  else:
    in_mask = box_mask(h, w, in_boxes, in_active)
  out_mask = box_mask(h, w, out_boxes, out_active)
  painted = jnp.where(u[-1, 1] < inpaint_prob, inpaint(image, in_mask, noise),
                      outpaint(image, out_mask, noise))
  return jnp.where(u[-1, 0] < prob, painted, image)


def models_genesis(image: Array, rng: Array, *, shuffle_prob: float,
                   shuffle_blocks: int, shuffle_max_window: int,
                   nonlinear_prob: float, nonlinear_invert_prob: float,
                   bezier_samples: int, paint_prob: float, inpaint_prob: float,
                   paint_box_prob: float, inpaint_boxes: int,
                   inpaint_size: tuple[float, float], outpaint_boxes: int,
                   outpaint_size: tuple[float, float],
                   min_visible: float = 0.0) -> Array:
  """The corrupted input for one [H, W, C] image in [0, 1]."""
  k_shuffle, k_nonlinear, k_paint = jax.random.split(rng, 3)
  x = random_local_shuffle(image, k_shuffle, prob=shuffle_prob,
                           num_blocks=shuffle_blocks,
                           max_window=shuffle_max_window)
  x = random_nonlinear(x, k_nonlinear, prob=nonlinear_prob,
                       invert_prob=nonlinear_invert_prob,
                       num_samples=bezier_samples)
  return random_paint(x, k_paint, prob=paint_prob, inpaint_prob=inpaint_prob,
                      box_prob=paint_box_prob, inpaint_boxes=inpaint_boxes,
                      inpaint_size=inpaint_size, outpaint_boxes=outpaint_boxes,
                      outpaint_size=outpaint_size, min_visible=min_visible)


def genesis_kwargs(obj: base.HParams) -> dict:
  """The `models_genesis` numbers from the hyperparameters (tuples coerced)."""
  return dict(
      shuffle_prob=obj.shuffle_prob, shuffle_blocks=obj.shuffle_blocks,
      shuffle_max_window=obj.shuffle_max_window,
      nonlinear_prob=obj.nonlinear_prob,
      nonlinear_invert_prob=obj.nonlinear_invert_prob,
      bezier_samples=obj.bezier_samples, paint_prob=obj.paint_prob,
      inpaint_prob=obj.inpaint_prob, paint_box_prob=obj.paint_box_prob,
      inpaint_boxes=obj.inpaint_boxes,
      inpaint_size=tuple(float(v) for v in obj.inpaint_size),
      outpaint_boxes=obj.outpaint_boxes,
      outpaint_size=tuple(float(v) for v in obj.outpaint_size))


class Restorer(nnx.Module):
  """ResNet encoder + U-Net decoder on its spatial maps (skip connections).

  A decoder from the pooled vector alone would have to squeeze every pixel
  through `feature_dim` numbers; Models Genesis is a U-Net for that reason.
  """

  def __init__(self, encoder: nnx.Module, decoder: UNetDecoder):
    self.encoder = encoder
    self.decoder = decoder

  def __call__(self, x: Array, *, train: bool) -> Array:
    """Standardised corrupted [B, H, W, C] -> restored [B, H, W, C]."""
    maps = resnet_feature_maps(self.encoder, x, train=train)
    return self.decoder(maps, x.shape[1:3], train=train)


def build_restorer(hp: base.HParams, ctx: base.RunContext,
                   rngs: nnx.Rngs) -> Restorer:
  encoder = ctx.encoder(rngs)
  if not isinstance(encoder, ResNet):
    raise ValueError(
        f"config.model.name={ctx.model['name']!r}: restoration decodes a "
        "ResNet's stage maps; use resnet18 or resnet50")
  decoder = UNetDecoder(resnet_map_channels(encoder), ctx.info.num_channels,
                        rngs=rngs)
  return Restorer(encoder, decoder)


def make_restoration_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  policy = ctx.policy
  corrupt = functools.partial(models_genesis, **genesis_kwargs(hp),
                              min_visible=policy.min_visible)

  def loss_fn(model, batch, rng, extra):
    view_rng, corrupt_rng = jax.random.split(rng)
    clean = views.apply(policy, view_rng, batch["image"])
    corrupted = jax.vmap(corrupt)(
        clean, jax.random.split(corrupt_rng, clean.shape[0]))
    target, inputs = augment.standardize(clean), augment.standardize(corrupted)
    restored = model(inputs, train=True)
    loss = jnp.mean((restored - target)**2)
    # What returning the input unchanged would score: the task's difficulty.
    return loss, {"identity_mse": jnp.mean((inputs - target)**2)}, extra

  return loss_fn


base.register(base.Objective(
    name="restoration", category="self_prediction",
    paper="Zhou et al., MICCAI 2019 / MedIA 2021 (arXiv:2004.07882), Models Genesis",
    # Models Genesis' corruption chain (probabilities and sizes of its paper).
    hparams=dict(shuffle_prob=0.5, shuffle_blocks=200, shuffle_max_window=4,
                 nonlinear_prob=0.9, nonlinear_invert_prob=0.5,
                 bezier_samples=100, paint_prob=0.9, inpaint_prob=0.2,
                 paint_box_prob=0.95, inpaint_boxes=5,
                 inpaint_size=(1 / 6, 1 / 3), outpaint_boxes=5,
                 outpaint_size=(3 / 7, 4 / 7)),
    visible=_painting_visible,
    build_model=build_restorer, make_loss=make_restoration_loss))
