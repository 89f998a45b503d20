"""Innate-relationship objectives: predict a transformation the task applied.

The label comes for free from how the input was made, so these are
classification pretext tasks on the shared encoder:

- rotation (Gidaris et al., ICLR 2018, "Unsupervised Representation Learning
  by Predicting Image Rotations"): which of 0/90/180/270 degrees.
- jigsaw (Noroozi & Favaro, ECCV 2016, "Unsupervised Learning of Visual
  Representations by Solving Jigsaw Puzzles"): which permutation of a g x g
  grid of tiles, from a fixed set with large Hamming distances.
- relative_patch (Doersch et al., ICCV 2015, "Unsupervised Visual
  Representation Learning by Context Prediction"): where one of the 8
  neighbours of a centre patch sits.

All three share one model shape (`CropsClassifier`): the encoder embeds each
of K crops per example, the features are concatenated in crop order (late
fusion, the papers' siamese towers) and an MLP predicts the class. The
encoder alone is kept for fine-tuning.
"""
from __future__ import annotations

import functools
import itertools
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from ssl_jax import augment, views
from ssl_jax.models.heads import MLPHead
from ssl_jax.objectives import base
from ssl_jax.objectives.supervised import classification_loss

Array = jax.Array


class CropsClassifier(nnx.Module):
  """Shared encoder over K crops per example -> concat features -> MLP.

  crops [B, K, h, w, C] -> logits [B, num_classes]. One encoder call over
  all B * K crops, so BatchNorm sees every crop of the batch together.
  """

  def __init__(self, encoder: nnx.Module, head: nnx.Module, num_crops: int):
    self.encoder = encoder
    self.head = head
    self.num_crops = num_crops

  def __call__(self, crops: Array, *, train: bool) -> Array:
    b, k = crops.shape[:2]
    features = self.encoder(crops.reshape((b * k,) + crops.shape[2:]),
                            train=train)
    return self.head(features.reshape(b, k * features.shape[-1]), train=train)


def _check_crop_size(encoder: nnx.Module, size: int, field: str) -> None:
  """A ViT has a fixed patch grid: its crops must be the full image size."""
  if encoder.patch_size is not None and size != encoder.image_size:
    raise ValueError(
        f"config.objective.{field}={size}: a ViT backbone only accepts "
        f"{encoder.image_size} px inputs; set it to {encoder.image_size} or "
        "use a ResNet")


def _build_crops_classifier(hp: base.HParams, ctx: base.RunContext,
                            rngs: nnx.Rngs, *, num_crops: int,
                            num_classes: int) -> CropsClassifier:
  encoder = ctx.encoder(rngs)
  head = MLPHead(num_crops * encoder.feature_dim, hp.head_hidden_dim,
                 num_classes, num_layers=hp.head_layers, rngs=rngs)
  return CropsClassifier(encoder, head, num_crops)


# --------------------------------------------------------------- rotation --

NUM_ROTATIONS = 4


def rotations(images: Array) -> Array:
  """[B, H, W, C] -> [4, B, H, W, C]: k * 90 degrees counter-clockwise."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"rotation needs square images, got {images.shape}")
  return jnp.stack([jnp.rot90(images, k, axes=(1, 2))
                    for k in range(NUM_ROTATIONS)])


def rotate(images: Array, k: Array) -> Array:
  """Rotates image b by k[b] * 90 degrees: a static 4-way stack + gather."""
  return rotations(images)[k, jnp.arange(images.shape[0])]


def build_rotation(hp, ctx, rngs) -> CropsClassifier:
  return _build_crops_classifier(hp, ctx, rngs, num_crops=1,
                                 num_classes=NUM_ROTATIONS)


def make_rotation_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Gidaris et al. 2018; `all_rotations` feeds all 4 copies (the paper's
  best setting, 4x the compute) instead of one random rotation per image."""
  policy = ctx.policy
  if policy.rot90:
    raise ValueError("rotation prediction needs an augment policy without "
                     "rot90: random rotations would make the label ambiguous")
  all_rotations = hp.all_rotations

  def loss_fn(model, batch, rng, extra):
    view_rng, rot_rng = jax.random.split(rng)
    x = views.train_view(policy, view_rng, batch["image"])
    if all_rotations:
      k = jnp.repeat(jnp.arange(NUM_ROTATIONS), x.shape[0])
      x = rotations(x).reshape((-1,) + x.shape[1:])
    else:
      k = jax.random.randint(rot_rng, (x.shape[0],), 0, NUM_ROTATIONS)
      x = rotate(x, k)
    loss, accuracy = classification_loss(model(x[:, None], train=True), k,
                                         multi_label=False)
    return loss, {"rotation_acc": accuracy}, extra

  return loss_fn


