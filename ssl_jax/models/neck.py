"""The pretrained projector's first layers, kept on the encoder for stage 2.

SimCLRv2 (Chen et al., NeurIPS 2020, §2) fine-tunes "from a middle layer
of the projection head" instead of the encoder's pooled output, and finds
it helps most with few labels: the projector's first Linear -> BN -> ReLU
is pretrained too (on BreastMNIST at 10 % it changed nothing:
docs/results.md). A `Neck` of k layers
is those k layers of an `MLPHead` (models/heads.py), with the same leaf
names ('layers/i/kernel', 'norms/i/scale', ...), so a projector's weights
load into it by a prefix (`train/encoder_weights.py` `read`). The encoder
holds it (`neck=` of ResNet and ViT), so every stage-2 protocol, frozen
features included, sees the same network.
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

NAME = "neck"  # the encoder's attribute, and the weights' key prefix


class Neck(nnx.Module):
  """(Linear -> [BN ->] ReLU) per width in `widths`, as an MLPHead's hidden
  layers (a bias only without BN, whose shift replaces it)."""

  def __init__(self, in_dim: int, widths: Sequence[int], *, use_bn: bool,
               rngs: nnx.Rngs):
    dims = [in_dim, *widths]
    self.layers = nnx.List([
        nnx.Linear(dims[i], dims[i + 1], use_bias=not use_bn, rngs=rngs)
        for i in range(len(widths))])
    self.norms = nnx.List([
        nnx.BatchNorm(w, momentum=0.9, epsilon=1e-5, rngs=rngs)
        if use_bn else None for w in widths])

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for layer, norm in zip(self.layers, self.norms):
      x = layer(x)
      if norm is not None:
        x = norm(x, use_running_average=not train)
      x = nnx.relu(x)
    return x


def build(in_dim: int, widths: Sequence[int], use_bn: bool,
          rngs: nnx.Rngs) -> tuple[Neck | None, int]:
  """(the neck, the encoder's feature_dim after it); (None, in_dim) for
  no widths, so an encoder without one is built exactly as before."""
  widths = tuple(int(w) for w in widths)
  if any(w < 1 for w in widths):
    raise ValueError(f"neck widths must be >= 1, got {widths}")
  if not widths:
    return None, in_dim
  return Neck(in_dim, widths, use_bn=use_bn, rngs=rngs), widths[-1]


def apply(neck: Neck | None, pooled: jax.Array, train: bool) -> jax.Array:
  return pooled if neck is None else neck(pooled, train=train)
