"""Image decoders for the generative objectives (autoencoder, DAE, VAE).

A ResNet encoder hands back a pooled vector, so the decoder starts from a
vector: a Linear lifts it to a small `channels[0] x s x s` map, then each
further stage doubles the resolution with nearest-neighbour upsampling and a
3x3 conv (resize-conv rather than transposed conv, which avoids checkerboard
artefacts; Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
A last 3x3 conv maps to the image's channels; its output is linear, in the
standardised [-1, 1] input scale the encoder sees. Decoding from the pooled
vector (not the last spatial map) keeps every backbone interchangeable and
forces all information through the representation that fine-tuning reuses.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def start_size(image_size: int, num_upsamples: int) -> int:
  """Side of the first feature map: image_size / 2^n, rounded up."""
  return max(1, math.ceil(image_size / 2**num_upsamples))


def upsample_nearest(x: Array, factor: int = 2) -> Array:
  """[B, H, W, C] -> [B, fH, fW, C] by repeating pixels."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ConvDecoder(nnx.Module):
  """Vector [B, in_dim] -> image [B, image_size, image_size, out_channels].

  `channels` = widths of the maps from the first (start_size) to the last
  stage; len(channels) - 1 upsamplings by 2. When image_size is not
  start_size * 2^n the last map is cropped to the image (centre).
  """

  def __init__(self, in_dim: int, *, out_channels: int, image_size: int,
               channels: Sequence[int], rngs: nnx.Rngs):
    channels = tuple(int(c) for c in channels)
    if not channels:
      raise ValueError('decoder channels must name at least one width')
    self.image_size = image_size
    self.channels = channels
    self.size0 = start_size(image_size, len(channels) - 1)
    self.project = nnx.Linear(in_dim, self.size0 * self.size0 * channels[0],
                              use_bias=False, rngs=rngs)
    self.project_bn = nnx.BatchNorm(self.size0 * self.size0 * channels[0],
                                    momentum=0.9, epsilon=1e-5, rngs=rngs)
    convs, norms = [], []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
      convs.append(nnx.Conv(c_in, c_out, (3, 3), padding='SAME',
                            use_bias=False, rngs=rngs))
      norms.append(nnx.BatchNorm(c_out, momentum=0.9, epsilon=1e-5,
                                 rngs=rngs))
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.out = nnx.Conv(channels[-1], out_channels, (3, 3), padding='SAME',
                        rngs=rngs)

  def __call__(self, z: Array, *, train: bool = False) -> Array:
    ura = not train
    x = nnx.relu(self.project_bn(self.project(z.astype(jnp.float32)),
                                 use_running_average=ura))
    x = x.reshape(z.shape[0], self.size0, self.size0, self.channels[0])
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.relu(norm(conv(upsample_nearest(x)), use_running_average=ura))
    x = self.out(x)
    offset = (x.shape[1] - self.image_size) // 2
    return x[:, offset:offset + self.image_size,
             offset:offset + self.image_size]
