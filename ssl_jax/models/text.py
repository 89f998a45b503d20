"""A small transformer over report tokens: the text tower of image-text
pretraining (ConVIRT, Zhang et al. 2022; CLIP, Radford et al. 2021).

Token ids come from data_pipelines/text.py (0 <pad>, 2 <cls> first). Learned
position embeddings (as CLIP's text encoder), the ViT's pre-LN blocks with
padded keys masked out, a final LayerNorm, then the sequence pooled: the
<cls> position ('cls') or the mean over the non-padded tokens ('mean').
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.vit import Block

Array = jax.Array
POOLS = ("mean", "cls")


class TextTransformer(nnx.Module):
  """int [B, L] token ids (0 = padding) -> float32 [B, width]."""

  def __init__(self, *, vocab_size: int, max_length: int, width: int,
               depth: int, num_heads: int, mlp_dim: int, pool: str = "mean",
               rngs: nnx.Rngs):
    if pool not in POOLS:
      raise ValueError(f"text pool={pool!r}; allowed: {', '.join(POOLS)}")
    self.pool = pool
    self.max_length = max_length
    self.feature_dim = width
    self.embed = nnx.Embed(vocab_size, width,
                           embedding_init=nnx.initializers.normal(0.02),
                           rngs=rngs)
    self.positions = nnx.Param(
        nnx.initializers.normal(0.01)(rngs.params(), (max_length, width)))
    self.blocks = nnx.List([Block(width, num_heads, mlp_dim, rngs=rngs)
                            for _ in range(depth)])
    self.norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)

  def __call__(self, tokens: Array, *, train: bool = False) -> Array:
    del train  # no dropout or batch statistics
    if tokens.shape[-1] != self.max_length:
      raise ValueError(f"text tokens have length {tokens.shape[-1]}; the "
                       f"tower was built for {self.max_length}")
    mask = tokens != 0
    x = self.embed(tokens) + self.positions[...]
    for block in self.blocks:
      x = block(x, mask)
    x = self.norm(x).astype(jnp.float32)
    if self.pool == "cls":
      return x[:, 0]
    weights = mask.astype(jnp.float32)[..., None]
    return jnp.sum(x * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1.0)
