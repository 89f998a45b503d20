"""ResNet encoders (He et al. 2016, "Deep Residual Learning") in Flax NNX.

Medical benchmarks range from 28 px (MedMNIST) to 224 px and more, so the
stem is chosen by image size: a 3x3 stride-1 conv without max-pool for small
images (as in CIFAR-style ResNets used by SimCLR on CIFAR), otherwise the 7x7/2
conv and 3x3/2 max-pool of the ImageNet ResNet. A width multiplier shrinks the
model for tests and CPU demos. `spatial_dims=3` makes every kernel, stride and
pool cubic (a 3D ResNet, as in Hara et al. 2018, "Can Spatiotemporal 3D CNNs
Retrace the History of 2D CNNs and ImageNet?") for volumes [B, D, H, W, C];
the block structure is the same code.

The encoder returns globally pooled features (no classifier), and on request
the pooled output of every stage, so probes can read earlier layers.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssl_jax.models import layers
from ssl_jax.models import neck as neck_lib
from ssl_jax.models import stochastic_depth

Array = jax.Array

class DepthStackedConv3d(nnx.Module):
  """A bias-free 3D conv computed as one 2D conv over depth slices.

  The k depth-shifted (and depth-strided) copies of the input are stacked on
  channels, so out[d] = conv2d(concat_i x[d * s + i - p], W reshaped to
  [k, k, k * C_in, C_out]): the same numbers as the 3D conv, with the same
  `kernel` param [k, k, k, C_in, C_out] as nnx.Conv (checkpoints are
  interchangeable). XLA's CPU 3D convolution is 5-10x slower than its 2D one
  at the narrow widths a CPU can train, hence this form there.
  """

  def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *,
               dtype, init: str = 'kaiming_fan_out', impl: str = 'auto',
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(layers.conv_initializer(init)(
        rngs.params(), (kernel,) * 3 + (in_ch, out_ch)))
    self.stride = stride
    self.dtype = dtype
    self.impl = layers.resolve_conv_impl(impl)  # of the 2D conv it runs

  def __call__(self, x: Array) -> Array:
    k, s = self.kernel.shape[0], self.stride
    p = k // 2
    b, d, h, w, c = x.shape
    out_d = (d + 2 * p - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate(
        [xp[:, i:i + s * (out_d - 1) + 1:s] for i in range(k)], axis=-1)
    stacked = stacked.reshape(b * out_d, h, w, k * c).astype(self.dtype)
    kernel = jnp.transpose(self.kernel[...], (1, 2, 0, 3, 4)).reshape(
        k, k, k * c, -1).astype(self.dtype)
    y = layers.apply_conv(stacked, kernel, s, p, self.impl)
    return y.reshape(b, out_d, *y.shape[1:])


CONV3D_IMPLS = ('auto', 'native', 'depth_stacked')


def _conv3d_impl(impl: str) -> str:
  """'auto' = depth_stacked on CPU, native (cuDNN / TPU 3D conv) elsewhere."""
  if impl not in CONV3D_IMPLS:
    raise ValueError(f'conv3d_impl must be one of {CONV3D_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'depth_stacked' if jax.default_backend() == 'cpu' else 'native'
  return impl


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, *, dtype,
          rngs: nnx.Rngs, spatial_dims: int = 2,
          conv3d_impl: str = 'native', conv_impl: str = 'auto',
          conv_init: str = 'kaiming_fan_out', **_) -> nnx.Module:
  """Bias-free conv with torchvision padding (k // 2), since a BN follows.

  Square (2D) or cubic (3D) kernel and stride, by `spatial_dims`.
  """
  if spatial_dims == 3 and conv3d_impl == 'depth_stacked':
    return DepthStackedConv3d(in_ch, out_ch, kernel, stride, dtype=dtype,
                              init=conv_init, impl=conv_impl, rngs=rngs)
  return layers.Conv(in_ch, out_ch, kernel, stride, spatial_dims=spatial_dims,
                     impl=conv_impl, dtype=dtype, init=conv_init, rngs=rngs)


def _bn(features: int, *, dtype, rngs: nnx.Rngs, zero: bool = False,
        norm_impl: str = 'auto', **_) -> layers.BatchNorm:
  """BatchNorm with PyTorch-equivalent momentum; `zero` zero-inits the scale.

  Zero-initialising the last BN of each residual branch makes every block
  start as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
  """
  return layers.BatchNorm(features, momentum=0.9, epsilon=1e-5,
                          zero_scale=zero, impl=norm_impl, dtype=dtype,
                          rngs=rngs)


class _Shortcut(nnx.Module):
  """1x1 projection + BN when the residual changes shape."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, ops: dict):
    self.conv = _conv(in_ch, out_ch, 1, stride, **ops)
    self.bn = _bn(out_ch, **ops)

  def __call__(self, x: Array, *, train: bool) -> Array:
    return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
  """Two 3x3 convs; the ResNet-18/34 block.

  `ops` (dtype, rngs, spatial_dims and the conv / norm implementations) is
  passed to every conv and BatchNorm of the block.
  """
  expansion = 1

  def __init__(self, in_ch: int, width: int, stride: int, *, ops: dict,
               drop_rate: float = 0.0):
    out_ch = width * self.expansion
    self.drop_rate = drop_rate  # stochastic depth of the residual branch
    self.conv1 = _conv(in_ch, width, 3, stride, **ops)
    self.bn1 = _bn(width, **ops)
    self.conv2 = _conv(width, out_ch, 3, 1, **ops)
    self.bn2 = _bn(out_ch, zero=ops['zero_init_residual'], **ops)
    self.shortcut = (_Shortcut(in_ch, out_ch, stride, ops=ops)
                     if stride != 1 or in_ch != out_ch else None)

  def __call__(self, x: Array, *, train: bool,
               drop_key: Array | None = None) -> Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    res = x if self.shortcut is None else self.shortcut(x, train=train)
    y = stochastic_depth.drop_path(y, self.drop_rate, drop_key)
    return nnx.relu(y + res)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided, as in ResNet v1.5) -> 1x1 x4; the ResNet-50 block."""
  expansion = 4

  def __init__(self, in_ch: int, width: int, stride: int, *, ops: dict,
               drop_rate: float = 0.0):
    out_ch = width * self.expansion
    self.drop_rate = drop_rate  # stochastic depth of the residual branch
    self.conv1 = _conv(in_ch, width, 1, 1, **ops)
    self.bn1 = _bn(width, **ops)
    self.conv2 = _conv(width, width, 3, stride, **ops)
    self.bn2 = _bn(width, **ops)
    self.conv3 = _conv(width, out_ch, 1, 1, **ops)
    self.bn3 = _bn(out_ch, zero=ops['zero_init_residual'], **ops)
    self.shortcut = (_Shortcut(in_ch, out_ch, stride, ops=ops)
                     if stride != 1 or in_ch != out_ch else None)

  def __call__(self, x: Array, *, train: bool,
               drop_key: Array | None = None) -> Array:
    ura = not train
    y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    res = x if self.shortcut is None else self.shortcut(x, train=train)
    y = stochastic_depth.drop_path(y, self.drop_rate, drop_key)
    return nnx.relu(y + res)


class ResNet(nnx.Module):
  """ResNet encoder: stem, 4 stages, global average pool; no classifier.

  Declares what it is for objectives and stage 2: `spatial_dims`, no
  `patch_size` (pools any input size), its sequence of blocks `stages`.
  """
  patch_size = None      # no patch grid: inputs of any size pool globally
  block_attr = 'stages'  # the sequence of units last_k fine-tuning counts
  after_blocks = (neck_lib.NAME,)  # params that follow the last unit

  def __init__(
      self,
      *,
      block: type[BasicBlock] | type[Bottleneck],
      stage_sizes: Sequence[int],
      in_channels: int,
      image_size: int,
      width_multiplier: float = 1.0,
      small_stem: bool | None = None,
      stage_strides: Sequence[int] | None = None,
      spatial_dims: int = 2,
      conv3d_impl: str = 'auto',
      conv_impl: str = 'auto',
      norm_impl: str = 'auto',
      zero_init_residual: bool = True,
      conv_init: str = 'kaiming_fan_out',
      drop_path_rate: float = 0.0,
      neck: Sequence[int] = (),
      neck_bn: bool = True,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    if width_multiplier <= 0:
      raise ValueError(f'width_multiplier must be > 0, got {width_multiplier}')
    if spatial_dims not in (2, 3):
      raise ValueError(f'spatial_dims must be 2 (images) or 3 (volumes), '
                       f'got {spatial_dims}')
    base = max(1, int(round(64 * width_multiplier)))
    self.small_stem = image_size <= 64 if small_stem is None else small_stem
    self.image_size = image_size
    self.spatial_dims = spatial_dims
    self.stage_sizes = tuple(stage_sizes)
    self.stage_strides = _stage_strides(stage_strides, len(self.stage_sizes))
    self.drop_path_rate = stochastic_depth.check_rate(drop_path_rate)
    rates = iter(stochastic_depth.depth_rates(
        self.drop_path_rate, sum(self.stage_sizes)))
    ops = dict(dtype=dtype, rngs=rngs, spatial_dims=spatial_dims,
               zero_init_residual=zero_init_residual, conv_init=conv_init,
               conv3d_impl=_conv3d_impl(conv3d_impl), conv_impl=conv_impl,
               norm_impl=norm_impl)
    if self.small_stem:
      self.stem_conv = _conv(in_channels, base, 3, 1, **ops)
    else:
      self.stem_conv = _conv(in_channels, base, 7, 2, **ops)
    self.stem_bn = _bn(base, **ops)

    stages = []
    in_ch = base
    for i, n_blocks in enumerate(self.stage_sizes):
      width = base * 2**i
      blocks = []
      for j in range(n_blocks):
        stride = self.stage_strides[i] if j == 0 else 1
        blocks.append(block(in_ch, width, stride, ops=ops,
                            drop_rate=next(rates)))
        in_ch = width * block.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    # A pretrained projector's first layers on the pooled output (stage 2).
    self.neck, self.feature_dim = neck_lib.build(in_ch, neck, neck_bn, rngs)

  def __call__(self, x: Array, *, train: bool = False,
               return_intermediates: bool = False,
               drop_key: Array | None = None
               ) -> Array | tuple[Array, dict[str, Array]]:
    """x: float [B, H, W, C] (or [B, D, H, W, C] when spatial_dims=3) ->
    pooled float32 [B, feature_dim]. `drop_key`: the stochastic depth's
    randomness for a training call (models/stochastic_depth.py)."""
    maps = self.feature_maps(x, train=train, drop_key=drop_key)
    pooled = neck_lib.apply(self.neck, _gap(maps[-1]), train)
    if not return_intermediates:
      return pooled
    return pooled, {f'stage{i}': _gap(m) for i, m in enumerate(maps[1:], 1)}

  def feature_maps(self, x: Array, *, train: bool = False,
                   drop_key: Array | None = None) -> list[Array]:
    """Spatial maps [stem (before the max-pool), stage1, ..., stageK], for
    dense decoders (the U-Net of Models Genesis restoration)."""
    x = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    maps = [x]
    if not self.small_stem:
      nd = self.spatial_dims
      x = nnx.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd)
    keys = iter(stochastic_depth.block_keys(
        self.drop_path_rate, drop_key, train, sum(self.stage_sizes)))
    for stage in self.stages:
      for blk in stage:
        x = blk(x, train=train, drop_key=next(keys))
      maps.append(x)
    return maps


def default_stage_strides(n_stages: int) -> tuple[int, ...]:
  """He et al.'s first-block strides: (1, 2, 2, ...)."""
  return (1,) + (2,) * (n_stages - 1)


