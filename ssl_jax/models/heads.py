"""Heads that sit on an encoder: projectors, linear classifiers, MAE decoder.

Kept apart from the encoders so a checkpoint's encoder subtree can be reused
for fine-tuning while pretraining heads are dropped.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.vit import Block, TokenLinear, sincos

Array = jax.Array


class MLPHead(nnx.Module):
  """(Linear -> BN -> ReLU) x (num_layers - 1), then Linear [-> BN].

  The SimCLR projector (Chen et al. 2020) and the BYOL projector/predictor
  (Grill et al. 2020). `last_bn` adds a BN without affine on the output, as
  SimSiam (Chen & He 2021) and MoCo v3 do.
  """

  def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *,
               num_layers: int = 2, use_bn: bool = True, last_bn: bool = False,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {num_layers}')
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers, norms = [], []
    for i in range(num_layers):
      last = i == num_layers - 1
      bn = use_bn and (not last or last_bn)
      # A bias before BN is redundant: BN's shift replaces it.
      layers.append(nnx.Linear(dims[i], dims[i + 1], use_bias=not bn,
                               rngs=rngs))
      norms.append(
          nnx.BatchNorm(dims[i + 1], momentum=0.9, epsilon=1e-5,
                        use_scale=not last, use_bias=not last, rngs=rngs)
          if bn else None)
    self.layers = nnx.List(layers)
    self.norms = nnx.List(norms)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
      x = layer(x)
      if norm is not None:
        x = norm(x, use_running_average=not train)
      if i < len(self.layers) - 1:
        x = nnx.relu(x)
    return x


def _torch_default_inits(in_dim: int):
  """nn.Linear's default: kernel and bias both U(+-1/sqrt(fan_in))."""
  bound = 1.0 / in_dim ** 0.5
  uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(  # noqa: E731
      key, shape, dtype, -bound, bound)
  return uniform, uniform


# How a classifier head starts (`finetune.head_init`): at zero (big_vision;
# the default) or as PyTorch's nn.Linear (the MedMNIST reference ResNet).
HEAD_INITS = {
    'zeros': lambda in_dim: (nnx.initializers.zeros_init(),
                             nnx.initializers.zeros_init()),
    'torch_default': _torch_default_inits,
}


class LinearHead(nnx.Module):
  """Linear classifier, zero-initialised by default (as in big_vision)."""

  def __init__(self, in_dim: int, num_classes: int, *, rngs: nnx.Rngs,
               init: str = 'zeros'):
    if init not in HEAD_INITS:
      raise ValueError(f'finetune.head_init must be one of {tuple(HEAD_INITS)}, '
                       f'got {init!r}')
    kernel_init, bias_init = HEAD_INITS[init](in_dim)
    self.linear = nnx.Linear(in_dim, num_classes, kernel_init=kernel_init,
                             bias_init=bias_init, rngs=rngs)

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    del train
    return self.linear(x.astype(jnp.float32))


class Classifier(nnx.Module):
  """Encoder + linear head, for fine-tuning and from-scratch baselines.

  `projector_dim` adds SimCLR's projector beside the head (features ->
  features -> projector_dim, BN between) for a stage 2 that keeps a
  contrastive term on the same features (FixMatch's
  `contrastive_weight`); only training reads it, through
  `logits_and_projection`: predictions are the head's alone.
  """

  def __init__(self, encoder: nnx.Module, num_classes: int, *,
               rngs: nnx.Rngs, head_init: str = 'zeros',
               projector_dim: int | None = None):
    self.encoder = encoder
    dim = encoder.feature_dim
    if projector_dim:  # absent otherwise: the usual tree
      self.projector = MLPHead(dim, dim, projector_dim, num_layers=2,
                               rngs=rngs)
    self.head = LinearHead(dim, num_classes, rngs=rngs, init=head_init)

  def __call__(self, x: Array, *, train: bool = False,
               drop_key: Array | None = None) -> Array:
    """Class logits; `drop_key` (given only for an encoder with stochastic
    depth: objectives/supervised.py `trained_logits`) feeds its drops."""
    return self.head(self._features(x, train, drop_key), train=train)

  def logits_and_projection(self, x: Array, *, train: bool = False,
                            drop_key: Array | None = None
                            ) -> tuple[Array, Array]:
    """(class logits, projector output) from one pass of the encoder."""
    features = self._features(x, train, drop_key)
    return (self.head(features, train=train),
            self.projector(features, train=train))

  def _features(self, x: Array, train: bool, drop_key: Array | None) -> Array:
    drop = {} if drop_key is None else {'drop_key': drop_key}
    return self.encoder(x, train=train, **drop)


class MAEDecoder(nnx.Module):
  """The lightweight MAE decoder (He et al. 2022, "Masked Autoencoders").

  Embeds the visible latents, fills masked positions with a shared learned
  mask token, restores the original patch order with `ids_restore`, adds fixed
  sin-cos positions and predicts the pixels of every patch.
  """

  def __init__(self, *, num_patches: int, encoder_dim: int, decoder_dim: int,
               depth: int, num_heads: int, patch_dim: int, rngs: nnx.Rngs,
               spatial_dims: int = 2):
    grid = int(round(num_patches**(1 / spatial_dims)))
    if grid**spatial_dims != num_patches:
      shape = 'square' if spatial_dims == 2 else 'cubic'
      raise ValueError(f'num_patches={num_patches} must be a {shape} grid')
    self.grid_size = grid
    self.spatial_dims = spatial_dims
    self.num_patches = num_patches
    self.decoder_dim = decoder_dim
    self.position_embedding()  # Validate decoder_dim early.
    xavier = nnx.initializers.xavier_uniform()
    self.embed = TokenLinear(encoder_dim, decoder_dim, kernel_init=xavier,
                             rngs=rngs)
    self.mask_token = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (1, 1, decoder_dim)))
    self.blocks = nnx.List([
        Block(decoder_dim, num_heads, 4 * decoder_dim, rngs=rngs)
        for _ in range(depth)])
    self.norm = nnx.LayerNorm(decoder_dim, epsilon=1e-6, rngs=rngs)
    self.pred = TokenLinear(decoder_dim, patch_dim, kernel_init=xavier,
                            rngs=rngs)

  def position_embedding(self):
    """Fixed sin-cos positions [num_patches, decoder_dim] of the grid."""
    return sincos((self.grid_size,) * self.spatial_dims, self.decoder_dim)

  def __call__(self, latent: Array, ids_restore: Array, *,
               train: bool = False) -> Array:
    """latent [B, 1+K, E], ids_restore [B, N] -> pixels [B, N, patch_dim]."""
    del train
    x = self.embed(latent.astype(jnp.float32))
    b, n = ids_restore.shape
    num_masked = n - (x.shape[1] - 1)
    mask = jnp.broadcast_to(self.mask_token[...],
                            (b, num_masked, self.decoder_dim))
    patches = jnp.concatenate([x[:, 1:], mask], axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)
    patches = patches + self.position_embedding()
    x = jnp.concatenate([x[:, :1], patches], axis=1)  # cls position is zero.
    for block in self.blocks:
      x = block(x)
    return self.pred(self.norm(x))[:, 1:]
