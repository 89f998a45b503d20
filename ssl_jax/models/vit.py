"""Vision Transformer encoders (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words") in Flax NNX, shaped for masked image modelling.

Position embeddings are fixed 2D sin-cos, as in MAE (He et al. 2022): they
need no training, so a masked encoder sees only visible tokens without losing
their positions. `embed_patches` and `encode_tokens` split the forward pass so
MAE/SimMIM can drop or replace tokens between them. `spatial_dims=3` embeds
cubic patches of volumes [B, D, H, W, C] with 3D sin-cos positions (as the
3D MAEs for CT/MRI, e.g. Chen et al. 2023, "Masked Image Modeling Advances
3D Medical Image Analysis"); the transformer is unchanged.
"""
from __future__ import annotations

import functools
from typing import Sequence

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl_jax.models import layers
from ssl_jax.models import neck as neck_lib
from ssl_jax.models import stochastic_depth

Array = jax.Array

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


class TokenLinear(nnx.Linear):
  """nnx.Linear (same params, same maths) over the last axis of [B, N, D]
  tokens, computed as one [B * N, D] matmul (`layers.over_rows`: no
  transposed activation copy in its kernel gradient on XLA:CPU)."""

  def __call__(self, x: Array) -> Array:
    return layers.over_rows(super().__call__, x)


def patchify(images: Array, patch_size: int) -> Array:
  """[B, H, W, C] -> [B, N, p*p*C], patches in row-major order."""
  return einops.rearrange(images, 'b (h p) (w q) c -> b (h w) (p q c)',
                          p=patch_size, q=patch_size)