# ----------------------------------------------------------------- jigsaw --

def _hamming(pool: np.ndarray, perm: np.ndarray) -> np.ndarray:
  return np.sum(pool != perm[None], axis=1)


@functools.lru_cache(maxsize=None)
def permutation_set(num_tiles: int, num_permutations: int, *,
                    pool_size: int, seed: int) -> np.ndarray:
  """[P, num_tiles] permutations, far apart in Hamming distance.

  Noroozi & Favaro 2016 (Algorithm 1) pick permutations greedily so that the
  classes are hard to confuse. Here: a seeded pool (every permutation when
  there are at most `pool_size`, else `pool_size` random ones, deduplicated),
  a seeded first pick, then repeatedly the candidate whose *minimum* distance
  to the chosen set is largest (maximin; ties -> lowest index). The paper
  maximises the average distance; maximin also rules out near-duplicates.
  Deterministic given the arguments; read-only.
  """
  total = math.factorial(num_tiles)
  if not 1 <= num_permutations <= total:
    raise ValueError(f"num_permutations={num_permutations} must be in "
                     f"[1, {num_tiles}! = {total}]")
  rng = np.random.default_rng(seed)
  if total <= pool_size:
    pool = np.array(list(itertools.permutations(range(num_tiles))))
  else:
    pool = np.unique(np.argsort(rng.random((pool_size, num_tiles)), axis=1),
                     axis=0)
  if len(pool) < num_permutations:
    raise ValueError(f"pool_size={pool_size} gave {len(pool)} distinct "
                     f"permutations, fewer than {num_permutations}")
  chosen = [int(rng.integers(len(pool)))]
  min_dist = _hamming(pool, pool[chosen[0]])
  for _ in range(num_permutations - 1):
    chosen.append(int(np.argmax(min_dist)))
    min_dist = np.minimum(min_dist, _hamming(pool, pool[chosen[-1]]))
  perms = pool[chosen].astype(np.int32)
  perms.flags.writeable = False
  return perms


def crop_to_grid(images: Array, grid: int) -> Array:
  """Centre crop [B, H, W, C] so H and W are multiples of `grid`."""
  _, h, w, _ = images.shape
  hh, ww = h - h % grid, w - w % grid
  top, left = (h - hh) // 2, (w - ww) // 2
  return images[:, top:top + hh, left:left + ww]


def to_tiles(images: Array, grid: int) -> Array:
  """[B, g*t, g*t, C] -> [B, g*g, t, t, C], tiles in row-major order."""
  return einops.rearrange(images, "b (gh h) (gw w) c -> b (gh gw) h w c",
                          gh=grid, gw=grid)


def from_tiles(tiles: Array, grid: int) -> Array:
  """Inverse of `to_tiles`."""
  return einops.rearrange(tiles, "b (gh gw) h w c -> b (gh h) (gw w) c",
                          gh=grid, gw=grid)


def shuffle_tiles(tiles: Array, perms: Array) -> Array:
  """Position i of example b shows tile perms[b, i]; perms [B, T].

  The inverse permutation (argsort) puts the tiles back in order.
  """
  return jnp.take_along_axis(tiles, perms[:, :, None, None, None], axis=1)


def random_crops(rng: Array, images: Array, size: int) -> Array:
  """Independent random size x size crops of each [N, h, w, C] image."""
  n, h, w, c = images.shape
  ky, kx = jax.random.split(rng)
  top = jax.random.randint(ky, (n,), 0, h - size + 1)
  left = jax.random.randint(kx, (n,), 0, w - size + 1)
  crop = lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, c))
  return jax.vmap(crop)(images, top, left)


