"""Encoders and heads, found by name: `models.get('resnet18')(...)`.

Every backbone factory has one contract:
  factory(*, in_channels, image_size, rngs, **overrides) -> nnx.Module
and the module maps float [B, H, W, C] to pooled float32 [B, feature_dim]
(`return_intermediates=True` adds a dict of pooled per-stage features).
Backbones named `*_3d` map volumes [B, D, H, W, C] the same way.
"""
from __future__ import annotations

from typing import Callable

from flax import nnx

from ssl_jax.models import heads, resnet, vit
from ssl_jax.models.heads import Classifier, LinearHead, MAEDecoder, MLPHead
from ssl_jax.models.resnet import ResNet
from ssl_jax.models.vit import (VisionTransformer, patchify, patchify3d,
                                unpatchify, unpatchify3d)
from ssl_jax.registry import Registry

BackboneFactory = Callable[..., nnx.Module]

BACKBONES: Registry[BackboneFactory] = Registry('backbone')
BACKBONES.add('resnet18', resnet.resnet18)
BACKBONES.add('resnet50', resnet.resnet50)
BACKBONES.add('resnet18_3d', resnet.resnet18_3d)
BACKBONES.add('vit_tiny', vit.vit_tiny)
BACKBONES.add('vit_small', vit.vit_small)
BACKBONES.add('vit_base', vit.vit_base)
BACKBONES.add('vit_tiny_3d', vit.vit_tiny_3d)


def get(name: str) -> BackboneFactory:
  """The factory registered as `name`; KeyError lists the allowed names."""
  return BACKBONES.get(name)


def names() -> list[str]:
  return BACKBONES.names()


__all__ = [
    'BACKBONES', 'Classifier', 'LinearHead', 'MAEDecoder', 'MLPHead',
    'ResNet', 'VisionTransformer', 'get', 'heads', 'names', 'patchify',
    'patchify3d', 'resnet', 'unpatchify', 'unpatchify3d', 'vit',
]