def _stage_strides(strides: Sequence[int] | None, n_stages: int
                   ) -> tuple[int, ...]:
  """Each stage's first-block stride, the default when None. Strides hold
  no params, so a checkpoint loads at any strides: (1, 1, 2, 2) keeps a
  28 px input at full resolution through stage 2 (last map 7x7 instead of
  4x4) for about 3x the FLOPs."""
  if strides is None:
    return default_stage_strides(n_stages)
  strides = tuple(strides)
  if len(strides) != n_stages or not all(
      isinstance(s, int) and s >= 1 for s in strides):
    raise ValueError(f'config.model.stage_strides must be {n_stages} ints '
                     f'>= 1 (one per stage), got {strides!r}')
  return strides


def _gap(x: Array) -> Array:
  """Global average pool over the spatial axes, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))


def resnet18(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
             stage_sizes: Sequence[int] | None = None, **overrides) -> ResNet:
  """ResNet-18: BasicBlocks, stages (2, 2, 2, 2), 512 * m features."""
  return ResNet(block=BasicBlock, stage_sizes=stage_sizes or (2, 2, 2, 2),
                in_channels=in_channels, image_size=image_size, rngs=rngs,
                **overrides)


def resnet50(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
             stage_sizes: Sequence[int] | None = None, **overrides) -> ResNet:
  """ResNet-50: Bottlenecks, stages (3, 4, 6, 3), 2048 * m features."""
  return ResNet(block=Bottleneck, stage_sizes=stage_sizes or (3, 4, 6, 3),
                in_channels=in_channels, image_size=image_size, rngs=rngs,
                **overrides)


def resnet18_3d(*, in_channels: int, image_size: int, rngs: nnx.Rngs,
                **overrides) -> ResNet:
  """3D ResNet-18 for volumes [B, D, H, W, C]: `resnet18` with cubic kernels.

  Same stages and width multiplier; the small stem (3^3, stride 1, no pool)
  keeps 28^3 MedMNIST volumes at full resolution into stage 1.
  `conv3d_impl` ('auto' | 'native' | 'depth_stacked') only changes how the
  3D convs are computed (see DepthStackedConv3d), not the params.
  """
  return resnet18(in_channels=in_channels, image_size=image_size, rngs=rngs,
                  **dict(overrides, spatial_dims=3))