def unpatchify(patches: Array, patch_size: int, height: int, width: int,
               channels: int) -> Array:
  """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
  return einops.rearrange(
      patches, 'b (h w) (p q c) -> b (h p) (w q) c', h=height // patch_size,
      w=width // patch_size, p=patch_size, q=patch_size, c=channels)


def patchify3d(volumes: Array, patch_size: int) -> Array:
  """[B, D, H, W, C] -> [B, N, p*p*p*C], cubic patches in (d, h, w) order."""
  return einops.rearrange(
      volumes, 'b (d p) (h q) (w r) c -> b (d h w) (p q r c)',
      p=patch_size, q=patch_size, r=patch_size)


def unpatchify3d(patches: Array, patch_size: int, depth: int, height: int,
                 width: int, channels: int) -> Array:
  """Inverse of `patchify3d`: [B, N, p*p*p*C] -> [B, D, H, W, C]."""
  return einops.rearrange(
      patches, 'b (d h w) (p q r c) -> b (d p) (h q) (w r) c',
      d=depth // patch_size, h=height // patch_size, w=width // patch_size,
      p=patch_size, q=patch_size, r=patch_size, c=channels)


PATCHIFY = {2: patchify, 3: patchify3d}  # by spatial dims


@functools.lru_cache(maxsize=None)
def sincos(grid: tuple[int, ...], dim: int) -> np.ndarray:
  """Fixed sin-cos embedding [prod(grid), dim], row-major over `grid`.

  Each of the len(grid) axes gets dim / len(grid) channels, half sin and
  half cos (MAE, He et al. 2022, generalised to volumes). A numpy constant,
  so it is folded into the compiled program, not a param.
  """
  per_axis = 2 * len(grid)
  if dim % per_axis:
    raise ValueError(f'{len(grid)}D sin-cos embedding needs dim % {per_axis} '
                     f'== 0, got dim={dim}')
  freqs = dim // per_axis
  omega = 1.0 / 10000 ** (np.arange(freqs, dtype=np.float64) / freqs)
  coords = np.meshgrid(*(np.arange(g) for g in grid), indexing='ij')

  def embed_1d(pos):
    out = pos.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([embed_1d(c) for c in coords],
                        axis=1).astype(np.float32)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
  """Fixed 2D sin-cos embedding [grid_h * grid_w, dim]: half the channels
  encode the row, half the column (MAE, He et al. 2022)."""
  return sincos((grid_h, grid_w), dim)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection.

  Our own (not nnx.MultiHeadAttention) to keep the softmax in float32 under a
  bfloat16 compute dtype and to keep the fused qkv layout of timm/MAE.
  """

  def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(
          f'hidden_dim={dim} must be divisible by num_heads={num_heads}')
    self.num_heads = num_heads
    self.qkv = TokenLinear(dim, 3 * dim, kernel_init=_xavier, bias_init=_zeros,
                           dtype=dtype, rngs=rngs)
    self.proj = TokenLinear(dim, dim, kernel_init=_xavier, bias_init=_zeros,
                            dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    """x [B, N, D]; `mask` [B, N] bool: keys to attend to (None: all;
    padded text tokens are False)."""
    q, k, v = einops.rearrange(self.qkv(x), 'b n (t h d) -> t b h n d', t=3,
                               h=self.num_heads)
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum('bhqd,bhkd->bhqk', q * scale, k)
    if mask is not None:
      logits = jnp.where(mask[:, None, None, :], logits,
                         jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(v.dtype), v)
    return self.proj(einops.rearrange(out, 'b h n d -> b n (h d)'))


class Block(nnx.Module):
  """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x)), GELU MLP."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *,
               drop_rate: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
    self.drop_rate = drop_rate  # stochastic depth of each residual branch
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
    self.fc1 = TokenLinear(dim, mlp_dim, kernel_init=_xavier, bias_init=_zeros,
                           dtype=dtype, rngs=rngs)
    self.fc2 = TokenLinear(mlp_dim, dim, kernel_init=_xavier, bias_init=_zeros,
                           dtype=dtype, rngs=rngs)

  def __call__(self, x: Array, mask: Array | None = None,
               drop_key: Array | None = None) -> Array:
    attn_key, mlp_key = (None, None) if drop_key is None else (
        jax.random.split(drop_key))
    drop = lambda branch, key: stochastic_depth.drop_path(
        branch, self.drop_rate, key)
    x = x + drop(self.attn(self.norm1(x), mask), attn_key)
    return x + drop(
        self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=False)), mlp_key)


class VisionTransformer(nnx.Module):
  """ViT encoder with a cls token; pooled by cls token or patch mean.

  Declares `spatial_dims`, `patch_size` and its sequence of blocks.
  """
  block_attr = 'blocks'     # the sequence of units last_k fine-tuning counts
  after_blocks = ('norm', neck_lib.NAME)  # these follow the last block

  def __init__(
      self,
      *,
      in_channels: int,
      image_size: int,
      patch_size: int,
      depth: int,
      hidden_dim: int,
      num_heads: int,
      mlp_dim: int,
      pool: str = 'cls',
      spatial_dims: int = 2,
      drop_path_rate: float = 0.0,
      neck: Sequence[int] = (),
      neck_bn: bool = True,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    if spatial_dims not in (2, 3):
      raise ValueError(f'spatial_dims must be 2 (images) or 3 (volumes), '
                       f'got {spatial_dims}')
    if image_size % patch_size:
      raise ValueError(f'image_size={image_size} must be divisible by '
                       f'patch_size={patch_size}')
    if pool not in ('cls', 'mean'):
      raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    self.image_size = image_size
    self.patch_size = patch_size
    self.grid_size = image_size // patch_size
    self.spatial_dims = spatial_dims
    self.num_patches = self.grid_size**spatial_dims
    self.hidden_dim = hidden_dim
    # A pretrained projector's first layers on the pooled output (stage 2).
    self.neck, self.feature_dim = neck_lib.build(hidden_dim, neck, neck_bn,
                                                 rngs)
    self.depth = depth
    self.pool = pool
    self.position_embedding()  # Validate hidden_dim early.
    # Patch embedding initialised like a Linear on flattened patches (MAE).
    self.patch_embed = nnx.Conv(
        in_channels, hidden_dim, (patch_size,) * spatial_dims,
        strides=(patch_size,) * spatial_dims, padding='VALID',
        kernel_init=nnx.initializers.xavier_uniform(
            in_axis=tuple(range(spatial_dims + 1))),
        bias_init=_zeros, dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, 1, hidden_dim)))
    self.drop_path_rate = stochastic_depth.check_rate(drop_path_rate)
    self.blocks = nnx.List([
        Block(hidden_dim, num_heads, mlp_dim, drop_rate=rate, dtype=dtype,
              rngs=rngs)
        for rate in stochastic_depth.depth_rates(self.drop_path_rate, depth)])
    self.norm = nnx.LayerNorm(hidden_dim, epsilon=1e-6, dtype=dtype,
                              rngs=rngs)
    # Probe points: every depth // 4 blocks ('block3', ..., 'block12').
    step = max(1, depth // 4)
    self.probe_blocks = tuple(range(step, depth + 1, step))

  def position_embedding(self) -> np.ndarray:
    """The fixed sin-cos positions [N, hidden_dim] of the patch grid."""
    return sincos((self.grid_size,) * self.spatial_dims, self.hidden_dim)

  def embed_patches(self, x: Array) -> Array:
    """[B, H, W, C] (or [B, D, H, W, C]) -> [B, N, D]: patch embedding +
    position embedding."""
    tokens = self.patch_embed(x)
    tokens = einops.rearrange(tokens, 'b ... d -> b (...) d')
    return tokens + self.position_embedding().astype(tokens.dtype)

  def _encode(self, tokens: Array, *, collect: bool, train: bool,
              drop_key: Array | None) -> tuple[Array, dict[str, Array]]:
    # The cls position embedding is zero (MAE), so cls_token is its own.
    cls = jnp.broadcast_to(self.cls_token[...],
                           (tokens.shape[0], 1, self.hidden_dim))
    x = jnp.concatenate([cls.astype(tokens.dtype), tokens], axis=1)
    intermediates = {}
    keys = stochastic_depth.block_keys(self.drop_path_rate, drop_key, train,
                                       self.depth)
    for i, (block, key) in enumerate(zip(self.blocks, keys)):
      x = block(x, drop_key=key)
      if collect and i + 1 in self.probe_blocks:
        intermediates[f'block{i + 1}'] = self._pool(x)
    return self.norm(x), intermediates

  def encode_tokens(self, tokens: Array, *, train: bool = False,
                    drop_key: Array | None = None) -> Array:
    """[B, K, D] embedded tokens -> [B, 1+K, D]: cls, blocks, final norm."""
    return self._encode(tokens, collect=False, train=train,
                        drop_key=drop_key)[0]

  def _pool(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x[:, 0] if self.pool == 'cls' else jnp.mean(x[:, 1:], axis=1)

  def __call__(self, x: Array, *, train: bool = False,
               return_intermediates: bool = False,
               drop_key: Array | None = None
               ) -> Array | tuple[Array, dict[str, Array]]:
    """x: float [B, H, W, C] (3D: [B, D, H, W, C]) -> pooled [B, hidden_dim].
    No batch statistics or dropout; `train` with `drop_key` drops the
    blocks' branches of a stochastic depth (models/stochastic_depth.py)."""
    out, intermediates = self._encode(
        self.embed_patches(x), collect=return_intermediates, train=train,
        drop_key=drop_key)
    pooled = neck_lib.apply(self.neck, self._pool(out), train)
    return (pooled, intermediates) if return_intermediates else pooled


def _vit(defaults: dict, in_channels: int, image_size: int, rngs: nnx.Rngs,
         overrides: dict) -> VisionTransformer:
  cfg = dict(defaults, patch_size=4 if image_size <= 64 else 16)
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  cfg.setdefault('mlp_dim', 4 * cfg['hidden_dim'])  # Follows a wider override.
  return VisionTransformer(in_channels=in_channels, image_size=image_size,
                           rngs=rngs, **cfg)


def vit_tiny(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
             **overrides) -> VisionTransformer:
  """ViT-Ti (Touvron et al. 2021): 192 wide, 12 deep, 3 heads, MLP 768."""
  return _vit(dict(depth=12, hidden_dim=192, num_heads=3), in_channels,
              image_size, rngs, overrides)


def vit_small(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
              **overrides) -> VisionTransformer:
  """ViT-S: 384 wide, 12 deep, 6 heads, MLP 1536."""
  return _vit(dict(depth=12, hidden_dim=384, num_heads=6), in_channels,
              image_size, rngs, overrides)


def vit_base(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
             **overrides) -> VisionTransformer:
  """ViT-B: 768 wide, 12 deep, 12 heads, MLP 3072."""
  return _vit(dict(depth=12, hidden_dim=768, num_heads=12), in_channels,
              image_size, rngs, overrides)


def vit_tiny_3d(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
                **overrides) -> VisionTransformer:
  """ViT-Ti over cubic patches of volumes [B, D, H, W, C] (3D sin-cos)."""
  return vit_tiny(in_channels=in_channels, image_size=image_size, rngs=rngs,
                  **dict(overrides, spatial_dims=3))
