"""A light U-Net decoder over a ResNet's spatial stage maps, for restoration.

Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021, "Models Genesis")
restores a corrupted image with a U-Net: the encoder's feature maps at every
resolution reach the decoder through skip connections, so fine texture (what
local pixel shuffling destroys) need not pass through the pooled vector.

`ResNet.__call__` returns pooled features only, so `resnet_feature_maps` runs
the encoder's own layers (stem, stages) and keeps each spatial map. It reads
the same submodules `ResNet.__call__` uses, so the trained weights are exactly
the encoder's and fine-tuning needs nothing from here. (A `feature_maps`
method on ResNet would remove the mirroring; see the issue note.)

The decoder upsamples by nearest-neighbour resize to the skip's shape (28 px
stages are 28, 28, 14, 7, 4: not all factors of two), concatenates the skip,
and applies one 3x3 conv-BN-ReLU per level ("resize-convolution", Odena et
al. 2016, avoids transposed-conv checkerboards); a 1x1 conv maps to pixels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models.resnet import ResNet

Array = jax.Array


def resnet_feature_maps(encoder: ResNet, x: Array, *, train: bool
                        ) -> list[Array]:
  """[stem, stage1, ..., stageK] spatial maps of `encoder` on x [B, H, W, C]."""
  return encoder.feature_maps(x, train=train)


def resnet_map_channels(encoder: ResNet) -> list[int]:
  """Channels of `resnet_feature_maps`: widths double per stage, the last is
  `feature_dim`, the stem has the first stage's width before expansion."""
  expansion = type(encoder.stages[0][0]).expansion
  num_stages = len(encoder.stages)
  stages = [encoder.feature_dim // 2**(num_stages - 1 - i)
            for i in range(num_stages)]
  return [stages[0] // expansion] + stages


def _resize(x: Array, hw: tuple[int, int]) -> Array:
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "nearest")


class UNetDecoder(nnx.Module):
  """Deepest map up to pixels, one conv-BN-ReLU per skip level."""

  def __init__(self, channels: Sequence[int], out_channels: int, *,
               rngs: nnx.Rngs):
    """channels: of the encoder maps, shallow to deep (stem first)."""
    convs, norms = [], []
    prev = channels[-1]
    for skip in reversed(channels[:-1]):
      convs.append(nnx.Conv(prev + skip, skip, (3, 3), padding=((1, 1), (1, 1)),
                            use_bias=False, rngs=rngs))
      norms.append(nnx.BatchNorm(skip, momentum=0.9, epsilon=1e-5, rngs=rngs))
      prev = skip
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.head = nnx.Conv(prev, out_channels, (1, 1), rngs=rngs)

  def __call__(self, maps: Sequence[Array], out_hw: tuple[int, int], *,
               train: bool = False) -> Array:
    """maps shallow to deep -> float32 [B, *out_hw, out_channels]."""
    x = maps[-1].astype(jnp.float32)
    skips = [m.astype(jnp.float32) for m in reversed(maps[:-1])]
    for conv, norm, skip in zip(self.convs, self.norms, skips, strict=True):
      x = jnp.concatenate([_resize(x, skip.shape[1:3]), skip], axis=-1)
      x = nnx.relu(norm(conv(x), use_running_average=not train))
    return self.head(_resize(x, out_hw))