def normalize_each(x: Array, eps: float = 1e-5) -> Array:
  """Zero mean, unit variance per crop [N, h, w, C]: Noroozi & Favaro 2016
  normalise tiles independently so their statistics do not give away the
  neighbours (a shortcut around learning the content)."""
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  var = jnp.var(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _encoder_crops(crops: Array, size: int, normalize: bool) -> Array:
  """[B, K, h, w, C] -> [B, K, size, size, C]: resized (and normalised) crops
  at a size the encoder accepts (the small-stem ResNet needs >= 8 px)."""
  b, k = crops.shape[:2]
  x = crops.reshape((b * k,) + crops.shape[2:])
  if x.shape[1:3] != (size, size):
    x = augment.resize(x, size)
  if normalize:
    x = normalize_each(x)
  return x.reshape((b, k) + x.shape[1:])


def _jigsaw_perms(obj: base.HParams) -> np.ndarray:
  return permutation_set(obj.grid * obj.grid, obj.num_permutations,
                         pool_size=obj.permutation_pool_size,
                         seed=obj.permutation_seed)


def build_jigsaw(hp, ctx, rngs) -> CropsClassifier:
  obj = hp
  model = _build_crops_classifier(hp, ctx, rngs,
                                  num_crops=obj.grid * obj.grid,
                                  num_classes=obj.num_permutations)
  _check_crop_size(model.encoder, obj.tile_size, "tile_size")
  return model


def make_jigsaw_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Noroozi & Favaro 2016: tiles of a g x g grid, each randomly cropped
  `tile_gap` px smaller than its cell (so edges do not line up, another
  shortcut), shuffled by one of the fixed permutations; predict which."""
  policy = ctx.policy
  obj = hp
  grid, gap, tile_size = obj.grid, obj.tile_gap, obj.tile_size
  normalize = obj.normalize_tiles
  perms = jnp.asarray(_jigsaw_perms(hp))

  def loss_fn(model, batch, rng, extra):
    view_rng, perm_rng, crop_rng = jax.random.split(rng, 3)
    x = views.train_view(policy, view_rng, batch["image"])
    tiles = to_tiles(crop_to_grid(x, grid), grid)
    b, t, cell = tiles.shape[:3]
    if not 0 <= gap < cell:
      raise ValueError(f"config.objective.tile_gap={gap} must be in "
                       f"[0, {cell}) for {cell} px cells")
    label = jax.random.randint(perm_rng, (b,), 0, perms.shape[0])
    tiles = shuffle_tiles(tiles, perms[label])
    if gap:
      flat = tiles.reshape((b * t,) + tiles.shape[2:])
      tiles = random_crops(crop_rng, flat, cell - gap).reshape(
          (b, t, cell - gap, cell - gap, -1))
    logits = model(_encoder_crops(tiles, tile_size, normalize), train=True)
    loss, accuracy = classification_loss(logits, label, multi_label=False)
    return loss, {"jigsaw_acc": accuracy}, extra

  return loss_fn


# --------------------------------------------------------- relative patch --

# (row, col) of the 8 neighbours in the 3 x 3 grid; the index is the label.
NEIGHBOURS = np.array([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1),
                       (2, 2)], np.int32)


def grid_span(patch_size: int, gap: int) -> int:
  """Side of the 3 x 3 patch grid: 3 patches and 2 gaps."""
  return 3 * patch_size + 2 * gap


def patch_pair_corners(rng: Array, labels: Array, *, image_hw: tuple[int, int],
                       patch_size: int, gap: int, jitter: int
                       ) -> tuple[Array, Array]:
  """Top-left (y, x) [B, 2] of the centre patch and of neighbour `labels`.

  Doersch et al. 2015: the grid (patches `gap` px apart) sits at a random
  place in the image, and each patch is shifted by up to `jitter` px in
  each axis, so the task cannot be solved by continuing lines or textures
  across the border. With jitter 0 and an image exactly the grid's span,
  the centre is at (p + gap) * (1, 1), neighbour (r, c) at (p + gap) * (r, c).
  """
  span = grid_span(patch_size, gap)
  slack = np.array(image_hw) - span - 2 * jitter
  if (slack < 0).any():
    raise ValueError(f"patch_size={patch_size}, gap={gap}, jitter={jitter} "
                     f"need {span + 2 * jitter} px; the view is {image_hw}")
  b = labels.shape[0]
  k_origin, k_jitter = jax.random.split(rng)
  origin = jitter + jax.random.randint(k_origin, (b, 2), 0,
                                       jnp.asarray(slack + 1, jnp.int32))
  shift = jax.random.randint(k_jitter, (2, b, 2), -jitter, jitter + 1)
  stride = patch_size + gap
  centre = origin + stride + shift[0]
  neighbour = origin + stride * jnp.asarray(NEIGHBOURS)[labels] + shift[1]
  return centre, neighbour


def extract_patches(images: Array, corners: Array, size: int) -> Array:
  """images [B, H, W, C], corners [B, 2] (y, x) -> [B, size, size, C]."""
  c = images.shape[-1]
  crop = lambda im, yx: jax.lax.dynamic_slice(im, (yx[0], yx[1], 0),
                                              (size, size, c))
  return jax.vmap(crop)(images, corners)


def build_relative_patch(hp, ctx, rngs) -> CropsClassifier:
  model = _build_crops_classifier(hp, ctx, rngs, num_crops=2,
                                  num_classes=len(NEIGHBOURS))
  _check_crop_size(model.encoder, hp.patch_resize,
                   "patch_resize")
  return model


def make_relative_patch_loss(hp: base.HParams, ctx: base.RunContext) -> base.LossFn:
  """Doersch et al. 2015: (centre, neighbour) patches -> which of 8 places.

  `normalize_patches` standardises each patch on its own, the jigsaw's guard
  against matching low-level statistics (the paper fought such shortcuts
  with the gap, the jitter and colour dropping).
  """
  policy = ctx.policy
  obj = hp
  size, gap, jitter = obj.patch_size, obj.gap, obj.jitter
  resize, normalize = obj.patch_resize, obj.normalize_patches

  def loss_fn(model, batch, rng, extra):
    view_rng, label_rng, place_rng = jax.random.split(rng, 3)
    x = views.train_view(policy, view_rng, batch["image"])
    label = jax.random.randint(label_rng, (x.shape[0],), 0, len(NEIGHBOURS))
    centre, neighbour = patch_pair_corners(
        place_rng, label, image_hw=x.shape[1:3], patch_size=size, gap=gap,
        jitter=jitter)
    pair = jnp.stack([extract_patches(x, centre, size),
                      extract_patches(x, neighbour, size)], axis=1)
    logits = model(_encoder_crops(pair, resize, normalize), train=True)
    loss, accuracy = classification_loss(logits, label, multi_label=False)
    return loss, {"relative_patch_acc": accuracy}, extra

  return loss_fn


# The classification head's fields, shared by the three tasks.
HEAD = dict(head_hidden_dim=512, head_layers=2)

base.register(base.Objective(
    name="rotation", category="innate",
    paper="Gidaris et al., ICLR 2018 (arXiv:1803.07728)",
    hparams=dict(HEAD, all_rotations=False),
    build_model=build_rotation, make_loss=make_rotation_loss))

base.register(base.Objective(
    name="jigsaw", category="innate",
    paper="Noroozi & Favaro, ECCV 2016 (arXiv:1603.09246)",
    hparams=dict(HEAD, grid=3, num_permutations=100, permutation_pool_size=10000,
                 permutation_seed=0, tile_gap=1, tile_size=16,
                 normalize_tiles=True),
    build_model=build_jigsaw, make_loss=make_jigsaw_loss))

base.register(base.Objective(
    name="relative_patch", category="innate",
    paper="Doersch et al., ICCV 2015 (arXiv:1505.05192)",
    hparams=dict(HEAD, patch_size=7, gap=2, jitter=1, patch_resize=16,
                 normalize_patches=True),
    build_model=build_relative_patch, make_loss=make_relative_patch_loss))
