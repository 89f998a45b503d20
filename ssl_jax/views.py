"""Views by image rank: [B, H, W, C] -> `augment`, [B, D, H, W, C] -> `augment3d`.

The one place that tells images from volumes, so objectives and jobs stay
free of 2D/3D branches: they call `views.apply` / `views.eval_view` and the
batch's rank picks the module (a registry keyed by rank, not an if-chain).
A 2D `augment.Policy` given with volumes is lifted by `augment3d.from_2d`,
so a config's one policy name serves 2D and 3D data alike.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ssl_jax import augment, augment3d
from ssl_jax.registry import Registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ViewOps:
  """The view functions for one input rank (same signatures as `augment`)."""
  apply: Callable[..., Array]      # (policy, rng, uint8, *, out_size) -> [0, 1]
  eval_view: Callable[..., Array]  # (uint8, *, out_size) -> standardized
  policy_types: tuple[type, ...]   # policies `apply` accepts
  flip_axes: Callable[..., tuple[int, ...]]  # policy -> axes of one example


BY_RANK: Registry[ViewOps] = Registry("input rank")
BY_RANK.add("4", ViewOps(augment.apply, augment.eval_view, (augment.Policy,),
                         augment.flip_axes))
BY_RANK.add("5", ViewOps(augment3d.apply, augment3d.eval_view,
                         (augment3d.Policy3D, augment.Policy),
                         augment3d.flip_axes))


def ops_for(images: Array) -> ViewOps:
  """The view functions for `images`' rank (4: images, 5: volumes)."""
  if str(images.ndim) not in BY_RANK:
    raise ValueError(f"images of shape {tuple(images.shape)}: expected "
                     "[B, H, W, C] images or [B, D, H, W, C] volumes")
  return BY_RANK.get(str(images.ndim))


def apply(policy, rng: Array, images: Array, *,
          out_size: int | None = None) -> Array:
  """`augment.apply` or `augment3d.apply`, by the rank of `images`."""
  ops = ops_for(images)
  if not isinstance(policy, ops.policy_types):
    raise TypeError(f"{type(policy).__name__} cannot augment inputs of shape "
                    f"{tuple(images.shape)}; expected one of "
                    f"{', '.join(t.__name__ for t in ops.policy_types)}")
  return ops.apply(policy, rng, images, out_size=out_size)


def two_views(policy, rng: Array, images: Array,
              out_size: int | None = None) -> tuple[Array, Array]:
  """Two independent views of the same batch (the SimCLR/BYOL pair)."""
  k1, k2 = jax.random.split(rng)
  return (apply(policy, k1, images, out_size=out_size),
          apply(policy, k2, images, out_size=out_size))


def train_view(policy, rng: Array, images: Array) -> Array:
  """The augmented, standardized training input for either rank: what an
  objective's model reads (`eval_view`'s counterpart)."""
  return augment.standardize(apply(policy, rng, images))


def eval_view(images: Array, *, out_size: int | None = None) -> Array:
  """The deterministic, standardized evaluation input for either rank."""
  return ops_for(images).eval_view(images, out_size=out_size)


def flip_axes(policy, spatial_dims: int) -> tuple[int, ...]:
  """The axes of one example (an image or a volume) `policy` may mirror."""
  return BY_RANK.get(str(spatial_dims + 2)).flip_axes(policy)


def flipped_views(policy, images: Array) -> list[Array]:
  """`images` under every combination of the mirrorings `policy` trains
  with (identity first; 2^k views for k flipped axes): the test-time views
  a model trained on that policy is invariant to, and only those (a
  policy without vertical flips never sees an upside-down image)."""
  axes = [a + 1 for a in ops_for(images).flip_axes(policy)]  # batch axis
  out = [images]
  for axis in axes:
    out += [jnp.flip(x, axis) for x in out]
  return out
